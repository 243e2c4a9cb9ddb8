//! Runs Tinkerbell's BMC kinds, as its BMC controller (formerly Rufio) does, with what a
//! rack-scale rollout needs besides:
//! - each Job runs on a task of its own, and BMC requests on the blocking pool, so a dead BMC
//!   holds up only its own Job;
//! - a request that finds no BMC is tried again with backoff, a bounded number of times;
//! - a provider that fails hands over to the next in `preferredOrder`, and the Task's message
//!   names each one's error;
//! - a power action waits until the machine reaches the state it asked for, up to
//!   `bmc-power-timeout`;
//! - a Job or Task in flight when the daemon stopped is resumed from the Task it was on;
//! - each power change, done by a Task or seen by a poll, is an event of the machines whose
//!   Hardware names the BMC.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use workflow::{
    manifest::Origin,
    resource::{
        self,
        bmc::{Connection, PowerAction, PowerState, Provider, Step},
        JobSpec, Kind, MachineSpec, ResourceKey, SecretData, TaskSpec, WorkflowSpec,
    },
};

use super::{
    ipmi::Ipmitool,
    provider::{Bmc, BmcError, Credentials},
    redfish::Redfish,
    status::{Ended, MachineStatus, RunStatus},
};
use crate::{events::EventKind, state::AppState};

/// The label Tinkerbell puts on a Job's Tasks, naming the Job.
const OWNER_LABEL: &str = "owner-name";
/// How often the controller looks for new Jobs and Tasks, and for Machines due a poll.
const TICK: Duration = Duration::from_secs(1);
/// Tries of one request that finds no BMC, and the wait before the first retry (it doubles).
const TRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How often a power action checks whether the machine got there.
const POWER_CHECK: Duration = Duration::from_secs(2);
/// BMC requests in flight at once: ipmitool is a process each.
const CONCURRENT_REQUESTS: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How often each Machine's power state is read.
    pub poll_interval: Duration,
    /// How long a power action may take to reach its state.
    pub power_timeout: Duration,
}

pub struct Controller {
    pub(super) state: Arc<AppState>,
    settings: Settings,
    /// What has a runner now: a Job, a Task run on its own, a Machine being polled.
    busy: Mutex<HashSet<ResourceKey>>,
    /// When each Machine was last polled, and at which version of it.
    polled: Mutex<HashMap<ResourceKey, (u64, Instant)>>,
    requests: Semaphore,
}

/// Releases a claim on drop, so that a runner that fails still frees its resource.
struct Claim(Arc<Controller>, ResourceKey);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl Controller {
    pub fn new(state: Arc<AppState>, settings: Settings) -> Arc<Controller> {
        Arc::new(Controller {
            state,
            settings,
            busy: Mutex::default(),
            polled: Mutex::default(),
            requests: Semaphore::new(CONCURRENT_REQUESTS),
        })
    }

    fn claim(self: &Arc<Self>, key: &ResourceKey) -> Option<Claim> {
        let fresh = self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        fresh.then(|| Claim(Arc::clone(self), key.clone()))
    }

    /// Looks for work every second, for as long as the daemon runs.
    pub async fn run(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(TICK);
        let mut seen_revision = None;
        let mut resources = Vec::new();
        loop {
            ticks.tick().await;
            // Jobs and Tasks appear only with a change to the store; Machines come due with time.
            let revision = self
                .blocking(|state| state.catalog().store().revision())
                .await;
            if revision.as_ref().ok() != seen_revision.as_ref() {
                match self.blocking(list_bmc_resources).await {
                    Ok(listed) => {
                        resources = listed;
                        seen_revision = revision.ok();
                    }
                    Err(err) => tracing::error!("listing BMC resources: {err}"),
                }
            }
            for resource in &resources {
                self.start_due(resource).await;
            }
        }
    }

    async fn start_due(self: &Arc<Self>, resource: &resource::Resource) {
        let key = &resource.key;
        match key.kind {
            Kind::Machine => {
                let due = match self
                    .polled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(key)
                {
                    Some((version, at)) => {
                        *version != resource.version || at.elapsed() >= self.settings.poll_interval
                    }
                    None => true,
                };
                if due {
                    if let Some(claim) = self.claim(key) {
                        let controller = Arc::clone(self);
                        let version = resource.version;
                        tokio::spawn(async move {
                            controller.poll_machine(&claim.1).await;
                            controller
                                .polled
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(claim.1.clone(), (version, Instant::now()));
                        });
                    }
                }
            }
            Kind::Job | Kind::Task => {
                // A Job's Tasks are run by the Job.
                let owned = resource.object["metadata"]["labels"][OWNER_LABEL].is_string();
                if key.kind == Kind::Task && owned {
                    return;
                }
                let ended = match self.run_status(key).await {
                    Ok(status) => status.ended().is_some(),
                    Err(err) => {
                        tracing::error!(resource = %key, "reading its status: {err}");
                        return;
                    }
                };
                if ended {
                    return;
                }
                if let Some(claim) = self.claim(key) {
                    let controller = Arc::clone(self);
                    tokio::spawn(async move {
                        match claim.1.kind {
                            Kind::Job => controller.run_job(&claim.1).await,
                            _ => drop(controller.run_task(&claim.1).await),
                        }
                    });
                }
            }
            Kind::Workflow => {
                if let Some(claim) = self.claim(key) {
                    let controller = Arc::clone(self);
                    tokio::spawn(async move { controller.boot_options_pass(&claim.1).await });
                }
            }
            _ => {}
        }
    }

    /// Runs `work` on the blocking pool (the store's calls block).
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&AppState) -> T + Send + 'static,
    ) -> T {
        let state = Arc::clone(&self.state);
        tokio::task::spawn_blocking(move || work(&state))
            .await
            .expect("a store call panicked")
    }

    pub(super) async fn status_of<S: DeserializeOwned + Default>(
        &self,
        key: &ResourceKey,
    ) -> Result<S, String> {
        let key = key.clone();
        let status = self
            .blocking(move |state| state.catalog().store().status(&key))
            .await
            .map_err(|err| err.to_string())?;
        Ok(status
            .and_then(|status| serde_json::from_value(status).ok())
            .unwrap_or_default())
    }

    async fn run_status(&self, key: &ResourceKey) -> Result<RunStatus, String> {
        self.status_of(key).await
    }

    pub(super) async fn put_status(&self, key: &ResourceKey, status: &impl Serialize) {
        let (key, status) = (
            key.clone(),
            serde_json::to_value(status).unwrap_or(Value::Null),
        );
        let what = key.to_string();
        match self
            .blocking(move |state| state.catalog().store().put_status(&key, &status))
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::debug!(resource = what, "deleted while it ran"),
            Err(err) => tracing::error!(resource = what, "storing its status: {err}"),
        }
    }

    pub(super) async fn get<S: DeserializeOwned>(
        &self,
        key: &ResourceKey,
    ) -> Result<Option<(resource::Resource, S)>, String> {
        let key = key.clone();
        let found = self
            .blocking(move |state| state.catalog().store().get(&key))
            .await
            .map_err(|err| err.to_string())?;
        found
            .map(|resource| {
                let spec = resource.spec().map_err(|err| err.to_string())?;
                Ok((resource, spec))
            })
            .transpose()
    }

    async fn run_job(self: &Arc<Self>, key: &ResourceKey) {
        let mut status = match self.run_status(key).await {
            Ok(status) => status,
            Err(err) => return tracing::error!(job = %key, "reading its status: {err}"),
        };
        // It may have ended between the tick's look and this runner's claim.
        if status.ended().is_some() {
            return;
        }
        status.start(true);
        self.put_status(key, &status).await;
        let ended = self.job_outcome(key).await;
        match &ended {
            Ended::Completed => tracing::info!(job = %key, "BMC job completed"),
            Ended::Failed(message) => tracing::warn!(job = %key, "BMC job failed: {message}"),
        }
        status.end(&ended);
        self.put_status(key, &status).await;
    }

    async fn job_outcome(self: &Arc<Self>, key: &ResourceKey) -> Ended {
        let job: JobSpec = match self.get(key).await {
            Ok(Some((_, job))) => job,
            Ok(None) => return Ended::Failed("the Job was deleted".into()),
            Err(err) => return Ended::Failed(err),
        };
        let machine_key = ResourceKey {
            kind: Kind::Machine,
            namespace: job.machine_ref.namespace.clone(),
            name: job.machine_ref.name.clone(),
        };
        let machine = match self.get::<MachineSpec>(&machine_key).await {
            Ok(Some((resource, _))) => resource,
            Ok(None) => {
                return Ended::Failed(format!(
                    "machine {}/{} not found",
                    machine_key.namespace, machine_key.name
                ))
            }
            Err(err) => return Ended::Failed(err),
        };
        for (index, action) in job.tasks.iter().enumerate() {
            let task = ResourceKey {
                kind: Kind::Task,
                namespace: key.namespace.clone(),
                name: format!("{}-task-{index}", key.name),
            };
            let exists = matches!(self.get::<TaskSpec>(&task).await, Ok(Some(_)));
            if !exists {
                // The Secret is found where the Machine finds it, whatever the Job's namespace.
                let mut connection = machine.object["spec"]["connection"].clone();
                if connection["authSecretRef"]["namespace"]
                    .as_str()
                    .is_none_or(str::is_empty)
                {
                    connection["authSecretRef"]["namespace"] = json!(machine_key.namespace);
                }
                let object = json!({
                    "apiVersion": resource::bmc::API_VERSION,
                    "kind": "Task",
                    "metadata": {
                        "name": task.name,
                        "namespace": task.namespace,
                        "labels": {OWNER_LABEL: key.name},
                        "ownerReferences": [{
                            "apiVersion": resource::bmc::API_VERSION,
                            "kind": "Job",
                            "name": key.name,
                            "controller": true,
                        }],
                    },
                    "spec": {"task": action, "connection": connection},
                });
                if let Err(err) = self.create(object).await {
                    return Ended::Failed(format!(
                        "failed to create Task {}/{}: {err}",
                        task.namespace, task.name
                    ));
                }
            }
            match self.run_task(&task).await {
                Ended::Completed => {}
                Ended::Failed(message) => {
                    return Ended::Failed(format!(
                        "task {}/{} failed: {message}",
                        task.namespace, task.name
                    ))
                }
            }
        }
        // The machine's power state changed: read it now rather than at the next poll.
        self.polled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&machine_key);
        Ended::Completed
    }

    pub(super) async fn create(&self, object: Value) -> Result<(), String> {
        let decoded = resource::decode(object).map_err(|err| err.to_string())?;
        self.blocking(move |state| {
            let origin = Origin {
                file: "the BMC controller".into(),
                doc: 1,
            };
            state.catalog().apply(vec![(origin, decoded)]).map(drop)
        })
        .await
        .map_err(|err| err.to_string())
    }

    /// Runs a Task to its end (or returns how it ended before).
    async fn run_task(&self, key: &ResourceKey) -> Ended {
        let mut status = match self.run_status(key).await {
            Ok(status) => status,
            Err(err) => return Ended::Failed(err),
        };
        if let Some(ended) = status.ended() {
            return ended;
        }
        status.start(false);
        self.put_status(key, &status).await;
        let (ended, message) = match self.task_outcome(key).await {
            Ok(message) => (Ended::Completed, message),
            Err(message) => (Ended::Failed(message), String::new()),
        };
        status.end(&ended);
        // A status action says what it read, beside Tinkerbell's empty message.
        status.note(&message);
        self.put_status(key, &status).await;
        ended
    }

    /// What the Task found (the power state, for a status action), or why it failed.
    async fn task_outcome(&self, key: &ResourceKey) -> Result<String, String> {
        let task: TaskSpec = match self.get(key).await? {
            Some((_, task)) => task,
            None => return Err("the Task was deleted".into()),
        };
        let step = task.task.step("spec.task").map_err(|err| err.to_string())?;
        let connection = task
            .connection
            .ok_or("spec.connection is required for a Task that no Job created")?;
        let bmcs = self.bmcs(&connection, &key.namespace).await?;
        let mut errors = Vec::new();
        for bmc in bmcs {
            match self.perform(&bmc, &step).await {
                Ok(found) => {
                    if let Step::Power(action) = step {
                        if action != PowerAction::Status {
                            let message = format!(
                                "power {} through {} (Task {})",
                                action.as_str(),
                                bmc.provider().name(),
                                key.name
                            );
                            let on = PowerSeenOn::Host(connection.host.clone());
                            self.power_event(&key.namespace, on, message).await;
                        }
                    }
                    return Ok(found);
                }
                Err(Attempt::Final(message)) => {
                    errors.push(format!("{}: {message}", bmc.provider().name()));
                    break;
                }
                Err(Attempt::NextProvider(message)) => {
                    errors.push(format!("{}: {message}", bmc.provider().name()))
                }
            }
        }
        Err(errors.join("; "))
    }

    /// The providers to try, in order, with the credentials of the connection's Secret.
    async fn bmcs(
        &self,
        connection: &Connection,
        namespace: &str,
    ) -> Result<Vec<Arc<dyn Bmc>>, String> {
        let reference = &connection.auth_secret_ref;
        // Tinkerbell leaves an empty namespace empty; Wisp takes the resource's own.
        let secret_key = ResourceKey {
            kind: Kind::Secret,
            namespace: if reference.namespace.is_empty() {
                namespace.to_string()
            } else {
                reference.namespace.clone()
            },
            name: reference.name.clone(),
        };
        let named = format!("secret {}/{}", secret_key.namespace, secret_key.name);
        let found = {
            let secret_key = secret_key.clone();
            self.blocking(move |state| state.catalog().store().get(&secret_key))
                .await
                .map_err(|err| err.to_string())?
        };
        let secret = match found {
            Some(resource) => {
                SecretData::of(&resource.object).map_err(|err| format!("{named}: {err}"))?
            }
            None => return Err(format!("{named} not found")),
        };
        let credentials = Credentials {
            username: secret
                .text("username")
                .map_err(|err| format!("{named} {err}"))?,
            password: secret
                .text("password")
                .map_err(|err| format!("{named} {err}"))?,
        };
        let options = connection.provider_options.clone().unwrap_or_default();
        Ok(options
            .order()
            .into_iter()
            .map(|provider| -> Arc<dyn Bmc> {
                match provider {
                    Provider::Ipmitool => {
                        let ipmitool = options.ipmitool.clone().unwrap_or_default();
                        Arc::new(Ipmitool {
                            host: connection.host.clone(),
                            port: ipmitool.port.unwrap_or(connection.port),
                            credentials: credentials.clone(),
                            cipher_suite: ipmitool.cipher_suite.unwrap_or_else(|| "3".into()),
                        })
                    }
                    Provider::Redfish => {
                        let redfish = options.redfish.clone().unwrap_or_default();
                        Arc::new(Redfish::new(
                            &connection.host,
                            redfish.port.unwrap_or(443),
                            credentials.clone(),
                            connection.insecure_tls,
                            redfish.use_basic_auth,
                            redfish.system_name,
                        ))
                    }
                }
            })
            .collect())
    }

    /// One BMC request, on the blocking pool, tried again with backoff while no BMC answers.
    async fn request<T: Send + 'static>(
        &self,
        bmc: &Arc<dyn Bmc>,
        call: impl Fn(&dyn Bmc) -> Result<T, BmcError> + Send + Sync + Clone + 'static,
    ) -> Result<T, BmcError> {
        self.request_with(bmc, call, true).await
    }

    /// A request that must not be done twice (a cycle, a reset): tried again only while it
    /// cannot have reached the BMC.
    async fn request_once<T: Send + 'static>(
        &self,
        bmc: &Arc<dyn Bmc>,
        call: impl Fn(&dyn Bmc) -> Result<T, BmcError> + Send + Sync + Clone + 'static,
    ) -> Result<T, BmcError> {
        self.request_with(bmc, call, false).await
    }

    async fn request_with<T: Send + 'static>(
        &self,
        bmc: &Arc<dyn Bmc>,
        call: impl Fn(&dyn Bmc) -> Result<T, BmcError> + Send + Sync + Clone + 'static,
        idempotent: bool,
    ) -> Result<T, BmcError> {
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = {
                let _permit = self.requests.acquire().await.expect("never closed");
                let (bmc, call) = (Arc::clone(bmc), call.clone());
                tokio::task::spawn_blocking(move || call(&*bmc))
                    .await
                    .unwrap_or_else(|_| Err(BmcError::Refused("the request panicked".into())))
            };
            let retry = match &outcome {
                Err(BmcError::Unreachable(_)) => true,
                Err(BmcError::Uncertain(_)) => idempotent,
                _ => false,
            };
            match outcome {
                Err(_) if retry && tries < TRIES => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(BmcError::Unreachable(message)) => {
                    return Err(BmcError::Unreachable(format!("{message}, {tries} tries")))
                }
                other => return other,
            }
        }
    }

    /// Does `step` through `bmc`; a power action waits for the machine to get there. Returns
    /// what a status action read.
    async fn perform(&self, bmc: &Arc<dyn Bmc>, step: &Step) -> Result<String, Attempt> {
        let failed = |err: BmcError| Attempt::NextProvider(err.to_string());
        match step.clone() {
            Step::Power(PowerAction::Status) => self
                .request(bmc, |bmc| bmc.power_state())
                .await
                .map(|state| format!("power is {}", state.as_str()))
                .map_err(failed),
            Step::Power(action @ (PowerAction::Cycle | PowerAction::Reset)) => {
                match self.request_once(bmc, move |bmc| bmc.power(action)).await {
                    Ok(()) => Ok(String::new()),
                    // It may have been done: neither repeated nor handed to another provider.
                    Err(err @ BmcError::Uncertain(_)) => Err(Attempt::Final(format!(
                        "{err}; power {} may have been carried out, and is not repeated",
                        action.as_str()
                    ))),
                    Err(err) => Err(failed(err)),
                }
            }
            Step::Power(action) => {
                self.request(bmc, move |bmc| bmc.power(action))
                    .await
                    .map_err(failed)?;
                let Some(target) = action.target() else {
                    return Ok(String::new());
                };
                let deadline = Instant::now() + self.settings.power_timeout;
                loop {
                    match self.request(bmc, |bmc| bmc.power_state()).await {
                        Ok(state) if state == target => return Ok(String::new()),
                        Ok(_) | Err(_) if Instant::now() >= deadline => {
                            // The BMC took the request: another provider would not do better.
                            return Err(Attempt::Final(format!(
                                "the BMC accepted power {} but the machine was not {} after {} s",
                                action.as_str(),
                                target.as_str(),
                                self.settings.power_timeout.as_secs()
                            )));
                        }
                        _ => tokio::time::sleep(POWER_CHECK).await,
                    }
                }
            }
            Step::BootDevice {
                device,
                persistent,
                efi_boot,
            } => self
                .request(bmc, move |bmc| {
                    bmc.boot_device(device, persistent, efi_boot)
                })
                .await
                .map(|()| String::new())
                .map_err(failed),
            Step::VirtualMedia { kind, url } => self
                .request(bmc, move |bmc| bmc.virtual_media(&kind, url.as_deref()))
                .await
                .map(|()| String::new())
                .map_err(failed),
        }
    }

    async fn poll_machine(&self, key: &ResourceKey) {
        let Ok(Some((_, machine))) = self.get::<MachineSpec>(key).await else {
            return;
        };
        let mut status: MachineStatus = self.status_of(key).await.unwrap_or_default();
        let outcome = match self.bmcs(&machine.connection, &key.namespace).await {
            Err(message) => Err(message),
            Ok(bmcs) => {
                let mut errors = Vec::new();
                let mut found = None;
                for bmc in bmcs {
                    match self.request(&bmc, |bmc| bmc.power_state()).await {
                        Ok(state) => {
                            found = Some(state);
                            break;
                        }
                        Err(err) => errors.push(format!("{}: {err}", bmc.provider().name())),
                    }
                }
                found.ok_or_else(|| format!("get power state: {}", errors.join("; ")))
            }
        };
        if let Err(message) = &outcome {
            tracing::warn!(machine = %key, "BMC not contactable: {message}");
        }
        let was = status.power_state;
        status.polled(outcome);
        if was != status.power_state && status.power_state != Some(PowerState::Unknown) {
            tracing::info!(machine = %key, power = ?status.power_state, "power state");
            // A change between on and off: not the first look, nor a BMC that answers again.
            let known = |state: Option<PowerState>| state.filter(|s| *s != PowerState::Unknown);
            if let Some(now) = known(status.power_state).filter(|_| known(was).is_some()) {
                let message = format!("power is {} (BMC {})", now.as_str(), key.name);
                let on = PowerSeenOn::Machine(key.name.clone());
                self.power_event(&key.namespace, on, message).await;
            }
        }
        self.put_status(key, &status).await;
    }

    /// Records a power change as an event of each machine whose Hardware names the BMC
    /// (`spec.bmcRef`).
    async fn power_event(&self, namespace: &str, on: PowerSeenOn, message: String) {
        let namespace = namespace.to_string();
        let macs = self
            .blocking(move |state| -> Result<Vec<resource::MacAddr>, String> {
                let store = state.catalog().store();
                let bmc_machines: Vec<String> = match on {
                    PowerSeenOn::Machine(name) => vec![name],
                    PowerSeenOn::Host(host) => store
                        .list(Kind::Machine)
                        .map_err(|err| err.to_string())?
                        .into_iter()
                        .filter(|machine| machine.key.namespace == namespace)
                        .filter(|machine| {
                            machine
                                .spec::<MachineSpec>()
                                .is_ok_and(|spec| spec.connection.host == host)
                        })
                        .map(|machine| machine.key.name)
                        .collect(),
                };
                let hardware: HashSet<ResourceKey> = state
                    .catalog()
                    .hardware()
                    .map_err(|err| err.to_string())?
                    .into_iter()
                    .filter(|(key, spec)| {
                        key.namespace == namespace
                            && spec
                                .bmc_ref
                                .as_ref()
                                .is_some_and(|bmc| bmc_machines.contains(&bmc.name))
                    })
                    .map(|(key, _)| key)
                    .collect();
                let table = state.machines.current();
                Ok(table
                    .iter()
                    .filter(|machine| hardware.contains(&machine.hardware))
                    .map(|machine| machine.mac)
                    .collect())
            })
            .await;
        match macs {
            Ok(macs) => {
                for mac in macs {
                    self.state
                        .events
                        .record(mac, EventKind::Power, message.clone());
                }
            }
            Err(err) => tracing::warn!("finding the machines behind a BMC: {err}"),
        }
    }
}

/// Where a power change was seen: on a BMC Machine, or (a Task names only its connection) on
/// a BMC's host.
enum PowerSeenOn {
    Machine(String),
    Host(String),
}

/// A provider's failure: try the next one, or stop here.
enum Attempt {
    NextProvider(String),
    Final(String),
}

/// Machines, Jobs, Tasks, and the Workflows that have bootOptions.
fn list_bmc_resources(
    state: &AppState,
) -> Result<Vec<resource::Resource>, workflow::store::StoreError> {
    let store = state.catalog().store();
    let mut all = store.list(Kind::Machine)?;
    all.extend(store.list(Kind::Job)?);
    all.extend(store.list(Kind::Task)?);
    all.extend(store.list(Kind::Workflow)?.into_iter().filter(|workflow| {
        workflow
            .spec::<WorkflowSpec>()
            .is_ok_and(|spec| spec.boot_options.prepare())
    }));
    Ok(all)
}
