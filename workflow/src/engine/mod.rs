//! The workflow engine: which action a machine's worker runs next, what its reports do to the
//! workflow, and the timeouts the server enforces. Every change is durable before it is
//! acknowledged, so a restart resumes each workflow where it was.
pub mod plan;
pub mod status;

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::SystemTime,
};

pub use self::{
    plan::Plan,
    status::{ActionStatus, Report, ReportError, State, WorkflowStatus},
};
use crate::{
    catalog::Catalog,
    resource::{HardwareSpec, Kind, MacAddr, ResourceKey, TemplateSpec, WorkflowSpec},
    store::{Store, StoreError},
};

/// A worker, as the transport has identified it: the Hardware it runs on (proven by its
/// address or token) and the MAC it calls itself by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub hardware: ResourceKey,
    pub mac: MacAddr,
}

/// An action handed to a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub workflow: ResourceKey,
    /// The action's place in the workflow, which the worker's reports name.
    pub index: usize,
    pub action: ActionStatus,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("workflow {0} not found")]
    NotFound(ResourceKey),
    #[error("workflow {workflow} belongs to hardware {owner}, not to {agent}")]
    NotYours {
        workflow: String,
        owner: String,
        agent: String,
    },
    #[error("workflow {workflow}: {error}")]
    Report {
        workflow: ResourceKey,
        error: ReportError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a worker should do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    Run(Box<Assignment>),
    /// Nothing to run. The state of the machine's most recently finished workflow tells a
    /// worker that has been running actions how its workflow ended.
    Idle {
        last_finished: Option<State>,
    },
}

/// What a call changed, so that the caller can refresh what depends on it (a finished workflow
/// is no longer pending work for the boot path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub finished: bool,
}

pub struct Engine {
    /// Every workflow's run, as stored. The lock also serialises changes, so each one is read,
    /// changed and stored as a unit.
    runs: Mutex<HashMap<ResourceKey, WorkflowStatus>>,
}

impl Engine {
    /// Loads the stored runs: running workflows carry on, with their timeouts measured from
    /// the stored start times.
    pub fn load<S: Store>(catalog: &Catalog<S>) -> Result<Engine, StoreError> {
        Ok(Engine {
            runs: Mutex::new(catalog.store().workflow_statuses()?.into_iter().collect()),
        })
    }

    fn runs(&self) -> MutexGuard<'_, HashMap<ResourceKey, WorkflowStatus>> {
        self.runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn status(&self, key: &ResourceKey) -> Option<WorkflowStatus> {
        self.runs().get(key).cloned()
    }

    /// A workflow's run; for one that has not started, what its run will be (every action
    /// pending), or `None` while it cannot start (its template or hardware is missing).
    pub fn run_or_preview<S: Store>(
        &self,
        catalog: &Catalog<S>,
        key: &ResourceKey,
        spec: &WorkflowSpec,
    ) -> Result<Option<WorkflowStatus>, StoreError> {
        if let Some(run) = self.status(key) {
            return Ok(Some(run));
        }
        let hardware = ResourceKey {
            kind: Kind::Hardware,
            namespace: key.namespace.clone(),
            name: spec.hardware_ref.clone(),
        };
        Ok(start(catalog, key, spec, &hardware)?.and_then(Result::ok))
    }

    /// Drops the run of a deleted workflow (the store drops it with the workflow).
    pub fn forget(&self, key: &ResourceKey) {
        self.runs().remove(key);
    }

    /// The next action for a worker: the current action of its machine's workflow, a running
    /// one before a pending one. `None` when it has nothing to do.
    pub fn next_action<S: Store>(
        &self,
        catalog: &Catalog<S>,
        agent: &Agent,
        now: SystemTime,
    ) -> Result<(Next, Change), EngineError> {
        let mut runs = self.runs();
        let mut change = Change { finished: false };
        let mut candidates = Vec::new();
        let mut mine_keys = Vec::new();
        for workflow in catalog.store().list(Kind::Workflow)? {
            let spec: WorkflowSpec = workflow
                .spec()
                .map_err(|err| StoreError::Backend(format!("{}: {err}", workflow.key)))?;
            let mine = workflow.key.namespace == agent.hardware.namespace
                && spec.hardware_ref == agent.hardware.name;
            if mine {
                mine_keys.push(workflow.key.clone());
            }
            let state = runs.get(&workflow.key).map(|status| status.state);
            if mine && spec.disabled != Some(true) && !state.is_some_and(State::is_final) {
                candidates.push((state != Some(State::Running), workflow.key, spec));
            }
        }
        candidates.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (_, key, spec) in candidates {
            let mut status = match runs.get(&key) {
                Some(status) => status.clone(),
                None => match start(catalog, &key, &spec, &agent.hardware)? {
                    Some(Ok(status)) => status,
                    Some(Err(message)) => {
                        let failed = WorkflowStatus::failed_to_start(message, now);
                        if catalog.store().put_workflow_status(&key, &failed)? {
                            runs.insert(key, failed);
                            change.finished = true;
                        }
                        continue;
                    }
                    // Its template is missing: the workflow is blocked, not started.
                    None => continue,
                },
            };
            let Some(current) = status.current() else {
                continue;
            };
            status.start_current(now);
            if !catalog.store().put_workflow_status(&key, &status)? {
                continue;
            }
            let assignment = Assignment {
                workflow: key.clone(),
                index: current,
                action: status.actions[current].clone(),
            };
            runs.insert(key, status);
            return Ok((Next::Run(Box::new(assignment)), change));
        }
        let last_finished = mine_keys
            .iter()
            .filter_map(|key| runs.get(key))
            .filter(|run| run.state.is_final())
            .max_by_key(|run| run.finished_at)
            .map(|run| run.state);
        Ok((Next::Idle { last_finished }, change))
    }

    /// Applies a worker's report on an action of its own machine's workflow.
    pub fn report<S: Store>(
        &self,
        catalog: &Catalog<S>,
        agent: &Agent,
        workflow: &ResourceKey,
        report: &Report,
        now: SystemTime,
    ) -> Result<Change, EngineError> {
        let stored = catalog
            .store()
            .get(workflow)?
            .ok_or_else(|| EngineError::NotFound(workflow.clone()))?;
        let spec: WorkflowSpec = stored
            .spec()
            .map_err(|err| StoreError::Backend(format!("{workflow}: {err}")))?;
        if workflow.namespace != agent.hardware.namespace
            || spec.hardware_ref != agent.hardware.name
        {
            return Err(EngineError::NotYours {
                workflow: workflow.to_string(),
                owner: spec.hardware_ref,
                agent: agent.hardware.to_string(),
            });
        }
        let mut runs = self.runs();
        let mut status = runs
            .get(workflow)
            .cloned()
            .ok_or_else(|| EngineError::Report {
                workflow: workflow.clone(),
                error: ReportError::NotCurrent {
                    got: report.action,
                    expected: None,
                },
            })?;
        let before = status.clone();
        status
            .apply(report, now)
            .map_err(|error| EngineError::Report {
                workflow: workflow.clone(),
                error,
            })?;
        if status != before {
            if !catalog.store().put_workflow_status(workflow, &status)? {
                return Err(EngineError::NotFound(workflow.clone()));
            }
            runs.insert(workflow.clone(), status.clone());
        }
        Ok(Change {
            finished: status.state.is_final() && !before.state.is_final(),
        })
    }

    /// Ends the workflows whose timeouts have passed; returns how many it ended.
    pub fn enforce_timeouts<S: Store>(
        &self,
        catalog: &Catalog<S>,
        now: SystemTime,
    ) -> Result<usize, StoreError> {
        let mut runs = self.runs();
        let mut ended = 0;
        let mut gone = Vec::new();
        // Checked every second over every run: only running ones can time out, and only
        // they are copied.
        for (key, status) in runs
            .iter_mut()
            .filter(|(_, status)| status.state == State::Running)
        {
            let mut changed = status.clone();
            if changed.enforce_timeouts(now) {
                if catalog.store().put_workflow_status(key, &changed)? {
                    *status = changed;
                    ended += 1;
                } else {
                    gone.push(key.clone());
                }
            }
        }
        for key in gone {
            runs.remove(&key);
        }
        Ok(ended)
    }
}

/// Renders a workflow for its machine. `None` when its template does not exist (yet);
/// `Some(Err)` when it cannot run as it stands, with the reason.
fn start<S: Store>(
    catalog: &Catalog<S>,
    key: &ResourceKey,
    spec: &WorkflowSpec,
    hardware: &ResourceKey,
) -> Result<Option<Result<WorkflowStatus, String>>, StoreError> {
    let template_key = ResourceKey {
        kind: Kind::Template,
        namespace: key.namespace.clone(),
        name: spec.template_ref.clone(),
    };
    let Some(template) = catalog.store().get(&template_key)? else {
        return Ok(None);
    };
    let Some(hardware) = catalog.store().get(hardware)? else {
        return Ok(None);
    };
    // A stored object that no longer decodes fails this workflow, not the machine's others.
    let template: TemplateSpec = match template.spec() {
        Ok(template) => template,
        Err(err) => return Ok(Some(Err(format!("{template_key} is unreadable: {err}")))),
    };
    let hardware_key = hardware.key.clone();
    let hardware: HardwareSpec = match hardware.spec() {
        Ok(hardware) => hardware,
        Err(err) => return Ok(Some(Err(format!("{hardware_key} is unreadable: {err}")))),
    };
    let data = template.data.unwrap_or_default();
    let plan = crate::template::render(&data, &spec.hardware_map, &hardware)
        .map_err(|err| format!("template {:?} does not render: {err}", spec.template_ref))
        .and_then(|rendered| Plan::parse(&rendered).map_err(|err| err.to_string()))
        .and_then(|plan| own_tasks_only(plan, &hardware_key, &hardware));
    Ok(Some(plan.map(|plan| WorkflowStatus::new(&plan))))
}

/// A workflow runs on the machine its `hardwareRef` names: a task whose `worker` is the MAC of
/// another machine could never be run (that machine's worker is never given this workflow),
/// so it is refused up front rather than left waiting.
fn own_tasks_only(plan: Plan, key: &ResourceKey, hardware: &HardwareSpec) -> Result<Plan, String> {
    for task in &plan.tasks {
        if let Ok(worker) = task.worker.parse::<MacAddr>() {
            if !hardware.macs().any(|mac| mac == worker) {
                return Err(format!(
                    "task {:?} names worker {worker}, which is not a MAC of {key}; a workflow runs \
                     on the machine its hardwareRef names",
                    task.name
                ));
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{manifest::Manifest, store::RedbStore};

    const MAC: &str = "02:00:00:00:00:01";

    fn catalog(dir: &std::path::Path, worker: &str) -> Catalog<RedbStore> {
        let catalog = Catalog::new(RedbStore::open(dir).unwrap());
        let yaml = format!(
            "apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata: {{name: m, namespace: ns}}
spec:
  interfaces:
    - dhcp: {{mac: \"{MAC}\"}}
---
apiVersion: tinkerbell.org/v1alpha1
kind: Template
metadata: {{name: t, namespace: ns}}
spec:
  data: |
    tasks:
      - name: install
        worker: \"{worker}\"
        actions:
          - {{name: one, image: cexec, timeout: 5}}
          - {{name: two, image: cexec}}
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata: {{name: w, namespace: ns}}
spec: {{templateRef: t, hardwareRef: m}}
"
        );
        let mut manifest = Manifest::default();
        manifest.parse("test.yaml", &yaml);
        assert!(manifest.errors.is_empty(), "{:?}", manifest.errors);
        catalog.apply(manifest.documents).unwrap();
        catalog
    }

    fn agent() -> Agent {
        Agent {
            hardware: ResourceKey {
                kind: Kind::Hardware,
                namespace: "ns".into(),
                name: "m".into(),
            },
            mac: MAC.parse().unwrap(),
        }
    }

    fn workflow() -> ResourceKey {
        ResourceKey {
            kind: Kind::Workflow,
            namespace: "ns".into(),
            name: "w".into(),
        }
    }

    fn next(engine: &Engine, catalog: &Catalog<RedbStore>) -> Next {
        engine
            .next_action(catalog, &agent(), SystemTime::now())
            .unwrap()
            .0
    }

    fn success(action: usize) -> Report {
        Report {
            action,
            state: State::Success,
            message: String::new(),
        }
    }

    #[test]
    fn a_run_survives_a_restart_and_ends_with_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog(dir.path(), MAC);
        let engine = Engine::load(&catalog).unwrap();
        let index = |next: Next| match next {
            Next::Run(assignment) => Some(assignment.index),
            Next::Idle { .. } => None,
        };
        // Asked again before a report, the worker gets the same action.
        assert_eq!(index(next(&engine, &catalog)), Some(0));
        let Next::Run(first) = next(&engine, &catalog) else {
            panic!("an action")
        };
        assert_eq!((first.index, first.action.name.as_str()), (0, "one"));
        engine
            .report(
                &catalog,
                &agent(),
                &workflow(),
                &success(0),
                SystemTime::now(),
            )
            .unwrap();
        // A new engine on the same store: as after a daemon restart.
        drop(engine);
        let engine = Engine::load(&catalog).unwrap();
        let run = engine.status(&workflow()).unwrap();
        assert_eq!((run.state, run.done()), (State::Running, 1));
        let Next::Run(second) = next(&engine, &catalog) else {
            panic!("the second action")
        };
        assert_eq!(second.index, 1);
        let change = engine
            .report(
                &catalog,
                &agent(),
                &workflow(),
                &success(1),
                SystemTime::now(),
            )
            .unwrap();
        assert!(change.finished);
        assert_eq!(
            next(&engine, &catalog),
            Next::Idle {
                last_finished: Some(State::Success)
            }
        );
        assert!(
            catalog.bound_hardware().unwrap().is_empty(),
            "no pending work"
        );
    }

    #[test]
    fn reports_from_another_machine_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog(dir.path(), MAC);
        let engine = Engine::load(&catalog).unwrap();
        next(&engine, &catalog);
        let mut stranger = agent();
        stranger.hardware.name = "other".into();
        let err = engine
            .report(
                &catalog,
                &stranger,
                &workflow(),
                &success(0),
                SystemTime::now(),
            )
            .unwrap_err();
        assert!(matches!(err, EngineError::NotYours { .. }), "{err}");
        assert_eq!(engine.status(&workflow()).unwrap().done(), 0);
    }

    #[test]
    fn a_task_for_another_machine_fails_the_workflow_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog(dir.path(), "02:00:00:00:00:99");
        let engine = Engine::load(&catalog).unwrap();
        let (next, change) = engine
            .next_action(&catalog, &agent(), SystemTime::now())
            .unwrap();
        assert!(change.finished);
        assert_eq!(
            next,
            Next::Idle {
                last_finished: Some(State::Failed)
            }
        );
        let run = engine.status(&workflow()).unwrap();
        assert!(
            run.message.contains("names worker 02:00:00:00:00:99"),
            "{}",
            run.message
        );
    }
}
