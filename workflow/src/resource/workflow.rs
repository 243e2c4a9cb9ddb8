//! Workflow: a template bound to a machine.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{bmc::Action, Kind, ResourceKey};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    pub template_ref: String,
    /// Optional, as in Tinkerbell: see [`WorkflowSpec::hardware`].
    #[serde(default)]
    pub hardware_ref: String,
    /// Template variables, usually `device_1: <MAC>`.
    #[serde(default)]
    pub hardware_map: BTreeMap<String, String>,
    #[serde(default)]
    pub boot_options: BootOptions,
    pub boot_opts: Option<Value>,
    pub disabled: Option<bool>,
}

/// How the machine gets into the provisioning OS, and back out: Tinkerbell's `bootOptions`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct BootOptions {
    /// Set the Hardware's `allowPXE` before the workflow runs, and clear it after it succeeds.
    pub toggle_allow_netboot: bool,
    #[serde(rename = "isoURL")]
    pub iso_url: Option<String>,
    pub boot_mode: Option<BootMode>,
    pub customboot_config: CustombootConfig,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// Through the BMC: power off, a one-time PXE boot, power on.
    Netboot,
    /// Through the BMC's virtual media (Redfish): the ISO at `isoURL` as a CD.
    Isoboot,
    /// The same as `isoboot`, as Tinkerbell treats it.
    Iso,
    /// The BMC actions of `custombootConfig`.
    Customboot,
}

impl BootMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            BootMode::Netboot => "netboot",
            BootMode::Isoboot => "isoboot",
            BootMode::Iso => "iso",
            BootMode::Customboot => "customboot",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct CustombootConfig {
    pub preparing_actions: Vec<Action>,
    pub post_actions: Vec<Action>,
}

impl WorkflowSpec {
    /// The Hardware the workflow runs on: the one `hardwareRef` names; without one (Tinkerbell
    /// makes it optional), the Hardware in its namespace whose agent id (a MAC, or its
    /// `spec.agentID`) is among `hardwareMap`'s values, which is where Tinkerbell's agent id,
    /// the rendered task's `worker`, leads. `owner` tells whose agent id a value is; it is
    /// asked only when there is no `hardwareRef`.
    pub fn hardware(
        &self,
        namespace: &str,
        owner: impl Fn(&str) -> Option<ResourceKey>,
    ) -> Option<ResourceKey> {
        if !self.hardware_ref.is_empty() {
            return Some(ResourceKey {
                kind: Kind::Hardware,
                namespace: namespace.to_string(),
                name: self.hardware_ref.clone(),
            });
        }
        self.hardware_map
            .values()
            .filter_map(|value| owner(value))
            .find(|key| key.namespace == namespace)
    }
}

impl BootOptions {
    /// Whether anything must happen before the workflow's actions are handed out.
    pub fn prepare(&self) -> bool {
        self.toggle_allow_netboot || self.boot_mode.is_some()
    }
}

/// Tinkerbell's WorkflowRuleSet: rules over agent attributes that create a Workflow for an agent
/// that has none. Wisp stores it and does not act on it (see docs/tinkerbell-compat.md).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkflowRuleSetSpec {
    pub rules: Vec<String>,
    pub workflow: RuleSetWorkflow,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RuleSetWorkflow {
    pub disabled: Option<bool>,
    pub namespace: String,
    pub add_attributes: bool,
    pub template: RuleSetTemplate,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RuleSetTemplate {
    pub agent_value: String,
    pub kvs: BTreeMap<String, String>,
    #[serde(rename = "ref")]
    pub template_ref: String,
}
