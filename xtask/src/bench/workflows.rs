//! Workflows: a rack's worth of simulated machines, all at once, each running a five-action
//! workflow against Wisp's real gRPC worker API. Reported: the time until every workflow has
//! succeeded, actions per second, and Wisp's peak memory. No peer: Tinkerbell is not on this
//! machine, so the numbers stand alone.
//!
//! The simulated workers run in the client namespace (`cargo xtask bench-workers`, started by
//! this scenario). Each one boots as far as Wisp can tell: its DHCP (firmware, then the iPXE
//! Wisp chainloads) and its iPXE script, for the token of that boot which the provisioning OS
//! would find on its kernel command line. Then it opens its own HTTP/2
//! connection and does what `wisp-worker` does over the wire: GetAction, a RUNNING report and a
//! SUCCESS report per action, until the server answers NOT_FOUND. Actions take no time, so the
//! server is what is measured.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Endpoint,
    Code, Request,
};
use wisp_images::etcd::Etcd;
use wisp_proto::{
    workflow_service_client::WorkflowServiceClient, ActionRequest, ActionStatusRequest, StateType,
};

use super::{
    dhcp::hosts,
    lab::{self, Lab, CLIENT, CLIENT_IF, SERVER, SERVER_IP},
    report::Table,
    Settings,
};

const ACTIONS: usize = 5;
const SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// How long one simulated machine may take for its whole workflow.
const WORKER_DEADLINE: Duration = Duration::from_secs(600);

/// Machines per apply: an apply is one transaction, and on etcd one of 500 machines (1,000
/// resources) is within what docs/ha.md has etcd started with (`--max-txn-ops=4096`).
const MACHINES_PER_APPLY: usize = 500;

/// The resources for `count` machines, in applies of [`MACHINES_PER_APPLY`]: the template
/// first, then each machine's Hardware and Workflow.
fn manifests(count: u32) -> Vec<String> {
    let steps: String = (1..=ACTIONS)
        .map(|step| format!("          - {{name: step-{step}, image: bench/step, timeout: 600}}\n"))
        .collect();
    let mut applies = vec![format!(
        "apiVersion: tinkerbell.org/v1alpha1\nkind: Template\nmetadata: {{name: five-steps, namespace: bench}}\n\
         spec:\n  data: |\n    version: \"0.1\"\n    name: five-steps\n    global_timeout: 3600\n    tasks:\n\
         \x20     - name: provision\n        worker: \"{{{{.device_1}}}}\"\n        actions:\n{steps}"
    )];
    for (index, (mac, address)) in hosts(count).enumerate() {
        if index % MACHINES_PER_APPLY == 0 {
            applies.push(String::new());
        }
        let yaml = applies.last_mut().expect("an apply");
        yaml.push_str(&format!(
            "---\napiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata: {{name: node-{index}, namespace: bench}}\n\
             spec:\n  interfaces:\n    - dhcp: {{mac: \"{mac}\", ip: {{address: {address}, netmask: 255.255.0.0}}}}\n\
             \x20     netboot: {{allowPXE: true, allowWorkflow: true}}\n\
             ---\napiVersion: tinkerbell.org/v1alpha1\nkind: Workflow\nmetadata: {{name: wf-{index}, namespace: bench}}\n\
             spec: {{templateRef: five-steps, hardwareRef: node-{index}, hardwareMap: {{device_1: \"{mac}\"}}}}\n"
        ));
    }
    applies
}

/// What `cargo xtask bench-workers` prints, as one JSON line.
#[derive(serde::Serialize, serde::Deserialize)]
struct Outcome {
    seconds: f64,
    actions: u64,
    /// Calls retried after a transient failure.
    retries: u64,
    failed_workers: u64,
}

/// Where the runs are kept: the embedded store (the default), or an etcd cluster (one member
/// here) as appliances sharing their state keep them.
#[derive(Clone, Copy)]
enum Backend {
    Redb,
    Etcd,
}

impl Backend {
    fn server(self) -> &'static str {
        match self {
            Backend::Redb => "Wisp",
            Backend::Etcd => "Wisp on etcd",
        }
    }
}

/// etcd's address: on the client side, so that the server side's peak memory stays Wisp's
/// alone.
const ETCD_ADDRESS: &str = "10.88.0.2";

pub fn run(lab: &Lab, work: &Path, settings: &Settings) -> anyhow::Result<Table> {
    let mut table = Table::new(
        "Workflows",
        &format!(
            "Simulated machines, all started at once, each running a {ACTIONS}-action workflow \
             over its own gRPC connection (GetAction, then RUNNING and SUCCESS reports per \
             action; transient failures retried, as `wisp-worker` does, and counted). The time until \
             every workflow succeeded, actions per second, and Wisp's peak resident memory while \
             they ran. \"Wisp on etcd\" keeps its state in a one-member etcd on the same machine \
             (`--store etcd://`, as appliances sharing their state do; etcd's own memory is not \
             counted), against the embedded store's \"Wisp\"; the ratio is how many times the \
             embedded store's time it takes."
        ),
        &["seconds", "actions/s", "retried calls", "peak MiB"],
    );
    table.ratio_of = Some(("seconds".into(), false));
    let wisp = settings.wisp.to_str().context("UTF-8 path")?;
    // Built beside `wisp` by the same `cargo build` (this process's own binary may have been
    // replaced by that build).
    let xtask = settings.wisp.with_file_name("xtask");
    let token_file = lab::api_token_file(work);
    let token_file = token_file.to_str().context("UTF-8 path")?;
    for &count in &settings.workflow_machines {
        let case = format!("{count} machines");
        let _addresses = lab.machine_addresses(hosts(count).map(|(_, address)| address))?;
        let mut manifest_paths = Vec::new();
        for (index, manifest) in manifests(count).into_iter().enumerate() {
            let path = work.join(format!("workflows-{count}-{index}.yaml"));
            std::fs::write(&path, manifest)?;
            manifest_paths.push(path);
        }
        for backend in [Backend::Redb, Backend::Etcd] {
            for _ in 0..settings.runs {
                let etcd = match backend {
                    Backend::Redb => None,
                    Backend::Etcd => {
                        // A fresh member each run.
                        let dir = work.join("etcd");
                        let _ = std::fs::remove_dir_all(&dir);
                        Some(Etcd::start(CLIENT, ETCD_ADDRESS, &dir)?)
                    }
                };
                let store = etcd.as_ref().map(|etcd| format!("--store={}", etcd.url));
                let mut args = vec!["--xdp-mode", "off"];
                args.extend(store.as_deref());
                let _server = lab::start_wisp(lab, &settings.wisp, work, "workflows", &args)?;
                for path in &manifest_paths {
                    let path = path.to_str().context("UTF-8 path")?;
                    lab.exec_ok(
                        SERVER,
                        wisp,
                        &["apply", "--api-token-file", token_file, "-f", path],
                    )?;
                }
                lab::reset_peak_memory()?;
                let output = lab.exec(
                    CLIENT,
                    xtask.to_str().context("UTF-8 path")?,
                    &["bench-workers", "--machines", &count.to_string()],
                )?;
                let (stdout, stderr) = (
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr),
                );
                let outcome: Outcome = stdout
                    .lines()
                    .last()
                    .and_then(|line| serde_json::from_str(line).ok())
                    .with_context(|| {
                        format!("the simulated workers printed no outcome: {stderr}")
                    })?;
                if outcome.failed_workers > 0
                    || outcome.actions != u64::from(count) * ACTIONS as u64
                {
                    bail!(
                        "{}: {} of {count} simulated workers failed, {} actions ran; the \
                         first failures:\n{stderr}",
                        backend.server(),
                        outcome.failed_workers,
                        outcome.actions
                    );
                }
                let rate = outcome.actions as f64 / outcome.seconds;
                let server = backend.server();
                println!(
                    "    {case}, {server}: {:.1} s, {rate:.0} actions/s, {} retried calls",
                    outcome.seconds, outcome.retries
                );
                table.record(&case, server, "seconds", outcome.seconds);
                table.record(&case, server, "actions/s", rate);
                table.record(&case, server, "retried calls", outcome.retries as f64);
                table.record(&case, server, "peak MiB", lab::peak_memory_mib()?);
            }
        }
    }
    Ok(table)
}

/// `cargo xtask bench-workers`: the simulated machines, run inside the client namespace, each
/// from its reserved address (which the scenario has put there).
pub fn simulate(machines: u32) -> anyhow::Result<()> {
    // Ten thousand connections need more than the usual soft limit of 1024 descriptors.
    rlimit::increase_nofile_limit(u64::MAX)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let machines: Vec<(String, Ipv4Addr)> = hosts(machines)
        .map(|(mac, address)| Ok((mac, address.parse()?)))
        .collect::<anyhow::Result<_>>()?;
    // Booting is not measured: every machine has its script (and token) before the clock starts.
    let dhcp = dhcp_socket()?;
    let tokens = runtime.block_on(async {
        let mut tokens = Vec::with_capacity(machines.len());
        for (mac, address) in &machines {
            tokens.push(boot(&dhcp, mac, *address).await?);
        }
        anyhow::Ok(tokens)
    })?;
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let failed = runtime.block_on(async {
        let workers: Vec<_> = machines
            .into_iter()
            .zip(tokens)
            .map(|((mac, address), token)| {
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    let worker = simulated_worker(&mac, address, &token, &counts);
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
    let outcome = Outcome {
        seconds: started.elapsed().as_secs_f64(),
        actions: counts.actions.load(Ordering::Relaxed),
        retries: counts.retries.load(Ordering::Relaxed),
        failed_workers: failed,
    };
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}

/// A connection to the server from a machine's own address.
async fn connect_from(address: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((address, 0)))?;
    socket
        .connect(SocketAddr::from((SERVER_ADDRESS, port)))
        .await
}

/// A broadcast DHCP client socket on the client's side of the lab, as a PXE client has.
fn dhcp_socket() -> anyhow::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind_device(Some(CLIENT_IF.as_bytes()))?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
    Ok(socket.into())
}

/// A machine's boot, as far as Wisp sees it: its firmware's DISCOVER and then the DISCOVER of
/// the iPXE Wisp chainloads (which Wisp answers with the script's URL), then its script, whose
/// kernel command line carries the boot's token. A datagram the server dropped is sent again.
async fn boot(dhcp: &std::net::UdpSocket, mac: &str, address: Ipv4Addr) -> anyhow::Result<String> {
    discover(dhcp, mac, 1, None)?;
    // Wisp answers a batch of datagrams after deciding them all: the iPXE's DISCOVER counts as
    // chainloaded once the firmware's was answered. Each try is a new iPXE transaction.
    for xid in 2..52 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        discover(dhcp, mac, xid, Some(b"iPXE".to_vec()))?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        if let Some(token) = token_of(mac, address).await? {
            return Ok(token);
        }
    }
    bail!("{mac}: no script with a token after 50 tries")
}

/// A broadcast PXE DISCOVER from `mac`, with iPXE's user class when it has one.
fn discover(
    socket: &std::net::UdpSocket,
    mac: &str,
    xid: u32,
    user_class: Option<Vec<u8>>,
) -> anyhow::Result<()> {
    use dhcproto::{v4, Encodable, Encoder};
    let chaddr: Vec<u8> = mac
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16))
        .collect::<Result<_, _>>()?;
    let mut message = v4::Message::default();
    message
        .set_flags(v4::Flags::default().set_broadcast())
        .set_chaddr(&chaddr)
        .set_xid(xid);
    let options = message.opts_mut();
    options.insert(v4::DhcpOption::MessageType(v4::MessageType::Discover));
    options.insert(v4::DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    if let Some(user_class) = user_class {
        options.insert(v4::DhcpOption::UserClass(user_class));
    }
    let mut bytes = Vec::new();
    message.encode(&mut Encoder::new(&mut bytes))?;
    socket.send_to(&bytes, (Ipv4Addr::BROADCAST, 67))?;
    Ok(())
}

/// The token on the kernel command line of the machine's iPXE script, if it has one.
async fn token_of(mac: &str, address: Ipv4Addr) -> anyhow::Result<Option<String>> {
    let connection = TokioIo::new(connect_from(address, 8080).await?);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(connection).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("/ipxe/{mac}/auto.ipxe"))
        .header(hyper::header::HOST, SERVER_IP)
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

async fn simulated_worker(
    mac: &str,
    address: Ipv4Addr,
    token: &str,
    counts: &Counts,
) -> anyhow::Result<()> {
    // Lazy, as in `wisp-worker`: a failed connection shows as UNAVAILABLE, which is retried.
    let channel = Endpoint::from_shared(format!("http://{SERVER_IP}:42113"))?
        .connect_timeout(Duration::from_secs(60))
        .connect_with_connector_lazy(tower::service_fn(move |_| async move {
            connect_from(address, 42113).await.map(TokioIo::new)
        }));
    let client = WorkflowServiceClient::new(channel);
    let bearer = MetadataValue::try_from(format!("Bearer {token}"))?;
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
                let state = status.metadata().get("wisp-workflow-state");
                if state.and_then(|v| v.to_str().ok()) == Some("SUCCESS") {
                    return Ok(());
                }
                bail!("{mac}: no action, and no successful workflow: {status:?}");
            }
            Err(status) => bail!("{mac}: GetAction: {status}"),
        };
        for state in [StateType::Running, StateType::Success] {
            with_retries(counts, || {
                let mut client = client.clone();
                let request = request(
                    &bearer,
                    ActionStatusRequest::about(&action, mac, state, SystemTime::now(), None),
                );
                async move { client.report_action_status(request).await }
            })
            .await
            .with_context(|| format!("{mac}: reporting {}", action.name()))?;
        }
        counts.actions.fetch_add(1, Ordering::Relaxed);
    }
}
