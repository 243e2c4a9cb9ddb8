//! Real VMs netboot through Wisp, with the XDP gate attached on the lab bridge: DHCP, TFTP or
//! iPXE, the HTTP script, then kernel and initramfs over HTTP, until the initramfs prints its
//! marker on the serial console.
use std::time::Duration;

use wisp_tests::{
    apply_ok, gate_stats, metric, require_root,
    vm::{marker_assets, netboot_machine_yaml, Firmware, Vm, MARKER},
    Daemon, Lab, TempDir, BRIDGE_IF,
};

const VM_MAC: &str = "52:54:00:57:49:01";

fn netboot(firmware: Firmware) -> (Lab, Daemon, Vm, TempDir) {
    let lab = Lab::bridged("vm");
    let work = TempDir::new("vm");
    let assets = work.join("assets");
    marker_assets(&assets).expect("build the test kernel and initramfs");
    let daemon = Daemon::start(
        &lab.server,
        BRIDGE_IF,
        &work.join("data"),
        &["--assets-dir", assets.to_str().expect("utf-8")],
    );
    apply_ok(&lab.server, &netboot_machine_yaml(VM_MAC, "10.99.0.50"));
    let vm = Vm::start(
        &lab.server.name,
        BRIDGE_IF,
        "tap0",
        VM_MAC,
        firmware,
        &work.0,
        None,
    )
    .expect("start the VM");
    vm.wait_for_serial(MARKER, Duration::from_secs(240))
        .unwrap_or_else(|err| panic!("{err}\n{}", daemon.log()));
    (lab, daemon, vm, work)
}

/// The position of the first log line containing every one of `parts`, failing without one.
fn line_of(log: &str, parts: &[&str]) -> usize {
    log.lines()
        .position(|line| parts.iter().all(|part| line.contains(part)))
        .unwrap_or_else(|| panic!("no log line with {parts:?}:\n{log}"))
}

/// The boot went firmware → iPXE binary over TFTP → iPXE's own DHCP → script → kernel and
/// initramfs, each step once and in that order.
fn assert_chainload(lab: &Lab, daemon: &Daemon, binary: &str) {
    let log = daemon.log();
    let handed = line_of(
        &log,
        &[
            "DHCP reply",
            "reply=Some(Ack)",
            &format!("file=Some(\"{binary}\")"),
        ],
    );
    let fetched = line_of(
        &log,
        &["TFTP read request", &format!("file=\"{binary}\""), "served"],
    );
    let scripted = line_of(&log, &["DHCP reply", "reply=Some(Ack)", "auto.ipxe"]);
    let served = line_of(&log, &["iPXE script served", "pending_work=true"]);
    assert!(
        handed < fetched && fetched < scripted && scripted < served,
        "out of order:\n{log}"
    );
    // A slow firmware may retransmit its REQUEST, and UEFI reads the file size before the file,
    // so the binary can be ACKed or requested twice before iPXE runs. A chainload loop shows
    // instead as iPXE, once it is asking, being handed the binary or fetching it again.
    let looped = log.lines().skip(scripted).find(|line| {
        (line.contains("DHCP reply") || line.contains("TFTP read request")) && line.contains(binary)
    });
    assert!(
        looped.is_none(),
        "iPXE was handed itself again (a chainload loop): {looped:?}\n{log}"
    );
    let (counters, stats) = gate_stats(&lab.server);
    assert_eq!(
        stats["mode"]["kind"], "xdp",
        "the gate is attached: {stats}"
    );
    assert!(
        counters["passed_known"] >= 4,
        "both DHCP exchanges passed the gate: {stats}"
    );
    assert_eq!(counters["dropped_malformed"], 0, "{stats}");
    assert!(
        metric(
            &lab.server,
            "wisp_http_requests_total{route=\"/assets\",status=\"200\"}"
        )
        .is_some_and(|requests| requests >= 2),
        "kernel and initramfs"
    );
    // The script exactly once, and it started the boot (its token came with it).
    assert_eq!(
        metric(
            &lab.server,
            "wisp_http_requests_total{route=\"/ipxe/{mac}/auto.ipxe\",status=\"200\"}"
        ),
        Some(1),
        "the script is fetched once:\n{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|line| line.contains("iPXE script served") && line.contains("boot_started=true"))
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn bios_vm_netboots_through_wisp() {
    require_root!();
    let (lab, daemon, _vm, _work) = netboot(Firmware::Bios);
    assert_chainload(&lab, &daemon, "undionly.kpxe");
}

#[test]
fn uefi_vm_netboots_through_wisp() {
    require_root!();
    let (lab, daemon, _vm, _work) = netboot(Firmware::Uefi);
    assert_chainload(&lab, &daemon, "snponly.efi");
}
