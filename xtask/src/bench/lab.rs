//! The benchmark lab: two network namespaces joined by a veth pair, the server side
//! (`srv`, 10.88.0.1/16) where each server under test runs in turn, and the client side (`cli`,
//! 10.88.0.2/16) where the load generators run. Removed on drop, with what runs in it.
//!
//! On a machine with two cores or more, what runs on each side is pinned to a core of its own
//! ([`core_of`]): every server to the first, every load generator to the second, so that a
//! generator's work is never taken from the server it measures, the same for every server.
use std::{
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

pub const SERVER: &str = "wisp-bench-s";
pub const CLIENT: &str = "wisp-bench-c";
pub const SERVER_IF: &str = "srv";
pub const CLIENT_IF: &str = "cli";
pub const SERVER_IP: &str = "10.88.0.1";
pub const CLIENT_IP: &str = "10.88.0.2";

/// The system's default socket receive buffer while the lab exists. perfdhcp cannot set its
/// own, and with the kernel's default (208 KiB) its socket overflowed when a server's replies
/// came in bursts: those were perfdhcp's own drops, counted against the server. The setting is
/// system-wide, so every server and client in the lab gets it alike (Wisp sets 4 MiB on its
/// DHCP sockets anyway), and the lab puts the old value back when it goes.
const RECEIVE_BUFFER_DEFAULT: u64 = 4 << 20;
const RMEM_DEFAULT: &str = "/proc/sys/net/core/rmem_default";
/// The value before the lab raised it, kept on disk until it is put back, so that a run killed
/// before its cleanup is mended by the next.
const RMEM_DEFAULT_SAVED: &str = "/run/wisp-bench.rmem_default";

/// The core what runs in `netns` is pinned to: the first for the server side, the second for
/// the client side; none on a single core.
pub fn core_of(netns: &str) -> Option<usize> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores >= 2).then_some(if netns == SERVER { 0 } else { 1 })
}

pub struct Lab;

impl Lab {
    pub fn create() -> anyhow::Result<Lab> {
        Lab::remove();
        // From here on, a failure drops the lab, which removes what was made.
        let lab = Lab;
        for netns in [SERVER, CLIENT] {
            crate::shell::run("ip", &["netns", "add", netns])?;
        }
        raise_receive_buffer();
        for netns in [SERVER, CLIENT] {
            lab.exec_ok(netns, "ip", &["link", "set", "lo", "up"])?;
            // iPXE-style IPv6 chatter would only add noise.
            lab.exec_ok(
                netns,
                "sysctl",
                &["-qw", "net.ipv6.conf.all.disable_ipv6=1"],
            )?;
        }
        lab.exec_ok(
            SERVER,
            "ip",
            &[
                "link", "add", SERVER_IF, "type", "veth", "peer", "name", CLIENT_IF, "netns",
                CLIENT,
            ],
        )?;
        lab.exec_ok(
            SERVER,
            "ip",
            &["addr", "add", "10.88.0.1/16", "dev", SERVER_IF],
        )?;
        lab.exec_ok(
            CLIENT,
            "ip",
            &["addr", "add", "10.88.0.2/16", "dev", CLIENT_IF],
        )?;
        lab.exec_ok(SERVER, "ip", &["link", "set", SERVER_IF, "up"])?;
        lab.exec_ok(CLIENT, "ip", &["link", "set", CLIENT_IF, "up"])?;
        Ok(lab)
    }

    fn remove() {
        crate::shell::remove_netns(&[SERVER, CLIENT], "KILL");
    }

    /// Whether something on the server side listens on UDP `port`.
    pub fn listening_udp(&self, port: u16) -> bool {
        self.exec(SERVER, "ss", &["-Hlun", "sport", "=", &format!(":{port}")])
            .is_ok_and(|output| !output.stdout.is_empty())
    }

    /// `program` in `netns`, on its side's core.
    pub fn command(&self, netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns]);
        if let Some(core) = core_of(netns) {
            command.args(["taskset", "--cpu-list", &core.to_string()]);
        }
        command.arg(program);
        command
    }

    /// A command that enters `netns` itself, between fork and exec, without `ip netns exec`
    /// (a process of its own, which also sets up a mount namespace). For short runs whose
    /// duration is measured, such as one TFTP fetch, that start-up would otherwise be most of
    /// what is measured. The namespace is opened here, so a missing one fails at the call.
    pub fn direct_command(
        &self,
        netns: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<Command> {
        use std::os::fd::AsRawFd as _;
        let namespace = std::fs::File::open(format!("/run/netns/{netns}"))
            .with_context(|| format!("opening network namespace {netns}"))?;
        let mut command = Command::new(program);
        // On its side's core, as `command` runs its programs.
        let cores = core_of(netns).map(|core| {
            // SAFETY: cpu_set_t is plain data, for which all zeros is the empty set.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: `core` is 0 or 1, within the set's 1,024 bits.
            unsafe { libc::CPU_SET(core, &mut set) };
            set
        });
        // SAFETY: between fork and exec only async-signal-safe calls may run; setns and
        // sched_setaffinity are plain system calls. The closure owns the namespace's file,
        // which stays open until the Command is dropped.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(set) = &cores {
                    let size = std::mem::size_of::<libc::cpu_set_t>();
                    if libc::sched_setaffinity(0, size, set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(command)
    }

    pub fn exec(&self, netns: &str, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.command(netns, program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {netns}"))
    }

    pub fn exec_ok(&self, netns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let output = self.exec(netns, program, args)?;
        if !output.status.success() {
            bail!(
                "`{program} {}` in {netns} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Addresses of simulated machines on the client side, removed on drop.
pub struct MachineAddresses<'a> {
    lab: &'a Lab,
    addresses: Vec<String>,
    routes: Vec<String>,
}

impl Lab {
    /// Puts `addresses` (inside 10.88.0.0/16) on the client side, so that simulated machines
    /// can call from their reserved addresses. The server reaches them through the client's
    /// own address, so thousands of machines cost it one neighbour entry, not thousands.
    pub fn machine_addresses(
        &self,
        addresses: impl Iterator<Item = String>,
    ) -> anyhow::Result<MachineAddresses<'_>> {
        let addresses: Vec<String> = addresses.collect();
        let mut routes: Vec<String> = addresses
            .iter()
            .filter_map(|address| address.rsplit_once('.'))
            .map(|(network, _)| format!("{network}.0/24"))
            .collect();
        routes.dedup();
        let guard = MachineAddresses {
            lab: self,
            addresses,
            routes,
        };
        self.batch(
            CLIENT,
            guard
                .addresses
                .iter()
                .map(|address| format!("addr add {address}/32 dev {CLIENT_IF}")),
        )?;
        self.batch(
            SERVER,
            guard
                .routes
                .iter()
                .map(|route| format!("route add {route} via 10.88.0.2 dev {SERVER_IF}")),
        )?;
        Ok(guard)
    }

    /// Runs `ip` commands in one `ip -batch`.
    fn batch(&self, netns: &str, commands: impl Iterator<Item = String>) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["-n", netns, "-force", "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("ip's stdin")?;
        for command in commands {
            writeln!(stdin, "{command}")?;
        }
        drop(stdin);
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "ip -batch in {netns}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for MachineAddresses<'_> {
    fn drop(&mut self) {
        let _ = self.lab.batch(
            SERVER,
            self.routes.iter().map(|route| format!("route del {route}")),
        );
        let _ = self.lab.batch(
            CLIENT,
            self.addresses
                .iter()
                .map(|address| format!("addr del {address}/32 dev {CLIENT_IF}")),
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        Lab::remove();
        restore_receive_buffer();
    }
}

/// Raises the default receive buffer to [`RECEIVE_BUFFER_DEFAULT`], first putting back a value
/// an interrupted run left saved.
fn raise_receive_buffer() {
    restore_receive_buffer();
    let Some(previous) = std::fs::read_to_string(RMEM_DEFAULT).ok() else {
        return;
    };
    if previous
        .trim()
        .parse::<u64>()
        .is_ok_and(|value| value >= RECEIVE_BUFFER_DEFAULT)
    {
        return;
    }
    let raised = std::fs::write(RMEM_DEFAULT_SAVED, &previous)
        .and_then(|()| std::fs::write(RMEM_DEFAULT, RECEIVE_BUFFER_DEFAULT.to_string()));
    if let Err(err) = raised {
        println!(
            "warning: cannot raise net.core.rmem_default ({err}); perfdhcp may drop replies itself"
        );
        let _ = std::fs::remove_file(RMEM_DEFAULT_SAVED);
    }
}

/// Puts back the default receive buffer saved by [`raise_receive_buffer`], if any.
fn restore_receive_buffer() {
    let Ok(previous) = std::fs::read_to_string(RMEM_DEFAULT_SAVED) else {
        return;
    };
    match std::fs::write(RMEM_DEFAULT, previous.trim()) {
        Ok(()) => {
            let _ = std::fs::remove_file(RMEM_DEFAULT_SAVED);
        }
        Err(err) => println!(
            "warning: cannot put net.core.rmem_default back to {} ({err})",
            previous.trim()
        ),
    }
}

/// A server under test, killed with its process group on drop.
pub struct Server {
    child: Child,
}

impl Server {
    /// Starts `command` (built with [`Lab::command`]) and waits until `ready` holds.
    pub fn start(
        name: &str,
        mut command: Command,
        log: &Path,
        ready: impl Fn() -> bool,
    ) -> anyhow::Result<Server> {
        // Its own process group, so that what it forks (nginx's workers) goes with it.
        let child = command
            .process_group(0)
            .stdout(std::fs::File::create(log)?)
            .stderr(std::fs::File::create(log.with_extension("err"))?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        // From here on, an early return kills it (and its group) on drop.
        let mut server = Server { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "{name} exited with {status}: {}",
                    std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("{name} did not become ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }
}

impl Server {
    /// The server's CPU time (user and system, all its threads) so far, in seconds. `ip netns
    /// exec` execs the server, so the child is the server itself.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let pid = self.child.id();
        process_cpu_seconds(pid).with_context(|| format!("reading /proc/{pid}/stat"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(group) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// Where the benchmarks' Wisp keeps its API token, for `wisp apply` to read.
pub fn api_token_file(work: &Path) -> std::path::PathBuf {
    work.join("wisp-api.token")
}

/// Writes each of `manifests` to a file in `work` named after `name`, and applies them in turn
/// with `wisp` to the Wisp that [`start_wisp`] started.
pub fn apply(
    lab: &Lab,
    wisp: &Path,
    work: &Path,
    name: &str,
    manifests: &[String],
) -> anyhow::Result<()> {
    let wisp = wisp.to_str().context("UTF-8 path")?;
    let token_file = api_token_file(work);
    let token_file = token_file.to_str().context("UTF-8 path")?;
    for (index, manifest) in manifests.iter().enumerate() {
        let path = work.join(format!("{name}-{index}.yaml"));
        std::fs::write(&path, manifest)?;
        let path = path.to_str().context("UTF-8 path")?;
        lab.exec_ok(
            SERVER,
            wisp,
            &["apply", "--api-token-file", token_file, "-f", path],
        )?;
    }
    Ok(())
}

/// `wisp serve` on the server side with `args`, ready when its API answers, with a fresh data
/// directory and a log named after the scenario in `work`. Per-packet logs at info level would
/// measure the log, not the server, so it logs warnings only.
pub fn start_wisp(
    lab: &Lab,
    wisp: &Path,
    work: &Path,
    scenario: &str,
    args: &[&str],
) -> anyhow::Result<Server> {
    let data = work.join(format!("wisp-{scenario}-data"));
    let _ = std::fs::remove_dir_all(&data);
    let mut command = lab.command(SERVER, wisp);
    command
        .args(["serve", "--interface", SERVER_IF, "--data-dir"])
        .arg(&data)
        .arg("--api-token-file")
        .arg(api_token_file(work))
        .args(args)
        .env("RUST_LOG", "warn");
    let log = work.join(format!("wisp-{scenario}.log"));
    Server::start("Wisp", command, &log, || {
        lab.exec(SERVER, "curl", &["-sf", "http://127.0.0.1:7480/healthz"])
            .is_ok_and(|output| output.status.success())
    })
}

/// The pids of every process in the server namespace.
fn server_pids() -> anyhow::Result<Vec<String>> {
    let output = std::process::Command::new("ip")
        .args(["netns", "pids", SERVER])
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// The CPU time (user and system) of every process in the server namespace so far, in
/// seconds; a process that has exited is no longer counted.
pub fn server_cpu_seconds() -> f64 {
    server_pids()
        .unwrap_or_default()
        .iter()
        .filter_map(|pid| process_cpu_seconds(pid.parse().ok()?))
        .sum()
}

/// The time `core` has spent in softirq so far, in seconds (`/proc/stat`): where the kernel
/// receives packets, and where the XDP gate drops them.
pub fn softirq_seconds(core: usize) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{core}");
    // cpuN user nice system idle iowait irq softirq ...
    let ticks = stat
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            if fields.next() == Some(&*name) {
                fields.nth(6)
            } else {
                None
            }
        })
        .and_then(|ticks| ticks.parse::<f64>().ok())
        .with_context(|| format!("no softirq time for {name} in /proc/stat"))?;
    Ok(ticks / clock_ticks_per_second())
}

/// The unit of `/proc`'s CPU times.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// A process's CPU time (user and system, all its threads) so far, in seconds.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces; utime and
    // stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

/// Starts measuring peak memory afresh (the kernel's VmHWM reset), so that a setup step such
/// as a large apply is not counted in what follows.
pub fn reset_peak_memory() -> anyhow::Result<()> {
    for pid in server_pids()? {
        // A process that has just exited has nothing to reset.
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
    Ok(())
}

/// The peak resident memory (VmHWM) of every process in the server namespace, in MiB.
pub fn peak_memory_mib() -> anyhow::Result<f64> {
    let mut kib = 0u64;
    for pid in server_pids()? {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        kib += status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(kib as f64 / 1024.0)
}
