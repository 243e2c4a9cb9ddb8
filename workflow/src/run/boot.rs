//! What a workflow's `bootOptions` have done: the Hardware toggles and the BMC Jobs, in the
//! shape of Tinkerbell's `status.bootOptions` and workflow conditions, plus whether its actions
//! may be handed out yet. Written by the daemon's BMC controller beside the run.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootStatus {
    #[serde(default)]
    pub boot_options: BootOptionsStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<WorkflowCondition>,
    /// The preparation is done: the workflow's actions may be handed out.
    #[serde(default)]
    pub prepared: bool,
    /// Why the preparation failed; the workflow fails with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preparation_failed: Option<String>,
    /// What follows success is done.
    #[serde(default)]
    pub post_done: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootOptionsStatus {
    #[serde(default)]
    pub allow_netboot: AllowNetbootStatus,
    /// The BMC Jobs created for the workflow, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jobs: BTreeMap<String, JobRecord>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowNetbootStatus {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub toggled_true: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub toggled_false: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub complete: bool,
}

/// Tinkerbell's workflow condition: `AllowNetbootTrue`, `BootJobSetupComplete`, ...
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowCondition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True` or `False`.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

impl BootStatus {
    /// Sets the condition of `kind`, replacing an earlier one of the same kind; one that says
    /// the same again is left as it is, time included (Tinkerbell's `SetConditionIfDifferent`),
    /// so that a step retried every second writes nothing new.
    pub fn condition(
        &mut self,
        kind: &str,
        holds: bool,
        reason: &str,
        message: &str,
        time: String,
    ) {
        let condition = WorkflowCondition {
            kind: kind.into(),
            status: if holds { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            time: Some(time),
        };
        match self.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(existing)
                if (&existing.status, &existing.reason, &existing.message)
                    == (&condition.status, &condition.reason, &condition.message) => {}
            Some(existing) => *existing = condition,
            None => self.conditions.push(condition),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_said_again_keeps_its_time() {
        let mut status = BootStatus::default();
        status.condition(
            "AllowNetbootFalse",
            false,
            "Error",
            "hardware gone",
            "t1".into(),
        );
        status.condition(
            "AllowNetbootFalse",
            false,
            "Error",
            "hardware gone",
            "t2".into(),
        );
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(status.conditions[0].time.as_deref(), Some("t1"));
        status.condition(
            "AllowNetbootFalse",
            true,
            "Complete",
            "set allowPXE to false",
            "t3".into(),
        );
        assert_eq!(status.conditions[0].time.as_deref(), Some("t3"));
        assert_eq!(status.conditions[0].status, "True");
    }
}
