//! A rack of simulated machines, powered on together, each doing over the wire, from its own
//! MAC and address, what a real one does: its boot ([`boot`]: the firmware's DHCP, TFTP of the
//! iPXE binary, iPXE's DHCP, its script, whose kernel command line carries the boot's token,
//! and the kernel and initramfs), and then what `wisp-worker` does over its own HTTP/2
//! connection: GetAction, a RUNNING report and a SUCCESS report per action, until Wisp answers
//! NOT_FOUND. An action that names an image (`IMG_URL`, as image2disk's does) downloads it.
//!
//! Run inside the network namespace the machines' addresses are in (`cargo xtask
//! bench-workers` and `cargo xtask bench-rack` for the benchmarks; a thread that entered the
//! namespace in the rack page's browser test). In the benchmarks actions take no time, so the
//! server is what is measured; [`Rack::pace`] makes them take a while, print lines and say how
//! far they are, as a rollout an operator watches does.
pub mod boot;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context};
pub use boot::{pxe_discover, tftp_get, Depth, Stage, TftpOptions};
use boot::{Booted, DhcpSegment};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
    Code, Request,
};
use wisp_proto::{
    output::{action_output_client::ActionOutputClient, AppendRequest, Progress},
    workflow_service_client::WorkflowServiceClient,
    ActionMessage, ActionRequest, ActionResponse, ActionStatusRequest, StateType,
};

const WORKER_API_PORT: u16 = 42113;
/// How long one simulated machine may take for its whole workflow.
const WORKER_DEADLINE: Duration = Duration::from_secs(600);
/// What a failing machine's second action prints, and its report says.
pub const FAILURE: &str = "Did not have sfdisk or sgdisk in PATH";
/// The size of the image a paced machine's first action says it streams.
pub const IMAGE_BYTES: u64 = 2 << 30;

#[derive(Clone, Debug)]
pub struct Machine {
    pub mac: String,
    pub address: Ipv4Addr,
    /// Its second action fails, printing [`FAILURE`].
    pub fails: bool,
}

pub struct Rack {
    /// Wisp's address: boot HTTP on 8080, the worker API on 42113.
    pub server: Ipv4Addr,
    /// The interface the machines' DHCP goes out of.
    pub interface: String,
    pub machines: Vec<Machine>,
    /// How long each action takes; with it, actions print lines and the first says how far it
    /// is streaming an image. None: no time, nothing printed.
    pub pace: Option<Duration>,
    /// How far each machine boots.
    pub depth: Depth,
    pub workflows: Workflows,
}

/// When the machines run their workflows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workflows {
    /// Not at all: the boot is all (a server with no worker API).
    None,
    /// All at once, once every machine has booted, so that the worker API alone is measured.
    Together,
    /// Each as soon as its machine has booted, as in a real rack.
    AsEachBoots,
}

/// How the rack's workflows went.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// From the first GetAction to the last machine's end (booting is not counted).
    pub seconds: f64,
    /// From power-on to the last machine's end.
    pub seconds_from_power_on: f64,
    /// Each stage's time, in seconds, for every machine that went through it.
    pub stages: BTreeMap<Stage, Vec<f64>>,
    /// DHCP messages the machines sent again for want of an answer.
    pub dhcp_retransmissions: u64,
    pub actions: u64,
    /// Calls retried after a transient failure.
    pub retries: u64,
    /// Machines whose boot failed, or whose workflow did not end as they meant it to.
    pub failed_workers: u64,
}

/// The resources for `machines` in `namespace`, in applies of at most `per_apply` machines:
/// a template of `actions` first (the first writing the image at `image_url` to disk, when
/// there is one, as image2disk does), then each machine's Hardware (at its address, with
/// `netmask`) and Workflow.
pub fn manifests(
    namespace: &str,
    machines: &[Machine],
    netmask: &str,
    actions: &[&str],
    image_url: Option<&str>,
    per_apply: usize,
) -> Vec<String> {
    let steps: String = actions
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let environment = match image_url {
                Some(url) if index == 0 => {
                    format!(", environment: {{IMG_URL: \"{url}\", DEST_DISK: /dev/sda}}")
                }
                _ => String::new(),
            };
            format!("          - {{name: {name}, image: simulated/{name}, timeout: 600{environment}}}\n")
        })
        .collect();
    let mut applies = vec![format!(
        "apiVersion: tinkerbell.org/v1alpha1\nkind: Template\nmetadata: {{name: rollout, namespace: {namespace}}}\n\
         spec:\n  data: |\n    version: \"0.1\"\n    name: rollout\n    global_timeout: 3600\n    tasks:\n\
         \x20     - name: provision\n        worker: \"{{{{.device_1}}}}\"\n        actions:\n{steps}"
    )];
    for (index, machine) in machines.iter().enumerate() {
        if index % per_apply.max(1) == 0 {
            applies.push(String::new());
        }
        let Machine { mac, address, .. } = machine;
        let yaml = applies.last_mut().expect("an apply");
        yaml.push_str(&format!(
            "---\napiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata: {{name: node-{index}, namespace: {namespace}}}\n\
             spec:\n  interfaces:\n    - dhcp: {{mac: \"{mac}\", ip: {{address: {address}, netmask: {netmask}}}}}\n\
             \x20     netboot: {{allowPXE: true, allowWorkflow: true}}\n\
             ---\napiVersion: tinkerbell.org/v1alpha1\nkind: Workflow\nmetadata: {{name: wf-{index}, namespace: {namespace}}}\n\
             spec: {{templateRef: rollout, hardwareRef: node-{index}, hardwareMap: {{device_1: \"{mac}\"}}}}\n"
        ));
    }
    applies
}

/// Powers every machine on at once; each boots, and then runs its workflow as
/// [`Rack::workflows`] says, to its end.
pub fn run(rack: &Rack) -> anyhow::Result<Outcome> {
    // Ten thousand connections need more than the usual soft limit of 1024 descriptors.
    rlimit::increase_nofile_limit(u64::MAX)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run_rack(rack))
}

/// What one machine's task ends with: its stages, whatever failed, and when it ended.
struct MachineRun {
    stages: Vec<(Stage, Duration)>,
    failure: Option<anyhow::Error>,
}

async fn run_rack(rack: &Rack) -> anyhow::Result<Outcome> {
    let segment = DhcpSegment::open(&rack.interface)?;
    let counts = Arc::new(Counts::default());
    let powered_on = Instant::now();
    // With `Together`, every machine waits here until all have booted.
    let all_booted = Arc::new(tokio::sync::Barrier::new(rack.machines.len()));
    let first_get_action = Arc::new(std::sync::OnceLock::new());
    let tasks: Vec<_> = rack
        .machines
        .iter()
        .cloned()
        .map(|machine| {
            let (segment, counts) = (Arc::clone(&segment), Arc::clone(&counts));
            let (all_booted, first_get_action) =
                (Arc::clone(&all_booted), Arc::clone(&first_get_action));
            let (server, pace, depth, workflows) =
                (rack.server, rack.pace, rack.depth, rack.workflows);
            tokio::spawn(async move {
                let mac = machine.mac.clone();
                let booted = boot_machine(&segment, &machine, depth).await;
                if workflows == Workflows::Together {
                    all_booted.wait().await;
                }
                let Booted { token, mut stages } = match booted {
                    Ok(booted) => booted,
                    Err(failure) => {
                        return MachineRun {
                            stages: Vec::new(),
                            failure: Some(failure.context(format!("{mac}: its boot"))),
                        }
                    }
                };
                let failure = match (workflows, token) {
                    (Workflows::None, _) => None,
                    (_, None) => Some(anyhow::anyhow!("{mac}: its script carries no token")),
                    (_, Some(token)) => {
                        let started = Instant::now();
                        first_get_action.get_or_init(|| started);
                        let worker = simulated_worker(server, machine, &token, pace, &counts);
                        // A stuck call fails the run instead of hanging it.
                        match tokio::time::timeout(WORKER_DEADLINE, worker).await {
                            Ok(Ok(())) => {
                                stages.push((Stage::Workflow, started.elapsed()));
                                None
                            }
                            Ok(Err(err)) => Some(err),
                            Err(_) => Some(anyhow::anyhow!(
                                "{mac}: not done within {WORKER_DEADLINE:?}"
                            )),
                        }
                    }
                };
                MachineRun { stages, failure }
            })
        })
        .collect();
    let mut outcome = Outcome {
        seconds: 0.0,
        seconds_from_power_on: 0.0,
        stages: BTreeMap::new(),
        dhcp_retransmissions: 0,
        actions: 0,
        retries: 0,
        failed_workers: 0,
    };
    for task in tasks {
        let run = task.await?;
        for (stage, took) in run.stages {
            outcome
                .stages
                .entry(stage)
                .or_default()
                .push(took.as_secs_f64());
        }
        if let Some(failure) = run.failure {
            outcome.failed_workers += 1;
            if outcome.failed_workers <= 3 {
                eprintln!("simulated machine: {failure:#}");
            }
        }
    }
    outcome.seconds_from_power_on = powered_on.elapsed().as_secs_f64();
    outcome.seconds = first_get_action
        .get()
        .map_or(0.0, |first| first.elapsed().as_secs_f64());
    outcome.dhcp_retransmissions = segment.retransmissions.load(Ordering::Relaxed);
    outcome.actions = counts.actions.load(Ordering::Relaxed);
    outcome.retries = counts.retries.load(Ordering::Relaxed);
    Ok(outcome)
}

async fn boot_machine(
    segment: &DhcpSegment,
    machine: &Machine,
    depth: Depth,
) -> anyhow::Result<Booted> {
    let mut mac = [0u8; 6];
    let bytes: Vec<u8> = machine
        .mac
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("the MAC {}", machine.mac))?;
    if bytes.len() != 6 {
        bail!("the MAC {} is not 6 bytes", machine.mac);
    }
    mac.copy_from_slice(&bytes);
    boot::boot(segment, &mac, machine.address, depth).await
}

/// A connection to Wisp from a machine's own address.
async fn connect_from(
    address: Ipv4Addr,
    server: Ipv4Addr,
    port: u16,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((address, 0)))?;
    socket.connect(SocketAddr::from((server, port))).await
}

/// What the simulated machines count.
#[derive(Default)]
struct Counts {
    actions: AtomicU64,
    retries: AtomicU64,
}

/// Calls until the call succeeds or fails for good; transient failures (as `wisp-worker` judges
/// them) are retried after a pause, and counted.
async fn with_retries<T, F, Call>(counts: &Counts, mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Call,
    Call: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        match call().await {
            Err(status) if wisp_proto::transient(status.code()) => {
                counts.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            outcome => return outcome,
        }
    }
}

fn request<T>(bearer: &MetadataValue<Ascii>, body: T) -> Request<T> {
    let mut request = Request::new(body);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

/// One machine's worker: its actions to the end of its workflow, which must end as the machine
/// means it to (SUCCESS, or FAILED for a machine that fails).
async fn simulated_worker(
    server: Ipv4Addr,
    machine: Machine,
    token: &str,
    pace: Option<Duration>,
    counts: &Counts,
) -> anyhow::Result<()> {
    let (mac, address) = (machine.mac.as_str(), machine.address);
    // Lazy, as in `wisp-worker`: a failed connection shows as UNAVAILABLE, which is retried.
    let channel = Endpoint::from_shared(format!("http://{server}:{WORKER_API_PORT}"))?
        .connect_timeout(Duration::from_secs(60))
        .connect_with_connector_lazy(tower::service_fn(move |_| async move {
            connect_from(address, server, WORKER_API_PORT)
                .await
                .map(TokioIo::new)
        }));
    let client = WorkflowServiceClient::new(channel.clone());
    let bearer = MetadataValue::try_from(format!("Bearer {token}"))?;
    let expected = if machine.fails { "FAILED" } else { "SUCCESS" };
    loop {
        let asked = with_retries(counts, || {
            let mut client = client.clone();
            let body = ActionRequest {
                agent_id: Some(mac.to_string()),
                agent_attributes: None,
            };
            let request = request(&bearer, body);
            async move { client.get_action(request).await }
        })
        .await;
        let action = match asked {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::NotFound => {
                let state = status.metadata().get(wisp_proto::WORKFLOW_STATE_KEY);
                if state.and_then(|v| v.to_str().ok()) == Some(expected) {
                    return Ok(());
                }
                bail!("{mac}: no action, and no {expected} workflow: {status:?}");
            }
            Err(status) => bail!("{mac}: GetAction: {status}"),
        };
        let fails = machine.fails && action.action_id() == "1";
        let (state, message) = if fails {
            (
                StateType::Failed,
                Some(format!("exit status: 2: {FAILURE}")),
            )
        } else {
            (StateType::Success, None)
        };
        for (state, message) in [(StateType::Running, None), (state, message)] {
            if state != StateType::Running {
                if let Some(image) = image_url(&action) {
                    boot::http_get(address, image, false)
                        .await
                        .with_context(|| format!("{mac}: {}", action.name()))?;
                }
                if let Some(pace) = pace {
                    work(&channel, &bearer, mac, &action, pace, fails).await;
                }
            }
            let body = ActionStatusRequest {
                message: message.map(|message| ActionMessage {
                    message: Some(message),
                }),
                ..ActionStatusRequest::about(&action, mac, state, SystemTime::now(), None)
            };
            with_retries(counts, || {
                let mut client = client.clone();
                let request = request(&bearer, body.clone());
                async move { client.report_action_status(request).await }
            })
            .await
            .with_context(|| format!("{mac}: reporting {}", action.name()))?;
        }
        counts.actions.fetch_add(1, Ordering::Relaxed);
    }
}

/// The image an action writes to disk (image2disk's `IMG_URL`), if it names one.
fn image_url(action: &ActionResponse) -> Option<&str> {
    action
        .environment
        .iter()
        .find_map(|variable| variable.strip_prefix("IMG_URL="))
}

/// A paced action: half its time, a line and (for the first action) half the image written,
/// then the rest. What it sends is best effort, as `wisp-worker`'s output is.
async fn work(
    channel: &Channel,
    bearer: &MetadataValue<Ascii>,
    mac: &str,
    action: &ActionResponse,
    pace: Duration,
    fails: bool,
) {
    let mut output = ActionOutputClient::new(channel.clone());
    let streams = action.action_id() == "0";
    let halves = [
        (format!("{}: working", action.name()), IMAGE_BYTES / 2),
        (
            if fails {
                FAILURE.to_string()
            } else {
                format!("{}: done", action.name())
            },
            IMAGE_BYTES,
        ),
    ];
    for (first_line, (line, bytes)) in (0..).zip(halves) {
        let body = AppendRequest {
            workflow_id: action.workflow_id().to_string(),
            agent_id: mac.to_string(),
            action_id: action.action_id().to_string(),
            first_line,
            lines: vec![line],
            progress: streams.then(|| Progress {
                bytes,
                total: IMAGE_BYTES,
                bytes_per_second: IMAGE_BYTES / pace.as_secs().max(1),
            }),
        };
        let _ = output.append(request(bearer, body)).await;
        tokio::time::sleep(pace / 2).await;
    }
}
