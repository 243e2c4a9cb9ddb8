//! Template: a Tinkerbell workflow template, kept as the Go-template text it was written in.
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    /// The workflow YAML, before rendering (it may hold `{{.device_1}}` and the like).
    pub data: Option<String>,
    pub secret_ref: Option<Value>,
    pub requires_check_in: Option<bool>,
}
