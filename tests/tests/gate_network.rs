//! The gate on a real interface: a veth pair between two namespaces, `wisp serve` on one end,
//! DHCP sent from the other, judged by the attached XDP program (or the userspace gate).
use nix::sys::signal::Signal;
use wisp_tests::{
    apply_ok, eventually, frames::discover, gate_stats, hardware_yaml, metric, require_root,
    wisp_ok, Daemon, Lab, TempDir, BRIDGE_IF, CLIENT_IP, SERVER_IF,
};

const KNOWN: [u8; 6] = [0x1c, 0x69, 0x7a, 0x11, 0x22, 0x33];
const LATE: [u8; 6] = [0x1c, 0x69, 0x7a, 0x44, 0x55, 0x66];
const DISCOVERS: &str = "wisp_dhcp_received_total{message_type=\"discover\"}";

fn counter(lab: &Lab, name: &str) -> u64 {
    gate_stats(&lab.server).0[name]
}

/// Sends a DISCOVER and waits until the gate has counted it under `counter_name`.
fn send_and_wait(lab: &Lab, payload: &[u8], relay: bool, counter_name: &str) {
    let before = counter(lab, counter_name);
    lab.send_dhcp(payload, relay);
    eventually(&format!("{counter_name} to count the packet"), || {
        counter(lab, counter_name) == before + 1
    });
}

fn scenario(mode: &str, stop_with: Signal) {
    let lab = Lab::new("gate");
    let data = TempDir::new("gate");
    let mut daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &data.join("data"),
        &["--xdp-mode", mode],
    );
    apply_ok(
        &lab.server,
        &hardware_yaml("known", "1c:69:7a:11:22:33", "10.99.0.10"),
    );

    let (_, stats) = gate_stats(&lab.server);
    match mode {
        "off" => assert_eq!(stats["mode"]["kind"], "userspace", "{stats}"),
        _ => assert_eq!(
            (
                stats["mode"]["kind"].as_str(),
                stats["mode"]["mode"].as_str()
            ),
            (Some("xdp"), Some(mode)),
            "{stats}"
        ),
    }
    assert_eq!(stats["allowlist_size"], 1);

    // A known MAC reaches the DHCP socket on :67.
    send_and_wait(&lab, &discover(KNOWN, None), false, "passed_known");
    eventually("the known DISCOVER to reach the DHCP socket", || {
        metric(&lab.server, DISCOVERS) == Some(1)
    });

    // An unknown MAC is dropped before the socket, and recorded.
    send_and_wait(&lab, &discover(LATE, None), false, "dropped_unknown");
    assert_eq!(
        metric(&lab.server, DISCOVERS),
        Some(1),
        "the unknown DISCOVER must not reach the socket"
    );
    let (_, stats) = gate_stats(&lab.server);
    let unknown = &stats["unknown_macs"][0];
    assert_eq!(
        (unknown["mac"].as_str(), unknown["count"].as_u64()),
        (Some("1c:69:7a:44:55:66"), Some(1)),
        "{stats}"
    );

    // A relayed DISCOVER (Ethernet source and IP are the relay's, chaddr is known) passes.
    send_and_wait(
        &lab,
        &discover(KNOWN, Some(CLIENT_IP)),
        true,
        "passed_known",
    );
    eventually("the relayed DISCOVER to reach the socket", || {
        metric(&lab.server, DISCOVERS) == Some(2)
    });

    // A malformed BOOTP message (short header) is dropped and counted.
    send_and_wait(
        &lab,
        &discover(KNOWN, None)[..200],
        false,
        "dropped_malformed",
    );

    // The allowlist follows apply and delete live.
    apply_ok(
        &lab.server,
        &hardware_yaml("late", "1c:69:7a:44:55:66", "10.99.0.11"),
    );
    send_and_wait(&lab, &discover(LATE, None), false, "passed_known");
    eventually("the newly applied MAC to reach the socket", || {
        metric(&lab.server, DISCOVERS) == Some(3)
    });
    wisp_ok(&lab.server, &["delete", "hardware", "late"]);
    send_and_wait(&lab, &discover(LATE, None), false, "dropped_unknown");
    assert_eq!(
        metric(&lab.server, DISCOVERS),
        Some(3),
        "a deleted MAC is dropped again"
    );

    // The counters match what was sent.
    let (counters, stats) = gate_stats(&lab.server);
    assert_eq!(counters["passed_known"], 3, "{stats}");
    assert_eq!(counters["dropped_unknown"], 2, "{stats}");
    assert_eq!(counters["dropped_malformed"], 1, "{stats}");
    assert_eq!(counters["passed_unknown"], 0, "{stats}");
    assert_eq!(stats["unknown_macs"][0]["count"], 2, "{stats}");
    assert_eq!(
        metric(
            &lab.server,
            "wisp_gate_packets_total{verdict=\"passed_known\"}"
        ),
        Some(3)
    );

    // SIGTERM or SIGINT detaches the program and exits cleanly.
    let status = daemon.stop(stop_with);
    assert!(
        status.success(),
        "wisp serve exited with {status}:\n{}",
        daemon.log()
    );
    let link = lab.server.exec_ok("ip", &["link", "show", SERVER_IF]);
    assert!(
        !link.contains("xdp"),
        "still attached after {stop_with}: {link}"
    );
    let log = daemon.log();
    assert!(log.contains("shut down cleanly"), "{log}");
    assert_eq!(log.contains("gate detached"), mode != "off", "{log}");
}

#[test]
fn native_xdp_gate_filters_dhcp_by_chaddr() {
    require_root!();
    scenario("native", Signal::SIGTERM);
}

#[test]
fn generic_xdp_gate_filters_dhcp_by_chaddr() {
    require_root!();
    scenario("skb", Signal::SIGINT);
}

#[test]
fn userspace_gate_has_the_same_semantics() {
    require_root!();
    scenario("off", Signal::SIGTERM);
}

#[test]
fn auto_mode_falls_back_to_skb_on_a_bridge_and_says_so() {
    require_root!();
    let lab = Lab::bridged("auto");
    let data = TempDir::new("auto");
    let daemon = Daemon::start(&lab.server, BRIDGE_IF, &data.join("data"), &[]);
    let (_, stats) = gate_stats(&lab.server);
    assert_eq!(
        (
            stats["mode"]["kind"].as_str(),
            stats["mode"]["mode"].as_str()
        ),
        (Some("xdp"), Some("skb")),
        "{stats}"
    );
    let log = daemon.log();
    assert!(log.contains("could not attach in native mode"), "{log}");
    assert!(log.contains("XDP gate attached in skb mode"), "{log}");
    // Bridged DHCP from a client port is judged on the bridge.
    apply_ok(
        &lab.server,
        &hardware_yaml("known", "1c:69:7a:11:22:33", "10.99.0.10"),
    );
    send_and_wait(&lab, &discover(KNOWN, None), false, "passed_known");
    send_and_wait(&lab, &discover(LATE, None), false, "dropped_unknown");
    eventually("the known DISCOVER to reach the socket on br0", || {
        metric(&lab.server, DISCOVERS) == Some(1)
    });
}

#[test]
fn a_killed_daemon_leaves_no_attachment_behind() {
    require_root!();
    let lab = Lab::new("crash");
    let data = TempDir::new("crash");
    let mut daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &data.join("data"),
        &["--xdp-mode", "native"],
    );
    let attached = lab.server.exec_ok("ip", &["link", "show", SERVER_IF]);
    assert!(
        attached.contains("xdp"),
        "the gate is attached while running: {attached}"
    );
    daemon.stop(Signal::SIGKILL);
    let link = lab.server.exec_ok("ip", &["link", "show", SERVER_IF]);
    assert!(
        !link.contains("xdp"),
        "a killed daemon left its program attached: {link}"
    );
    // The next start attaches in the same mode without complaint.
    let _restarted = Daemon::start(
        &lab.server,
        SERVER_IF,
        &data.join("data"),
        &["--xdp-mode", "native"],
    );
    assert_eq!(gate_stats(&lab.server).1["mode"]["mode"], "native");
}

#[test]
fn discovery_mode_passes_unknown_macs_and_records_them() {
    require_root!();
    let lab = Lab::new("disc");
    let data = TempDir::new("disc");
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &data.join("data"),
        &["--xdp-mode", "native", "--discovery"],
    );
    send_and_wait(&lab, &discover(LATE, None), false, "passed_unknown");
    eventually(
        "the unknown DISCOVER to reach the socket in discovery mode",
        || metric(&lab.server, DISCOVERS) == Some(1),
    );
    let (counters, stats) = gate_stats(&lab.server);
    assert_eq!(
        (counters["dropped_unknown"], counters["passed_known"]),
        (0, 0),
        "{stats}"
    );
    assert_eq!(stats["discovery"], true);
    assert_eq!(
        stats["unknown_macs"][0]["mac"], "1c:69:7a:44:55:66",
        "{stats}"
    );
}

#[test]
fn an_explicit_mode_that_cannot_attach_stops_the_daemon_with_the_reason() {
    require_root!();
    // A bridge has no native XDP (no driver hook): `native` must fail, not fall back.
    let lab = Lab::bridged("gate-native");
    let data = TempDir::new("gate-native");
    let mut child = lab
        .server
        .command(wisp_tests::wisp_binary())
        .args(["serve", "--interface", BRIDGE_IF, "--xdp-mode", "native"])
        .arg("--data-dir")
        .arg(data.join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start wisp serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("status") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("wisp serve --xdp-mode native on a bridge kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: cannot attach the XDP gate to {BRIDGE_IF}: native:"
        )),
        "{stderr}"
    );
    // `skb` on the same bridge attaches, and says so.
    let _daemon = Daemon::start(
        &lab.server,
        BRIDGE_IF,
        &data.join("data"),
        &["--xdp-mode", "skb"],
    );
    let (_, stats) = gate_stats(&lab.server);
    assert_eq!(stats["mode"]["kind"], "xdp", "{stats}");
    assert_eq!(stats["mode"]["mode"], "skb", "{stats}");
}
