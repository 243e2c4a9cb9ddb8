//! `wisp-worker`, the worker agent that runs in the provisioning OS: it asks Wisp's worker API for its
//! machine's next action, runs it with its environment and timeout, and reports each one:
//! running, then success, failure (with the error) or timeout. While an action runs, what it
//! prints and how far it is go to Wisp too (`wisp.v1.ActionOutput`).
pub mod actions;
pub mod output;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use tonic::{metadata::MetadataValue, transport::Channel, Code, Request};

use actions::{ActionError, Succeeded};
use output::Output;
use wisp_proto::{
    output::{action_output_client::ActionOutputClient, AppendRequest},
    transient,
    workflow_service_client::WorkflowServiceClient,
    ActionRequest, ActionResponse, ActionStatusRequest, StateType, WORKFLOW_STATE_KEY,
};

/// How often a running action's output goes to Wisp.
const OUTPUT_PERIOD: Duration = Duration::from_millis(500);
/// How long the output an action left is given to reach Wisp before its report goes.
const OUTPUT_FLUSH: Duration = Duration::from_secs(5);

pub struct Config {
    /// `http://<wisp>:42113`: the appliance that booted the machine first, then the others
    /// sharing its store. A call that one does not answer goes to the next.
    pub endpoints: Vec<String>,
    /// This machine's MAC.
    pub agent_id: String,
    /// The machine's token from the kernel command line (`wisp.token=`), when it has one.
    pub token: Option<String>,
    /// How long to wait between asks while there is nothing to do.
    pub poll: Duration,
}

/// How a session of the agent ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    /// It ran actions, and then there were none left: the workflow succeeded.
    WorkflowDone,
    /// An action failed or timed out; the workflow has ended without success.
    ActionFailed,
    /// A reboot action asked for a reboot (after its success was reported).
    Reboot,
    /// A kexec action loaded a kernel, to be started (after its success was reported).
    Kexec,
}

pub struct Agent {
    config: Config,
    /// One thread of its own, which sends the output while the action runs on this one.
    runtime: tokio::runtime::Runtime,
    /// One channel per endpoint, and the one calls go to.
    channels: Vec<Channel>,
    current: Arc<AtomicUsize>,
}

impl Agent {
    pub fn connect(config: Config) -> anyhow::Result<Agent> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        // Lazy: the first call connects, and a server that restarts is reconnected to. The
        // channel's background task starts on the runtime, so build it inside.
        let _inside = runtime.enter();
        anyhow::ensure!(!config.endpoints.is_empty(), "no worker API to call");
        let mut channels = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let channel = Channel::from_shared(endpoint.clone())?
                .connect_timeout(Duration::from_secs(5))
                // An appliance that went silent mid-call is given up on, for the next.
                .timeout(Duration::from_secs(30))
                .connect_lazy();
            channels.push(channel);
        }
        Ok(Agent {
            config,
            runtime,
            channels,
            current: Arc::default(),
        })
    }

    fn client(&self) -> WorkflowServiceClient<Channel> {
        WorkflowServiceClient::new(self.channels[self.current.load(Ordering::Relaxed)].clone())
    }

    /// After a call that did not get through: the next call goes to the next appliance.
    fn move_on(&self) {
        if self.channels.len() > 1 {
            let next = (self.current.load(Ordering::Relaxed) + 1) % self.channels.len();
            tracing::warn!(
                endpoint = self.config.endpoints[next],
                "trying the next appliance"
            );
            self.current.store(next, Ordering::Relaxed);
        }
    }

    /// The addresses of the appliances, which serve the same files (image2disk fetches from
    /// the next when the one its URL names stops answering).
    fn appliance_hosts(&self) -> Vec<String> {
        self.config
            .endpoints
            .iter()
            .filter_map(|endpoint| {
                let authority = endpoint
                    .split_once("://")
                    .map_or(endpoint.as_str(), |(_, rest)| rest);
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority, |(host, _)| host);
                Some(host.trim_end_matches('/').to_string()).filter(|host| !host.is_empty())
            })
            .collect()
    }

    fn request<T>(&self, body: T) -> Request<T> {
        authorized(self.config.token.as_deref(), body)
    }

    /// Starts sending what `action` prints and how far it is; what is left is sent when the
    /// returned sender fires (or is dropped), and the task ends.
    fn ship_output(
        &self,
        action: &ActionResponse,
        output: Output,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (finish, mut finished) = tokio::sync::oneshot::channel::<()>();
        let (channels, current) = (self.channels.clone(), Arc::clone(&self.current));
        let token = self.config.token.clone();
        let ids = (
            action.workflow_id().to_string(),
            self.config.agent_id.clone(),
            action.action_id().to_string(),
        );
        let shipper = self.runtime.spawn(async move {
            let mut last = false;
            while !last {
                tokio::select! {
                    _ = tokio::time::sleep(OUTPUT_PERIOD) => {}
                    _ = &mut finished => last = true,
                }
                let Some(batch) = output.batch() else {
                    continue;
                };
                let (workflow_id, agent_id, action_id) = ids.clone();
                let body = AppendRequest {
                    workflow_id,
                    agent_id,
                    action_id,
                    first_line: batch.first,
                    lines: batch.lines.clone(),
                    progress: batch.progress,
                };
                let channel = channels[current.load(Ordering::Relaxed)].clone();
                let mut client = ActionOutputClient::new(channel);
                match client.append(authorized(token.as_deref(), body)).await {
                    Ok(_) => output.sent(&batch),
                    // Tinkerbell's server, which has no such call: the console has it all.
                    Err(status) if status.code() == Code::Unimplemented => return,
                    // Kept for the next try; the calls that matter move to the next appliance.
                    Err(status) => tracing::debug!("sending the action's output: {status}"),
                }
            }
        });
        (finish, shipper)
    }

    /// Asks for the next action until there is one, or until the server says how the
    /// workflow ended. Connection errors and server restarts are waited out.
    fn next_action(&mut self, ran_any: bool) -> anyhow::Result<Result<ActionResponse, Finished>> {
        loop {
            let request = self.request(ActionRequest {
                agent_id: Some(self.config.agent_id.clone()),
                agent_attributes: None,
            });
            let mut client = self.client();
            match self.runtime.block_on(client.get_action(request)) {
                Ok(response) => return Ok(Ok(response.into_inner())),
                Err(status) if status.code() == Code::NotFound => {
                    let ended = status
                        .metadata()
                        .get(WORKFLOW_STATE_KEY)
                        .and_then(|value| value.to_str().ok());
                    match ended {
                        Some("SUCCESS") => return Ok(Err(Finished::WorkflowDone)),
                        Some(state) => {
                            tracing::error!("the workflow ended {state}");
                            return Ok(Err(Finished::ActionFailed));
                        }
                        None if ran_any => {
                            anyhow::bail!(
                                "the workflow is gone (deleted or disabled) before it finished"
                            )
                        }
                        None => tracing::debug!("no action yet: {}", status.message()),
                    }
                }
                Err(status)
                    if matches!(
                        status.code(),
                        Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
                    ) =>
                {
                    anyhow::bail!("the worker API refused this agent: {}", status.message());
                }
                Err(status) => {
                    tracing::warn!("asking for an action: {status}");
                    if transient(status.code()) {
                        self.move_on();
                    }
                }
            }
            std::thread::sleep(self.config.poll);
        }
    }

    fn report(
        &self,
        action: &ActionResponse,
        state: StateType,
        started: SystemTime,
        message: String,
    ) -> anyhow::Result<()> {
        let body = ActionStatusRequest::about(
            action,
            &self.config.agent_id,
            state,
            started,
            Some(message),
        );
        // A report must arrive: retried, with backoff, for as long as the server is away or
        // failing; only a refusal ends it.
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut client = self.client();
            match self
                .runtime
                .block_on(client.report_action_status(self.request(body.clone())))
            {
                Ok(_) => return Ok(()),
                Err(status) if transient(status.code()) => {
                    tracing::warn!("reporting {}: {status}; retrying", action.name());
                    self.move_on();
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(status) => anyhow::bail!("reporting {}: {}", action.name(), status.message()),
            }
        }
    }

    /// Runs the machine's workflow to its end.
    pub fn run(&mut self) -> anyhow::Result<Finished> {
        let mut ran_any = false;
        loop {
            let action = match self.next_action(ran_any)? {
                Ok(action) => action,
                Err(finished) => return Ok(finished),
            };
            ran_any = true;
            let started = SystemTime::now();
            tracing::info!(
                workflow = action.workflow_id(),
                action = action.name(),
                image = action.image(),
                "running"
            );
            self.report(&action, StateType::Running, started, "started".into())?;
            let environment: BTreeMap<String, String> = action
                .environment
                .iter()
                .filter_map(|pair| pair.split_once('='))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect();
            // No limit for 0, and none for a limit too large to count to.
            let deadline = u64::try_from(action.timeout())
                .ok()
                .filter(|&seconds| seconds > 0)
                .and_then(|seconds| Instant::now().checked_add(Duration::from_secs(seconds)));
            let output = Output::default();
            let (finish_output, shipper) = self.ship_output(&action, output.clone());
            let invocation = actions::Invocation {
                image: action.image().to_string(),
                command: action.command.clone(),
                volumes: action.volumes.clone(),
                environment,
                network: action
                    .namespaces
                    .as_ref()
                    .map(|namespaces| namespaces.network().to_string())
                    .filter(|network| !network.is_empty()),
                pid: Some(action.pid().to_string()).filter(|pid| !pid.is_empty()),
                deadline,
                appliances: self.appliance_hosts(),
                output,
            };
            let (state, message, finished) = match actions::run(&invocation) {
                Ok(Succeeded::Done(message)) => (StateType::Success, message, None),
                Ok(Succeeded::Reboot) => (
                    StateType::Success,
                    "rebooting".into(),
                    Some(Finished::Reboot),
                ),
                Ok(Succeeded::Kexec) => (
                    StateType::Success,
                    "kexec into the installed kernel".into(),
                    Some(Finished::Kexec),
                ),
                Err(ActionError::TimedOut) => (
                    StateType::Timeout,
                    format!("timed out after {} s", action.timeout()),
                    Some(Finished::ActionFailed),
                ),
                Err(ActionError::Failed(message)) => {
                    (StateType::Failed, message, Some(Finished::ActionFailed))
                }
            };
            tracing::info!(
                action = action.name(),
                state = state.as_str_name(),
                message,
                "finished"
            );
            // What an action reported done is on the disk: once the last report is in, Wisp
            // may power-cycle the machine (a workflow's bootOptions) without losing a write.
            nix::unistd::sync();
            // Its output first, so that what `wisp logs` shows is whole once the report is in.
            let _ = finish_output.send(());
            let stop = shipper.abort_handle();
            let flushed = self
                .runtime
                .block_on(async { tokio::time::timeout(OUTPUT_FLUSH, shipper).await });
            if flushed.is_err() {
                stop.abort();
            }
            self.report(&action, state, started, message)?;
            if let Some(finished) = finished {
                return Ok(finished);
            }
        }
    }
}

/// A call's request, with the machine's token when it has one.
fn authorized<T>(token: Option<&str>, body: T) -> Request<T> {
    let mut request = Request::new(body);
    if let Some(token) = token {
        if let Ok(value) = MetadataValue::try_from(format!("Bearer {token}")) {
            request.metadata_mut().insert("authorization", value);
        }
    }
    request
}
