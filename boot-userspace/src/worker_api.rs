//! The worker API: Tinkerbell's `proto.WorkflowService` over gRPC, so that Wisp's worker and
//! Tinkerbell's own agent can both fetch their actions and report on them; and beside it Wisp's
//! `wisp.v1.ActionOutput`, through which Wisp's worker sends what its actions print and how
//! far they are.
//!
//! A worker is identified as the metadata service identifies a machine ([`crate::identity`]):
//! by its source address and its token (`authorization: Bearer <token>`). The `agent_id` it
//! sends must be a MAC of that same machine, so a worker gets only its own machine's actions and
//! cannot report on another machine's workflow.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tonic::{Code, Request, Response, Status};
use wisp_proto::{
    output::{
        action_output_server::{ActionOutput, ActionOutputServer},
        AppendRequest, AppendResponse,
    },
    workflow_service_server::{WorkflowService, WorkflowServiceServer},
    ActionRequest, ActionResponse, ActionStatusRequest, ActionStatusResponse, Namespaces,
    StateType, WORKFLOW_STATE_KEY,
};
use workflow::{
    engine::{Assignment, Decision, EngineError, Next, Settled, WorkerIdentity},
    resource::{Kind, MacAddr, ResourceKey},
    run::{Report, ReportError, State},
    store::Boot,
};

use crate::{
    action_output::{ActionKey, Progress},
    events::EventKind,
    identity::{self, Refusal},
    metrics::{StateLabels, WorkerCallLabels},
    net::{ConnectionLimits, ConnectionSlots},
    state::AppState,
};

/// The connections tonic serves: those within the limits, with TCP keepalive on, so that the
/// kernel also reaps a connection whose machine is gone while no call is in flight.
fn limited(
    listener: tokio::net::TcpListener,
    limits: ConnectionLimits,
    keepalive: Duration,
) -> impl futures_util::Stream<Item = std::io::Result<Limited>> {
    futures_util::stream::unfold((listener, limits), move |(listener, limits)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of descriptors, most likely: wait for connections to close rather than
                // spin (as boot HTTP does).
                Err(err) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return Some((Err(err), (listener, limits)));
                }
            };
            let slots = match limits.admit(peer) {
                Ok(slots) => slots,
                Err(why) => {
                    tracing::debug!(%peer, "worker API connection refused: {why}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let probes = socket2::TcpKeepalive::new()
                .with_time(keepalive)
                .with_interval(keepalive / 4)
                .with_retries(4);
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&probes);
            let connection = Limited {
                stream,
                _slots: slots,
            };
            return Some((Ok(connection), (listener, limits)));
        }
    })
}

/// A worker API connection, holding its slots until it closes.
struct Limited {
    stream: tokio::net::TcpStream,
    _slots: ConnectionSlots,
}

impl tonic::transport::server::Connected for Limited {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for Limited {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Limited {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Worker API connections at once, and from one address: a machine's worker needs one.
const MAX_CONNECTIONS: usize = 16_384;
const MAX_CONNECTIONS_PER_ADDRESS: usize = 8;
/// Calls at once on one connection; the worker makes one at a time.
const MAX_CALLS_PER_CONNECTION: usize = 16;
/// The longest a call may take: each answers at once from memory or after one store commit.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct WorkerApi {
    pub state: Arc<AppState>,
    /// How long a connection may go unused before a keepalive probe, and how long the probe's
    /// answer may take: a machine that was hard-reset leaves a half-open connection behind.
    pub connection_timeout: Duration,
}

impl WorkerApi {
    pub async fn serve(self, address: SocketAddr) -> anyhow::Result<()> {
        tracing::info!("worker API (gRPC) listening on {address}");
        let listener = crate::net::listen_tcp(address)
            .with_context(|| format!("binding the worker API to {address}"))?;
        let timeout = self.connection_timeout;
        let incoming = limited(
            listener,
            ConnectionLimits::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS),
            timeout,
        );
        let api = Arc::new(self);
        tonic::transport::Server::builder()
            .timeout(CALL_TIMEOUT)
            .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
            .http2_keepalive_interval(Some(timeout))
            .http2_keepalive_timeout(Some(timeout))
            .add_service(WorkflowServiceServer::from_arc(Arc::clone(&api)))
            .add_service(ActionOutputServer::from_arc(api))
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    }

    /// The machine calling, and the MAC it names itself by, which must be one of its own; and
    /// the boot, when it called with the token of a boot that has ended, which only
    /// `ended_boot_ok` lets through (to learn how its workflow ended).
    fn worker<T>(
        &self,
        request: &Request<T>,
        agent_id: &str,
        ended_boot_ok: bool,
    ) -> Result<(WorkerIdentity, Option<Boot>), Status> {
        let source = request
            .remote_addr()
            .ok_or_else(|| Status::internal("the caller's address is unknown"))?;
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let machines = self.state.machines.current();
        let identified = identity::identify(
            &machines,
            &self.state.tokens,
            self.state.machine_identity,
            source.ip(),
            token,
        );
        let (caller, ended) = match identified {
            Ok(caller) => (caller, None),
            Err(refusal) => {
                // A good token of a boot that ended, from the machine's own address.
                let ended_machine = match &refusal {
                    Refusal::EndedBoot(mac, boot) if ended_boot_ok => machines
                        .get(mac)
                        .filter(|machine| {
                            machine.address.is_none_or(|reserved| {
                                source.ip() == std::net::IpAddr::V4(reserved)
                            })
                        })
                        .map(|machine| (Arc::clone(machine), *boot)),
                    _ => None,
                };
                match ended_machine {
                    Some((machine, boot)) => (machine, Some(boot)),
                    None if refusal.unauthenticated() => {
                        return Err(Status::unauthenticated(refusal.to_string()))
                    }
                    None => return Err(Status::permission_denied(refusal.to_string())),
                }
            }
        };
        // A Hardware's `spec.agentID` names its agent, as Smee's `worker_id=` gives it;
        // otherwise the agent goes by one of the machine's MACs.
        let mac: MacAddr = if caller.agent_id.as_deref() == Some(agent_id) {
            caller.mac
        } else {
            agent_id.parse().map_err(|err| {
                Status::invalid_argument(format!(
                    "agent_id {agent_id:?} is neither the Hardware's agentID nor a MAC address: {err}"
                ))
            })?
        };
        if machines
            .get(&mac)
            .is_none_or(|machine| machine.hardware != caller.hardware)
        {
            return Err(Status::permission_denied(format!(
                "agent {mac} is not a MAC of {}, the machine calling",
                caller.hardware
            )));
        }
        let worker = WorkerIdentity {
            hardware: caller.hardware.clone(),
            mac,
        };
        Ok((worker, ended))
    }

    /// Runs an engine call off the async threads (it may read the store), and answers once its
    /// changes are durable. A finished workflow is no longer pending work, so the boot path is
    /// brought up to date before the worker hears of it (and reboots).
    ///
    /// With appliances sharing a store, another may change the run between this one's read
    /// and its write: the call is then made again, deciding from the run as stored.
    async fn engine<T: Send + 'static>(
        &self,
        call: impl Fn(&AppState) -> Result<Decision<T>, EngineError> + Send + Sync + 'static,
    ) -> Result<T, Status> {
        let call = Arc::new(call);
        let mut tries = 0;
        let (value, change) = loop {
            tries += 1;
            let (state, call) = (Arc::clone(&self.state), Arc::clone(&call));
            let decision = tokio::task::spawn_blocking(move || call(&state))
                .await
                .map_err(|err| Status::internal(err.to_string()))?
                .map_err(engine_status)?;
            let Decision {
                value,
                change,
                durable,
            } = decision;
            match durable.wait().await {
                Ok(Settled::Stands) => break (value, change),
                Ok(Settled::WorkflowGone) => {
                    return Err(Status::not_found("the workflow was deleted meanwhile"));
                }
                Ok(Settled::Raced) if tries < RACED_TRIES => {}
                Ok(Settled::Raced) => {
                    return Err(Status::unavailable(
                        "other appliances kept changing the workflow's run; try again",
                    ));
                }
                Err(err) => {
                    tracing::error!("storing a workflow change failed: {err}");
                    self.state.reload_runs().await;
                    return Err(engine_status(err.into()));
                }
            }
        };
        if change.finished {
            if let Err(err) = self.state.sync_hardware_coalesced().await {
                tracing::error!("syncing Hardware after a workflow finished: {err:#}");
            }
        }
        Ok(value)
    }
}

/// How many times a call is made when another appliance changed its run first.
const RACED_TRIES: u32 = 5;

fn engine_status(err: EngineError) -> Status {
    let message = err.to_string();
    match err {
        EngineError::NotFound(_) => Status::not_found(message),
        EngineError::NotYours { .. } => Status::permission_denied(message),
        EngineError::Report {
            error: ReportError::BadState(_),
            ..
        } => Status::invalid_argument(message),
        EngineError::Report { .. } => Status::failed_precondition(message),
        EngineError::Store(_) | EngineError::Commit(_) => Status::internal(message),
    }
}

/// The most of a report's message that is kept: it is stored with the run, returned by every
/// `get`, and logged, and a worker decides its length.
const MAX_REPORT_MESSAGE: usize = 4096;

/// `message`, cut to [`MAX_REPORT_MESSAGE`] bytes (on a character boundary) with a note that
/// it was.
fn capped(message: &str) -> String {
    if message.len() <= MAX_REPORT_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_REPORT_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … ({} bytes cut)", &message[..end], message.len() - end)
}

fn workflow_key(id: &str) -> Result<ResourceKey, Status> {
    match id.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Ok(ResourceKey {
            kind: Kind::Workflow,
            namespace: namespace.into(),
            name: name.into(),
        }),
        _ => Err(Status::invalid_argument(format!(
            "workflow_id {id:?} is not namespace/name"
        ))),
    }
}

/// The action for the agent that asked as `agent_id`, which the response names back (the
/// machine's MAC, or its Hardware's `agentID`), as Tinkerbell's does.
fn response(agent_id: &str, assignment: Assignment) -> ActionResponse {
    let Assignment {
        workflow,
        index,
        action,
    } = assignment;
    ActionResponse {
        workflow_id: Some(format!("{}/{}", workflow.namespace, workflow.name)),
        task_id: Some(action.task),
        agent_id: Some(agent_id.to_string()),
        action_id: Some(index.to_string()),
        name: Some(action.name),
        image: Some(action.image),
        timeout: Some(i64::try_from(action.timeout).unwrap_or(i64::MAX)),
        command: action.command,
        volumes: action.volumes,
        environment: action.environment,
        pid: Some(action.pid),
        namespaces: (!action.namespaces.is_empty()).then_some(Namespaces {
            network: Some(action.namespaces.network),
            pid: Some(action.namespaces.pid),
        }),
    }
}

impl WorkerApi {
    /// Awaits a call's answer and counts it by method and status code.
    async fn counted<T>(
        &self,
        method: &str,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let result = call.await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.state
            .metrics
            .worker_calls
            .get_or_create(&WorkerCallLabels {
                method: method.into(),
                code: format!("{code:?}"),
            })
            .inc();
        result
    }

    async fn next_action(&self, request: Request<ActionRequest>) -> Result<ActionResponse, Status> {
        let (worker, boot_ended) = self.worker(&request, request.get_ref().agent_id(), true)?;
        let for_engine = worker.clone();
        let assignment = if let Some(boot) = boot_ended {
            // A worker whose boot ended (its workflow is over) learns how it ended, and
            // nothing more: a workflow applied since is for the machine's next boot, and one
            // that ended before this boot is not this boot's.
            let hardware = worker.hardware.clone();
            let state = Arc::clone(&self.state);
            let since = self.state.tokens.started(boot);
            let last_finished =
                tokio::task::spawn_blocking(move || state.engine.last_finished(&hardware, since))
                    .await
                    .map_err(|err| Status::internal(err.to_string()))?
                    .map_err(engine_status)?;
            Next::Idle { last_finished }
        } else {
            self.engine(move |state| state.engine.next_action(&for_engine, SystemTime::now()))
                .await?
        };
        match assignment {
            Next::Run(assignment) => {
                self.state.outputs.handed_out(
                    ActionKey {
                        workflow: format!(
                            "{}/{}",
                            assignment.workflow.namespace, assignment.workflow.name
                        ),
                        action: u32::try_from(assignment.index).unwrap_or(u32::MAX),
                    },
                    worker.hardware.clone(),
                );
                tracing::info!(
                    workflow = %assignment.workflow,
                    action = assignment.action.name,
                    worker = %worker.mac,
                    "action handed out"
                );
                self.state.events.record(
                    worker.mac,
                    EventKind::ActionHandedOut,
                    format!(
                        "{}/{}: action {:?} handed out",
                        assignment.workflow.namespace,
                        assignment.workflow.name,
                        assignment.action.name
                    ),
                );
                Ok(response(request.get_ref().agent_id(), *assignment))
            }
            Next::Idle { last_finished } => {
                let message = format!(
                    "no action for {}: it has no running or pending workflow",
                    worker.mac
                );
                // Tinkerbell's protocol has no "done": this tells Wisp's worker how the
                // workflow it was running ended, so that it reboots only after a success.
                let mut metadata = tonic::metadata::MetadataMap::new();
                if let Some(state) = last_finished {
                    metadata.insert(
                        WORKFLOW_STATE_KEY,
                        tonic::metadata::MetadataValue::from_static(state.as_str()),
                    );
                }
                Err(Status::with_metadata(Code::NotFound, message, metadata))
            }
        }
    }

    async fn report(&self, request: Request<ActionStatusRequest>) -> Result<State, Status> {
        let body = request.get_ref();
        let (worker, _) = self.worker(&request, body.agent_id(), false)?;
        let workflow = workflow_key(body.workflow_id())?;
        let action: usize = body.action_id().parse().map_err(|_| {
            Status::invalid_argument(format!(
                "action_id {:?} is not an action index",
                body.action_id()
            ))
        })?;
        let state = match body.action_state() {
            StateType::Running => State::Running,
            StateType::Success => State::Success,
            StateType::Failed => State::Failed,
            StateType::Timeout => State::Timeout,
            other => {
                return Err(Status::invalid_argument(format!(
                    "action_state {} is not a state a worker reports",
                    other.as_str_name()
                )))
            }
        };
        let report = Report {
            action,
            state,
            message: body
                .message
                .as_ref()
                .map(|message| capped(message.message()))
                .unwrap_or_default(),
        };
        tracing::info!(
            %workflow,
            action = body.action_name(),
            state = %report.state,
            message = report.message,
            "action reported"
        );
        self.state.events.record(
            worker.mac,
            EventKind::ActionReported,
            format!(
                "{}/{}: action {:?} {}{}{}",
                workflow.namespace,
                workflow.name,
                body.action_name(),
                report.state,
                if report.message.is_empty() { "" } else { ": " },
                report.message
            ),
        );
        let for_engine = workflow.clone();
        let reported = report.state;
        self.engine(move |state| {
            state
                .engine
                .report(&worker, &for_engine, &report, SystemTime::now())
        })
        .await?;
        if reported.is_final() {
            self.state.outputs.ended(&ActionKey {
                workflow: body.workflow_id().to_string(),
                action: u32::try_from(action).unwrap_or(u32::MAX),
            });
        }
        Ok(reported)
    }
}

impl WorkerApi {
    /// Keeps what an action printed and how far it is, for its own machine's workflow only.
    async fn keep_output(&self, request: Request<AppendRequest>) -> Result<(), Status> {
        let body = request.get_ref();
        let (worker, _) = self.worker(&request, &body.agent_id, false)?;
        let workflow = workflow_key(&body.workflow_id)?;
        let action: u32 = body.action_id.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "action_id {:?} is not an action index",
                body.action_id
            ))
        })?;
        if body.lines.len() > MAX_OUTPUT_LINES_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{} lines in one call; at most {MAX_OUTPUT_LINES_PER_CALL}",
                body.lines.len()
            )));
        }
        if body
            .first_line
            .checked_add(body.lines.len() as u64)
            .is_none()
        {
            return Err(Status::invalid_argument(format!(
                "first_line {} is past the last line an action can print",
                body.first_line
            )));
        }
        let key = ActionKey {
            workflow: body.workflow_id.clone(),
            action,
        };
        // Known from its handing out; else (handed out before a restart, or by another
        // appliance) as the engine has it.
        if !self.state.outputs.runs_on(&key, &worker.hardware) {
            let state = Arc::clone(&self.state);
            let (of, hardware) = (workflow, worker.hardware.clone());
            let index = usize::try_from(action).unwrap_or(usize::MAX);
            let running = tokio::task::spawn_blocking(move || {
                let running = state.engine.status(&of).is_some_and(|run| {
                    run.actions
                        .get(index)
                        .is_some_and(|action| action.state == State::Running)
                });
                Ok::<_, workflow::store::StoreError>(
                    running && state.engine.is_workflow_of(&of, &hardware)?,
                )
            })
            .await
            .map_err(|err| Status::internal(err.to_string()))?
            .map_err(|err| engine_status(err.into()))?;
            if !running {
                return Err(Status::failed_precondition(format!(
                    "action {action} of workflow {} is not running on {}",
                    body.workflow_id, worker.hardware
                )));
            }
            self.state
                .outputs
                .runs(key.clone(), worker.hardware.clone());
        }
        self.state
            .outputs
            .append(&key, body.first_line, &body.lines);
        if let Some(progress) = &body.progress {
            self.state.outputs.set_progress(
                key,
                Progress {
                    bytes: progress.bytes,
                    total: Some(progress.total).filter(|&total| total > 0),
                    bytes_per_second: progress.bytes_per_second,
                    at_ms: crate::journal::now_ms(),
                },
            );
        }
        Ok(())
    }
}

/// Lines in one `Append`, at most: a worker sends what gathered in half a second, at most
/// 2,000 lines.
const MAX_OUTPUT_LINES_PER_CALL: usize = 10_000;

#[tonic::async_trait]
impl ActionOutput for WorkerApi {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        self.counted("Append", self.keep_output(request))
            .await
            .map(|()| Response::new(AppendResponse {}))
    }
}

#[tonic::async_trait]
impl WorkflowService for WorkerApi {
    async fn get_action(
        &self,
        request: Request<ActionRequest>,
    ) -> Result<Response<ActionResponse>, Status> {
        self.counted("GetAction", self.next_action(request))
            .await
            .map(Response::new)
    }

    async fn report_action_status(
        &self,
        request: Request<ActionStatusRequest>,
    ) -> Result<Response<ActionStatusResponse>, Status> {
        let state = self
            .counted("ReportActionStatus", self.report(request))
            .await?;
        self.state
            .metrics
            .action_reports
            .get_or_create(&StateLabels {
                state: state.to_string(),
            })
            .inc();
        Ok(Response::new(ActionStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_messages_are_capped_on_a_character_boundary() {
        assert_eq!(capped("exit status 2"), "exit status 2");
        let long = "é".repeat(5000); // two bytes each
        let cut = capped(&long);
        assert!(cut.starts_with(&"é".repeat(2048)), "whole characters kept");
        assert!(
            cut.ends_with(" … (5904 bytes cut)"),
            "{}",
            &cut[cut.len() - 30..]
        );
    }
}
