//! `cargo xtask demo --ha`: two appliances share a three-member etcd cluster, each appliance
//! and each member in a namespace of its own on the lab's bridge. A VM netboots through the
//! DHCP leader, A; while its worker streams the OS image from A, A is killed with SIGKILL. B
//! takes the DHCP leadership over, the worker and image2disk move to B, the workflow ends
//! SUCCESS and the VM boots its installed system. Then an etcd member is killed, and B goes
//! on writing with the two left.
use std::{
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use wisp_images::{
    disk::{self, ending_with, REBOOT_ACTION},
    etcd::Etcd,
    qemu::{Firmware, Vm},
};

use super::{cli, follow, prepare, show, start_wisp, Lab, LAB, VM_MAC};
use crate::shell::{run, step};

const APPLIANCE_B: &str = "wisp-demo-b";
/// The etcd members: their namespaces, the lab's bridge ports to them, their addresses.
const MEMBERS: [(&str, &str, &str); 3] = [
    ("wisp-demo-e1", "ve1", "192.168.1.11"),
    ("wisp-demo-e2", "ve2", "192.168.1.12"),
    ("wisp-demo-e3", "ve3", "192.168.1.13"),
];

pub fn show_failover(root: &Path) -> anyhow::Result<()> {
    let prepared = prepare(root, "wisp-demo-ha")?;
    let work = &prepared.work;

    step("lab: bridge br0 (192.168.1.1/24), with appliance B and three etcd members each in a namespace of its own on it");
    let mut lab = Lab::create(&[APPLIANCE_B, MEMBERS[0].0, MEMBERS[1].0, MEMBERS[2].0])?;
    for (netns, port, address) in MEMBERS {
        lab.join(netns, port, None, Some(&format!("{address}/24")))?;
    }
    lab.join(APPLIANCE_B, "vb", None, Some("192.168.1.2/24"))?;
    let mut etcd = Etcd::cluster(&MEMBERS.map(|(netns, _, address)| (netns, address)), work)?;
    let store = format!("--store={}", etcd[0].url);
    etcdctl(MEMBERS[0].0, &["member", "list", "-w", "table"]);

    step(&format!(
        "appliance A (192.168.1.1, on the bridge) and appliance B (192.168.1.2): wisp serve {store}"
    ));
    let (mut a, a_log) = start_wisp(&prepared, LAB, "br0", "a", &[&store])?;
    let leads = |log: &Path| {
        std::fs::read_to_string(log).is_ok_and(|text| text.contains("leadership taken"))
    };
    follow(
        &a_log,
        0,
        &["leadership taken", "registered"],
        || leads(&a_log),
        Duration::from_secs(10),
    );
    let (mut b, b_log) = start_wisp(&prepared, APPLIANCE_B, "eth0", "b", &[&store])?;
    let (_, b_read) = follow(&b_log, 0, &["registered"], || true, Duration::from_secs(1));
    println!("B stands by for DHCP: A holds the segment's leadership in etcd.");
    etcdctl(MEMBERS[0].0, &["get", "--prefix", "/wisp/leaders/"]);

    step(
        "the Tinkerbell example, adapted and ending with a reboot, applied through B; A serves it",
    );
    let resources = work.join("install-demo-os.yaml");
    std::fs::write(&resources, ending_with(&prepared.adapted, REBOOT_ACTION))?;
    let resources = resources.to_str().context("UTF-8 path")?;
    cli(&prepared, APPLIANCE_B, "b", &["apply", "-f", resources])?;
    cli(
        &prepared,
        LAB,
        "a",
        &["get", "workflows", "-n", "tink-system"],
    )?;

    step(&format!(
        "a VM (SeaBIOS and its iPXE ROM, MAC {VM_MAC}, blank NVMe disk) netboots through A"
    ));
    let disk = work.join("nvme.raw");
    std::fs::File::create(&disk)?.set_len(disk::BLANK_DISK_BYTES)?;
    let vm = Vm::start(
        LAB,
        "br0",
        "tap0",
        VM_MAC,
        Firmware::Bios,
        work,
        Some(&disk),
    )?;
    let started = Instant::now();
    let handed_out =
        || std::fs::read_to_string(&a_log).is_ok_and(|text| text.contains("action handed out"));
    let (provisioning, _) = follow(
        &a_log,
        0,
        &[
            "DHCP reply",
            "TFTP read request",
            "iPXE script served",
            "action handed out",
        ],
        handed_out,
        Duration::from_secs(240),
    );
    if !provisioning {
        bail!(
            "the VM did not start its workflow within 240 s; its console:\n{}",
            vm.serial_output()
        );
    }

    step("the worker streams the image from A: A is killed with SIGKILL");
    run("kill", &["-KILL", &a.id().to_string()])?;
    a.wait()?;
    println!(
        "A killed {:.0} s after the VM powered on",
        started.elapsed().as_secs_f64()
    );
    println!("B's side, as it happens:");
    let installed = || vm.serial_output().contains("== end");
    let (done, _) = follow(
        &b_log,
        b_read,
        &[
            "leadership taken",
            "answering DHCP now",
            "DHCP reply",
            "iPXE script served",
            "action handed out",
        ],
        installed,
        Duration::from_secs(420),
    );
    if !done {
        bail!(
            "the VM's installed system did not boot within 420 s; its console:\n{}",
            vm.serial_output()
        );
    }
    println!(
        "provisioned through the failover and booted from disk in {:.0} s under software emulation. The VM's serial console:",
        started.elapsed().as_secs_f64()
    );
    let console = vm.serial_output();
    show(
        &console,
        &[
            "Wisp: provisioning",
            "trying the next appliance",
            "fetching the image from the next appliance",
            "Wisp: workflow complete",
        ],
    );
    if let Some(at) = console.find(disk::INSTALLED_BANNER) {
        for line in console[at..].lines().take(6) {
            println!("  {}", line.trim_end_matches('\r'));
        }
    }
    cli(
        &prepared,
        APPLIANCE_B,
        "b",
        &["get", "workflows", "-n", "tink-system"],
    )?;
    drop(vm);

    step("etcd member m1 is killed: two of three keep the quorum, and B writes on");
    drop(etcd.remove(0));
    etcdctl(MEMBERS[1].0, &["endpoint", "health", "--cluster"]);
    let spare = work.join("spare.yaml");
    std::fs::write(
        &spare,
        "apiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata: {name: spare, namespace: tink-system}\n\
         spec:\n  interfaces:\n    - dhcp: {mac: \"1c:69:7a:11:22:99\", ip: {address: 192.168.1.99, netmask: 255.255.255.0}}\n",
    )?;
    let spare = spare.to_str().context("UTF-8 path")?;
    cli(&prepared, APPLIANCE_B, "b", &["apply", "-f", spare])?;
    cli(
        &prepared,
        APPLIANCE_B,
        "b",
        &["get", "hardware", "-n", "tink-system"],
    )?;

    step("SIGTERM: B detaches its gate");
    run("kill", &["-TERM", &b.id().to_string()])?;
    let status = b.wait()?;
    if !status.success() {
        bail!("B's wisp serve exited with {status}");
    }
    // Killed members and appliances first, then the namespaces.
    drop(etcd);
    sleep(Duration::from_millis(100));
    drop(lab);
    Ok(())
}

/// `etcdctl ARGS` against the cluster, from a member's namespace, printed as it is; a failing
/// member shows in its output.
fn etcdctl(netns: &str, args: &[&str]) {
    let endpoints = MEMBERS
        .map(|(_, _, address)| format!("http://{address}:2379"))
        .join(",");
    println!("$ etcdctl {}", args.join(" "));
    let _ = Command::new("ip")
        .args(["netns", "exec", netns, "etcdctl", "--endpoints", &endpoints])
        .args(args)
        .stderr(Stdio::inherit())
        .status();
}
