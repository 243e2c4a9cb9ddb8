//! The benchmark lab: two network namespaces joined by a veth pair, the server side
//! (`srv`, 10.88.0.1/16) where each server under test runs in turn, and the client side (`cli`,
//! 10.88.0.2/16) where the load generators run. Removed on drop, with what runs in it.
use std::{
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

pub struct Lab;

impl Lab {
    pub fn create() -> anyhow::Result<Lab> {
        Lab::remove();
        for netns in [SERVER, CLIENT] {
            crate::shell::run("ip", &["netns", "add", netns])?;
        }
        let lab = Lab;
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

    pub fn command(&self, netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns]).arg(program);
        command
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

impl Drop for Lab {
    fn drop(&mut self) {
        Lab::remove();
    }
}

/// A server under test, killed (with its process group) on drop.
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
        let mut child = command
            .stdout(std::fs::File::create(log)?)
            .stderr(std::fs::File::create(log.with_extension("err"))?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited with {status}: {}",
                    std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("{name} did not become ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Server { child })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `wisp serve` on the server side with `args`, ready when its API answers. Per-packet logs at
/// info level would measure the log, not the server, so it logs warnings only.
pub fn start_wisp(
    lab: &Lab,
    wisp: &Path,
    data: &Path,
    args: &[&str],
    log: &Path,
) -> anyhow::Result<Server> {
    let _ = std::fs::remove_dir_all(data);
    let mut command = lab.command(SERVER, wisp);
    command
        .args(["serve", "--interface", SERVER_IF, "--data-dir"])
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn");
    Server::start("Wisp", command, log, || {
        lab.exec(SERVER, "curl", &["-sf", "http://127.0.0.1:7480/healthz"])
            .is_ok_and(|output| output.status.success())
    })
}
