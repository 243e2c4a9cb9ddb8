//! The workflow engine: which action a machine's worker runs next, what its reports do to the
//! workflow, and the timeouts the server enforces. Every change is durable before it is
//! acknowledged, so a restart resumes each workflow where it was.
mod runs;

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use self::runs::{QueuedRun, Runs};
use crate::{
    catalog::Catalog,
    resource::{HardwareSpec, Kind, MacAddr, ResourceKey, TemplateSpec, WorkflowSpec},
    run::{ActionStatus, BootStatus, Plan, Report, ReportError, State, WorkflowStatus},
    store::{CommitError, GroupCommit, RunWritten, RunsChanged, StoreError},
};

/// A worker, as the transport has identified it: the Hardware it runs on (proven by its
/// address or token) and the MAC it calls itself by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerIdentity {
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
    #[error("workflow {workflow} belongs to hardware {owner}, not to {worker}")]
    NotYours {
        workflow: String,
        owner: String,
        worker: String,
    },
    #[error("workflow {workflow}: {error}")]
    Report {
        workflow: ResourceKey,
        error: ReportError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Commit(#[from] CommitError),
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

/// What an engine call decided and changed, with the store writes it queued: the decision may
/// be acted on (answered) only once they are durable.
#[must_use = "a decision is acted on only once its writes are durable"]
pub struct Decision<T> {
    pub value: T,
    pub change: Change,
    pub durable: Durable,
}

/// The writes an engine call queued. The writer commits in queue order, so once they are
/// durable so is every change made before the call, and the call may be answered. A call that
/// changed nothing queues a barrier: its answer may rest on a change still on its way.
#[must_use = "wait for the writes before answering"]
#[derive(Default)]
pub struct Durable {
    /// Each write, with whether the answer rests on it being stored (its workflow still
    /// existing).
    writes: Vec<(QueuedWrite, bool)>,
}

/// A write queued to the store: what became of it, once settled.
type QueuedWrite = Pin<Box<dyn Future<Output = Result<RunWritten, CommitError>> + Send>>;

/// What the writer is given: a run's change, or `None`, a barrier that stores nothing.
type Queued = Option<QueuedRun>;

/// Whether an engine call's answer may be given, once its writes are settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Its changes are durable: answer.
    Stands,
    /// The workflow it is about was deleted meanwhile, so that its run was not stored.
    WorkflowGone,
    /// Another appliance changed a run it changed, after it was read: nothing of the call was
    /// kept, and the call is to be made again (it then decides from the run as stored).
    Raced,
}

impl Durable {
    /// Waits until the writes are settled.
    pub async fn wait(self) -> Result<Settled, CommitError> {
        let mut settled = Settled::Stands;
        for (write, answer_rests_on_it) in self.writes {
            match write.await? {
                RunWritten::Stored(_) => {}
                RunWritten::Stale => settled = Settled::Raced,
                RunWritten::WorkflowGone if answer_rests_on_it && settled == Settled::Stands => {
                    settled = Settled::WorkflowGone;
                }
                RunWritten::WorkflowGone => {}
            }
        }
        Ok(settled)
    }
}

/// At most this many run changes share one transaction.
const MAX_BATCH: usize = 1024;
/// At most this many run changes wait for the disk; a worker's call beyond them fails, and the
/// worker retries. Far more than a rack's machines make at once: reached only when the disk
/// has stopped keeping up.
const QUEUE_LIMIT: usize = 1 << 20;

pub struct Engine {
    catalog: Arc<Catalog>,
    /// The lock serialises changes, so each is read, changed and queued for writing as a unit,
    /// and writes reach the store in the order the changes were made.
    state: Arc<Mutex<EngineState>>,
    writer: GroupCommit<Queued, RunWritten>,
}

struct EngineState {
    /// Every workflow's run, as stored (or queued to be).
    runs: Runs,
    workflows: WorkflowIndex,
}

/// The workflows and which machine each is for, derived from the store at `revision`, so that
/// a worker's call looks up its own workflows instead of reading them all.
#[derive(Default)]
struct WorkflowIndex {
    revision: Option<u64>,
    specs: HashMap<ResourceKey, WorkflowSpec>,
    /// The Hardware each workflow runs on, where one can be found.
    hardware: HashMap<ResourceKey, ResourceKey>,
    by_hardware: HashMap<ResourceKey, Vec<ResourceKey>>,
}

impl WorkflowIndex {
    /// Derives the index again when the resources have changed since it was made.
    fn refresh(&mut self, catalog: &Catalog) -> Result<(), StoreError> {
        let revision = catalog.store().revision()?;
        if self.revision == Some(revision) {
            return Ok(());
        }
        let mut index = WorkflowIndex {
            revision: Some(revision),
            ..WorkflowIndex::default()
        };
        // Asked for only when a workflow has no hardwareRef.
        let mut owners = None;
        for workflow in catalog.store().list(Kind::Workflow)? {
            let spec: WorkflowSpec = workflow
                .spec()
                .map_err(|err| StoreError::decode(&workflow.key, err))?;
            if spec.hardware_ref.is_empty() && owners.is_none() {
                owners = Some(catalog.agent_owners()?);
            }
            let hardware = spec.hardware(&workflow.key.namespace, |agent| {
                owners.as_ref().and_then(|owners| owners.of(agent))
            });
            if let Some(hardware) = hardware {
                index
                    .by_hardware
                    .entry(hardware.clone())
                    .or_default()
                    .push(workflow.key.clone());
                index.hardware.insert(workflow.key.clone(), hardware);
            }
            index.specs.insert(workflow.key, spec);
        }
        *self = index;
        Ok(())
    }

    fn of(&self, hardware: &ResourceKey) -> impl Iterator<Item = (&ResourceKey, &WorkflowSpec)> {
        self.by_hardware
            .get(hardware)
            .into_iter()
            .flatten()
            .filter_map(|key| Some((key, self.specs.get(key)?)))
    }
}

impl Engine {
    /// Loads the stored runs, and starts the writer that stores their changes: running
    /// workflows carry on, with their timeouts measured from the stored start times.
    pub fn load(catalog: Arc<Catalog>) -> Result<Engine, StoreError> {
        let state = Arc::new(Mutex::new(EngineState {
            runs: Runs::from_store(catalog.store().workflow_statuses()?),
            workflows: WorkflowIndex::default(),
        }));
        let (writing, settling) = (Arc::clone(&catalog), Arc::clone(&state));
        let mut written = runs::Written::default();
        let writer = GroupCommit::start(
            "workflow writer",
            MAX_BATCH,
            QUEUE_LIMIT,
            move |batch: Vec<Queued>| runs::commit(writing.store(), &settling, &mut written, batch),
        );
        Ok(Engine {
            state,
            catalog,
            writer,
        })
    }

    /// The resources the engine reads its workflows, templates and hardware from.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn state(&self) -> MutexGuard<'_, EngineState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a run's change for the store; the in-memory run changes with it. If a commit
    /// fails, [`Engine::reload`] puts memory back in line with the store.
    fn write(
        &self,
        runs: &mut Runs,
        durable: &mut Durable,
        key: &ResourceKey,
        status: WorkflowStatus,
        answer_rests_on_it: bool,
    ) {
        let queued = self.writer.submit(Some(runs.change(key, status)));
        durable.writes.push((Box::pin(queued), answer_rests_on_it));
    }

    /// For a call that queued nothing: its answer waits for the changes queued before it.
    fn barrier(&self, mut durable: Durable) -> Durable {
        if durable.writes.is_empty() {
            durable
                .writes
                .push((Box::pin(self.writer.submit(None)), false));
        }
        durable
    }

    /// Takes the runs from the store again, after a commit failed: memory must not keep a
    /// change the store does not have.
    pub fn reload(&self) -> Result<(), StoreError> {
        // Read under the lock, as in `observe`: a run stored meanwhile is not replaced by the
        // older listing.
        let mut state = self.state();
        let stored = self.catalog.store().workflow_statuses()?;
        state.runs.replace(stored);
        Ok(())
    }

    /// Takes the runs another appliance changed (from a watch of the shared store). Whether a
    /// workflow may have finished, which the boot path follows.
    pub fn observe(&self, changed: RunsChanged) -> Result<Change, StoreError> {
        match changed {
            RunsChanged::All => {
                // Read under the lock: a run this appliance stored after a read made outside it
                // would be missing from the listing, and taken as deleted. Under it, every run
                // kept as stored was stored before the read, and one being written is queued
                // (which a listing never replaces) until the read is taken.
                let mut state = self.state();
                let stored = self.catalog.store().workflow_statuses()?;
                state.runs.observe_all(stored);
                Ok(Change { finished: true })
            }
            RunsChanged::These(runs) => {
                let finished = runs
                    .iter()
                    .any(|(_, run)| run.as_ref().is_none_or(|run| run.status.state.is_final()));
                let mut state = self.state();
                for (key, run) in runs {
                    state.runs.observe(&key, run);
                }
                Ok(Change { finished })
            }
        }
    }

    /// With a store other appliances write too, reads these runs from it before a decision
    /// rests on them: the watch that keeps memory up to date may be behind, and a worker may
    /// have reported to another appliance a moment ago.
    fn freshen(&self, keys: &[ResourceKey]) -> Result<(), StoreError> {
        if !self.catalog.store().shared() {
            return Ok(());
        }
        let mut fresh = Vec::with_capacity(keys.len());
        for key in keys {
            fresh.push((key, self.catalog.store().workflow_status(key)?));
        }
        let mut state = self.state();
        for (key, run) in fresh {
            state.runs.observe(key, run);
        }
        Ok(())
    }

    /// Whether `workflow` is one of the machine's: a worker sends only its own workflows'
    /// output.
    pub fn is_workflow_of(
        &self,
        workflow: &ResourceKey,
        hardware: &ResourceKey,
    ) -> Result<bool, StoreError> {
        let mut state = self.state();
        state.workflows.refresh(&self.catalog)?;
        let found = state.workflows.of(hardware).any(|(key, _)| key == workflow);
        Ok(found)
    }

    /// The workflows of a machine, for [`Engine::freshen`].
    fn workflows_of(&self, hardware: &ResourceKey) -> Result<Vec<ResourceKey>, StoreError> {
        if !self.catalog.store().shared() {
            return Ok(Vec::new());
        }
        let mut state = self.state();
        state.workflows.refresh(&self.catalog)?;
        Ok(state
            .workflows
            .of(hardware)
            .map(|(key, _)| key.clone())
            .collect())
    }

    pub fn status(&self, key: &ResourceKey) -> Option<WorkflowStatus> {
        self.state().runs.get(key).cloned()
    }

    /// Each machine's current run, for the rack view: its running workflow's, else the one that
    /// started or finished last (by Hardware; machines whose workflows have not started are
    /// absent).
    pub fn current_runs(
        &self,
    ) -> Result<HashMap<ResourceKey, (ResourceKey, WorkflowStatus)>, StoreError> {
        let mut state = self.state();
        let EngineState { runs, workflows } = &mut *state;
        workflows.refresh(&self.catalog)?;
        let mut current: HashMap<ResourceKey, (ResourceKey, WorkflowStatus)> = HashMap::new();
        for (hardware, keys) in &workflows.by_hardware {
            let latest = keys
                .iter()
                .filter_map(|key| Some((key, runs.get(key)?)))
                .max_by_key(|(_, run)| {
                    let running = run.state == State::Running;
                    (running, run.span.finished_at.or(run.span.started_at))
                });
            if let Some((key, run)) = latest {
                current.insert(hardware.clone(), (key.clone(), run.clone()));
            }
        }
        Ok(current)
    }

    /// A workflow's run; for one that has not started, what its run will be (every action
    /// pending, or FAILED with the reason it cannot run), or `None` while it cannot start (its
    /// template or hardware is missing).
    pub fn run_or_preview(
        &self,
        key: &ResourceKey,
        spec: &WorkflowSpec,
    ) -> Result<Option<WorkflowStatus>, StoreError> {
        if let Some(run) = self.status(key) {
            return Ok(Some(run));
        }
        let Some(hardware) = self.catalog.hardware_of(&key.namespace, spec)? else {
            return Ok(None);
        };
        Ok(match start(&self.catalog, key, spec, &hardware)? {
            Start::Ready(run) | Start::Preparing(run) => Some(run),
            // What cannot run is shown as it will end, before its machine asks for it.
            Start::Refused(reason) => {
                Some(WorkflowStatus::failed_to_start(reason, SystemTime::now()))
            }
            Start::Blocked => None,
        })
    }

    /// Drops the run of a deleted workflow (the store drops it with the workflow).
    pub fn forget(&self, key: &ResourceKey) {
        self.state().runs.remove(key);
    }

    /// How the machine's most recently finished workflow ended, if one finished at `since` or
    /// later.
    pub fn last_finished(
        &self,
        hardware: &ResourceKey,
        since: SystemTime,
    ) -> Result<Option<State>, EngineError> {
        let mut state = self.state();
        let EngineState { runs, workflows } = &mut *state;
        workflows.refresh(&self.catalog)?;
        let mine: Vec<ResourceKey> = workflows
            .of(hardware)
            .filter(|(key, _)| {
                runs.get(key)
                    .and_then(|run| run.span.finished_at)
                    .is_some_and(|finished| finished >= since)
            })
            .map(|(key, _)| key.clone())
            .collect();
        Ok(last_finished(runs, &mine))
    }

    /// The next action for a worker: the current action of its machine's workflow, a running
    /// one before a pending one; `Idle` when it has nothing to do.
    pub fn next_action(
        &self,
        worker: &WorkerIdentity,
        now: SystemTime,
    ) -> Result<Decision<Next>, EngineError> {
        self.freshen(&self.workflows_of(&worker.hardware)?)?;
        let mut state = self.state();
        let EngineState { runs, workflows } = &mut *state;
        workflows.refresh(&self.catalog)?;
        let mut change = Change { finished: false };
        let mut durable = Durable::default();
        let mut candidates = Vec::new();
        let mut mine = Vec::new();
        for (key, spec) in workflows.of(&worker.hardware) {
            mine.push(key.clone());
            let state = runs.get(key).map(|status| status.state);
            if spec.disabled != Some(true) && !state.is_some_and(State::is_final) {
                candidates.push((state != Some(State::Running), key.clone(), spec.clone()));
            }
        }
        candidates.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (_, key, spec) in candidates {
            let mut status = match runs.get(&key) {
                Some(status) => status.clone(),
                None => match start(&self.catalog, &key, &spec, &worker.hardware)? {
                    Start::Ready(status) => status,
                    Start::Refused(message) => {
                        let failed = WorkflowStatus::failed_to_start(message, now);
                        self.write(runs, &mut durable, &key, failed, false);
                        change.finished = true;
                        continue;
                    }
                    Start::Blocked | Start::Preparing(_) => continue,
                },
            };
            let Some(current) = status.current() else {
                continue;
            };
            status.start_current(now);
            let assignment = Assignment {
                workflow: key.clone(),
                index: current,
                action: status.actions[current].clone(),
            };
            // Asked again for a running action, nothing changes: nothing to write, but the
            // answer still waits for what was queued before it.
            if runs.get(&key) != Some(&status) {
                self.write(runs, &mut durable, &key, status, true);
            }
            return Ok(Decision {
                value: Next::Run(Box::new(assignment)),
                change,
                durable: self.barrier(durable),
            });
        }
        let last_finished = last_finished(runs, &mine);
        Ok(Decision {
            value: Next::Idle { last_finished },
            change,
            durable: self.barrier(durable),
        })
    }

    /// Applies a worker's report on an action of its own machine's workflow.
    pub fn report(
        &self,
        worker: &WorkerIdentity,
        workflow: &ResourceKey,
        report: &Report,
        now: SystemTime,
    ) -> Result<Decision<()>, EngineError> {
        self.freshen(std::slice::from_ref(workflow))?;
        let mut state = self.state();
        let EngineState { runs, workflows } = &mut *state;
        workflows.refresh(&self.catalog)?;
        if !workflows.specs.contains_key(workflow) {
            return Err(EngineError::NotFound(workflow.clone()));
        }
        let owner = workflows.hardware.get(workflow);
        if owner != Some(&worker.hardware) {
            return Err(EngineError::NotYours {
                workflow: workflow.to_string(),
                owner: owner.map_or_else(|| "no Hardware".to_string(), |owner| owner.name.clone()),
                worker: worker.hardware.to_string(),
            });
        }
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
        let change = Change {
            finished: status.state.is_final() && !before.state.is_final(),
        };
        let mut durable = Durable::default();
        if status != before {
            self.write(runs, &mut durable, workflow, status, true);
        }
        Ok(Decision {
            value: (),
            change,
            durable: self.barrier(durable),
        })
    }

    /// Whether a workflow's bootOptions may be carried out now. Only when it would start next:
    /// it has no run, is not disabled, its template and hardware exist, and it is the one its
    /// machine's worker would be given next (the same order as [`Engine::next_action`]: the
    /// machine runs one workflow at a time).
    pub fn preparation(&self, key: &ResourceKey) -> Result<Preparation, EngineError> {
        self.freshen(std::slice::from_ref(key))?;
        let mut state = self.state();
        let EngineState { runs, workflows } = &mut *state;
        workflows.refresh(&self.catalog)?;
        let Some(spec) = workflows.specs.get(key) else {
            return Ok(Preparation::Wait);
        };
        if runs.contains_key(key) || spec.disabled == Some(true) {
            return Ok(Preparation::Wait);
        }
        let Some(hardware) = workflows.hardware.get(key) else {
            return Ok(Preparation::Wait);
        };
        let first = workflows
            .of(hardware)
            .filter(|(other, spec)| {
                spec.disabled != Some(true)
                    && !runs.get(other).is_some_and(|run| run.state.is_final())
            })
            .map(|(other, _)| {
                let running = runs.get(other).map(|run| run.state) == Some(State::Running);
                (!running, other.clone())
            })
            .min();
        if first.is_none_or(|(_, first)| first != *key) {
            return Ok(Preparation::Wait);
        }
        Ok(match start(&self.catalog, key, spec, hardware)? {
            Start::Blocked => Preparation::Wait,
            Start::Refused(reason) => Preparation::Refused(reason),
            Start::Ready(_) | Start::Preparing(_) => Preparation::Go,
        })
    }

    /// Fails a workflow that has not started, because its preparation failed (its BMC Job, say):
    /// its machine may never boot to ask for work. The value is whether it was failed.
    pub fn fail_unstarted(
        &self,
        key: &ResourceKey,
        message: String,
        now: SystemTime,
    ) -> Result<Decision<bool>, StoreError> {
        self.freshen(std::slice::from_ref(key))?;
        let mut state = self.state();
        let mut durable = Durable::default();
        let fail = !state.runs.contains_key(key);
        if fail {
            let failed = WorkflowStatus::failed_to_start(message, now);
            self.write(&mut state.runs, &mut durable, key, failed, true);
        }
        Ok(Decision {
            value: fail,
            change: Change { finished: fail },
            durable: self.barrier(durable),
        })
    }

    /// Ends the workflows whose timeouts have passed; the value is how many it ended.
    pub fn enforce_timeouts(&self, now: SystemTime) -> Decision<usize> {
        let mut state = self.state();
        let mut durable = Durable::default();
        // Checked every second over every run: only running ones can time out, and only
        // they are copied.
        let ended: Vec<(ResourceKey, WorkflowStatus)> = state
            .runs
            .iter()
            .filter(|(_, status)| status.state == State::Running)
            .filter_map(|(key, status)| {
                let mut changed = status.clone();
                changed
                    .enforce_timeouts(now)
                    .then(|| (key.clone(), changed))
            })
            .collect();
        let count = ended.len();
        for (key, status) in ended {
            self.write(&mut state.runs, &mut durable, &key, status, false);
        }
        Decision {
            value: count,
            change: Change {
                finished: count > 0,
            },
            durable,
        }
    }
}

/// The final state of the workflow among `mine` that finished last.
fn last_finished(runs: &Runs, mine: &[ResourceKey]) -> Option<State> {
    mine.iter()
        .filter_map(|key| runs.get(key))
        .filter(|run| run.state.is_final())
        .max_by_key(|run| run.span.finished_at)
        .map(|run| run.state)
}

/// Whether a workflow's bootOptions may be carried out now.
#[derive(Debug, PartialEq, Eq)]
pub enum Preparation {
    /// Not yet: it is not the machine's next workflow, or its template or hardware is missing.
    Wait,
    /// It would not start: it fails with the reason.
    Refused(String),
    Go,
}

/// Whether a workflow that has no run yet can start.
#[derive(Debug)]
enum Start {
    /// Its template or hardware does not exist (yet): it waits, and is not started.
    Blocked,
    /// It cannot run as it stands; it fails at once, with the reason.
    Refused(String),
    /// Rendered for its machine: its run, every action pending.
    Ready(WorkflowStatus),
    /// Rendered, and its `bootOptions` still being carried out: its run-to-be, PREPARING.
    Preparing(WorkflowStatus),
}

/// Renders a workflow for its machine.
fn start(
    catalog: &Catalog,
    key: &ResourceKey,
    spec: &WorkflowSpec,
    hardware: &ResourceKey,
) -> Result<Start, StoreError> {
    let template_key = ResourceKey {
        kind: Kind::Template,
        namespace: key.namespace.clone(),
        name: spec.template_ref.clone(),
    };
    let Some(template) = catalog.store().get(&template_key)? else {
        return Ok(Start::Blocked);
    };
    let Some(hardware) = catalog.store().get(hardware)? else {
        return Ok(Start::Blocked);
    };
    // A stored object that no longer decodes fails this workflow, not the machine's others.
    let hardware_key = hardware.key.clone();
    // Without a hardwareRef, Tinkerbell renders against an empty Hardware.
    let hardware_object = if spec.hardware_ref.is_empty() {
        serde_json::Value::Null
    } else {
        hardware.object.clone()
    };
    let decoded = template
        .spec::<TemplateSpec>()
        .map_err(|err| format!("{template_key} is unreadable: {err}"))
        .and_then(|template| {
            let hardware = hardware
                .spec::<HardwareSpec>()
                .map_err(|err| format!("{hardware_key} is unreadable: {err}"))?;
            Ok((template, hardware))
        });
    let (template, hardware) = match decoded {
        Ok(decoded) => decoded,
        Err(reason) => return Ok(Start::Refused(reason)),
    };
    let Some(data) = template.data.filter(|data| !data.is_empty()) else {
        return Ok(Start::Refused(format!(
            "template {:?} has no spec.data",
            spec.template_ref
        )));
    };
    let plan = crate::template::render(&data, &spec.hardware_map, &hardware_object)
        .map_err(|err| format!("template {:?} does not render: {err}", spec.template_ref))
        .and_then(|rendered| Plan::parse(&rendered).map_err(|err| err.to_string()))
        .and_then(|plan| own_tasks_only(catalog, plan, &hardware_key, &hardware));
    let mut status = match plan {
        Ok(plan) => WorkflowStatus::new(&plan),
        Err(reason) => return Ok(Start::Refused(reason)),
    };
    // With bootOptions, the BMC controller prepares the machine first, and says when it is done.
    if spec.boot_options.prepare() {
        let boot: BootStatus = catalog
            .store()
            .status(key)?
            .and_then(|status| serde_json::from_value(status).ok())
            .unwrap_or_default();
        if let Some(reason) = boot.preparation_failed {
            return Ok(Start::Refused(reason));
        }
        if !boot.prepared {
            status.state = State::Preparing;
            return Ok(Start::Preparing(status));
        }
    }
    Ok(Start::Ready(status))
}

/// A workflow runs on the machine its `hardwareRef` names: a task whose `worker` is the MAC of
/// another machine could never be run (that machine's worker is never given this workflow),
/// so it is refused up front rather than left waiting.
fn own_tasks_only(
    catalog: &Catalog,
    plan: Plan,
    key: &ResourceKey,
    hardware: &HardwareSpec,
) -> Result<Plan, String> {
    let own_agent = hardware
        .agent_id
        .as_deref()
        .filter(|agent| !agent.is_empty());
    for task in &plan.tasks {
        let other = match task.worker.parse::<MacAddr>() {
            Ok(worker) if hardware.macs().any(|mac| mac == worker) => None,
            Ok(worker) => Some(worker.to_string()),
            // Another Hardware's agentID is as much another machine as its MAC.
            Err(_) if own_agent != Some(task.worker.as_str()) && !task.worker.is_empty() => {
                let owners = catalog.agent_owners().map_err(|err| err.to_string())?;
                owners
                    .of(&task.worker)
                    .filter(|owner| owner != key)
                    .map(|_| task.worker.clone())
            }
            Err(_) => None,
        };
        if let Some(worker) = other {
            return Err(format!(
                "task {:?} names worker {worker}, which is another machine's, not {key}'s; a \
                 workflow runs on the machine its hardwareRef names",
                task.name
            ));
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        manifest::{Manifest, Problem},
        store::RedbStore,
    };

    const MAC: &str = "02:00:00:00:00:01";

    fn catalog(dir: &std::path::Path, worker: &str) -> Arc<Catalog> {
        let catalog = Arc::new(Catalog::new(Arc::new(RedbStore::open(dir).unwrap())));
        apply_demo(&catalog, worker);
        catalog
    }

    /// A machine `m`, and a workflow `w` of two actions for it (the first with a timeout of
    /// 5 s), its task naming `worker`.
    fn apply_demo(catalog: &Catalog, worker: &str) {
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
    }

    #[test]
    fn bootoptions_are_carried_out_for_the_machines_next_workflow_only() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog(dir.path(), MAC);
        // Two more workflows for the same machine: "a" sorts first, "z" after it.
        let mut manifest = Manifest::default();
        manifest.parse(
            "more.yaml",
            "apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata: {name: a, namespace: ns}
spec: {templateRef: t, hardwareRef: m, bootOptions: {toggleAllowNetboot: true}}
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata: {name: z, namespace: ns}
spec: {templateRef: t, hardwareRef: m, bootOptions: {toggleAllowNetboot: true}}
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata: {name: orphan, namespace: ns}
spec: {templateRef: t, hardwareRef: missing, bootOptions: {bootMode: netboot}}
",
        );
        assert!(manifest.errors.is_empty(), "{:?}", manifest.errors);
        catalog.apply(manifest.documents).unwrap();
        let engine = Engine::load(catalog).unwrap();
        let key = |name: &str| ResourceKey {
            kind: Kind::Workflow,
            namespace: "ns".into(),
            name: name.into(),
        };
        assert_eq!(engine.preparation(&key("a")).unwrap(), Preparation::Go);
        // The machine runs one workflow at a time: "z" waits its turn.
        assert_eq!(engine.preparation(&key("z")).unwrap(), Preparation::Wait);
        // Its hardware does not exist (yet): it waits, as the engine waits to start it.
        assert_eq!(
            engine.preparation(&key("orphan")).unwrap(),
            Preparation::Wait
        );
    }

    fn worker() -> WorkerIdentity {
        WorkerIdentity {
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

    /// The decision, once its writes are durable.
    fn durable<T>(decision: Decision<T>) -> (T, Change) {
        let (value, change, settled) = settle(decision);
        assert_eq!(
            settled,
            Settled::Stands,
            "the workflow exists, so its run is stored"
        );
        (value, change)
    }

    fn settle<T>(decision: Decision<T>) -> (T, Change, Settled) {
        let settled = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(decision.durable.wait())
            .unwrap();
        (decision.value, decision.change, settled)
    }

    #[test]
    fn appliances_sharing_etcd_hand_each_action_out_once_and_count_each_report_once() {
        let etcd = crate::store::conformance::Etcd::start();
        let appliance = || {
            let catalog = Arc::new(Catalog::new(Arc::new(etcd.store())));
            Engine::load(catalog).unwrap()
        };
        let (a, b) = (appliance(), appliance());
        apply_demo(a.catalog(), MAC);
        let current = |engine: &Engine| match next(engine) {
            Next::Run(assignment) => assignment.index,
            idle => panic!("{idle:?}"),
        };
        // A hands the first action out; B, asked by the same worker (it moved), hands out the
        // same one, still running, not the next.
        assert_eq!(current(&a), 0);
        assert_eq!(current(&b), 0);
        let stored = |engine: &Engine| {
            let run = engine
                .catalog()
                .store()
                .workflow_status(&workflow())
                .unwrap();
            run.expect("a run").status
        };
        durable(
            b.report(&worker(), &workflow(), &success(0), SystemTime::now())
                .unwrap(),
        );
        let reported = stored(&b).actions[0].clone();
        // A still keeps the first action running (it has no watch here), and decides from
        // that: its timeout of 5 s passed. Its write is stale, and the report stands.
        let late = SystemTime::now() + std::time::Duration::from_secs(3600);
        let (ended, _, settled) = settle(a.enforce_timeouts(late));
        assert_eq!((ended, settled), (1, Settled::Raced));
        assert_eq!(stored(&a).actions[0], reported);
        assert_eq!(
            a.status(&workflow()).map(|run| run.actions[0].state),
            Some(State::Success)
        );
        // Made again, the call decides from the store: nothing to end.
        assert_eq!(settle(a.enforce_timeouts(late)).0, 0);
        // The worker's retry of its report reaches A: counted once.
        durable(
            a.report(&worker(), &workflow(), &success(0), SystemTime::now())
                .unwrap(),
        );
        assert_eq!(stored(&a).actions[0], reported);
        assert_eq!(current(&a), 1);
        durable(
            b.report(&worker(), &workflow(), &success(1), SystemTime::now())
                .unwrap(),
        );
        assert_eq!(stored(&a).state, State::Success);
    }

    fn next(engine: &Engine) -> Next {
        durable(engine.next_action(&worker(), SystemTime::now()).unwrap()).0
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
        let engine = Engine::load(Arc::clone(&catalog)).unwrap();
        let index = |next: Next| match next {
            Next::Run(assignment) => Some(assignment.index),
            Next::Idle { .. } => None,
        };
        // Asked again before a report, the worker gets the same action.
        assert_eq!(index(next(&engine)), Some(0));
        let Next::Run(first) = next(&engine) else {
            panic!("an action")
        };
        assert_eq!((first.index, first.action.name.as_str()), (0, "one"));
        durable(
            engine
                .report(&worker(), &workflow(), &success(0), SystemTime::now())
                .unwrap(),
        );
        // A new engine on the same store: as after a daemon restart.
        drop(engine);
        let engine = Engine::load(Arc::clone(&catalog)).unwrap();
        let run = engine.status(&workflow()).unwrap();
        assert_eq!((run.state, run.done()), (State::Running, 1));
        let Next::Run(second) = next(&engine) else {
            panic!("the second action")
        };
        assert_eq!(second.index, 1);
        let ((), change) = durable(
            engine
                .report(&worker(), &workflow(), &success(1), SystemTime::now())
                .unwrap(),
        );
        assert!(change.finished);
        assert_eq!(
            next(&engine),
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
    fn workflows_applied_or_deleted_after_loading_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog(dir.path(), MAC);
        catalog.delete(&workflow()).unwrap();
        let engine = Engine::load(Arc::clone(&catalog)).unwrap();
        assert_eq!(
            next(&engine),
            Next::Idle {
                last_finished: None
            }
        );
        // Applied again while the engine runs: its machine is handed the first action.
        let mut manifest = Manifest::default();
        manifest.parse(
            "again.yaml",
            "apiVersion: tinkerbell.org/v1alpha1\nkind: Workflow\nmetadata: {name: w, namespace: ns}\n\
             spec: {templateRef: t, hardwareRef: m}\n",
        );
        catalog.apply(manifest.documents).unwrap();
        let Next::Run(first) = next(&engine) else {
            panic!("the re-applied workflow's first action")
        };
        assert_eq!(first.index, 0);
        catalog.delete(&workflow()).unwrap();
        engine.forget(&workflow());
        assert_eq!(
            next(&engine),
            Next::Idle {
                last_finished: None
            }
        );
    }

    /// Applies `yaml` to the catalog, which must take it.
    fn apply(catalog: &Catalog, yaml: &str) -> Vec<Problem> {
        let mut manifest = Manifest::default();
        manifest.parse("test.yaml", yaml);
        assert!(manifest.errors.is_empty(), "{:?}", manifest.errors);
        catalog.apply(manifest.documents).unwrap().warnings
    }

    #[test]
    fn a_workflow_without_hardware_ref_runs_on_the_owner_of_its_hardware_map_mac() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog(dir.path(), "{{.device_1}}");
        catalog.delete(&workflow()).unwrap();
        // Tinkerbell's own NewWorkflow case: no hardwareRef, the MAC in hardwareMap. It renders
        // against an empty Hardware, so `.Hardware` has nothing to give.
        apply(
            &catalog,
            &format!(
                "apiVersion: tinkerbell.org/v1alpha1\nkind: Workflow\nmetadata: {{name: w, namespace: ns}}\n\
                 spec: {{templateRef: t, hardwareMap: {{device_1: \"{MAC}\"}}}}\n"
            ),
        );
        let engine = Engine::load(Arc::clone(&catalog)).unwrap();
        let Next::Run(first) = next(&engine) else {
            panic!("the machine owning the MAC is given the workflow")
        };
        assert_eq!((first.workflow, first.index), (workflow(), 0));
        let binding = catalog
            .binding(&catalog.store().get(&workflow()).unwrap().unwrap())
            .unwrap();
        assert_eq!(binding.summary(), "Ready");
        // A MAC nobody owns binds to nothing, and says so.
        apply(
            &catalog,
            "apiVersion: tinkerbell.org/v1alpha1\nkind: Workflow\nmetadata: {name: lost, namespace: ns}\n\
             spec: {templateRef: t, hardwareMap: {device_1: \"02:00:00:00:00:77\"}}\n",
        );
        let lost = ResourceKey {
            name: "lost".into(),
            ..workflow()
        };
        let binding = catalog
            .binding(&catalog.store().get(&lost).unwrap().unwrap())
            .unwrap();
        assert_eq!(
            binding.summary(),
            "Blocked: no hardwareRef, and no Hardware's agent id (a MAC or its agentID) is in its \
             hardwareMap"
        );
    }

    #[test]
    fn what_tinkerbell_accepts_but_cannot_run_is_the_workflows_state() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog(dir.path(), MAC);
        catalog.delete(&workflow()).unwrap();
        // A Template without data, and a Workflow whose template needs a key it lacks: both
        // are accepted, each Workflow with a warning that says why it cannot run.
        let warnings = apply(
            &catalog,
            "apiVersion: tinkerbell.org/v1alpha1\nkind: Template\nmetadata: {name: empty, namespace: ns}\nspec: {}\n\
             ---\napiVersion: tinkerbell.org/v1alpha1\nkind: Workflow\nmetadata: {name: w, namespace: ns}\n\
             spec: {templateRef: empty, hardwareRef: m}\n\
             ---\napiVersion: tinkerbell.org/v1alpha1\nkind: Template\nmetadata: {name: needs, namespace: ns}\n\
             spec: {data: \"tasks: [{name: t, worker: '{{.device_9}}', actions: [{name: a, image: i}]}]\"}\n\
             ---\napiVersion: tinkerbell.org/v1alpha1\nkind: Workflow\nmetadata: {name: needs, namespace: ns}\n\
             spec: {templateRef: needs, hardwareRef: m}\n",
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].to_string().contains("has no spec.data"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[1].to_string().contains("device_9"),
            "{}",
            warnings[1]
        );
        let engine = Engine::load(Arc::clone(&catalog)).unwrap();
        // The machine's workflows run in name order; each fails with its reason.
        for (name, reason) in [("needs", "device_9"), ("w", "has no spec.data")] {
            let (next, _) = durable(engine.next_action(&worker(), SystemTime::now()).unwrap());
            assert_eq!(
                next,
                Next::Idle {
                    last_finished: Some(State::Failed)
                }
            );
            let key = ResourceKey {
                name: name.into(),
                ..workflow()
            };
            let run = engine.status(&key).unwrap();
            assert!(run.message.contains(reason), "{name}: {}", run.message);
        }
    }

    #[test]
    fn reports_from_another_machine_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog(dir.path(), MAC);
        let engine = Engine::load(Arc::clone(&catalog)).unwrap();
        next(&engine);
        let mut stranger = worker();
        stranger.hardware.name = "other".into();
        let Err(err) = engine.report(&stranger, &workflow(), &success(0), SystemTime::now()) else {
            panic!("a report from another machine is refused")
        };
        assert!(matches!(err, EngineError::NotYours { .. }), "{err}");
        assert_eq!(engine.status(&workflow()).unwrap().done(), 0);
    }

    #[test]
    fn a_task_for_another_machine_fails_the_workflow_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog(dir.path(), "02:00:00:00:00:99");
        let engine = Engine::load(Arc::clone(&catalog)).unwrap();
        let (next, change) = durable(engine.next_action(&worker(), SystemTime::now()).unwrap());
        assert!(change.finished);
        assert_eq!(
            next,
            Next::Idle {
                last_finished: Some(State::Failed)
            }
        );
        let run = engine.status(&workflow()).unwrap();
        assert!(
            run.message
                .contains("names worker 02:00:00:00:00:99, which is another machine's"),
            "{}",
            run.message
        );
    }
}
