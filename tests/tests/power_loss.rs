//! A power loss under load. Wisp runs inside a QEMU VM whose data disk bypasses the host's cache
//! (see `wisp_images::appliance`). Machines get ACKs and resources are applied, and then the VM
//! is killed, not shut down. After it boots again on the same disk, every ACKed lease and every
//! acknowledged apply is there.
//!
//! kill -9 of the daemon (dhcp.rs, resources.rs) keeps whatever the process wrote in the kernel's
//! page cache. This test loses that cache too, so only what Wisp made durable before it
//! answered can survive. The appliance runs `--lease-sync before-ack`, the setting that promises
//! ACKed leases survive a power loss (the default, `background`, promises it for a kill).
use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use wisp_images::appliance::{self, CANARY, SERVING};
use wisp_tests::{
    dhcp_wire::{acks, leases, perfdhcp, rack, Capture},
    eventually_within, hardware_yaml, repo_root, require_root,
    vm::Vm,
    wisp_binary, wisp_ok, Lab, TempDir, BRIDGE_IF,
};

const MAC: &str = "52:54:00:77:00:01";
const SERVER: &str = "http://10.99.0.1:7480";
const COMMAND_LINE: &str = "console=ttyS0 quiet panic=-1 wisp.address=10.99.0.1/24";
/// The API token, written onto the data disk before the first boot.
const TOKEN: &str = "power-loss-test-token-0123456789abcdef";

/// Kernel and initramfs of the appliance VM.
fn appliance_boot_files(work: &TempDir) -> (PathBuf, PathBuf) {
    let kernel = wisp_images::kernel::debian_kernel(&repo_root().join("target/images-cache"))
        .expect("unpack Debian's kernel");
    let initramfs = appliance::build(
        &work.0,
        &kernel,
        Path::new("/bin/busybox"),
        &wisp_binary(),
        Path::new("/usr/lib/ipxe"),
    )
    .expect("build the appliance initramfs");
    (kernel.vmlinuz, initramfs)
}

/// A 256 MiB ext4 data disk holding the API token, and the token's file on the host.
fn data_disk(work: &TempDir) -> (PathBuf, PathBuf) {
    let root = work.join("disk-root");
    std::fs::create_dir_all(&root).expect("disk root");
    let token_file = root.join(appliance::API_TOKEN);
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let disk = work.join("data.img");
    std::fs::File::create(&disk)
        .and_then(|file| file.set_len(256 << 20))
        .expect("create the disk");
    // No lazy initialisation: nothing but Wisp writes to the disk once it is up.
    let status = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            "-d",
        ])
        .arg(&root)
        .arg(&disk)
        .status()
        .expect("mkfs.ext4");
    assert!(status.success(), "mkfs.ext4 failed");
    (disk, token_file)
}

/// Boots the appliance and waits until its API answers; returns the VM and its console so far.
fn boot(lab: &Lab, work: &TempDir, files: &(PathBuf, PathBuf), disk: &Path, tap: &str) -> Vm {
    let vm = Vm::direct(
        &lab.server.name,
        BRIDGE_IF,
        tap,
        MAC,
        &work.0,
        (&files.0, &files.1, COMMAND_LINE),
        disk,
    )
    .expect("start the appliance VM");
    vm.wait_for_serial_unless(SERVING, &["did not mount"], Duration::from_secs(180))
        .expect("the appliance started wisp serve");
    eventually_within(
        "the appliance's API answers",
        Duration::from_secs(120),
        || {
            lab.server
                .exec("curl", &["-sf", "-m", "2", &format!("{SERVER}/healthz")])
                .status
                .success()
        },
    );
    vm
}

/// `wisp apply` of `yaml`, given up after 10 s (a VM that lost power never answers): whether
/// the daemon acknowledged it.
fn applied(lab: &Lab, yaml: &str) -> bool {
    let mut child = lab
        .server
        .wisp_command()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run wisp apply");
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait for wisp apply") {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn acked_leases_and_acknowledged_applies_survive_a_power_loss() {
    require_root!();
    // The appliance is 10.99.0.1 on the lab bridge, the clients' relay (perfdhcp) 10.99.0.2.
    let lab = Lab::bridged_at("power", "10.99.0.254/24");
    let work = TempDir::new("power");
    let files = appliance_boot_files(&work);
    let (disk, token_file) = data_disk(&work);
    lab.server.use_api(SERVER, &token_file);

    let vm = boot(&lab, &work, &files, &disk, "tap-first");
    let (yaml, expected) = rack(300);
    assert!(applied(&lab, &yaml), "the rack's Hardware applies");

    // DHCP for the rack and a stream of applies, and the plug is pulled in the middle of both.
    let _buffer = wisp_tests::ReceiveBuffer::raised();
    let capture = Capture::start(&lab, &work);
    let stop = AtomicBool::new(false);
    let acknowledged_so_far = AtomicUsize::new(0);
    let acknowledged = std::thread::scope(|scope| {
        let storm = scope.spawn(|| perfdhcp(&lab, &["-R", "300", "-r", "100", "-p", "8"]));
        let applies = scope.spawn(|| {
            let mut acknowledged = Vec::new();
            for index in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("applied-{index}");
                let mac = format!("02:00:00:01:{:02x}:{:02x}", index >> 8, index & 0xff);
                let address = format!("10.98.{}.{}", index / 250, index % 250 + 1);
                if applied(&lab, &hardware_yaml(&name, &mac, &address)) {
                    acknowledged.push(name);
                    acknowledged_so_far.fetch_add(1, Ordering::Relaxed);
                }
            }
            acknowledged
        });
        std::thread::sleep(Duration::from_secs(4));
        // Under TCG one apply can take seconds (a cold host more): the plug is pulled once at
        // least one was acknowledged, or a minute on, which the assertions below then report.
        let deadline = Instant::now() + Duration::from_secs(60);
        while acknowledged_so_far.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        vm.pull_the_plug(&lab.server.name, "tap-first");
        storm.join().expect("perfdhcp ran");
        applies.join().expect("the applies ran")
    });
    let capture = capture.stop(&lab);
    let acked = acks(&lab, &capture);
    assert!(
        acked.len() >= 10,
        "the storm got ACKs before the power went: {}",
        acked.len()
    );
    assert!(
        !acknowledged.is_empty(),
        "applies were acknowledged before the power went"
    );

    let vm = boot(&lab, &work, &files, &disk, "tap-second");
    // What the first boot wrote without a sync is gone: the kill lost the VM's page cache, so
    // what survives below was made durable by Wisp itself.
    let console = vm.serial_output();
    let canary = console
        .lines()
        .find(|line| line.starts_with(CANARY))
        .expect("the canary line");
    assert_eq!(
        canary.trim_end(),
        format!("{CANARY}."),
        "the previous boot's unsynced canary survived the kill, so the kill was no power loss"
    );

    let stored = leases(&lab);
    for (mac, address) in &acked {
        assert_eq!(
            stored.get(mac),
            Some(address),
            "{mac} was ACKed {address} before the power loss, and the lease is gone"
        );
        assert_eq!(
            expected.get(mac),
            Some(address),
            "{mac} got its reservation"
        );
    }
    let mut holders = std::collections::BTreeMap::new();
    for (mac, address) in &stored {
        if let Some(other) = holders.insert(address, mac) {
            panic!("{address} is held by {mac} and {other}");
        }
    }
    let listed = wisp_ok(&lab.server, &["get", "hardware", "-n", "lab", "-o", "json"]);
    let hardware: Value = serde_json::from_str(&listed)
        .unwrap_or_else(|err| panic!("`wisp get hardware` printed no JSON ({err}): {listed:?}"));
    let names: BTreeSet<&str> = hardware["items"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|h| h["metadata"]["name"].as_str())
        .collect();
    for name in &acknowledged {
        assert!(
            names.contains(name.as_str()),
            "the apply of {name} was acknowledged before the power loss, and it is gone"
        );
    }
    eprintln!(
        "power loss: {} ACKed leases and {} acknowledged applies survived",
        acked.len(),
        acknowledged.len()
    );
}
