//! Appliances sharing one etcd cluster (`--store etcd://...`): what one applies, the others
//! serve, their XDP gates included, within a second, from the store's watch; one answers DHCP
//! and another takes over when it dies; and a VM mid-install survives the loss of the
//! appliance it was installing from, then of an etcd member.
use std::time::Duration;

use wisp_images::{
    disk::{ending_with, REBOOT_ACTION},
    etcd::Etcd,
};

use wisp_tests::{
    apply_ok,
    dhcp_wire::{acks, leases_on, perfdhcp, rack, Capture},
    eventually_within, gate_stats, hardware_yaml, require_root,
    vm::{assert_installed, Firmware, InstallLab, Vm},
    wisp_ok, Daemon, Lab, Netns, TempDir, BRIDGE_IF, CLIENT_IF, SERVER_IF,
};

/// A lab with a real etcd on the server side, and the flag that points an appliance at it:
/// appliance A runs beside it, appliance B across the link.
fn shared_store(purpose: &str) -> (Lab, TempDir, Etcd, String) {
    let lab = Lab::new(purpose);
    let work = TempDir::new(purpose);
    let etcd = Etcd::start(&lab.server.name, "10.99.0.1", &work.0).expect("etcd");
    let store = format!("--store={}", etcd.url);
    (lab, work, etcd, store)
}

#[test]
fn what_one_appliance_applies_the_other_serves_within_a_second() {
    require_root!();
    let (lab, work, _etcd, store) = shared_store("ha-share");
    let _a = Daemon::start(&lab.server, SERVER_IF, &work.join("a"), &[&store]);
    let _b = Daemon::start(&lab.client, CLIENT_IF, &work.join("b"), &[&store]);

    apply_ok(
        &lab.server,
        &hardware_yaml("shared", "1c:69:7a:00:00:31", "10.99.0.31"),
    );
    // B serves it: its resources and its gate's allowlist.
    eventually_within(
        "B's gate admits the MAC A applied",
        Duration::from_secs(1),
        || gate_stats(&lab.client).1["allowlist_size"] == 1,
    );
    let seen = wisp_ok(&lab.client, &["get", "hardware", "-n", "lab", "-o", "json"]);
    assert!(seen.contains("1c:69:7a:00:00:31"), "{seen}");
    // A change through B, against the version A's apply made, is seen by A; a stale one fails.
    let shown: serde_json::Value = serde_json::from_str(&wisp_ok(
        &lab.client,
        &["get", "hardware", "shared", "-n", "lab", "-o", "json"],
    ))
    .expect("JSON");
    let version = shown["metadata"]["resourceVersion"]
        .as_str()
        .expect("a resourceVersion")
        .to_string();
    let changed = hardware_yaml("shared", "1c:69:7a:00:00:31", "10.99.0.32").replace(
        "  namespace: lab\n",
        &format!("  namespace: lab\n  resourceVersion: \"{version}\"\n"),
    );
    apply_ok(&lab.client, &changed);
    eventually_within("A sees B's change", Duration::from_secs(1), || {
        wisp_ok(
            &lab.server,
            &["get", "hardware", "shared", "-n", "lab", "-o", "json"],
        )
        .contains("10.99.0.32")
    });
    let stale = wisp_tests::apply_yaml(&lab.server, &changed);
    assert!(!stale.status.success());
    assert!(
        String::from_utf8_lossy(&stale.stderr).contains("has been modified"),
        "{}",
        String::from_utf8_lossy(&stale.stderr)
    );
    // Deleted on A: B's gate drops the MAC.
    wisp_ok(&lab.server, &["delete", "hardware", "shared", "-n", "lab"]);
    eventually_within("B's gate forgets the MAC", Duration::from_secs(1), || {
        gate_stats(&lab.client).1["allowlist_size"] == 0
    });
}

#[test]
fn a_token_one_appliance_minted_is_good_on_the_other() {
    require_root!();
    let (lab, work, _etcd, store) = shared_store("ha-token");
    let _a = Daemon::start(&lab.server, SERVER_IF, &work.join("a"), &[&store]);
    let _b = Daemon::start(&lab.client, CLIENT_IF, &work.join("b"), &[&store]);
    apply_ok(
        &lab.server,
        "apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata: {name: m, namespace: lab}
spec:
  metadata: {instance: {hostname: m-host}}
  interfaces:
    - dhcp: {mac: \"02:00:00:00:00:0a\", ip: {address: 10.99.0.2, netmask: 255.255.255.0}}
      netboot: {allowPXE: true, allowWorkflow: true}
---
apiVersion: tinkerbell.org/v1alpha1
kind: Template
metadata: {name: t, namespace: lab}
spec: {data: \"tasks: [{name: t, actions: [{name: a, image: i}]}]\"}
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata: {name: w, namespace: lab}
spec: {templateRef: t, hardwareRef: m}
",
    );
    // The machine boots through A, which mints its boot's token; B, sharing the store, signs
    // with the same key and follows the boots.
    let token = wisp_tests::boot_token(&lab, "02:00:00:00:00:0a", "10.99.0.2");
    let from_b = |token: &str| {
        lab.client.exec(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &format!("Authorization: Bearer {token}"),
                "http://10.99.0.2:8080/2009-04-04/meta-data/hostname",
            ],
        )
    };
    eventually_within("B takes A's token", Duration::from_secs(2), || {
        String::from_utf8_lossy(&from_b(&token).stdout) == "200"
    });
    // A forged one is refused there too.
    let forged = token.replacen("02000000000a", "02000000000b", 1);
    assert_ne!(forged, token);
    assert_eq!(String::from_utf8_lossy(&from_b(&forged).stdout), "403");
}

/// busybox udhcpc in the client namespace, as `mac`: whether it got `address`.
fn leased(lab: &Lab, mac: &str, address: &str) -> bool {
    lab.client
        .exec_ok("ip", &["link", "set", CLIENT_IF, "address", mac]);
    let output = lab.client.exec(
        "busybox",
        &[
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-t",
            "2",
            "-T",
            "1",
            "-i",
            CLIENT_IF,
            "-s",
            "/bin/true",
        ],
    );
    output.status.success()
        && String::from_utf8_lossy(&output.stderr).contains(&format!("lease of {address} obtained"))
}

#[test]
fn one_appliance_answers_dhcp_and_another_takes_over_when_it_dies() {
    require_root!();
    let (lab, work, _etcd, store) = shared_store("ha-dhcp");
    // B starts first and leads; A, which the machine's DHCP reaches, stands by.
    let mut b = Daemon::start(&lab.client, CLIENT_IF, &work.join("b"), &[&store]);
    eventually_within("B leads", Duration::from_secs(5), || {
        b.log().contains("leadership taken")
    });
    let a = Daemon::start(&lab.server, SERVER_IF, &work.join("a"), &[&store]);
    apply_ok(
        &lab.server,
        &hardware_yaml("m", "1c:69:7a:00:00:41", "10.99.0.41"),
    );
    eventually_within(
        "A's gate admits the machine",
        Duration::from_secs(2),
        || gate_stats(&lab.server).1["allowlist_size"] == 1,
    );
    assert!(
        !leased(&lab, "1c:69:7a:00:00:41", "10.99.0.41"),
        "A answered while B led:\n{}",
        a.log()
    );
    let standby = wisp_tests::metric(&lab.server, "wisp_dhcp_ignored_total{reason=\"standby\"}");
    assert!(
        standby.is_some_and(|count| count >= 1),
        "A counted no standby"
    );
    // B dies: its lease runs out (3 s) and A takes over; the machine's DHCP gets its lease.
    b.stop(nix::sys::signal::Signal::SIGKILL);
    eventually_within("A takes over and answers", Duration::from_secs(20), || {
        leased(&lab, "1c:69:7a:00:00:41", "10.99.0.41")
    });
    assert!(a.log().contains("leadership taken"), "{}", a.log());
}

#[test]
fn without_its_quorum_the_appliance_answers_the_machines_it_knows_refuses_writes_and_catches_up() {
    require_root!();
    let (lab, work, etcd, store) = shared_store("ha-quorum");
    let a = Daemon::start(&lab.server, SERVER_IF, &work.join("a"), &[&store]);
    eventually_within("A leads", Duration::from_secs(5), || {
        a.log().contains("leadership taken")
    });
    for (name, mac, address) in [
        ("m", "1c:69:7a:00:00:51", "10.99.0.51"),
        ("n", "1c:69:7a:00:00:52", "10.99.0.52"),
    ] {
        apply_ok(&lab.server, &hardware_yaml(name, mac, address));
    }
    assert!(leased(&lab, "1c:69:7a:00:00:51", "10.99.0.51"));

    // The cluster is gone (its only member): a machine the appliance knows still gets its
    // lease, boot files are served, and a write is refused, naming the store.
    drop(etcd);
    assert!(
        leased(&lab, "1c:69:7a:00:00:52", "10.99.0.52"),
        "no lease without the store:\n{}",
        a.log()
    );
    assert_eq!(
        wisp_tests::http_status(&lab.client, &[], "http://10.99.0.1:8080/ipxe/ipxe.efi"),
        "200",
        "boot files without the store"
    );
    let refused = wisp_tests::apply_yaml(
        &lab.server,
        &hardware_yaml("o", "1c:69:7a:00:00:53", "10.99.0.53"),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "applied without the store");
    assert!(stderr.contains("store (etcd)"), "{stderr}");

    // The member comes back with its data: the lease ACKed meanwhile reaches it, and writes go
    // in again.
    let _etcd = Etcd::start(&lab.server.name, "10.99.0.1", &work.0).expect("etcd");
    eventually_within(
        "the lease ACKed without the store is stored",
        Duration::from_secs(40),
        || {
            let keys = lab.server.exec(
                "etcdctl",
                &[
                    "--endpoints=http://10.99.0.1:2379",
                    "get",
                    "--prefix",
                    "--keys-only",
                    "/wisp/leases/",
                ],
            );
            String::from_utf8_lossy(&keys.stdout).contains("1c:69:7a:00:00:52")
        },
    );
    apply_ok(
        &lab.server,
        &hardware_yaml("o", "1c:69:7a:00:00:53", "10.99.0.53"),
    );
    assert!(
        a.log().contains("lease stored, the store answering again"),
        "{}",
        a.log()
    );
}

#[test]
fn a_storm_of_1000_clients_through_a_failover_gets_no_address_twice_and_loses_no_acked_lease() {
    require_root!();
    // A and etcd on the bridge; B on the same link from a namespace of its own; perfdhcp's
    // relayed broadcasts from the client side reach both.
    let lab = Lab::bridged("ha-storm");
    let work = TempDir::new("ha-storm");
    let etcd = Etcd::start(&lab.server.name, "10.99.0.1", &work.0).expect("etcd");
    let store = format!("--store={}", etcd.url);
    let mut a = Daemon::start(&lab.server, BRIDGE_IF, &work.join("a"), &[&store]);
    eventually_within("A leads", Duration::from_secs(5), || {
        a.log().contains("leadership taken")
    });
    let b_netns = lab.join_bridge("ha-storm-b", "vb", Some("10.99.0.3/24"));
    let b = Daemon::start(&b_netns, "eth0", &work.join("b"), &[&store]);
    let (yaml, expected) = rack(1000);
    apply_ok(&lab.server, &yaml);
    eventually_within("B's gate admits the rack", Duration::from_secs(5), || {
        gate_stats(&b_netns).1["allowlist_size"] == 1000
    });

    // 1,000 exchanges a second among the 1,000 MACs for 8 s; A dies a second in, and B takes
    // over once A's leadership runs out.
    let _buffer = wisp_tests::ReceiveBuffer::raised();
    let capture = Capture::start(&lab, &work);
    std::thread::scope(|scope| {
        let storm = scope.spawn(|| perfdhcp(&lab, &["-R", "1000", "-r", "1000", "-p", "8"]));
        std::thread::sleep(Duration::from_secs(1));
        a.stop(nix::sys::signal::Signal::SIGKILL);
        storm.join().expect("perfdhcp ran");
    });
    let capture = capture.stop(&lab);
    let acked = acks(&lab, &capture);
    let by_b = wisp_tests::metric(&b_netns, "wisp_dhcp_replies_total{message_type=\"ack\"}");
    assert!(
        by_b.is_some_and(|count| count > 0),
        "B ACKed nothing after the failover:\n{}",
        b.log()
    );
    assert!(
        acked.len() >= 100,
        "the storm got few ACKs: {}",
        acked.len()
    );
    println!(
        "the storm: {} MACs ACKed, {} ACKs by B after the failover",
        acked.len(),
        by_b.unwrap_or_default()
    );
    let mut holders = std::collections::BTreeMap::new();
    for (mac, address) in &acked {
        assert_eq!(
            Some(address),
            expected.get(mac),
            "{mac} was ACKed another's address"
        );
        if let Some(other) = holders.insert(address, mac) {
            panic!("{address} was ACKed to {mac} and to {other}");
        }
    }
    // Every lease either appliance ACKed is in etcd, as B reads it.
    let stored = leases_on(&b_netns);
    for (mac, address) in &acked {
        assert_eq!(
            stored.get(mac),
            Some(address),
            "{mac} was ACKed {address}, and etcd does not hold the lease"
        );
    }
    // And B serves the whole rack.
    let again = perfdhcp(&lab, &["--scenario", "avalanche", "-R", "1000"]);
    let report = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{report}\n{}", b.log());
    assert_eq!(report.matches("drops: 0\n").count(), 2, "{report}");
    assert_eq!(leases_on(&b_netns), expected);
}

/// A BIOS VM as `mac` with `disk`, netbooting on the lab's bridge; its files in `dir`.
fn start_vm(install: &InstallLab, mac: &str, disk: &std::path::Path, dir: &std::path::Path) -> Vm {
    std::fs::create_dir_all(dir).expect("the VM's directory");
    let tap = format!("tap{}", &mac[mac.len() - 2..]);
    Vm::start(
        &install.lab.server.name,
        BRIDGE_IF,
        &tap,
        mac,
        Firmware::Bios,
        dir,
        Some(disk),
    )
    .expect("start the VM")
}

#[test]
fn a_vm_mid_install_survives_the_loss_of_its_appliance_and_then_of_an_etcd_member() {
    require_root!();
    let install = InstallLab::new("ha-vm");
    let (lab, work) = (&install.lab, &install.work);
    let assets = install.assets.to_str().expect("utf-8");
    // Three etcd members and appliance B, each in a namespace of its own on the boot bridge;
    // appliance A on the bridge itself, at the address the example's image URL names.
    let members: Vec<(Netns, String)> = (1..=3)
        .map(|n| {
            let address = format!("192.168.1.1{n}");
            let netns = lab.join_bridge(
                &format!("ha-vm-e{n}"),
                &format!("ve{n}"),
                Some(&format!("{address}/24")),
            );
            (netns, address)
        })
        .collect();
    let mut etcd = Etcd::cluster(
        &members
            .iter()
            .map(|(netns, address)| (netns.name.as_str(), address.as_str()))
            .collect::<Vec<_>>(),
        &work.0,
    )
    .expect("the etcd cluster");
    let store = format!("--store={}", etcd[0].url);
    let mut a = install.start_wisp(&[&store]);
    eventually_within("A leads", Duration::from_secs(10), || {
        a.log().contains("leadership taken")
    });
    let b_netns = lab.join_bridge("ha-vm-b", "vb", Some("192.168.1.2/24"));
    let b = Daemon::start(
        &b_netns,
        "eth0",
        &work.join("b"),
        &["--assets-dir", assets, &store],
    );
    eventually_within("B registers", Duration::from_secs(5), || {
        b.log().contains("registered")
    });
    apply_ok(&lab.server, &ending_with(&install.resources, REBOOT_ACTION));

    // While the VM streams its image from A, A dies: the worker goes on with B, image2disk
    // fetches the image again from B, and B answers the DHCP of the reboot.
    const MAC: &str = "1c:69:7a:11:22:33";
    let vm = start_vm(&install, MAC, &install.disk, &work.join("vm1"));
    eventually_within("the VM streams its image", Duration::from_secs(300), || {
        wisp_tests::workflow_json(&b_netns, "tink-system", "demo-wf")["status"]["actions"][0]
            ["state"]
            == "RUNNING"
    });
    a.stop(nix::sys::signal::Signal::SIGKILL);
    let console = installed_through(&vm, (&b_netns, &b), MAC, "demo-wf");
    assert!(
        console.contains("fetching the image from the next appliance"),
        "image2disk did not move to B:\n{console}"
    );
    drop(vm);

    // One etcd member of three dies: a second machine provisions through B on the two left.
    drop(etcd.remove(0));
    const SECOND: &str = "1c:69:7a:11:22:44";
    let second = install
        .resources
        .replace("1c:69:7a:11:22:33", SECOND)
        .replace("192.168.1.8", "192.168.1.9")
        .replace("nuc-demo", "nuc-second")
        .replace("demo-wf", "second-wf");
    apply_ok(&b_netns, &ending_with(&second, REBOOT_ACTION));
    let disk = work.join("second.raw");
    std::fs::File::create(&disk)
        .and_then(|file| file.set_len(wisp_images::disk::BLANK_DISK_BYTES))
        .expect("the second blank disk");
    let vm = start_vm(&install, SECOND, &disk, &work.join("vm2"));
    installed_through(&vm, (&b_netns, &b), SECOND, "second-wf");
}

/// Waits for `vm` (MAC `mac`) to boot its installed system, checks it, and checks that
/// `workflow` succeeded as appliance B (in its namespace) shows it; returns the VM's console.
fn installed_through(
    vm: &Vm,
    (b_netns, b): (&Netns, &Daemon),
    mac: &str,
    workflow: &str,
) -> String {
    let failures = ["the workflow did not succeed", "Kernel panic"];
    let installed = vm.wait_for_serial_unless("== end", &failures, Duration::from_secs(420));
    let console = vm.serial_output().replace("\r\n", "\n");
    installed.unwrap_or_else(|err| {
        panic!(
            "{err}\n--- B's log ---\n{}\n--- console ---\n{console}",
            b.log()
        )
    });
    assert_installed(&console, mac);
    let shown = wisp_tests::workflow_json(b_netns, "tink-system", workflow);
    assert_eq!(shown["status"]["state"], "SUCCESS", "{shown:#}");
    console
}
