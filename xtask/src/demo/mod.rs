//! `cargo xtask demo`: a throwaway lab (a namespace with a bridge on 192.168.1.1/24, the
//! network of the Tinkerbell example), `wisp serve` on the bridge, and then the main job,
//! zero-touch: a powered-off VM with real firmware and a blank NVMe disk has a BMC (OpenIPMI's
//! simulator). Applying the Tinkerbell example, with the BMC parts a Tinkerbell user adds, is all
//! it takes: Wisp powers the VM on through IPMI with a one-time PXE boot, the VM netboots through
//! Wisp (DHCP, iPXE over TFTP, the iPXE script, kernel and initramfs over HTTP) into Wisp's
//! provisioning OS, whose worker streams an OS image to the disk, runs a command in it and
//! writes a file; Wisp then turns netboot off and power-cycles the VM into the installed system.
//! Meanwhile a machine Wisp does not own is dropped by the XDP gate.
mod ha;

pub use ha::show_failover;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use wisp_images::{
    disk,
    ipmi_sim::{zero_touch_example, Chassis, IpmiSim},
    qemu::{command_line, BootFirst, Firmware, Vm},
};

use crate::shell::{run, step};

pub(crate) const LAB: &str = "wisp-demo";
const STRANGER: &str = "wisp-demo-stranger";
/// The MAC of the Tinkerbell example's Hardware, `nuc-demo`.
const VM_MAC: &str = "1c:69:7a:11:22:33";
const STRANGER_MAC: &str = "52:54:00:de:ad:01";
const IMAGE_URL: &str = "http://192.168.1.1:8080/assets/demo-os.raw.gz";
/// The VM's BMC listens on the lab namespace's loopback.
const BMC_PORT: u16 = 6230;
const BMC_PASSWORD: &str = "demo-ipmi-Passw0rd";

/// The lab namespace with its bridge (192.168.1.1/24, the network of the Tinkerbell example),
/// and the hosts that join it; removed, with whatever runs in them, when the demo ends, however
/// it ends.
pub(crate) struct Lab {
    namespaces: Vec<&'static str>,
}

impl Lab {
    pub(crate) fn create(hosts: &[&'static str]) -> anyhow::Result<Lab> {
        crate::shell::remove_netns(&[&[LAB][..], hosts].concat(), "TERM");
        let lab = Lab {
            namespaces: vec![LAB],
        };
        run("ip", &["netns", "add", LAB])?;
        in_ns(LAB, &["ip", "link", "set", "lo", "up"])?;
        in_ns(LAB, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(LAB, &["ip", "addr", "add", "192.168.1.1/24", "dev", "br0"])?;
        in_ns(LAB, &["ip", "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// A host in a namespace of its own, its `eth0` (with `mac` and `cidr`, if given) on the
    /// bridge through the lab's `port`.
    fn join(
        &mut self,
        netns: &'static str,
        port: &str,
        mac: Option<&str>,
        cidr: Option<&str>,
    ) -> anyhow::Result<()> {
        run("ip", &["netns", "add", netns])?;
        self.namespaces.push(netns);
        in_ns(netns, &["ip", "link", "set", "lo", "up"])?;
        in_ns(
            LAB,
            &[
                "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns,
            ],
        )?;
        in_ns(LAB, &["ip", "link", "set", port, "master", "br0", "up"])?;
        if let Some(mac) = mac {
            in_ns(netns, &["ip", "link", "set", "eth0", "address", mac])?;
        }
        if let Some(cidr) = cidr {
            in_ns(netns, &["ip", "addr", "add", cidr, "dev", "eth0"])?;
        }
        in_ns(netns, &["ip", "link", "set", "eth0", "up"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        crate::shell::remove_netns(&self.namespaces, "TERM");
        println!("\nlab removed");
    }
}

fn in_ns(netns: &str, command: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["netns", "exec", netns];
    args.extend(command);
    run("ip", &args)
}

/// Prints the log lines that contain any of `needles` as they are written, from byte `from` of
/// the log on, until `done` holds or `limit` passes. Returns whether `done` held, and where the
/// next call should start.
fn follow(
    log: &Path,
    from: usize,
    needles: &[&str],
    done: impl Fn() -> bool,
    limit: Duration,
) -> (bool, usize) {
    let deadline = Instant::now() + limit;
    let mut position = from;
    loop {
        let finished = done();
        let text = std::fs::read_to_string(log).unwrap_or_default();
        // Whole lines only: the last one may still be being written.
        let end = text.rfind('\n').map_or(position, |at| at + 1).max(position);
        for line in text[position..end]
            .lines()
            .filter(|line| needles.iter().any(|n| line.contains(n)))
        {
            println!("  {line}");
        }
        position = end;
        if finished {
            return (true, position);
        }
        if Instant::now() > deadline {
            return (false, position);
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

/// What a demo installs, built once: the release binaries, and in `work`, the provisioning OS
/// and the OS image in `assets`, and the Tinkerbell example adapted to install that image.
pub(crate) struct Prepared {
    wisp: String,
    pub(crate) work: PathBuf,
    assets: PathBuf,
    pub(crate) adapted: String,
}

fn prepare(root: &Path, name: &str) -> anyhow::Result<Prepared> {
    step("cargo build --release");
    run("cargo", &["build", "--release", "--bins"])?;
    prepare_with(&root.join("target/release/wisp"), root, name)
}

/// As [`prepare`], with the `wisp` binary given (already built).
pub(crate) fn prepare_with(wisp: &Path, root: &Path, name: &str) -> anyhow::Result<Prepared> {
    let wisp = wisp.to_str().context("the repository path is not UTF-8")?;
    let work = std::env::temp_dir().join(name);
    let _ = std::fs::remove_dir_all(&work);
    let assets = work.join("assets");
    std::fs::create_dir_all(&assets)?;

    let os = crate::images::build(root)?;
    std::fs::copy(&os.vmlinuz, assets.join("vmlinuz"))?;
    std::fs::copy(&os.initramfs, assets.join("initramfs"))?;
    step("the OS image to install: a Debian root (debootstrap), Debian's kernel, GRUB");
    let cache = root.join("target/images-cache");
    let kernel = wisp_images::kernel::debian_kernel(&cache)?;
    wisp_images::disk::build_gzip(
        &assets.join("demo-os.raw.gz"),
        &wisp_images::debian::root(&cache)?,
        &kernel,
        Path::new("/bin/busybox"),
    )?;
    let adapted =
        disk::adapted_tinkerbell_example(&root.join("examples/tinkerbell-demo"), IMAGE_URL)?;
    Ok(Prepared {
        wisp: wisp.to_string(),
        work,
        assets,
        adapted,
    })
}

/// `wisp serve` in `netns` on `interface`, with its data in `work/<name>`, serving the demo's
/// assets, with `extra` flags; its log in `work/<name>.log`. Returns once its API answers.
pub(crate) fn start_wisp(
    prepared: &Prepared,
    netns: &str,
    interface: &str,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<(Child, PathBuf)> {
    let log = prepared.work.join(format!("{name}.log"));
    let mut daemon = Command::new("ip")
        .args(["netns", "exec", netns, &prepared.wisp, "serve"])
        .args(["--interface", interface, "--data-dir"])
        .arg(prepared.work.join(name))
        .arg("--assets-dir")
        .arg(&prepared.assets)
        .args(extra)
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting wisp serve")?;
    wait_ready(netns, &mut daemon, &log)?;
    Ok((daemon, log))
}

/// Runs `wisp ARGS` in `netns`, with the API token the daemon there made in `data_dir`,
/// printing the command first.
pub(crate) fn cli(
    prepared: &Prepared,
    netns: &str,
    data_dir: &str,
    args: &[&str],
) -> anyhow::Result<()> {
    println!("$ wisp {}", args.join(" "));
    let token_file = prepared.work.join(data_dir).join("api.token");
    let token_file = token_file.to_str().context("UTF-8 path")?;
    let mut full = vec!["netns", "exec", netns, &prepared.wisp];
    full.extend(args);
    crate::shell::run_with_env("ip", &full, &[("WISP_API_TOKEN_FILE", token_file)])
}

pub fn show_main_job(root: &Path) -> anyhow::Result<()> {
    let prepared = prepare(root, "wisp-demo")?;
    let work = &prepared.work;
    let resources = work.join("install-demo-os.yaml");
    std::fs::write(&resources, &prepared.adapted)?;
    let zero_touch = work.join("zero-touch.yaml");
    std::fs::write(
        &zero_touch,
        zero_touch_example(&prepared.adapted, ("127.0.0.1", BMC_PORT), BMC_PASSWORD)?,
    )?;

    step(&format!(
        "lab: namespace {LAB} with bridge br0 (192.168.1.1/24)"
    ));
    let mut lab = Lab::create(&[STRANGER])?;
    lab.join(STRANGER, "port0", Some(STRANGER_MAC), None)?;

    step("wisp serve --interface br0");
    let (mut daemon, log) = start_wisp(&prepared, LAB, "br0", "data", &[])?;
    print!("{}", std::fs::read_to_string(&log)?);
    println!(
        "The rack page: http://127.0.0.1:7480/ in namespace {LAB} (the API's address; log in \
         with {})",
        work.join("data/api.token").display()
    );
    let cli = |args: &[&str]| cli(&prepared, LAB, "data", args);
    step("resources: the Tinkerbell example, unchanged");
    cli(&["apply", "-f", "examples/tinkerbell-demo"])?;
    cli(&["get", "workflows"])?;
    step("fixed: hardwareRef names nuc-demo, and the template installs the demo image");
    cli(&["apply", "-f", resources.to_str().context("UTF-8 path")?])?;
    cli(&["get", "workflows"])?;

    step(&format!(
        "a powered-off VM (SeaBIOS and its iPXE ROM, MAC {VM_MAC}, blank NVMe disk) behind an IPMI BMC (ipmi_sim)"
    ));
    let disk = work.join("nvme.raw");
    std::fs::File::create(&disk)?.set_len(disk::BLANK_DISK_BYTES)?;
    for args in [
        ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"].as_slice(),
        ["ip", "link", "set", "tap0", "master", "br0", "up"].as_slice(),
    ] {
        in_ns(LAB, args)?;
    }
    let qemu = |first| command_line("tap0", VM_MAC, Firmware::Bios, work, &disk, first);
    let bmc = IpmiSim::start(
        LAB,
        work,
        ("127.0.0.1", BMC_PORT),
        BMC_PASSWORD,
        Chassis::Vm {
            network_first: qemu(BootFirst::Network)?,
            disk_first: qemu(BootFirst::Disk)?,
        },
    )?;
    let vm = Vm::watching(work.join("tap0-serial.log"));
    step("zero-touch: the BMC's Secret and Machine, bmcRef, and bootOptions {toggleAllowNetboot, bootMode: netboot}");
    cli(&["apply", "-f", zero_touch.to_str().context("UTF-8 path")?])?;
    let started = Instant::now();
    println!("Wisp's side, as it happens:");
    let (provisioning, read) = follow(
        &log,
        0,
        &[
            "DHCP reply",
            "TFTP read request",
            "iPXE script served",
            "action handed out",
        ],
        || std::fs::read_to_string(&log).is_ok_and(|text| text.contains("action handed out")),
        Duration::from_secs(240),
    );
    if !provisioning {
        bail!(
            "the VM did not start its workflow within 240 s; its console:\n{}",
            vm.serial_output()
        );
    }
    cli(&["get", "jobs", "-n", "tink-system"])?;
    cli(&["get", "machines", "-n", "tink-system"])?;
    step("the rack page, in headless Chromium, while the VM runs its actions");
    show_rack_page(&prepared, &format!("lab with the VM {VM_MAC}"))?;
    step("the worker runs the workflow: wisp watch workflow demo-wf");
    cli(&["watch", "workflow", "demo-wf", "-n", "tink-system"])?;
    cli(&["describe", "workflow", "demo-wf", "-n", "tink-system"])?;

    step("Wisp turns netboot off and power-cycles the VM into its disk");
    let (installed, _) = follow(
        &log,
        read,
        &["DHCP reply", "iPXE script served"],
        || vm.serial_output().contains("== end"),
        Duration::from_secs(180),
    );
    if !installed {
        bail!(
            "the installed system did not boot within 180 s; the console:\n{}",
            vm.serial_output()
        );
    }
    println!(
        "provisioned and booted from disk in {:.0} s under software emulation. The VM's serial console:",
        started.elapsed().as_secs_f64()
    );
    let console = vm.serial_output();
    show(
        &console,
        &[
            "Wisp: provisioning",
            "Wisp provisioning OS",
            "Wisp: eth0",
            "Wisp: workflow complete",
        ],
    );
    if let Some(at) = console.find(disk::INSTALLED_BANNER) {
        for line in console[at..]
            .lines()
            .take_while(|line| !line.contains("reboot: Power down"))
        {
            println!("  {}", line.trim_end_matches('\r'));
        }
    }
    cli(&["get", "jobs", "-n", "tink-system"])?;
    println!("The BMC's chassis control, as ipmi_sim called it:");
    for line in bmc.calls().lines().filter(|line| line.starts_with("set")) {
        println!("  {line}");
    }
    drop(bmc);

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

/// Opens the rack page of the daemon in the lab in headless Chromium, waits for the VM's row
/// to show an action, prints it, and keeps a screenshot in the demo's directory.
fn show_rack_page(prepared: &Prepared, what: &str) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(prepared.work.join("data/api.token"))?;
    let mut browser = wisp_images::browser::Browser::open(
        LAB,
        &format!("http://127.0.0.1:7480/#token={}", token.trim()),
        (1400, 700),
        &prepared.work.join("chromium"),
    )?;
    let row = format!("document.querySelector('#grid .cell[data-mac=\"{VM_MAC}\"]')");
    browser.wait_for(
        "the VM's action",
        &format!("{row} !== null && {row}.dataset.stage === 'action'"),
        Duration::from_secs(60),
    )?;
    // Its page, with the timeline; and while image2disk streams, how far it is (an image that
    // streams faster than the page looks shows none).
    browser.eval(&format!("{row}.click()"))?;
    let streaming = browser.wait_for(
        "the image's progress",
        &format!("{row}.title.includes('/s')"),
        Duration::from_secs(20),
    );
    if streaming.is_err() {
        println!("  (the image streamed before the page showed its progress)");
    }
    let shown = browser.eval(&format!("{row}.title"))?;
    println!("  the page shows: {}", shown.as_str().unwrap_or_default());
    let shot = prepared.work.join("rack.png");
    std::fs::write(&shot, browser.screenshot()?)?;
    println!("  a screenshot of the page ({what}): {}", shot.display());
    Ok(())
}

fn wait_ready(netns: &str, daemon: &mut Child, log: &Path) -> anyhow::Result<()> {
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
                netns,
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
