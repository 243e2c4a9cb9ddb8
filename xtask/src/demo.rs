//! `cargo xtask demo`: a throwaway lab (a namespace with a bridge, a client namespace on it),
//! `wisp serve` on the bridge with the Tinkerbell demo resources, and real DHCP DISCOVERs from
//! a machine Wisp owns and from one it does not, judged by the XDP gate.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::shell::{run, step};

const LAB: &str = "wisp-demo";
const CLIENT: &str = "wisp-demo-client";
const OWNED_MAC: &str = "1c:69:7a:11:22:33";
const STRANGER_MAC: &str = "52:54:00:de:ad:01";

/// Removes the namespaces (and whatever runs in them) when the demo ends, however it ends.
struct Lab;

impl Lab {
    fn create() -> anyhow::Result<Lab> {
        Lab::remove();
        let lab = Lab;
        run("ip", &["netns", "add", LAB])?;
        run("ip", &["netns", "add", CLIENT])?;
        in_ns(LAB, &["ip", "link", "set", "lo", "up"])?;
        in_ns(LAB, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(LAB, &["ip", "addr", "add", "10.77.0.1/24", "dev", "br0"])?;
        in_ns(LAB, &["ip", "link", "set", "br0", "up"])?;
        in_ns(
            LAB,
            &[
                "ip", "link", "add", "port0", "type", "veth", "peer", "name", "eth0", "netns",
                CLIENT,
            ],
        )?;
        in_ns(LAB, &["ip", "link", "set", "port0", "master", "br0", "up"])?;
        in_ns(CLIENT, &["ip", "link", "set", "lo", "up"])?;
        Ok(lab)
    }

    fn remove() {
        for netns in [LAB, CLIENT] {
            if let Ok(output) = Command::new("ip").args(["netns", "pids", netns]).output() {
                for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-TERM", pid]).status();
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", netns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        Lab::remove();
        println!("\nlab removed");
    }
}

fn in_ns(netns: &str, command: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["netns", "exec", netns];
    args.extend(command);
    run("ip", &args)
}

pub fn show(root: &Path) -> anyhow::Result<()> {
    step("cargo build --release");
    run("cargo", &["build", "--release", "--bins"])?;
    let wisp = root.join("target/release/wisp");
    let wisp = wisp.to_str().context("the repository path is not UTF-8")?;
    let data_dir = std::env::temp_dir().join("wisp-demo-data");
    let _ = std::fs::remove_dir_all(&data_dir);

    step(&format!(
        "lab: namespace {LAB} with bridge br0 (10.77.0.1/24); client namespace {CLIENT} on port0"
    ));
    let _lab = Lab::create()?;

    step("wisp serve --interface br0");
    let log = std::env::temp_dir().join("wisp-demo.log");
    let mut daemon = Command::new("ip")
        .args([
            "netns",
            "exec",
            LAB,
            wisp,
            "serve",
            "--interface",
            "br0",
            "--data-dir",
        ])
        .arg(&data_dir)
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting wisp serve")?;
    wait_ready(&mut daemon, &log)?;
    print!("{}", std::fs::read_to_string(&log)?);

    let cli = |args: &[&str]| -> anyhow::Result<()> {
        println!("$ wisp {}", args.join(" "));
        let mut full = vec!["netns", "exec", LAB, wisp];
        full.extend(args);
        run("ip", &full)
    };
    step("the Tinkerbell demo resources, applied unchanged");
    cli(&["apply", "-f", "examples/tinkerbell-demo"])?;
    cli(&["get", "hardware"])?;
    cli(&["get", "workflows"])?;

    for (who, mac) in [
        ("a machine Wisp owns", OWNED_MAC),
        ("a stranger (another DHCP server's machine)", STRANGER_MAC),
    ] {
        step(&format!(
            "DHCP DISCOVERs from {who}: {mac}, sent by busybox udhcpc"
        ));
        in_ns(CLIENT, &["ip", "link", "set", "eth0", "down"])?;
        in_ns(CLIENT, &["ip", "link", "set", "eth0", "address", mac])?;
        in_ns(CLIENT, &["ip", "link", "set", "eth0", "up"])?;
        // No lease is offered yet (that is the DHCP server's job); udhcpc gives up after 2 tries.
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                CLIENT,
                "busybox",
                "udhcpc",
                "-i",
                "eth0",
                "-n",
                "-q",
                "-t",
                "2",
                "-T",
                "1",
                "-s",
                "/bin/true",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    step("what reached Wisp's DHCP socket");
    let received = std::fs::read_to_string(&log)?;
    for line in received
        .lines()
        .filter(|line| line.contains("DHCP message received"))
    {
        println!("{line}");
    }
    step("the gate's counters: the stranger never reached userspace");
    cli(&["xdp", "stats"])?;

    step("SIGTERM: the gate detaches");
    run("kill", &["-TERM", &daemon.id().to_string()])?;
    let status = daemon.wait()?;
    let after = std::fs::read_to_string(&log)?;
    for line in after
        .lines()
        .filter(|line| line.contains("gate detached") || line.contains("shut down"))
    {
        println!("{line}");
    }
    if !status.success() {
        bail!("wisp serve exited with {status}");
    }
    Ok(())
}

fn wait_ready(daemon: &mut Child, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = daemon.try_wait()? {
            bail!(
                "wisp serve exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let ready = Command::new("ip")
            .args([
                "netns",
                "exec",
                LAB,
                "curl",
                "-sf",
                "http://127.0.0.1:7480/healthz",
            ])
            .stdout(Stdio::null())
            .status()?
            .success();
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("wisp serve did not answer within 20 s");
        }
        sleep(Duration::from_millis(100));
    }
}
