//! Workflow: a template bound to a machine.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    pub template_ref: String,
    pub hardware_ref: String,
    /// Template variables, usually `device_1: <MAC>`.
    #[serde(default)]
    pub hardware_map: BTreeMap<String, String>,
    pub boot_options: Option<Value>,
    pub boot_opts: Option<Value>,
    pub disabled: Option<bool>,
}
