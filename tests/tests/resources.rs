//! Resources through the real daemon and CLI: Tinkerbell's YAML applies unchanged, broken YAML
//! gets precise errors and changes nothing, and acknowledged applies survive `kill -9`.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use wisp_tests::{
    apply_yaml, hardware_yaml, output_text, repo_root, require_root, wisp, wisp_binary, wisp_ok,
    Daemon, Lab, TempDir, SERVER_IF,
};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn hardware_names(lab: &Lab) -> Vec<String> {
    let list: Value =
        serde_json::from_str(&wisp_ok(&lab.server, &["get", "hardware", "-o", "json"]))
            .expect("JSON list");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["metadata"]["name"].as_str().expect("name").to_string())
        .collect()
}

#[test]
fn tinkerbell_demo_applies_unchanged_and_the_missing_hardware_is_reported() {
    require_root!();
    let lab = Lab::new("res");
    let data = TempDir::new("res");
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &data.join("data"),
        &["--xdp-mode", "skb"],
    );
    let demo = repo_root().join("examples/tinkerbell-demo");
    let output = wisp(
        &lab.server,
        &["apply", "-f", demo.to_str().expect("utf-8 path")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hardware.tinkerbell.org/nuc-demo created\ntemplate.tinkerbell.org/ubuntu-focal-nvme created\nworkflow.tinkerbell.org/demo-wf created\n"
    );
    assert_eq!(stderr(&output), "", "the demo has no unknown fields");

    let table = wisp_ok(&lab.server, &["get", "hardware"]);
    assert!(
        table
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>()
                == [
                    "tink-system",
                    "nuc-demo",
                    "1c:69:7a:11:22:33",
                    "192.168.1.8"
                ]),
        "{table}"
    );
    let workflows = wisp_ok(&lab.server, &["get", "workflows"]);
    assert!(
        workflows.contains("Blocked: hardware \"hp-demo\" not found"),
        "{workflows}"
    );
    let described = wisp_ok(&lab.server, &["describe", "workflow", "demo-wf"]);
    assert!(
        described.contains("hp-demo (NOT FOUND in namespace tink-system)"),
        "{described}"
    );
    let json: Value = serde_json::from_str(&wisp_ok(
        &lab.server,
        &["get", "wf", "demo-wf", "-o", "json"],
    ))
    .expect("JSON");
    let conditions = json["status"]["conditions"].as_array().expect("conditions");
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "HardwareFound" && c["status"] == "False"),
        "{json}"
    );
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "TemplateFound" && c["status"] == "True"),
        "{json}"
    );
    let template: Value = serde_json::from_str(&wisp_ok(
        &lab.server,
        &["get", "template", "ubuntu-focal-nvme", "-o", "json"],
    ))
    .expect("JSON");
    assert!(template["spec"]["data"]
        .as_str()
        .expect("data")
        .contains("worker: \"{{.device_1}}\""));

    // Applying again changes nothing; the allowlist holds the demo's MAC.
    let again = wisp_ok(
        &lab.server,
        &["apply", "-f", demo.to_str().expect("utf-8 path")],
    );
    assert_eq!(again.matches("unchanged").count(), 3, "{again}");
    let stats: Value =
        serde_json::from_str(&wisp_ok(&lab.server, &["xdp", "stats", "-o", "json"])).expect("JSON");
    assert_eq!(stats["allowlist_size"], 1);

    // Unknown fields are kept and reported as warnings.
    let extra = hardware_yaml("extra", "1c:69:7a:00:00:99", "10.99.0.99")
        .replace("  interfaces:", "  rack: r12\n  interfaces:");
    let output = apply_yaml(&lab.server, &extra);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "Warning: stdin doc 1: spec.rack: unknown field, kept but not used by Wisp\n"
    );
    let kept: Value =
        serde_json::from_str(&wisp_ok(&lab.server, &["get", "hw", "extra", "-o", "json"]))
            .expect("JSON");
    assert_eq!(kept["spec"]["rack"], "r12");

    // Errors about names read like kubectl's and exit non-zero.
    let missing = wisp(&lab.server, &["get", "hardware", "hp-demo"]);
    assert!(!missing.status.success());
    assert_eq!(
        stderr(&missing),
        "error: hardware \"hp-demo\" not found (NotFound)\n"
    );
    let bad_kind = wisp(&lab.server, &["get", "racks"]);
    assert!(
        !bad_kind.status.success()
            && stderr(&bad_kind).contains("doesn't have a resource type \"racks\"")
    );
}

/// A daemon (gate off) that holds the Tinkerbell example's Hardware.
fn with_demo_hardware(purpose: &str) -> (Lab, TempDir, Daemon) {
    let lab = Lab::new(purpose);
    let data = TempDir::new(purpose);
    let daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &data.join("data"),
        &["--xdp-mode", "off"],
    );
    let demo = repo_root().join("examples/tinkerbell-demo/hardware.yaml");
    wisp_ok(
        &lab.server,
        &["apply", "-f", demo.to_str().expect("utf-8 path")],
    );
    (lab, data, daemon)
}

#[test]
fn what_tinkerbell_accepts_applies_and_the_workflow_says_why_it_cannot_run() {
    require_root!();
    let (lab, _data, _daemon) = with_demo_hardware("accepted");
    let fixtures = repo_root().join("tests/fixtures/accepted");
    let apply = |name: &str| {
        let output = lab
            .server
            .wisp_command()
            .current_dir(&fixtures)
            .args(["apply", "-f", name])
            .output()
            .expect("run wisp apply");
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        stderr(&output)
    };
    assert_eq!(
        apply("template-without-data.yaml"),
        "Warning: template-without-data.yaml doc 2: spec.templateRef: template \"empty\" has no spec.data\n"
    );
    assert_eq!(
        apply("workflow-missing-key.yaml"),
        "Warning: workflow-missing-key.yaml doc 2: spec.hardwareMap: template \"needs-device\" \
         does not render for hardware \"nuc-demo\": map has no entry for key: device_1\n"
    );
    assert_eq!(
        apply("workflow-rule-set.yaml"),
        "Warning: workflow-rule-set.yaml doc 1: kind: WorkflowRuleSet is stored but not acted on: \
         Wisp never sees an agent it does not own, so it creates no workflows from agent \
         attributes (apply Workflows instead)\n"
    );
    let listed = wisp_ok(&lab.server, &["get", "wrs", "-n", "tink-system"]);
    assert!(
        listed.contains("enroll-dell") && listed.contains("ubuntu-focal-nvme"),
        "{listed}"
    );
    assert_eq!(
        apply("template-unused-fields.yaml"),
        "Warning: template-unused-fields.yaml doc 2: spec.templateRef: template \"with-hooks\", \
         rendered: tasks[0].actions[0].on-timeout: not used by Wisp\n"
    );
    let said = apply("hardware-unused-fields.yaml");
    for field in [
        "spec.tinkVersion",
        "spec.interfaces[0].netboot.pxelinux",
        "spec.interfaces[0].dhcp.iface_name",
    ] {
        assert!(
            said.contains(&format!(
                "hardware-unused-fields.yaml doc 1: {field}: Tinkerbell's field, kept but not used by Wisp"
            )),
            "{field}: {said}"
        );
    }
    for (workflow, reason) in [
        ("empty-data", "template \"empty\" has no spec.data"),
        ("no-device", "map has no entry for key: device_1"),
    ] {
        let shown: Value = serde_json::from_str(&wisp_ok(
            &lab.server,
            &[
                "get",
                "workflow",
                workflow,
                "-n",
                "tink-system",
                "-o",
                "json",
            ],
        ))
        .expect("JSON");
        assert_eq!(shown["status"]["state"], "FAILED", "{shown:#}");
        let message = shown["status"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{workflow}: {message}");
    }
}

#[test]
fn broken_manifests_get_precise_errors_and_change_nothing() {
    require_root!();
    let (lab, _data, _daemon) = with_demo_hardware("bad");
    let before = wisp_ok(&lab.server, &["get", "hardware", "-o", "json"]);

    let fixtures = repo_root().join("tests/fixtures/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&fixtures).expect("fixtures") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_str()
            .expect("utf-8")
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read fixture");
        let expected = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect: "))
            .expect("fixture starts with # expect:");
        // Run from the fixture folder so that errors name the file as the user typed it.
        let output = lab
            .server
            .wisp_command()
            .current_dir(&fixtures)
            .args(["apply", "-f", &name])
            .output()
            .expect("run wisp apply");
        assert!(!output.status.success(), "{name} applied");
        let stderr = stderr(&output);
        assert!(
            stderr.starts_with("error: the manifest is invalid"),
            "{name}: {stderr}"
        );
        assert!(
            stderr.lines().any(|line| line.trim() == expected),
            "{name}: expected {expected:?} in:\n{stderr}"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} fixtures");
    assert_eq!(
        wisp_ok(&lab.server, &["get", "hardware", "-o", "json"]),
        before,
        "a rejected apply must change nothing"
    );
}

#[test]
fn acknowledged_applies_survive_kill_9() {
    require_root!();
    let lab = Lab::new("kill");
    let data = TempDir::new("kill");
    let data_dir = data.join("data");
    let mut daemon = Daemon::start(&lab.server, SERVER_IF, &data_dir, &["--xdp-mode", "off"]);
    // What the daemon keeps (resources, leases, the key that signs every token) is its own.
    for (path, expected) in [
        (data_dir.clone(), 0o700),
        (data_dir.join("wisp.redb"), 0o600),
        (data_dir.join("leases.journal"), 0o600),
        (data_dir.join("metadata.key"), 0o600),
        (data_dir.join("api.token"), 0o600),
    ] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path)
                .expect("the daemon created it")
                .permissions(),
        ) & 0o777;
        assert_eq!(mode, expected, "{}: {mode:o}", path.display());
    }
    // A page in a local browser reaching the API through a rebound name of its own.
    let rebound = wisp_tests::http_status(
        &lab.server,
        &["-H", "Host: evil.example:7480"],
        "http://127.0.0.1:7480/v1/hardware",
    );
    assert_eq!(rebound, "403", "a request for another host is refused");
    // Any local process reaches loopback: without the token, only /healthz answers.
    let status = |extra: &[&str], path: &str| {
        wisp_tests::http_status(&lab.server, extra, &format!("http://127.0.0.1:7480{path}"))
    };
    for path in ["/v1/hardware", "/metrics", "/v1/leases"] {
        assert_eq!(status(&[], path), "401", "{path} without the token");
        assert_eq!(
            status(
                &[
                    "-H",
                    "Authorization: Bearer not-the-token-0123456789abcdef0123"
                ],
                path
            ),
            "401",
            "{path} with a wrong token"
        );
    }
    assert_eq!(status(&[], "/healthz"), "200", "liveness needs no token");
    let elsewhere = lab
        .server
        .command(wisp_binary())
        .args([
            "get",
            "hardware",
            "--api-token-file",
            "/nonexistent/api.token",
        ])
        .output()
        .expect("run wisp");
    assert!(
        !elsewhere.status.success()
            && output_text(&elsewhere).contains("cannot read the API token /nonexistent/api.token"),
        "{}",
        output_text(&elsewhere)
    );
    let acknowledged = Mutex::new(Vec::new());
    let killed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for index in 0..10_000u32 {
                if killed.load(Ordering::SeqCst) {
                    break;
                }
                let name = format!("node-{index}");
                let mac = format!("02:00:00:00:{:02x}:{:02x}", index >> 8, index & 0xff);
                let output = apply_yaml(
                    &lab.server,
                    &hardware_yaml(
                        &name,
                        &mac,
                        &format!("10.98.{}.{}", index >> 8, index & 0xff),
                    ),
                );
                if output.status.success() {
                    acknowledged.lock().expect("lock").push(name);
                }
            }
        });
        // Let the loop get going, then kill the daemon in the middle of it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while acknowledged.lock().expect("lock").len() < 40 {
            assert!(
                Instant::now() < deadline,
                "the apply loop made no progress:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        daemon.stop(Signal::SIGKILL);
        killed.store(true, Ordering::SeqCst);
    });
    let acknowledged = acknowledged.into_inner().expect("lock");
    let _restarted = Daemon::start(&lab.server, SERVER_IF, &data_dir, &["--xdp-mode", "off"]);
    let stored = hardware_names(&lab);
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|name| !stored.contains(name))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost after kill -9: {lost:?}"
    );
    // At most the one apply in flight at the kill may have committed without an answer.
    assert!(
        stored.len() <= acknowledged.len() + 1,
        "{} stored, {} acknowledged",
        stored.len(),
        acknowledged.len()
    );
    let stats: Value =
        serde_json::from_str(&wisp_ok(&lab.server, &["xdp", "stats", "-o", "json"])).expect("JSON");
    assert_eq!(
        stats["allowlist_size"].as_u64(),
        Some(stored.len() as u64),
        "the allowlist is rebuilt from the store"
    );
}

#[test]
fn the_demo_as_one_stream_and_stale_resource_versions() {
    require_root!();
    let lab = Lab::new("conflict");
    let data = TempDir::new("conflict");
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &data.join("data"),
        &["--xdp-mode", "off"],
    );
    // The three documents, as one multi-document stream.
    let demo = repo_root().join("examples/tinkerbell-demo");
    let stream: Vec<String> = ["hardware.yaml", "template.yaml", "workflow.yaml"]
        .iter()
        .map(|file| std::fs::read_to_string(demo.join(file)).expect("read the demo"))
        .collect();
    let output = apply_yaml(&lab.server, &stream.join("---\n"));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .matches(" created")
            .count(),
        3
    );

    // An edit based on what `get -o yaml` returned applies once; the same stale edit then
    // conflicts instead of overwriting the newer version.
    let fetched = wisp_ok(&lab.server, &["get", "hardware", "nuc-demo", "-o", "yaml"]);
    assert!(fetched.contains("resourceVersion:"), "{fetched}");
    let edited = fetched.replace("lease_time: 86400", "lease_time: 3600");
    let first = apply_yaml(&lab.server, &edited);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(
        String::from_utf8_lossy(&first.stdout),
        "hardware.tinkerbell.org/nuc-demo configured\n"
    );
    let stale = apply_yaml(
        &lab.server,
        &edited.replace("lease_time: 3600", "lease_time: 60"),
    );
    assert!(!stale.status.success());
    assert!(
        stderr(&stale).contains("has been modified"),
        "{}",
        stderr(&stale)
    );
    assert!(stderr(&stale).contains("(Conflict)"), "{}", stderr(&stale));
    let now = wisp_ok(&lab.server, &["get", "hardware", "nuc-demo", "-o", "json"]);
    let now: Value = serde_json::from_str(&now).expect("JSON");
    assert_eq!(now["spec"]["interfaces"][0]["dhcp"]["lease_time"], 3600);
}
