//! A rack of simulated machines, each doing over the wire, from its own MAC and address, what a
//! real one does with Wisp: its DHCP (the firmware's, then the iPXE's Wisp chainloads), its iPXE
//! script (for the token of that boot, which the provisioning OS finds on its kernel command
//! line), and then what `wisp-worker` does over its own HTTP/2 connection: GetAction, a
//! RUNNING report and a SUCCESS report per action, until Wisp answers NOT_FOUND.
//!
//! Run inside the network namespace the machines' addresses are in (`cargo xtask
//! bench-workers` for the workflow benchmark; a thread that entered the namespace in the rack
//! page's browser test). In the benchmark actions take no time, so the server is what is
//! measured; [`Rack::pace`] makes them take a while, print lines and say how far they are, as
//! a rollout an operator watches does.
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context};
use dhcproto::{v4, Encodable, Encoder};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
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

const BOOT_HTTP_PORT: u16 = 8080;
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
}

/// How the rack's workflows went.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// From the first GetAction to the last machine's end (booting is not counted).
    pub seconds: f64,
    pub actions: u64,
    /// Calls retried after a transient failure.
    pub retries: u64,
    /// Machines whose workflow did not end as they meant it to.
    pub failed_workers: u64,
}

/// The resources for `machines` in `namespace`, in applies of at most `per_apply` machines:
/// a template of `actions` first, then each machine's Hardware (at its address, with
/// `netmask`) and Workflow.
pub fn manifests(
    namespace: &str,
    machines: &[Machine],
    netmask: &str,
    actions: &[&str],
    per_apply: usize,
) -> Vec<String> {
    let steps: String = actions
        .iter()
        .map(|name| {
            format!("          - {{name: {name}, image: simulated/{name}, timeout: 600}}\n")
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

/// Boots every machine, then runs every machine's workflow at once, to its end.
pub fn run(rack: &Rack) -> anyhow::Result<Outcome> {
    // Ten thousand connections need more than the usual soft limit of 1024 descriptors.
    rlimit::increase_nofile_limit(u64::MAX)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let dhcp = dhcp_socket(&rack.interface)?;
    let tokens = runtime.block_on(async {
        let mut tokens = Vec::with_capacity(rack.machines.len());
        for machine in &rack.machines {
            tokens.push(boot(&dhcp, rack.server, machine).await?);
        }
        anyhow::Ok(tokens)
    })?;
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let failed = runtime.block_on(async {
        let workers: Vec<_> = rack
            .machines
            .iter()
            .cloned()
            .zip(tokens)
            .map(|(machine, token)| {
                let counts = Arc::clone(&counts);
                let (server, pace) = (rack.server, rack.pace);
                tokio::spawn(async move {
                    let mac = machine.mac.clone();
                    let worker = simulated_worker(server, machine, &token, pace, &counts);
                    // A stuck call fails the run instead of hanging it.
                    tokio::time::timeout(WORKER_DEADLINE, worker)
                        .await
                        .map_err(|_| {
                            anyhow::anyhow!("{mac}: not done within {WORKER_DEADLINE:?}")
                        })?
                })
            })
            .collect();
        let mut failed = 0;
        for worker in workers {
            if let Err(err) = worker.await? {
                failed += 1;
                if failed <= 3 {
                    eprintln!("simulated worker: {err:#}");
                }
            }
        }
        anyhow::Ok(failed)
    })?;
    Ok(Outcome {
        seconds: started.elapsed().as_secs_f64(),
        actions: counts.actions.load(Ordering::Relaxed),
        retries: counts.retries.load(Ordering::Relaxed),
        failed_workers: failed,
    })
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

/// A broadcast DHCP client socket on `interface`, as a PXE client has.
fn dhcp_socket(interface: &str) -> anyhow::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
    Ok(socket.into())
}

/// A machine's boot, as far as Wisp sees it: its firmware's DISCOVER and then the DISCOVER of
/// the iPXE Wisp chainloads (which Wisp answers with the script's URL), then its script, whose
/// kernel command line carries the boot's token. A datagram the server dropped is sent again.
async fn boot(
    dhcp: &std::net::UdpSocket,
    server: Ipv4Addr,
    machine: &Machine,
) -> anyhow::Result<String> {
    let mac = &machine.mac;
    discover(dhcp, mac, 1, None)?;
    // Wisp answers a batch of datagrams after deciding them all: the iPXE's DISCOVER counts as
    // chainloaded once the firmware's was answered. Each try is a new iPXE transaction.
    for xid in 2..52 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        discover(dhcp, mac, xid, Some(b"iPXE"))?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        if let Some(token) = token_of(server, machine).await? {
            return Ok(token);
        }
    }
    bail!("{mac}: no script with a token after 50 tries")
}

/// A PXE client's broadcast DISCOVER (transaction `xid`) from `chaddr`, with iPXE's user
/// class when it has one.
pub fn pxe_discover(chaddr: &[u8], xid: u32, user_class: Option<&[u8]>) -> v4::Message {
    let mut message = v4::Message::default();
    message
        .set_flags(v4::Flags::default().set_broadcast())
        .set_chaddr(chaddr)
        .set_xid(xid);
    let options = message.opts_mut();
    options.insert(v4::DhcpOption::MessageType(v4::MessageType::Discover));
    options.insert(v4::DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    if let Some(user_class) = user_class {
        options.insert(v4::DhcpOption::UserClass(user_class.to_vec()));
    }
    message
}

/// Broadcasts [`pxe_discover`] from `mac`.
fn discover(
    socket: &std::net::UdpSocket,
    mac: &str,
    xid: u32,
    user_class: Option<&[u8]>,
) -> anyhow::Result<()> {
    let chaddr: Vec<u8> = mac
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16))
        .collect::<Result<_, _>>()?;
    let mut bytes = Vec::new();
    pxe_discover(&chaddr, xid, user_class).encode(&mut Encoder::new(&mut bytes))?;
    socket.send_to(&bytes, (Ipv4Addr::BROADCAST, 67))?;
    Ok(())
}

/// The token on the kernel command line of the machine's iPXE script, if it has one.
async fn token_of(server: Ipv4Addr, machine: &Machine) -> anyhow::Result<Option<String>> {
    let mac = &machine.mac;
    let connection = TokioIo::new(connect_from(machine.address, server, BOOT_HTTP_PORT).await?);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(connection).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("/ipxe/{mac}/auto.ipxe"))
        .header(hyper::header::HOST, server.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let script = response.into_body().collect().await?.to_bytes();
    let script = String::from_utf8_lossy(&script);
    if !status.is_success() {
        bail!("the script for {mac}: {status}: {script}");
    }
    Ok(script
        .split_whitespace()
        .find_map(|word| word.strip_prefix("wisp.token="))
        .map(str::to_string))
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
