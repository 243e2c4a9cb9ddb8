//! The test harness: real network namespaces, a real `wisp` daemon and CLI, real frames.
//! Every guard cleans up in `Drop`, so a failing test leaves no namespace or process behind.
pub mod bmc;
pub mod dhcp_wire;
pub mod frames;
pub mod vm;

use std::{
    fs::File,
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Set by `cargo xtask test`, which runs every test as root: there, a test that would skip for
/// want of root fails instead, so that no privileged test is skipped unseen.
pub const NO_SKIPS: &str = "WISP_TESTS_NO_SKIPS";

/// Skips the calling test when it runs without root, which it needs for network namespaces and
/// XDP, with one line saying so. Use it as a privileged test's first statement.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::running_as_root(module_path!()) {
            return;
        }
    };
}

/// Whether the caller runs as root; if not, says so on stderr (past libtest's capture, so the
/// line is seen) or, under [`NO_SKIPS`], fails.
pub fn running_as_root(module: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    // libtest names each test's thread after the test.
    let test = match std::thread::current().name() {
        Some(name) => format!("{module}::{name}"),
        None => module.to_string(),
    };
    assert!(
        std::env::var_os(NO_SKIPS).is_none(),
        "{test} needs root (network namespaces, XDP), and {NO_SKIPS} forbids skipping it"
    );
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "needs root: {test} skipped (network namespaces, XDP); `cargo xtask test` runs it as root"
    );
    false
}

/// Set by `cargo xtask test --long`: the checks too long for every run take their full size.
pub const LONG: &str = "WISP_TESTS_LONG";

/// Whether the long checks run at full size ([`LONG`]).
pub fn long_mode() -> bool {
    std::env::var_os(LONG).is_some()
}

/// A line on stderr past libtest's capture, for figures a long check publishes.
pub fn report(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// The `wisp` binary of the same build profile as this test.
pub fn wisp_binary() -> PathBuf {
    workspace_binary("wisp")
}

/// The `wisp-worker` agent of the same build profile as this test.
pub fn worker_binary() -> PathBuf {
    workspace_binary("wisp-worker")
}

fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .join(name);
    assert!(
        binary.exists(),
        "{} is missing: build it first (`cargo xtask test` does)",
        binary.display()
    );
    binary
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A network namespace, deleted (with every process in it) on drop.
pub struct Netns {
    pub name: String,
    /// The API of the daemon started here (or named by [`Netns::use_api`]), which the CLI
    /// helpers talk to.
    api: std::sync::Mutex<Option<Api>>,
}

#[derive(Clone)]
struct Api {
    server: String,
    token_file: PathBuf,
}

impl Netns {
    pub fn new(purpose: &str) -> Netns {
        let name = format!(
            "wisp-{purpose}-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let netns = Netns {
            name,
            api: std::sync::Mutex::default(),
        };
        netns.exec_ok("ip", &["link", "set", "lo", "up"]);
        // No IPv6 chatter (router solicitations, MLD) in the gate's counters.
        netns.exec_ok("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        netns.exec_ok("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        netns
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {program}: {err}"))
    }

    pub fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        let output = self.exec(program, args);
        assert!(
            output.status.success(),
            "{program} {args:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `make` on a thread that has entered this namespace: sockets it creates live here.
    pub fn within<T: Send>(&self, make: impl FnOnce() -> T + Send) -> T {
        let file =
            File::open(format!("/var/run/netns/{}", self.name)).expect("the namespace exists");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("setns");
                    make()
                })
                .join()
                .expect("the thread in the namespace panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(output) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Two namespaces joined by a veth pair: the server side (`srv`, 10.99.0.1/24) where Wisp runs,
/// and the client side (`cli`, 10.99.0.2/24) that sends the DHCP traffic.
pub struct Lab {
    pub server: Netns,
    pub client: Netns,
}

pub const SERVER_IF: &str = "srv";
pub const CLIENT_IF: &str = "cli";
pub const BRIDGE_IF: &str = "br0";
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

impl Lab {
    /// The served interface is the veth end itself.
    pub fn new(purpose: &str) -> Lab {
        Lab::build(purpose, false, "10.99.0.1/24")
    }

    /// The served interface is a bridge (`br0`, 10.99.0.1/24) with the veth end as its port, as
    /// in a netboot lab where VMs join the bridge.
    pub fn bridged(purpose: &str) -> Lab {
        Lab::build(purpose, true, "10.99.0.1/24")
    }

    /// A bridged lab whose bridge has another address, such as the 192.168.1.1/24 that the
    /// Tinkerbell example resources assume.
    pub fn bridged_at(purpose: &str, server_cidr: &str) -> Lab {
        Lab::build(purpose, true, server_cidr)
    }

    fn build(purpose: &str, bridged: bool, server_cidr: &str) -> Lab {
        let server = Netns::new(&format!("{purpose}-s"));
        let client = Netns::new(&format!("{purpose}-c"));
        server.exec_ok(
            "ip",
            &[
                "link",
                "add",
                SERVER_IF,
                "type",
                "veth",
                "peer",
                "name",
                CLIENT_IF,
                "netns",
                &client.name,
            ],
        );
        let served = if bridged {
            server.exec_ok("ip", &["link", "add", BRIDGE_IF, "type", "bridge"]);
            server.exec_ok("ip", &["link", "set", SERVER_IF, "master", BRIDGE_IF]);
            server.exec_ok("ip", &["link", "set", BRIDGE_IF, "up"]);
            BRIDGE_IF
        } else {
            SERVER_IF
        };
        server.exec_ok("ip", &["addr", "add", server_cidr, "dev", served]);
        server.exec_ok("ip", &["link", "set", SERVER_IF, "up"]);
        client.exec_ok("ip", &["addr", "add", "10.99.0.2/24", "dev", CLIENT_IF]);
        client.exec_ok("ip", &["link", "set", CLIENT_IF, "up"]);
        Lab { server, client }
    }

    /// A namespace on the lab bridge (of a [`Lab::bridged`] lab) through a veth pair: `eth0` inside, `port` on the bridge.
    pub fn join_bridge(&self, purpose: &str, port: &str, address: Option<&str>) -> Netns {
        let host = Netns::new(purpose);
        self.server.exec_ok(
            "ip",
            &[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &host.name,
            ],
        );
        self.server
            .exec_ok("ip", &["link", "set", port, "master", BRIDGE_IF, "up"]);
        if let Some(address) = address {
            host.exec_ok("ip", &["addr", "add", address, "dev", "eth0"]);
        }
        host.exec_ok("ip", &["link", "set", "eth0", "up"]);
        host
    }

    /// A socket on the client side as a PXE client has one: port 68 of the client interface,
    /// broadcast allowed (shared, so that several may exist at once).
    pub fn pxe_client_socket(&self) -> UdpSocket {
        self.client.within(|| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                .expect("socket");
            socket.set_reuse_address(true).expect("reuse");
            socket.set_broadcast(true).expect("broadcast");
            socket
                .bind_device(Some(CLIENT_IF.as_bytes()))
                .expect("bind to device");
            socket
                .bind(&std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
                .expect("bind :68");
            socket.into()
        })
    }

    /// Sends one BOOTP/DHCP payload from the client side: broadcast from :68 like a PXE client,
    /// or, with `relay` set, unicast from :67 to the server like a relay agent.
    pub fn send_dhcp(&self, payload: &[u8], relay: bool) {
        let socket = if relay {
            self.client
                .within(|| UdpSocket::bind((CLIENT_IP, 67)).expect("bind relay socket"))
        } else {
            self.pxe_client_socket()
        };
        self.client.within(|| {
            let destination = if relay {
                SERVER_IP
            } else {
                Ipv4Addr::BROADCAST
            };
            socket
                .send_to(payload, (destination, 67))
                .expect("send DHCP");
        });
    }
}

/// A `wisp serve` process in a namespace, killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon on `interface` in `netns` and waits until its API answers.
    pub fn start(netns: &Netns, interface: &str, data_dir: &Path, extra: &[&str]) -> Daemon {
        let log = data_dir.with_extension("log");
        let log_file = File::create(&log).expect("create the daemon log");
        let child = netns
            .command(wisp_binary())
            .args(["serve", "--interface", interface, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn wisp serve");
        let mut daemon = Daemon {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            log,
        };
        netns.use_api("http://127.0.0.1:7480", &data_dir.join("api.token"));
        daemon.wait_ready(netns);
        daemon
    }

    fn wait_ready(&mut self, netns: &Netns) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("wisp serve exited with {status}:\n{}", self.log());
            }
            if netns
                .exec("curl", &["-sf", "http://127.0.0.1:7480/healthz"])
                .status
                .success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("wisp serve did not answer within 20 s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal and waits for the process (the `ip netns exec` wrapper execs wisp, so
    /// the pid is wisp's own).
    pub fn stop(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
            .expect("signal wisp");
        child.wait().expect("wait for wisp")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Netns {
    /// Points the CLI helpers here at the daemon API `server`, with the token in `token_file`.
    pub fn use_api(&self, server: &str, token_file: &Path) {
        *self.api.lock().unwrap_or_else(|p| p.into_inner()) = Some(Api {
            server: server.to_string(),
            token_file: token_file.to_path_buf(),
        });
    }

    fn api(&self) -> Option<Api> {
        self.api.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The CLI, run here with the server and token of the daemon started here.
    pub fn wisp_command(&self) -> Command {
        self.with_api(self.command(wisp_binary()))
    }

    /// The CLI with `args` (plain words), as [`Netns::wisp_command`] runs it but on a terminal
    /// of its own (script(1)'s), so that it draws what it draws for a person; what the
    /// terminal showed is the command's output.
    pub fn wisp_on_terminal(&self, args: &[&str]) -> Command {
        let line: Vec<String> = std::iter::once(wisp_binary().display().to_string())
            .chain(args.iter().map(|arg| arg.to_string()))
            .collect();
        let mut command = self.command("script");
        command.args(["-qfec", &line.join(" "), "/dev/null"]);
        self.with_api(command)
    }

    fn with_api(&self, mut command: Command) -> Command {
        if let Some(api) = self.api() {
            command
                .env("WISP_SERVER", api.server)
                .env("WISP_API_TOKEN_FILE", api.token_file);
        }
        command
    }

    /// GET from the daemon's API, with its token; the body.
    pub fn api_get(&self, path: &str) -> String {
        let api = self.api().expect("a daemon was started here");
        let token = std::fs::read_to_string(&api.token_file).unwrap_or_else(|err| {
            panic!("reading the API token {}: {err}", api.token_file.display())
        });
        let authorization = format!("Authorization: Bearer {}", token.trim());
        self.exec_ok(
            "curl",
            &[
                "-sf",
                "-H",
                &authorization,
                &format!("{}{path}", api.server),
            ],
        )
    }
}

/// Runs the `wisp` CLI in `netns` (where the daemon's loopback API is).
pub fn wisp(netns: &Netns, args: &[&str]) -> Output {
    netns
        .wisp_command()
        .args(args)
        .output()
        .expect("run the wisp CLI")
}

/// Runs the CLI and returns stdout, failing the test with stderr if it fails.
pub fn wisp_ok(netns: &Netns, args: &[&str]) -> String {
    let output = wisp(netns, args);
    assert!(
        output.status.success(),
        "wisp {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A workflow as `wisp get workflow NAME -n NAMESPACE -o json` shows it.
pub fn workflow_json(netns: &Netns, namespace: &str, name: &str) -> Value {
    let shown = wisp_ok(
        netns,
        &["get", "workflow", name, "-n", namespace, "-o", "json"],
    );
    serde_json::from_str(&shown).expect("JSON")
}

/// The HTTP status curl got for `url`, from `netns`, with `extra` arguments before the URL.
pub fn http_status(netns: &Netns, extra: &[&str], url: &str) -> String {
    let mut args = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    netns.exec_ok("curl", &args)
}

/// `wisp xdp stats -o json`, as a map of counter name → packets, plus the whole document.
pub fn gate_stats(netns: &Netns) -> (std::collections::BTreeMap<String, u64>, Value) {
    let stats: Value = serde_json::from_str(&wisp_ok(netns, &["xdp", "stats", "-o", "json"]))
        .expect("stats are JSON");
    let counters = stats["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().expect("name").to_string(),
                pair[1].as_u64().expect("value"),
            )
        })
        .collect();
    (counters, stats)
}

/// One sample of a Prometheus metric from the daemon's /metrics, fetched with curl. None when
/// the metric has no sample at all (a labelled family appears on first use); a family that
/// exists but lacks this label set reads as 0.
pub fn metric(netns: &Netns, name_and_labels: &str) -> Option<u64> {
    let text = netns.api_get("/metrics");
    let name = name_and_labels.split('{').next().unwrap_or(name_and_labels);
    let family = name.strip_suffix("_total").unwrap_or(name);
    if !text
        .lines()
        .any(|line| line.starts_with(&format!("# TYPE {family} ")))
    {
        return None;
    }
    Some(
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name_and_labels)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0),
    )
}

/// `wisp apply -f -` with `yaml` on standard input.
pub fn apply_yaml(netns: &Netns, yaml: &str) -> Output {
    use std::io::Write;
    let mut child = netns
        .wisp_command()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wisp apply");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write the manifest");
    child.wait_with_output().expect("wait for wisp apply")
}

/// A minimal Hardware document owning one MAC.
pub fn hardware_yaml(name: &str, mac: &str, address: &str) -> String {
    format!(
        "apiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata:\n  name: {name}\n  namespace: lab\nspec:\n  interfaces:\n    - dhcp:\n        mac: {mac}\n        ip:\n          address: {address}\n          netmask: 255.255.255.0\n"
    )
}

/// Polls `condition` until it holds, failing with `what` after 10 s.
pub fn eventually(what: &str, condition: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(10), condition)
}

pub fn eventually_within(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh, empty data directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(purpose: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "wisp-{purpose}-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `wisp apply -f -` that must succeed; a failure fails the test with the CLI's error.
/// Machine `name` (namespace `lab`) reserving `address` for `mac`, netbooting, with the
/// workflow `w` of one action: its next boot starts the provisioning OS.
pub fn machine_with_workflow_yaml(name: &str, mac: &str, address: &str) -> String {
    format!(
        "{}---
apiVersion: tinkerbell.org/v1alpha1
kind: Template
metadata: {{name: t, namespace: lab}}
spec: {{data: \"tasks: [{{name: t, actions: [{{name: a, image: i}}]}}]\"}}
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata: {{name: w, namespace: lab}}
spec: {{templateRef: t, hardwareRef: {name}}}
",
        netboot_hardware_yaml(name, mac, address)
    )
}

/// Hardware `name` (namespace `lab`) reserving `address` (in a /24) for `mac`, allowed to
/// netboot and to run workflows.
pub fn netboot_hardware_yaml(name: &str, mac: &str, address: &str) -> String {
    format!(
        "apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata: {{name: {name}, namespace: lab}}
spec:
  interfaces:
    - dhcp: {{mac: \"{mac}\", ip: {{address: {address}, netmask: 255.255.255.0}}}}
      netboot: {{allowPXE: true, allowWorkflow: true}}
"
    )
}

pub fn apply_ok(netns: &Netns, yaml: &str) {
    let output = apply_yaml(netns, yaml);
    assert!(
        output.status.success(),
        "wisp apply failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What a finished command printed: stdout, then stderr.
pub fn output_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// Reads and discards what the server sends until it closes the connection; how long that took,
/// or None if it was still open after `limit`.
pub fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> Option<Duration> {
    use std::io::Read as _;
    let start = std::time::Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buffer = [0u8; 4096];
    while start.elapsed() < limit {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// A new boot of the machine `mac`, as Wisp sees one: its firmware's DHCP, then the DHCP of the
/// iPXE Wisp chainloads (which Wisp points at the machine's script), then the script, fetched
/// from `address` (an address of the client namespace, which the machine's Hardware reserves).
/// Returns the token on the script's kernel command line: the token of that boot.
pub fn boot_token(lab: &Lab, mac: &str, address: &str) -> String {
    let chaddr: [u8; 6] = mac
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16).expect("a MAC"))
        .collect::<Vec<_>>()
        .try_into()
        .expect("six bytes");
    lab.send_dhcp(&frames::discover(chaddr, None), false);
    let url = format!("http://10.99.0.1:8080/ipxe/{mac}/auto.ipxe");
    let mut script = String::new();
    let mut xid = 0x6950_5845;
    // The iPXE's DHCP counts as chainloaded once Wisp has answered the firmware's, which it
    // does after the datagrams it received with it: each try is a new iPXE transaction.
    eventually("the script carries the boot's token", || {
        xid += 1;
        lab.send_dhcp(&frames::ipxe_discover(chaddr, xid), false);
        script = lab
            .client
            .exec_ok("curl", &["-s", "--interface", address, &url]);
        script.contains("wisp.token=")
    });
    script
        .split_whitespace()
        .find_map(|word| word.strip_prefix("wisp.token="))
        .expect("a token")
        .to_string()
}

/// The host's default socket receive buffer, raised to 4 MiB while one is held (as `cargo xtask
/// bench` does for perfdhcp, which receives a thousand replies at once) and put back when the
/// last is dropped. The setting is the host's: the network namespaces cannot set their own.
pub struct ReceiveBuffer(());

static RECEIVE_BUFFER_HOLDERS: std::sync::Mutex<(usize, Option<String>)> =
    std::sync::Mutex::new((0, None));
const RMEM_DEFAULT: &str = "/proc/sys/net/core/rmem_default";

impl ReceiveBuffer {
    pub fn raised() -> ReceiveBuffer {
        let mut holders = RECEIVE_BUFFER_HOLDERS
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if holders.0 == 0 {
            let previous = std::fs::read_to_string(RMEM_DEFAULT).expect("read rmem_default");
            std::fs::write(RMEM_DEFAULT, (4u32 << 20).to_string()).expect("raise rmem_default");
            holders.1 = Some(previous);
        }
        holders.0 += 1;
        ReceiveBuffer(())
    }
}

impl Drop for ReceiveBuffer {
    fn drop(&mut self) {
        let mut holders = RECEIVE_BUFFER_HOLDERS
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        holders.0 -= 1;
        if holders.0 == 0 {
            if let Some(previous) = holders.1.take() {
                let _ = std::fs::write(RMEM_DEFAULT, previous.trim());
            }
        }
    }
}

/// A worker API client that shows a machine's token on every call.
pub type WorkerClient = wisp_proto::workflow_service_client::WorkflowServiceClient<
    tonic::codegen::InterceptedService<tonic::transport::Channel, ShowToken>,
>;

#[derive(Clone)]
pub struct ShowToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for ShowToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if !request.metadata().contains_key("authorization") {
            request
                .metadata_mut()
                .insert("authorization", self.0.clone());
        }
        Ok(request)
    }
}

/// Runs `call` with a gRPC client of the worker API (the server side's, 10.99.0.1:42113), from
/// the client namespace, showing `token`, as a machine's worker calls it.
pub fn from_machine<T: Send>(
    lab: &Lab,
    token: &str,
    call: impl AsyncFnOnce(WorkerClient) -> T + Send,
) -> T {
    on_worker_api(lab, token, async |service| {
        call(wisp_proto::workflow_service_client::WorkflowServiceClient::new(service)).await
    })
}

/// Runs `call` with a client of Wisp's `ActionOutput`, as [`from_machine`] does.
pub fn output_from_machine<T: Send>(
    lab: &Lab,
    token: &str,
    call: impl AsyncFnOnce(OutputClient) -> T + Send,
) -> T {
    on_worker_api(lab, token, async |service| {
        call(wisp_proto::output::action_output_client::ActionOutputClient::new(service)).await
    })
}

pub type OutputClient = wisp_proto::output::action_output_client::ActionOutputClient<
    tonic::codegen::InterceptedService<tonic::transport::Channel, ShowToken>,
>;

fn on_worker_api<T: Send>(
    lab: &Lab,
    token: &str,
    call: impl AsyncFnOnce(tonic::codegen::InterceptedService<tonic::transport::Channel, ShowToken>) -> T
        + Send,
) -> T {
    let token = ShowToken(
        tonic::metadata::MetadataValue::try_from(format!("Bearer {token}")).expect("header"),
    );
    lab.client.within(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let channel = tonic::transport::Channel::from_static("http://10.99.0.1:42113")
                .connect()
                .await
                .expect("connect to the worker API");
            call(tonic::codegen::InterceptedService::new(channel, token)).await
        })
    })
}
