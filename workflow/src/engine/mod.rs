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
    ) -> Result<(Option<Assignment>, Change), EngineError> {
        let mut runs = self.runs();
        let mut change = Change { finished: false };
        let mut candidates = Vec::new();
        for workflow in catalog.store().list(Kind::Workflow)? {
            let spec: WorkflowSpec = workflow
                .spec()
                .map_err(|err| StoreError::Backend(format!("{}: {err}", workflow.key)))?;
            let mine = workflow.key.namespace == agent.hardware.namespace
                && spec.hardware_ref == agent.hardware.name;
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
            // A task may name another machine as its worker; that machine runs it.
            let worker = &status.actions[current].worker;
            if worker
                .parse::<MacAddr>()
                .is_ok_and(|worker| worker != agent.mac)
            {
                continue;
            }
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
            return Ok((Some(assignment), change));
        }
        Ok((None, change))
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
        for (key, status) in runs.iter_mut() {
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
    let template: TemplateSpec = template
        .spec()
        .map_err(|err| StoreError::Backend(format!("{template_key}: {err}")))?;
    let hardware: HardwareSpec = hardware
        .spec()
        .map_err(|err| StoreError::Backend(format!("{}: {err}", hardware.key)))?;
    let data = template.data.unwrap_or_default();
    let plan = crate::template::render(&data, &spec.hardware_map, &hardware)
        .map_err(|err| format!("template {:?} does not render: {err}", spec.template_ref))
        .and_then(|rendered| Plan::parse(&rendered).map_err(|err| err.to_string()));
    Ok(Some(plan.map(|plan| WorkflowStatus::new(&plan))))
}
