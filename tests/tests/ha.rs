//! Appliances sharing one etcd cluster (`--store etcd://...`): what one applies, the others
//! serve, their XDP gates included, within a second, from the store's watch.
use std::time::Duration;

use wisp_tests::{
    apply_ok, etcd::Etcd, eventually_within, gate_stats, hardware_yaml, require_root, wisp_ok,
    Daemon, Lab, TempDir, CLIENT_IF, SERVER_IF,
};

/// A lab with a real etcd on the server side, and the flag that points an appliance at it:
/// appliance A runs beside it, appliance B across the link.
fn shared_store(purpose: &str) -> (Lab, TempDir, Etcd, String) {
    let lab = Lab::new(purpose);
    let work = TempDir::new(purpose);
    let etcd = Etcd::start(&lab.server, "10.99.0.1", &work.0);
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
