//! The rendered workflow: Tinkerbell's workflow YAML (`version`, `global_timeout`, `tasks` with
//! their `actions`) after the template has been rendered for one machine.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Plan {
    /// Read as Tinkerbell's controller reads it, and not used, as there.
    #[serde(default, skip_serializing)]
    pub version: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub id: Option<serde_json::Value>,
    #[serde(default)]
    pub name: String,
    /// Seconds for the whole workflow; 0 means none.
    #[serde(default)]
    pub global_timeout: u64,
    pub tasks: Vec<Task>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Task {
    pub name: String,
    /// The machine that runs the task, usually `{{.device_1}}`, its MAC.
    #[serde(default)]
    pub worker: String,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    /// Values keep the text YAML wrote (`MODE: 0644` stays `0644`), as Tinkerbell's YAML
    /// decoding into Go strings keeps it.
    pub environment: BTreeMap<String, String>,
    pub actions: Vec<Action>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Action {
    pub name: String,
    pub image: String,
    /// Seconds; 0 means none.
    #[serde(default)]
    pub timeout: u64,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    /// Values keep the text YAML wrote (`MODE: 0644` stays `0644`), as Tinkerbell's YAML
    /// decoding into Go strings keeps it.
    pub environment: BTreeMap<String, String>,
    /// Deprecated in Tinkerbell for `namespaces.pid`, which wins when both are set.
    #[serde(default)]
    pub pid: String,
    #[serde(default)]
    pub namespaces: Namespaces,
}

/// The Linux namespaces an action's container joins, passed to the runtime as they are
/// (`host` shares the provisioning OS's). Built-in actions run in the provisioning OS's own.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct Namespaces {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub network: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pid: String,
}

impl Namespaces {
    pub fn is_empty(&self) -> bool {
        self.network.is_empty() && self.pid.is_empty()
    }
}

impl Action {
    /// The PID namespace the action's container joins: `namespaces.pid`, else `pid`.
    pub fn effective_pid(&self) -> &str {
        if self.namespaces.pid.is_empty() {
            &self.pid
        } else {
            &self.namespaces.pid
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the rendered workflow is not valid: {0}")]
pub struct PlanError(String);

impl Plan {
    /// Parses a rendered template, naming the field at fault.
    pub fn parse(rendered: &str) -> Result<Plan, PlanError> {
        Plan::parse_noting_unused(rendered).map(|(plan, _)| plan)
    }

    /// [`Plan::parse`], and the paths of the fields Wisp does not use (`on-timeout` and
    /// `on-failure`, which Tinkerbell's controller drops too, and any it does not know).
    pub fn parse_noting_unused(rendered: &str) -> Result<(Plan, Vec<String>), PlanError> {
        let mut unused = Vec::new();
        let document = serde_yaml_ng::Deserializer::from_str(rendered);
        let mut note =
            |path: serde_ignored::Path| unused.push(crate::resource::ignored_path(&path));
        let document = serde_ignored::Deserializer::new(document, &mut note);
        let plan: Plan = serde_path_to_error::deserialize(document)
            .map_err(|err| PlanError(format!("{}: {}", err.path(), err.inner())))?;
        if plan.tasks.iter().all(|task| task.actions.is_empty()) {
            return Err(PlanError("it has no actions".into()));
        }
        Ok((plan, unused))
    }

    /// The actions in the order they run, with their task.
    pub fn actions(&self) -> impl Iterator<Item = (&Task, &Action)> {
        self.tasks
            .iter()
            .flat_map(|task| task.actions.iter().map(move |action| (task, action)))
    }
}

/// An action's environment as the worker receives it: the task's, overridden by the action's,
/// as sorted `KEY=value` strings (Tinkerbell's wire form).
pub fn environment(task: &Task, action: &Action) -> Vec<String> {
    let mut merged = task.environment.clone();
    merged.extend(action.environment.clone());
    merged
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rendered_demo_template() {
        let plan = Plan::parse(
            r#"
version: "0.1"
name: demo
global_timeout: 9800
tasks:
  - name: os-installation
    worker: "1c:69:7a:11:22:33"
    volumes: [/dev:/dev]
    environment: {SHARED: yes-all}
    actions:
      - name: stream
        image: quay.io/tinkerbell-actions/image2disk:v1.0.0
        timeout: 600
        environment:
          COMPRESSED: true
          UID: 0
          MODE: 0644
          SHARED: overridden
"#,
        )
        .unwrap();
        assert_eq!(plan.global_timeout, 9800);
        let (task, action) = plan.actions().next().unwrap();
        assert_eq!(action.timeout, 600);
        assert_eq!(
            environment(task, action),
            ["COMPRESSED=true", "MODE=0644", "SHARED=overridden", "UID=0"]
        );
    }

    #[test]
    fn namespaces_pid_wins_over_the_deprecated_pid() {
        let plan = Plan::parse(
            "tasks:\n  - name: t\n    actions:\n      - {name: a, image: i, pid: host}\n      - {name: b, image: i, pid: host, namespaces: {pid: private, network: none}}\n",
        )
        .unwrap();
        let actions: Vec<&Action> = plan.actions().map(|(_, action)| action).collect();
        assert_eq!(actions[0].effective_pid(), "host");
        assert!(actions[0].namespaces.is_empty());
        assert_eq!(actions[1].effective_pid(), "private");
        assert_eq!(actions[1].namespaces.network, "none");
    }

    #[test]
    fn notes_the_fields_it_does_not_use() {
        let (_, unused) = Plan::parse_noting_unused(
            "version: '0.1'\nid: x\nname: n\ntasks:\n  - name: t\n    actions:\n      - {name: a, image: i, on-timeout: [echo], on-failure: [echo]}\n    colour: blue\n",
        )
        .unwrap();
        assert_eq!(
            unused,
            [
                "tasks[0].actions[0].on-timeout",
                "tasks[0].actions[0].on-failure",
                "tasks[0].colour"
            ]
        );
    }

    #[test]
    fn names_the_field_at_fault() {
        let err = Plan::parse(
            "tasks:\n  - name: t\n    actions:\n      - name: a\n        timeout: soon\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tasks[0].actions[0]"), "{err}");
        let err = Plan::parse("tasks: []\n").unwrap_err().to_string();
        assert!(err.contains("no actions"), "{err}");
    }
}
