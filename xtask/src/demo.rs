//! `cargo xtask demo`: a throwaway lab (a namespace with a bridge), `wisp serve` on the bridge
//! with the Tinkerbell demo resources, and then the main job: a VM with real firmware netboots
//! through Wisp (DHCP, iPXE over TFTP, the iPXE script and kernel over HTTP) while a machine
//! Wisp does not own is dropped by the XDP gate.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use wisp_images::qemu::{Firmware, Vm};

use crate::shell::{run, step};

const LAB: &str = "wisp-demo";
const STRANGER: &str = "wisp-demo-stranger";
const VM_MAC: &str = "52:54:00:57:49:50";
const STRANGER_MAC: &str = "52:54:00:de:ad:01";
const GREETING: &str = "Hello from demo-vm: netbooted by Wisp";

/// Removes the namespaces (and whatever runs in them) when the demo ends, however it ends.
struct Lab;

impl Lab {
    fn create() -> anyhow::Result<Lab> {
        Lab::remove();
        let lab = Lab;
        run("ip", &["netns", "add", LAB])?;
        run("ip", &["netns", "add", STRANGER])?;
        in_ns(LAB, &["ip", "link", "set", "lo", "up"])?;
        in_ns(LAB, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(LAB, &["ip", "addr", "add", "10.77.0.1/24", "dev", "br0"])?;
        in_ns(LAB, &["ip", "link", "set", "br0", "up"])?;
        in_ns(
            LAB,
            &[
                "ip", "link", "add", "port0", "type", "veth", "peer", "name", "eth0", "netns",
                STRANGER,
            ],
        )?;
        in_ns(LAB, &["ip", "link", "set", "port0", "master", "br0", "up"])?;
        in_ns(
            STRANGER,
            &["ip", "link", "set", "eth0", "address", STRANGER_MAC],
        )?;
        in_ns(STRANGER, &["ip", "link", "set", "eth0", "up"])?;
        Ok(lab)
    }

    fn remove() {
        for netns in [LAB, STRANGER] {
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

/// Prints the log lines that contain any of `needles` as they are written, until `done` holds
/// or `limit` passes. Returns whether `done` held.
fn follow(log: &Path, needles: &[&str], done: impl Fn() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut printed = 0;
    loop {
        let finished = done();
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| needles.iter().any(|n| line.contains(n)))
            .collect();
        for line in lines.iter().skip(printed) {
            println!("  {line}");
        }
        printed = printed.max(lines.len());
        if finished {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(250));
    }
}

/// Prints the lines of `text` that contain any of `needles`.
fn show(text: &str, needles: &[&str]) {
    for line in text
        .lines()
        .filter(|line| needles.iter().any(|n| line.contains(n)))
    {
        println!("  {}", line.trim_end_matches('\r'));
    }
}

pub fn show_main_job(root: &Path) -> anyhow::Result<()> {
    step("cargo build --release");
    run("cargo", &["build", "--release", "--bins"])?;
    let wisp = root.join("target/release/wisp");
    let wisp = wisp.to_str().context("the repository path is not UTF-8")?;
    let work = std::env::temp_dir().join("wisp-demo");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    step("boot assets: Debian's kernel and a one-line busybox initramfs");
    wisp_images::hello::write_assets(
        &work.join("assets"),
        &root.join("target/images-cache"),
        GREETING,
    )?;

    step(&format!(
        "lab: namespace {LAB} with bridge br0 (10.77.0.1/24)"
    ));
    let _lab = Lab::create()?;

    step("wisp serve --interface br0");
    let log = work.join("wisp.log");
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
        .arg(work.join("data"))
        .arg("--assets-dir")
        .arg(work.join("assets"))
        .env("NO_COLOR", "1")
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
    step("resources: the Tinkerbell demo, unchanged, and the lab's VM");
    cli(&[
        "apply",
        "-f",
        "examples/tinkerbell-demo",
        "-f",
        "examples/lab/demo-vm.yaml",
    ])?;
    cli(&["get", "hardware"])?;
    cli(&["get", "workflows"])?;

    step(&format!(
        "a VM (SeaBIOS and its iPXE ROM, MAC {VM_MAC}) netboots through Wisp"
    ));
    let started = Instant::now();
    let vm = Vm::start(LAB, "br0", "tap0", VM_MAC, Firmware::Bios, &work, None)?;
    println!("Wisp's side, as it happens:");
    let booted = follow(
        &log,
        &["DHCP reply", "TFTP read request", "iPXE script served"],
        || vm.serial_output().contains(GREETING),
        Duration::from_secs(180),
    );
    if !booted {
        bail!(
            "the VM did not boot within 180 s; its console:\n{}",
            vm.serial_output()
        );
    }
    println!(
        "booted in {:.0} s under software emulation. The VM's serial console:",
        started.elapsed().as_secs_f64()
    );
    show(
        &vm.serial_output(),
        &[
            "Filename:",
            "undionly.kpxe :",
            "auto.ipxe",
            "vmlinuz",
            GREETING,
        ],
    );
    drop(vm);

    step(&format!(
        "a machine Wisp does not own ({STRANGER_MAC}) asks for DHCP: busybox udhcpc"
    ));
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            STRANGER,
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
    step("the XDP gate: the stranger never reached userspace");
    cli(&["xdp", "stats"])?;
    cli(&["get", "leases"])?;

    step("SIGTERM: the gate detaches");
    run("kill", &["-TERM", &daemon.id().to_string()])?;
    let status = daemon.wait()?;
    show(
        &std::fs::read_to_string(&log)?,
        &["gate detached", "shut down"],
    );
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
