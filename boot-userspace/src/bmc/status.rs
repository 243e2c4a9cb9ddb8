//! The status Wisp writes for Machines, Jobs and Tasks, in the shape Tinkerbell's BMC
//! controller writes it: conditions of type `Contactable` (Machines) or `Running`, `Completed`
//! and `Failed` (Jobs and Tasks), start and completion times.
use serde::{Deserialize, Serialize};
use workflow::resource::bmc::PowerState;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True` or `False`.
    pub status: String,
    /// Machines only: when `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Sets the condition of `kind`, adding it when absent. With `stamp`, `lastUpdateTime` moves
/// only when the status changes, as Tinkerbell's Machine conditions do.
fn set(conditions: &mut Vec<Condition>, kind: &str, holds: bool, message: &str, stamp: bool) {
    let status = if holds { "True" } else { "False" }.to_string();
    let index = match conditions.iter().position(|c| c.kind == kind) {
        Some(index) => index,
        None => {
            conditions.push(Condition {
                kind: kind.into(),
                ..Condition::default()
            });
            conditions.len() - 1
        }
    };
    let condition = &mut conditions[index];
    if stamp && (condition.status != status || condition.last_update_time.is_none()) {
        condition.last_update_time = Some(now());
    }
    condition.status = status;
    condition.message = message.into();
}

fn holds(conditions: &[Condition], kind: &str) -> bool {
    conditions
        .iter()
        .any(|condition| condition.kind == kind && condition.status == "True")
}

/// Now, as Kubernetes writes times (RFC 3339, seconds).
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<PowerState>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl MachineStatus {
    /// What a poll of the BMC found: its power state, or why it could not be read.
    pub fn polled(&mut self, outcome: Result<PowerState, String>) {
        match outcome {
            Ok(state) => {
                self.power_state = Some(state);
                set(&mut self.conditions, "Contactable", true, "", true);
            }
            Err(message) => {
                self.power_state = Some(PowerState::Unknown);
                set(&mut self.conditions, "Contactable", false, &message, true);
            }
        }
    }
}

/// A Job's or a Task's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// Set on success only, as Tinkerbell does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// How a Job or Task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Completed,
    Failed(String),
}

impl RunStatus {
    pub fn ended(&self) -> Option<Ended> {
        if holds(&self.conditions, "Failed") {
            let message = self
                .conditions
                .iter()
                .find(|condition| condition.kind == "Failed")
                .map(|condition| condition.message.clone())
                .unwrap_or_default();
            Some(Ended::Failed(message))
        } else if holds(&self.conditions, "Completed") {
            Some(Ended::Completed)
        } else {
            None
        }
    }

    /// Starts the run; a run resumed after a restart keeps its first start time. Jobs record
    /// `Running`, Tasks do not (as in Tinkerbell).
    pub fn start(&mut self, running_condition: bool) {
        self.start_time.get_or_insert_with(now);
        if running_condition {
            set(&mut self.conditions, "Running", true, "", false);
        }
    }

    /// Puts `message` on the Completed condition, when there is something to say.
    pub fn note(&mut self, message: &str) {
        if let Some(completed) = self
            .conditions
            .iter_mut()
            .find(|c| c.kind == "Completed" && !message.is_empty())
        {
            completed.message = message.into();
        }
    }

    pub fn end(&mut self, ended: &Ended) {
        match ended {
            Ended::Completed => {
                set(&mut self.conditions, "Completed", true, "", false);
                self.completion_time = Some(now());
            }
            Ended::Failed(message) => set(&mut self.conditions, "Failed", true, message, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machines_condition_time_moves_only_when_its_status_changes() {
        let mut status = MachineStatus::default();
        status.polled(Err("no answer".into()));
        let first = status.conditions[0].last_update_time.clone();
        assert!(first.is_some());
        status.polled(Err("still no answer".into()));
        assert_eq!(status.conditions[0].last_update_time, first);
        assert_eq!(status.conditions[0].message, "still no answer");
        assert_eq!(status.power_state, Some(PowerState::Unknown));
        status.polled(Ok(PowerState::On));
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(status.conditions[0].status, "True");
        assert!(status.conditions[0].message.is_empty());
    }

    #[test]
    fn a_run_ends_once_and_says_how() {
        let mut run = RunStatus::default();
        run.start(true);
        assert_eq!(run.ended(), None);
        run.end(&Ended::Failed("task lab/x-task-1 failed".into()));
        assert_eq!(
            run.ended(),
            Some(Ended::Failed("task lab/x-task-1 failed".into()))
        );
        assert!(
            run.completion_time.is_none(),
            "only success has a completion time"
        );
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(json["conditions"][0]["type"], "Running");
        assert_eq!(json["conditions"][1]["type"], "Failed");
        assert!(json["conditions"][1].get("lastUpdateTime").is_none());
    }
}
