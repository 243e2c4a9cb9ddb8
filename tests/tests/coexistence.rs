//! Wisp beside another DHCP server (dnsmasq) on the same bridge: machines Wisp does not own
//! are served by dnsmasq alone, and in proxy mode a machine Wisp owns takes its address from
//! dnsmasq and its boot information from Wisp.
use std::{process::Stdio, time::Duration};

use wisp_tests::{
    apply_ok, gate_stats, metric, output_text, require_root,
    vm::{marker_assets, Firmware, Vm, MARKER},
    Daemon, Lab, Netns, TempDir, BRIDGE_IF,
};

/// dnsmasq in its own namespace on the bridge, stopped on drop.
struct Dnsmasq {
    child: std::process::Child,
    _host: Netns,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq as the LAN's own DHCP server at 10.99.0.3, handing out 10.99.0.100-150 and no boot
/// information.
fn start_dnsmasq(lab: &Lab, work: &TempDir) -> Dnsmasq {
    let other = lab.join_bridge("dnsmasq", "dnsport", Some("10.99.0.3/24"));
    let leases = work.join("dnsmasq.leases");
    let child = other
        .command("dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--interface=eth0",
            "--bind-interfaces",
            "--port=0",
            "--log-dhcp",
        ])
        .args([
            "--dhcp-range=10.99.0.100,10.99.0.150,255.255.255.0,1h",
            "--dhcp-authoritative",
        ])
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("dnsmasq.log")).expect("dnsmasq log"))
        .spawn()
        .expect("start dnsmasq");
    let log = work.join("dnsmasq.log");
    wisp_tests::eventually("dnsmasq to serve DHCP", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("DHCP, IP range")
    });
    Dnsmasq {
        child,
        _host: other,
    }
}

#[test]
fn a_machine_wisp_does_not_own_gets_its_lease_from_dnsmasq_only() {
    require_root!();
    let lab = Lab::bridged("coex");
    let work = TempDir::new("coex");
    let _daemon = Daemon::start(&lab.server, BRIDGE_IF, &work.join("data"), &[]);
    let owned = "apiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata:\n  name: owned\n  namespace: lab\nspec:\n  interfaces:\n    - dhcp:\n        mac: 1c:69:7a:11:22:33\n        ip:\n          address: 10.99.0.60\n          netmask: 255.255.255.0\n";
    apply_ok(&lab.server, owned);
    let _dnsmasq = start_dnsmasq(&lab, &work);
    let stranger = lab.join_bridge("stranger", "strport", None);
    stranger.exec_ok(
        "ip",
        &["link", "set", "eth0", "address", "52:54:00:de:ad:01"],
    );

    // busybox udhcpc is a real DHCP client: DISCOVER, OFFER, REQUEST, ACK.
    let output = stranger.exec(
        "busybox",
        &[
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "1",
            "-i",
            "eth0",
            "-s",
            "/bin/true",
        ],
    );
    let said = output_text(&output);
    assert!(output.status.success(), "udhcpc got no lease:\n{said}");
    assert!(
        said.contains("obtained from 10.99.0.3") || said.contains("obtained, lease time"),
        "{said}"
    );
    let leased: std::net::Ipv4Addr = said
        .lines()
        .find_map(|line| {
            line.split("lease of ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("udhcpc named no lease:\n{said}"));
    assert!(
        (100..=150).contains(&leased.octets()[3]) && leased.octets()[..3] == [10, 99, 0],
        "{leased} is not from dnsmasq's range"
    );

    // Wisp dropped every one of the stranger's packets in the kernel: no DHCP message reached
    // its DHCP server, and it sent nothing.
    let (counters, stats) = gate_stats(&lab.server);
    assert!(
        counters["dropped_unknown"] >= 2,
        "DISCOVER and REQUEST were dropped: {stats}"
    );
    assert_eq!(counters["passed_known"], 0, "{stats}");
    assert_eq!(
        stats["unknown_macs"][0]["mac"], "52:54:00:de:ad:01",
        "{stats}"
    );
    // Some(0), not None: the series exist from the start, so a renamed one fails here.
    assert_eq!(
        metric(
            &lab.server,
            "wisp_dhcp_received_total{message_type=\"discover\"}"
        ),
        Some(0)
    );
    assert_eq!(
        metric(
            &lab.server,
            "wisp_dhcp_replies_total{message_type=\"offer\"}"
        ),
        Some(0)
    );
    assert_eq!(
        metric(&lab.server, "wisp_dhcp_replies_total{message_type=\"ack\"}"),
        Some(0)
    );
}

/// A VM whose MAC Wisp owns boots with dnsmasq handing out its address and Wisp in proxy mode.
fn proxy_boot(firmware: Firmware) {
    let lab = Lab::bridged("proxy");
    let binary = match firmware {
        Firmware::Bios => "undionly.kpxe",
        Firmware::Uefi => "snponly.efi",
    };
    let work = TempDir::new("proxy");
    let assets = work.join("assets");
    marker_assets(&assets).expect("build the test kernel and initramfs");
    let daemon = Daemon::start(
        &lab.server,
        BRIDGE_IF,
        &work.join("data"),
        &[
            "--dhcp-mode",
            "proxy",
            "--assets-dir",
            assets.to_str().expect("utf-8"),
        ],
    );
    // No address in the Hardware: in proxy mode the LAN's server hands it out.
    let machine = "apiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata:\n  name: vm\n  namespace: lab\nspec:\n  interfaces:\n    - dhcp:\n        mac: 52:54:00:57:49:02\n      netboot:\n        allowPXE: true\n        allowWorkflow: true\n        ipxe:\n          contents: |\n            #!ipxe\n            kernel http://10.99.0.1:8080/assets/vmlinuz initrd=initrd console=ttyS0\n            initrd --name initrd http://10.99.0.1:8080/assets/initramfs\n            boot\n";
    apply_ok(&lab.server, machine);
    let _dnsmasq = start_dnsmasq(&lab, &work);
    let vm = Vm::start(
        &lab.server.name,
        BRIDGE_IF,
        "tap0",
        "52:54:00:57:49:02",
        firmware,
        &work.0,
        None,
    )
    .expect("start the VM");
    vm.wait_for_serial(MARKER, Duration::from_secs(240))
        .unwrap_or_else(|err| panic!("{err}\n{}", daemon.log()));

    let dnsmasq_leases = std::fs::read_to_string(work.join("dnsmasq.leases")).unwrap_or_default();
    assert!(
        dnsmasq_leases.contains("52:54:00:57:49:02 10.99.0.1"),
        "dnsmasq leased the VM its address:\n{dnsmasq_leases}"
    );
    let wisp_leases: serde_json::Value = serde_json::from_str(&wisp_tests::wisp_ok(
        &lab.server,
        &["get", "leases", "-o", "json"],
    ))
    .expect("JSON");
    assert_eq!(
        wisp_leases,
        serde_json::json!([]),
        "Wisp hands out no address in proxy mode"
    );
    let (_, stats) = gate_stats(&lab.server);
    assert_eq!(
        stats["mode"]["kind"], "xdp",
        "the gate is attached: {stats}"
    );
    let log = daemon.log();
    assert!(
        log.contains(&format!("file=\"{binary}\" outcome=\"served\""))
            && log.contains("iPXE script served"),
        "{log}"
    );
    if firmware == Firmware::Uefi {
        // In proxy mode an ACK only ever answers the boot-server REQUEST on port 4011.
        let boot_server_ack = log.lines().any(|l| {
            l.contains("port=4011")
                && l.contains("reply=Some(Ack)")
                && l.contains("file=Some(\"snponly.efi\")")
        });
        assert!(
            boot_server_ack,
            "the boot-server exchange on port 4011:\n{log}"
        );
    }
    assert!(
        metric(
            &lab.server,
            "wisp_dhcp_replies_total{message_type=\"offer\"}"
        )
        .is_some_and(|offers| offers >= 2),
        "proxy offers for firmware and iPXE"
    );
}

#[test]
fn in_proxy_mode_an_owned_bios_vm_takes_its_address_from_dnsmasq_and_boots_from_wisp() {
    require_root!();
    proxy_boot(Firmware::Bios);
}

#[test]
fn in_proxy_mode_an_owned_uefi_vm_uses_the_port_4011_boot_server() {
    require_root!();
    proxy_boot(Firmware::Uefi);
}
