//! Each machine's events (`wisp events`, `/v1/events`): what its boot did on the wire, in
//! order, by MAC or by Hardware name, kept across a restart of the daemon.
use std::time::Duration;

use serde_json::Value;
use wisp_tests::{
    apply_ok, boot_token, require_root, wisp, wisp_ok, Daemon, Lab, TempDir, CLIENT_IP, SERVER_IF,
    SERVER_IP,
};

const MAC: &str = "02:00:00:00:00:0e";

/// The events `wisp events ARGS -o json` shows: (kind, message) pairs.
fn events(lab: &Lab, args: &[&str]) -> Vec<(String, String)> {
    let mut all = vec!["events", "-o", "json"];
    all.extend_from_slice(args);
    let shown: Value = serde_json::from_str(&wisp_ok(&lab.server, &all)).expect("JSON");
    shown
        .as_array()
        .expect("a list")
        .iter()
        .map(|event| {
            assert_eq!(event["mac"], MAC, "{event}");
            (
                event["kind"].as_str().expect("a kind").to_string(),
                event["message"].as_str().expect("a message").to_string(),
            )
        })
        .collect()
}

#[test]
fn a_machines_boot_shows_as_its_events_in_order_and_they_outlive_a_restart() {
    require_root!();
    let lab = Lab::new("events");
    let work = TempDir::new("events");
    let data = work.join("data");
    let mut daemon = Daemon::start(&lab.server, SERVER_IF, &data, &[]);
    let address = CLIENT_IP.to_string();
    apply_ok(
        &lab.server,
        &wisp_tests::machine_with_workflow_yaml("m", MAC, &address),
    );
    // The firmware's DHCP, iPXE's, the script; then the iPXE binary over TFTP.
    boot_token(&lab, MAC, &address);
    let fetched = lab.client.exec(
        "busybox",
        &[
            "tftp",
            "-g",
            "-r",
            "undionly.kpxe",
            "-l",
            "/dev/null",
            &SERVER_IP.to_string(),
        ],
    );
    assert!(fetched.status.success(), "{fetched:?}");

    let seen = events(&lab, &[MAC]);
    let kinds: Vec<&str> = seen.iter().map(|(kind, _)| kind.as_str()).collect();
    let first = |kind: &str| {
        kinds
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_else(|| panic!("no {kind} event: {seen:?}"))
    };
    assert!(
        first("dhcp") < first("script") && first("script") < first("tftp"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(kind, message)| kind == "dhcp" && message.contains(&address)),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(kind, message)| kind == "script" && message.contains("provisioning OS starts")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(kind, message)| kind == "tftp" && message.contains("undionly.kpxe")),
        "{seen:?}"
    );
    // By Hardware name, and the last few only.
    assert_eq!(events(&lab, &["m"]), seen);
    assert_eq!(
        events(&lab, &["lab/m", "--limit", "2"]),
        seen[seen.len() - 2..]
    );
    let unknown = wisp(&lab.server, &["events", "nobody"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no machine is named \"nobody\""),
        "{unknown:?}"
    );

    // Kept across a kill -9, once the journal's thread has written its batch (it lets one
    // gather for 50 ms).
    std::thread::sleep(Duration::from_millis(500));
    daemon.stop(nix::sys::signal::Signal::SIGKILL);
    let _again = Daemon::start(&lab.server, SERVER_IF, &data, &[]);
    assert_eq!(events(&lab, &[MAC]), seen);
}
