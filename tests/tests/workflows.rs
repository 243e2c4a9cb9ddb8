//! Workflows through the real worker API: the real `wisp-worker` agent (or a gRPC client
//! standing in for Tinkerbell's agent) runs in the client namespace, at the address its
//! Hardware reserves, against a daemon in the server namespace.
use std::{io::Write, time::Duration};

use serde_json::Value;
use tonic::{metadata::MetadataValue, Code, Request};
use wisp_proto::{
    output::AppendRequest, ActionMessage, ActionRequest, ActionStatusRequest, StateType,
};
use wisp_tests::{
    apply_ok, boot_token, closed_within, eventually_within, from_machine as from_machine_a, metric,
    output_text, require_root, wisp, wisp_ok, worker_binary, Daemon, Lab, TempDir, CLIENT_IF,
    SERVER_IF,
};

const MAC_A: &str = "02:00:00:00:00:0a";
const MAC_B: &str = "02:00:00:00:00:0b";

/// Machine A at the client namespace's address (10.99.0.2), machine B elsewhere, and a
/// workflow for each whose template holds `actions` (YAML, indented for the task).
fn resources(actions: &str) -> String {
    let hardware = |name: &str, mac: &str, address: &str| {
        format!(
            "{}---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata: {{name: wf-{name}, namespace: lab}}
spec:
  templateRef: steps
  hardwareRef: {name}
  hardwareMap: {{device_1: \"{mac}\"}}
---
",
            wisp_tests::netboot_hardware_yaml(name, mac, address)
        )
    };
    format!(
        "{}{}apiVersion: tinkerbell.org/v1alpha1
kind: Template
metadata: {{name: steps, namespace: lab}}
spec:
  data: |
    version: \"0.1\"
    name: steps
    global_timeout: 600
    tasks:
      - name: provision
        worker: \"{{{{.device_1}}}}\"
        actions:
{actions}",
        hardware("a", MAC_A, "10.99.0.2"),
        hardware("b", MAC_B, "10.99.0.3"),
    )
}

/// A cexec action running `command` with `/bin/sh -c` on the worker's own filesystem.
fn shell_action(name: &str, timeout: u64, command: &str) -> String {
    format!(
        "          - name: {name}
            image: quay.io/tinkerbell-actions/cexec:v1.0.0
            timeout: {timeout}
            environment:
              DEFAULT_INTERPRETER: /bin/sh -c
              CMD_LINE: '{command}'
"
    )
}

fn setup(purpose: &str, actions: &str) -> (Lab, Daemon, TempDir) {
    let lab = Lab::new(purpose);
    let work = TempDir::new(purpose);
    let daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &work.join("data"),
        &["--assets-dir", work.join("assets").to_str().expect("utf-8")],
    );
    apply_ok(&lab.server, &resources(actions));
    (lab, daemon, work)
}

/// Machine A's worker in the client namespace, showing `token`.
fn worker_command(lab: &Lab, token: &str) -> std::process::Command {
    let mut command = lab.client.command(worker_binary());
    command
        .args(["--server", "10.99.0.1", "--agent-id", MAC_A, "--poll", "1"])
        .args(["--token", token]);
    command
}

/// Machine A's worker, started in the background (its output dropped).
fn spawn_worker(lab: &Lab, token: &str) -> std::process::Child {
    worker_command(lab, token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start wisp-worker")
}

/// Runs machine A's worker to its end, in the client namespace, with the token of a new boot.
fn run_worker(lab: &Lab) -> std::process::Output {
    worker_command(lab, &boot_a(lab))
        .env("NO_COLOR", "1")
        .output()
        .expect("run wisp-worker")
}

fn workflow_json(lab: &Lab, name: &str) -> Value {
    wisp_tests::workflow_json(&lab.server, "lab", name)
}

/// The iPXE script machine A gets on its next boot.
fn next_boot_script(lab: &Lab) -> String {
    lab.client.exec_ok(
        "curl",
        &[
            "-sf",
            &format!("http://10.99.0.1:8080/ipxe/{MAC_A}/auto.ipxe"),
        ],
    )
}

/// The token of a new boot of machine A.
fn boot_a(lab: &Lab) -> String {
    boot_token(lab, MAC_A, "10.99.0.2")
}

fn ask(agent: &str) -> Request<ActionRequest> {
    Request::new(ActionRequest {
        agent_id: Some(agent.into()),
        agent_attributes: None,
    })
}

fn report(workflow: &str, agent: &str, state: StateType) -> Request<ActionStatusRequest> {
    Request::new(ActionStatusRequest {
        workflow_id: Some(workflow.into()),
        agent_id: Some(agent.into()),
        task_id: Some("provision".into()),
        action_id: Some("0".into()),
        action_name: Some("first".into()),
        action_state: Some(state as i32),
        ..Default::default()
    })
}

/// The image in every format image2disk reads, made by the real tools, and the value of
/// COMPRESSED each one is streamed with.
const FORMATS: [(&str, &str); 5] = [
    ("raw.gz", "true"),
    ("raw.xz", "true"),
    ("raw.zst", "true"),
    ("qcow2", "false"),
    ("raw", "false"),
];

fn write_images(image: &[u8], assets: &std::path::Path) {
    std::fs::create_dir_all(assets).expect("assets");
    let raw = assets.join("image.raw");
    std::fs::write(&raw, image).expect("raw image");
    let mut gzip = flate2::write::GzEncoder::new(
        std::fs::File::create(assets.join("image.raw.gz")).expect("image"),
        flate2::Compression::fast(),
    );
    gzip.write_all(image).expect("compress");
    gzip.finish().expect("compress");
    let raw_path = raw.to_str().expect("utf-8");
    let zst = format!("{raw_path}.zst");
    let qcow2 = format!("{}/image.qcow2", assets.display());
    for (program, args) in [
        ("xz", vec!["-k", "-T1", raw_path]),
        ("zstd", vec!["-q", "-k", raw_path, "-o", &zst]),
        // Small clusters: several L2 tables, and runs of clusters to coalesce.
        (
            "qemu-img",
            vec![
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                "cluster_size=4096",
                raw_path,
                &qcow2,
            ],
        ),
    ] {
        let status = std::process::Command::new(program)
            .args(&args)
            .status()
            .unwrap_or_else(|err| panic!("{program}: {err}"));
        assert!(status.success(), "{program} {args:?}");
    }
}

#[test]
fn the_worker_runs_each_action_and_reports_it() {
    require_root!();
    let work = TempDir::new("wf-image");
    // Not all of it compresses away, and the zero run in the middle is a hole in the qcow2.
    let mut image: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    image[1 << 20..2 << 20].fill(0);
    let disks: Vec<_> = FORMATS
        .iter()
        .map(|(extension, _)| work.join(&format!("disk-{extension}.img")))
        .collect();
    for disk in &disks {
        std::fs::File::create(disk).expect("create the disk file");
    }
    let proof = work.join("proof");
    let mut actions = String::new();
    for ((extension, compressed), disk) in FORMATS.iter().zip(&disks) {
        actions.push_str(&format!(
            "          - name: stream-{name}
            image: quay.io/tinkerbell-actions/image2disk:v1.0.0
            timeout: 60
            environment:
              IMG_URL: http://10.99.0.1:8080/assets/image.{extension}
              DEST_DISK: {disk}
              COMPRESSED: {compressed}
",
            name = extension.replace('.', "-"),
            disk = disk.display(),
        ));
    }
    actions.push_str(&shell_action(
        "run-command",
        30,
        &format!("echo ran-by-cexec > {}", proof.display()),
    ));
    let (lab, _daemon, data) = setup("wf-ok", &actions);
    write_images(&image, &data.join("assets"));

    let pending = wisp_ok(&lab.server, &["get", "workflows", "-n", "lab"]);
    assert!(
        pending
            .lines()
            .any(|l| l.contains("wf-a") && l.contains("PENDING") && l.contains("1/6")),
        "{pending}"
    );
    let worker = run_worker(&lab);
    assert!(worker.status.success(), "{}", output_text(&worker));

    for ((extension, _), disk) in FORMATS.iter().zip(&disks) {
        let written = std::fs::read(disk).expect("the disk");
        assert!(
            written == image,
            "image2disk wrote the {extension} image wrongly"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&proof).expect("cexec's file"),
        "ran-by-cexec\n"
    );
    let workflow = workflow_json(&lab, "wf-a");
    assert_eq!(workflow["status"]["state"], "SUCCESS", "{workflow:#}");
    for action in workflow["status"]["actions"].as_array().expect("actions") {
        assert_eq!(action["state"], "SUCCESS", "{action:#}");
        assert!(action["duration"].is_string(), "{action:#}");
        assert!(action["startedAt"].is_string(), "{action:#}");
    }
    let listed = wisp_ok(&lab.server, &["get", "workflows", "-n", "lab"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("wf-a") && l.contains("SUCCESS") && l.contains("6/6")),
        "{listed}"
    );
    let described = wisp_ok(&lab.server, &["describe", "workflow", "wf-a", "-n", "lab"]);
    assert!(
        described.contains("Progress:         action 6 of 6"),
        "{described}"
    );
    for (name, format) in [("stream-raw-xz", "(Xz)"), ("stream-qcow2", "(Qcow2)")] {
        assert!(
            described.lines().any(|l| l.contains(name)
                && l.contains("SUCCESS")
                && l.contains(&format!("wrote 3145728 bytes {format}"))),
            "{described}"
        );
    }
    let watched = wisp(&lab.server, &["watch", "workflow", "wf-a", "-n", "lab"]);
    let watched_text = output_text(&watched);
    assert!(watched.status.success(), "{watched_text}");
    assert!(watched_text.contains("[6/6] run-command"), "{watched_text}");
    assert!(
        watched_text.contains("workflow wf-a SUCCESS (6 of 6 actions succeeded)"),
        "{watched_text}"
    );
    assert_eq!(
        metric(
            &lab.server,
            "wisp_workflow_action_reports_total{state=\"SUCCESS\"}"
        ),
        Some(6)
    );
    // Machine B's workflow is untouched, and A has no more work: its next boot leaves.
    assert_eq!(workflow_json(&lab, "wf-b")["status"]["state"], "PENDING");
    assert!(next_boot_script(&lab).contains("no pending work"));
}

#[test]
fn a_failed_action_fails_the_workflow_with_its_error() {
    require_root!();
    let actions = shell_action("fails", 30, "echo no disk at /dev/sdz >&2; exit 3")
        + &shell_action("never-runs", 30, "true");
    let (lab, _daemon, _work) = setup("wf-fail", &actions);
    assert!(
        next_boot_script(&lab).contains("kernel "),
        "pending work boots the OS"
    );
    let worker = run_worker(&lab);
    assert_eq!(worker.status.code(), Some(1), "{}", output_text(&worker));
    let workflow = workflow_json(&lab, "wf-a");
    let status = &workflow["status"];
    assert_eq!(status["state"], "FAILED", "{workflow:#}");
    assert_eq!(status["actions"][0]["state"], "FAILED");
    assert!(
        status["actions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("exit status: 3") && m.contains("no disk at /dev/sdz")),
        "{workflow:#}"
    );
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("fails")),
        "{workflow:#}"
    );
    assert_eq!(status["actions"][1]["state"], "PENDING");
    // The machine's events say the same: the action handed out, then its failure with what
    // it printed.
    let events: Value =
        serde_json::from_str(&wisp_ok(&lab.server, &["events", MAC_A, "-o", "json"]))
            .expect("JSON");
    let said: Vec<(&str, &str)> = events
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|event| Some((event["kind"].as_str()?, event["message"].as_str()?)))
        .collect();
    let at = |kind: &str, start: &str| {
        said.iter()
            .position(|(k, message)| *k == kind && message.starts_with(start))
            .unwrap_or_else(|| panic!("no {kind} event {start:?}: {said:?}"))
    };
    let handed_out = at("action-handed-out", "lab/wf-a: action \"fails\" handed out");
    let failed = at("action-reported", "lab/wf-a: action \"fails\" FAILED");
    assert!(handed_out < failed, "{said:?}");
    assert!(said[failed].1.contains("no disk at /dev/sdz"), "{said:?}");
    // As documented: a finished workflow is no pending work, so the next boot goes to disk.
    assert!(next_boot_script(&lab).contains("exit 1"));
    let watched = wisp(&lab.server, &["watch", "workflow", "wf-a", "-n", "lab"]);
    assert!(!watched.status.success(), "watch exits non-zero on failure");
}

/// Serves `image` at `http://10.99.0.1:8099/image.raw` from the server namespace, slowly
/// (256 KiB every 100 ms), to every connection, until the test ends.
fn serve_slowly(lab: &Lab, image: Vec<u8>) {
    let listener = lab
        .server
        .within(|| std::net::TcpListener::bind("10.99.0.1:8099").expect("bind the slow server"));
    let image = std::sync::Arc::new(image);
    std::thread::spawn(move || {
        for connection in listener.incoming().map_while(Result::ok) {
            let image = std::sync::Arc::clone(&image);
            std::thread::spawn(move || {
                let mut connection = connection;
                let mut request = [0u8; 4096];
                let _ = std::io::Read::read(&mut connection, &mut request);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    image.len()
                );
                let _ = connection.write_all(head.as_bytes());
                for chunk in image.chunks(256 << 10) {
                    if connection.write_all(chunk).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
}

#[test]
fn what_actions_print_and_how_far_image2disk_is_reach_the_cli_live() {
    require_root!();
    let work = TempDir::new("wf-output");
    let disk = work.join("disk.img");
    std::fs::File::create(&disk).expect("create the disk file");
    // 16 MiB at 2.5 MiB/s: image2disk says how far it is at each 4 MiB it writes.
    let image: Vec<u8> = (0..16u32 << 20).map(|i| (i >> 12) as u8).collect();
    let mut actions = format!(
        "          - name: stream-image
            image: quay.io/tinkerbell-actions/image2disk:v1.0.0
            timeout: 60
            environment: {{IMG_URL: \"http://10.99.0.1:8099/image.raw\", DEST_DISK: {}}}
",
        disk.display()
    );
    // Lines on both streams, a while apart, more than Wisp keeps, then a failure.
    actions.push_str(&shell_action(
        "grow",
        60,
        "for i in 1 2 3; do echo step $i; sleep 1; done; \
         seq 1 300 | sed s/^/filler-/; \
         echo Did not have sfdisk or sgdisk in PATH >&2; exit 2",
    ));
    let (lab, _daemon, _data) = setup("wf-output", &actions);
    serve_slowly(&lab, image.clone());

    // `wisp logs -f` started before anything ran, and `wisp watch` on a terminal.
    let follow = lab
        .server
        .wisp_command()
        .args(["logs", "wf-a", "-n", "lab", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start wisp logs -f");
    let watch = lab
        .server
        .wisp_on_terminal(&["watch", "workflow", "wf-a", "-n", "lab"])
        .env("COLUMNS", "160")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start wisp watch under script(1)");
    let mut worker = spawn_worker(&lab, &boot_a(&lab));

    // While the image streams: how far it is, with its rate, on the rack's row of the machine.
    let mut progress = Value::Null;
    eventually_within(
        "image2disk's progress with a rate",
        Duration::from_secs(30),
        || {
            let rack: Value = serde_json::from_str(&lab.server.api_get("/v1/rack")).expect("JSON");
            progress = rack[0]["progress"].clone();
            progress["bytes_per_second"]
                .as_u64()
                .is_some_and(|rate| rate > 0)
        },
    );
    assert_eq!(progress["total"], 16 << 20, "{progress}");
    assert!(
        progress["bytes"]
            .as_u64()
            .is_some_and(|bytes| bytes % (4 << 20) == 0 && bytes < 16 << 20),
        "{progress}"
    );
    // While `grow` runs: its first lines, before it has ended.
    eventually_within("the first lines, live", Duration::from_secs(30), || {
        let logs = wisp_ok(&lab.server, &["logs", "wf-a", "grow", "-n", "lab"]);
        logs.starts_with("step 1\n")
    });
    assert_eq!(
        workflow_json(&lab, "wf-a")["status"]["actions"][1]["state"],
        "RUNNING",
        "the lines came while the action ran"
    );
    eventually_within("the worker ends", Duration::from_secs(60), || {
        worker.try_wait().expect("the worker").is_some()
    });

    // The failure's message has the last lines it printed, from either stream.
    let workflow = workflow_json(&lab, "wf-a");
    let message = workflow["status"]["actions"][1]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("exit status: 2") && message.contains("filler-300 | Did not have sfdisk"),
        "{message}"
    );
    // `logs -f` ended with the workflow, with every line it keeps, in order, by action.
    let followed = follow.wait_with_output().expect("wisp logs -f");
    let followed_text = String::from_utf8_lossy(&followed.stdout);
    assert!(followed.status.success(), "{}", output_text(&followed));
    let lines: Vec<&str> = followed_text.lines().collect();
    assert!(lines.contains(&"[grow] step 1"), "{followed_text}");
    assert_eq!(
        lines.last(),
        Some(&"[grow] Did not have sfdisk or sgdisk in PATH"),
        "{followed_text}"
    );
    // Once each; a burst larger than what Wisp keeps between two reads is said to be cut.
    let grow: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("[grow]"))
        .copied()
        .collect();
    let once: std::collections::HashSet<&&str> = grow.iter().collect();
    assert_eq!(once.len(), grow.len(), "{followed_text}");
    assert!(
        grow.len() == 304
            || lines
                .iter()
                .any(|l| l.starts_with("… ") && l.ends_with(" lines not kept")),
        "{followed_text}"
    );
    // Afterwards Wisp keeps the last 200 of them.
    let kept = wisp_ok(&lab.server, &["logs", "wf-a", "2", "-n", "lab"]);
    assert_eq!(kept.lines().count(), 200, "{kept}");
    assert!(kept.starts_with("filler-102\n"), "{kept}");
    let none = wisp(&lab.server, &["logs", "wf-a", "nothing", "-n", "lab"]);
    assert!(
        !none.status.success()
            && output_text(&none)
                .contains("has no action \"nothing\" (its actions: stream-image, grow)"),
        "{}",
        output_text(&none)
    );
    // On a terminal, `wisp watch` drew the image's bytes and rate.
    let watched = watch.wait_with_output().expect("wisp watch");
    let watched_text = String::from_utf8_lossy(&watched.stdout);
    assert!(
        watched_text.contains("stream-image") && watched_text.contains("/16.00 MiB"),
        "{watched_text}"
    );
    assert!(watched_text.contains("MiB/s"), "{watched_text}");
    assert!(
        std::fs::read(&disk).expect("the disk") == image,
        "the image was written whole"
    );
}

#[test]
fn an_action_that_overruns_its_timeout_times_out() {
    require_root!();
    let (lab, _daemon, _work) = setup("wf-slow", &shell_action("too-slow", 1, "sleep 30"));
    let started = std::time::Instant::now();
    let worker = run_worker(&lab);
    assert_eq!(worker.status.code(), Some(1), "{}", output_text(&worker));
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the worker stopped the action"
    );
    let workflow = workflow_json(&lab, "wf-a");
    assert_eq!(workflow["status"]["state"], "TIMEOUT", "{workflow:#}");
    assert_eq!(workflow["status"]["actions"][0]["state"], "TIMEOUT");
    assert!(next_boot_script(&lab).contains("exit 1"));
}

#[test]
fn the_server_times_out_an_action_whose_worker_went_silent() {
    require_root!();
    let (lab, _daemon, _work) = setup("wf-silent", &shell_action("first", 1, "true"));
    let token = boot_a(&lab);
    let action = from_machine_a(&lab, &token, async |mut client| {
        client
            .get_action(ask(MAC_A))
            .await
            .expect("an action")
            .into_inner()
    });
    assert_eq!(action.workflow_id(), "lab/wf-a");
    assert_eq!(action.timeout(), 1);
    // No report comes; the server ends it after the timeout and its grace for the report.
    eventually_within(
        "the server times the action out",
        Duration::from_secs(30),
        || workflow_json(&lab, "wf-a")["status"]["state"] == "TIMEOUT",
    );
    let workflow = workflow_json(&lab, "wf-a");
    assert!(
        workflow["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no report from the worker")),
        "{workflow:#}"
    );
    // A late report changes nothing: the workflow's end ended the boot, and its token.
    let late = from_machine_a(&lab, &token, async |mut client| {
        client
            .report_action_status(report("lab/wf-a", MAC_A, StateType::Success))
            .await
    });
    let refused = late.expect_err("refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("boot has ended"), "{refused:?}");
    assert_eq!(workflow_json(&lab, "wf-a")["status"]["state"], "TIMEOUT");
}

#[test]
fn a_worker_that_keeps_asking_without_reporting_still_times_out() {
    require_root!();
    let (lab, _daemon, _work) = setup("wf-poller", &shell_action("first", 1, "true"));
    let token = boot_a(&lab);
    // Asking again hands out the same running action; it must not restart the action's clock,
    // or a worker stuck in a loop of asks would hold its machine forever.
    let ended = from_machine_a(&lab, &token, async |mut client| {
        for _ in 0..60 {
            match client.get_action(ask(MAC_A)).await {
                Ok(action) => assert_eq!(action.into_inner().action_id(), "0"),
                Err(status) => {
                    let state = status
                        .metadata()
                        .get(wisp_proto::WORKFLOW_STATE_KEY)
                        .cloned();
                    return Some((status.code(), state));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    });
    assert_eq!(
        ended,
        Some((Code::NotFound, Some(MetadataValue::from_static("TIMEOUT")))),
        "the action timed out within 30 s of asks"
    );
}

#[test]
fn a_reported_message_is_capped_before_it_is_stored() {
    require_root!();
    let (lab, _daemon, _work) = setup("wf-huge", &shell_action("first", 30, "true"));
    let token = boot_a(&lab);
    let huge = "x".repeat(1 << 20);
    from_machine_a(&lab, &token, async |mut client| {
        client.get_action(ask(MAC_A)).await.expect("an action");
        let mut failed = report("lab/wf-a", MAC_A, StateType::Failed);
        failed.get_mut().message = Some(ActionMessage {
            message: Some(huge.clone()),
        });
        client
            .report_action_status(failed)
            .await
            .expect("the report is taken");
    });
    let workflow = workflow_json(&lab, "wf-a");
    let message = workflow["status"]["actions"][0]["message"]
        .as_str()
        .expect("a message");
    assert!(
        message.len() < 4200 && message.ends_with(&format!("({} bytes cut)", (1 << 20) - 4096)),
        "{} bytes stored, ending {:?}",
        message.len(),
        &message[message.len().saturating_sub(40)..]
    );
}

#[test]
fn workers_get_and_report_only_their_own_machines_actions() {
    require_root!();
    let (lab, _daemon, _work) = setup("wf-iso", &shell_action("first", 30, "true"));
    lab.client
        .exec_ok("ip", &["addr", "add", "10.99.0.3/24", "dev", CLIENT_IF]);
    let token_b = boot_token(&lab, MAC_B, "10.99.0.3");
    let token = boot_a(&lab);
    let codes = from_machine_a(&lab, &token, async |mut client| {
        let as_b = client.get_action(ask(MAC_B)).await.map(drop);
        let report_b_as_a = client
            .report_action_status(report("lab/wf-b", MAC_A, StateType::Running))
            .await
            .map(drop);
        let report_b_as_b = client
            .report_action_status(report("lab/wf-b", MAC_B, StateType::Running))
            .await
            .map(drop);
        let mut with_b_token = ask(MAC_B);
        with_b_token.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token_b}")).expect("header"),
        );
        let token_of_b = client.get_action(with_b_token).await.map(drop);
        let own = client.get_action(ask(MAC_A)).await.map(|a| a.into_inner());
        (as_b, report_b_as_a, report_b_as_b, token_of_b, own)
    });
    let code = |result: &Result<(), tonic::Status>| result.as_ref().map_err(|s| s.code()).err();
    assert_eq!(
        code(&codes.0),
        Some(Code::PermissionDenied),
        "{:?}",
        codes.0
    );
    assert_eq!(
        code(&codes.1),
        Some(Code::PermissionDenied),
        "{:?}",
        codes.1
    );
    assert_eq!(
        code(&codes.2),
        Some(Code::PermissionDenied),
        "{:?}",
        codes.2
    );
    // B's token from A's address names another machine than the address does.
    assert_eq!(
        code(&codes.3),
        Some(Code::PermissionDenied),
        "{:?}",
        codes.3
    );
    let own = codes.4.expect("machine A gets its own action");
    assert_eq!(own.workflow_id(), "lab/wf-a");
    assert_eq!(own.agent_id(), MAC_A);
    assert_eq!(
        metric(
            &lab.server,
            "wisp_worker_api_calls_total{method=\"ReportActionStatus\",code=\"PermissionDenied\"}"
        ),
        Some(2)
    );
    // Nothing of B's moved.
    let b = workflow_json(&lab, "wf-b");
    assert_eq!(b["status"]["state"], "PENDING", "{b:#}");
    assert_eq!(b["status"]["actions"][0]["state"], "PENDING", "{b:#}");

    // Output goes only to an action running on the machine sending it.
    let append = |workflow: &str, action: &str, line: &str| AppendRequest {
        workflow_id: workflow.into(),
        agent_id: MAC_A.into(),
        action_id: action.into(),
        first_line: 0,
        lines: vec![line.into()],
        progress: None,
    };
    let outputs = wisp_tests::output_from_machine(&lab, &token, async |mut client| {
        let mut codes = Vec::new();
        for (workflow, action) in [("lab/wf-a", "0"), ("lab/wf-b", "0"), ("lab/wf-a", "7")] {
            let sent = client.append(append(workflow, action, "from A")).await;
            codes.push(sent.map(drop).map_err(|status| status.code()).err());
        }
        codes
    });
    assert_eq!(
        outputs,
        [
            None,
            Some(Code::FailedPrecondition),
            Some(Code::FailedPrecondition)
        ]
    );
    assert_eq!(
        wisp_ok(&lab.server, &["logs", "wf-a", "-n", "lab"]),
        "[first] from A\n"
    );
}

#[test]
fn a_daemon_restart_mid_workflow_resumes_it() {
    require_root!();
    let work = TempDir::new("wf-restart-files");
    let (first, second) = (work.join("first"), work.join("second"));
    let actions = shell_action(
        "slow",
        60,
        &format!("sleep 4; echo one > {}", first.display()),
    ) + &shell_action("next", 60, &format!("echo two > {}", second.display()));
    let (lab, mut daemon, data) = setup("wf-restart", &actions);
    // The boot's token, minted before the restart, is still good after it.
    let mut worker = spawn_worker(&lab, &boot_a(&lab));
    eventually_within("the first action runs", Duration::from_secs(20), || {
        workflow_json(&lab, "wf-a")["status"]["actions"][0]["state"] == "RUNNING"
    });
    let started = workflow_json(&lab, "wf-a")["status"]["actions"][0]["startedAt"].clone();
    assert!(started.is_string(), "the running action has a start time");
    daemon.stop(nix::sys::signal::Signal::SIGKILL);
    std::thread::sleep(Duration::from_secs(1));
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &data.join("data"),
        &["--assets-dir", data.join("assets").to_str().expect("utf-8")],
    );
    // Bounded, so that a worker that never ends fails the test instead of hanging the suite.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = worker.try_wait().expect("the worker's status") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = worker.kill();
            panic!("the worker did not finish within 90 s of the restart");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "the worker finished the workflow across the restart"
    );
    let workflow = workflow_json(&lab, "wf-a");
    assert_eq!(workflow["status"]["state"], "SUCCESS", "{workflow:#}");
    assert_eq!(
        workflow["status"]["actions"][0]["startedAt"], started,
        "the action was resumed, not started again: {workflow:#}"
    );
    assert_eq!(std::fs::read_to_string(&first).expect("first"), "one\n");
    assert_eq!(std::fs::read_to_string(&second).expect("second"), "two\n");
}

#[test]
fn an_image_that_is_not_built_in_fails_clearly_without_a_container_runtime() {
    require_root!();
    let actions = "          - name: custom
            image: docker.io/library/alpine:3.20
            timeout: 30
            command: [\"echo\", \"hi\"]
";
    let (lab, _daemon, _work) = setup("wf-oci", actions);
    let token = boot_token(&lab, MAC_A, "10.99.0.2");
    // The provisioning OS has no container runtime; an empty PATH stands in for it here.
    let worker = lab
        .client
        .command("env")
        .arg("PATH=/nonexistent")
        .arg(worker_binary())
        .args(["--server", "10.99.0.1", "--agent-id", MAC_A, "--poll", "1"])
        .args(["--token", &token])
        .output()
        .expect("run wisp-worker");
    assert_eq!(worker.status.code(), Some(1), "{}", output_text(&worker));
    let workflow = workflow_json(&lab, "wf-a");
    assert_eq!(workflow["status"]["state"], "FAILED", "{workflow:#}");
    let message = workflow["status"]["actions"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("not a built-in action") && message.contains("docker, podman, ctr"),
        "{message}"
    );
}

#[test]
fn a_silent_connection_is_reaped_and_one_address_cannot_hold_every_connection() {
    require_root!();
    let lab = Lab::new("worker-api-limits");
    let work = TempDir::new("worker-api-limits");
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &work.join("data"),
        &["--connection-timeout", "2s"],
    );
    lab.client.within(|| {
        let connect = || std::net::TcpStream::connect("10.99.0.1:42113").expect("connect");
        // A peer that opens HTTP/2 and then goes silent, as a machine that was hard-reset
        // mid-call: its TCP still answers, but it never answers the server's keepalive ping.
        let mut silent = connect();
        silent
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .expect("send the HTTP/2 preface and SETTINGS");
        let closed = closed_within(&mut silent, Duration::from_secs(15));
        assert!(
            closed.is_some_and(|after| after >= Duration::from_secs(2)),
            "closed after the 2 s ping and the 2 s wait for its answer, not before: {closed:?}"
        );
        // Eight connections from one address are all it may hold: the ninth is closed at once.
        let held: Vec<_> = (0..8).map(|_| connect()).collect();
        let closed = closed_within(&mut connect(), Duration::from_secs(1));
        assert!(closed.is_some(), "the ninth connection is closed at once");
        drop(held);
    });
}

#[test]
fn the_daemon_ends_a_workflow_at_its_global_timeout_even_across_a_restart() {
    require_root!();
    let lab = Lab::new("wf-global");
    let work = TempDir::new("wf-global");
    let start = |lab: &Lab| {
        Daemon::start(
            &lab.server,
            SERVER_IF,
            &work.join("data"),
            &["--assets-dir", work.join("assets").to_str().expect("utf-8")],
        )
    };
    let mut daemon = start(&lab);
    // The action may take 10 minutes; the workflow as a whole, 6 s.
    let resources = resources(&shell_action("long", 600, "sleep 60"))
        .replace("global_timeout: 600", "global_timeout: 6");
    apply_ok(&lab.server, &resources);
    let mut worker = spawn_worker(&lab, &boot_a(&lab));
    eventually_within("the action runs", Duration::from_secs(20), || {
        workflow_json(&lab, "wf-a")["status"]["actions"][0]["state"] == "RUNNING"
    });
    // The daemon that started it dies; the one after it still counts from the start.
    daemon.stop(nix::sys::signal::Signal::SIGKILL);
    let _daemon = start(&lab);
    eventually_within(
        "the global timeout ends it",
        Duration::from_secs(30),
        || workflow_json(&lab, "wf-a")["status"]["state"] == "TIMEOUT",
    );
    let _ = worker.kill();
    let _ = worker.wait();
    let workflow = workflow_json(&lab, "wf-a");
    assert_eq!(
        workflow["status"]["message"],
        "action \"long\": the workflow's global_timeout of 6 s has passed",
        "{workflow:#}"
    );
    let started: humantime::Timestamp = workflow["status"]["startedAt"]
        .as_str()
        .expect("a start")
        .parse()
        .expect("RFC 3339");
    let finished: humantime::Timestamp = workflow["status"]["finishedAt"]
        .as_str()
        .expect("an end")
        .parse()
        .expect("RFC 3339");
    let took = std::time::SystemTime::from(finished)
        .duration_since(started.into())
        .expect("ends after it starts");
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(30),
        "ended {took:?} after its start"
    );
}

/// An ext4 filesystem made from the directory `root` (mkfs.ext4 -d copies device nodes, FIFOs
/// and symlinks as they are) on a loop device, detached on drop.
struct LoopDisk {
    device: String,
}

impl LoopDisk {
    fn from_directory(work: &TempDir, name: &str, root: &std::path::Path) -> LoopDisk {
        let image = work.join(&format!("{name}.img"));
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(32 << 20))
            .expect("create the image");
        let status = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(root)
            .arg(&image)
            .status()
            .expect("mkfs.ext4");
        assert!(status.success(), "mkfs.ext4 -d {}", root.display());
        let attached = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .expect("losetup");
        assert!(attached.status.success(), "{}", output_text(&attached));
        LoopDisk {
            device: String::from_utf8_lossy(&attached.stdout).trim().to_string(),
        }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.device])
            .status();
    }
}

/// The root of an installed system with busybox in it, and `/proc` and `/sys` to bind over.
fn installed_root(work: &TempDir, name: &str) -> std::path::PathBuf {
    let root = work.join(name);
    for dir in ["bin", "etc", "proc", "sys"] {
        std::fs::create_dir_all(root.join(dir)).expect("directory");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox");
    root
}

/// Runs machine A's worker in a mount namespace of its own: if the actions' defences failed,
/// their mounts would land there rather than on the test machine.
fn run_worker_unshared(lab: &Lab) -> std::process::Output {
    let token = boot_a(lab);
    lab.client
        .command("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(worker_binary())
        .args(["--server", "10.99.0.1", "--agent-id", MAC_A, "--poll", "1"])
        .args(["--token", &token])
        .env("NO_COLOR", "1")
        .output()
        .expect("run wisp-worker")
}

#[test]
fn an_untrusted_image_reaches_no_device_of_the_provisioning_os_and_cannot_stall_an_action() {
    require_root!();
    let work = TempDir::new("wf-untrusted");
    // An image with a device node (/dev/zero's numbers) and a FIFO where writefile will write.
    let hostile = installed_root(&work, "hostile");
    std::fs::create_dir_all(hostile.join("dev")).expect("dev");
    nix::sys::stat::mknod(
        &hostile.join("zero"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 5),
    )
    .expect("mknod");
    nix::unistd::mkfifo(
        &hostile.join("etc/hostname"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    let hostile = LoopDisk::from_directory(&work, "hostile", &hostile);
    // An image whose /dev points at the root: binding the OS's /dev "into" it would bind over /.
    let linked = installed_root(&work, "linked");
    std::os::unix::fs::symlink("/", linked.join("dev")).expect("symlink");
    let linked = LoopDisk::from_directory(&work, "linked", &linked);

    // In the chroot: the image's root is mounted nodev and nosuid, and its device node does not
    // open. The script exits non-zero on either failure.
    let check = "line=$(busybox grep \" / / \" /proc/self/mountinfo)
                case \"$line\" in *nodev*) ;; *) echo \"root mounted without nodev: $line\"; exit 1;; esac
                case \"$line\" in *nosuid*) ;; *) echo \"root mounted without nosuid: $line\"; exit 1;; esac
                if busybox head -c 1 /zero > /dev/null; then echo \"the image's device node opened\"; exit 1; fi";
    let actions = format!(
        "          - name: chroot-on-untrusted-root
            image: quay.io/tinkerbell-actions/cexec:v1.0.0
            timeout: 30
            environment:
              BLOCK_DEVICE: {hostile}
              FS_TYPE: ext4
              CHROOT: y
              DEFAULT_INTERPRETER: /bin/busybox sh -c
              CMD_LINE: |
                {check}
          - name: write-into-a-fifo
            image: quay.io/tinkerbell-actions/writefile:v1.0.0
            timeout: 300
            environment:
              DEST_DISK: {hostile}
              FS_TYPE: ext4
              DEST_PATH: /etc/hostname
              CONTENTS: machine-a
",
        hostile = hostile.device,
    );
    let (lab, daemon, _data) = setup("wf-untrusted", &actions);
    let worker = run_worker_unshared(&lab);
    let status = &workflow_json(&lab, "wf-a")["status"];
    let said = format!("{status:#}\n{}\n{}", output_text(&worker), daemon.log());
    assert_eq!(status["actions"][0]["state"], "SUCCESS", "{said}");
    // The FIFO fails the action at once, not at its 300 s timeout.
    assert_eq!(status["actions"][1]["state"], "FAILED", "{said}");
    let message = status["actions"][1]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("/etc/hostname") && !message.contains("timed out"),
        "{said}"
    );

    // A second workflow for machine A chroots into the image whose /dev is a link to /.
    apply_ok(
        &lab.server,
        &format!(
            "apiVersion: tinkerbell.org/v1alpha1
kind: Template
metadata: {{name: linked, namespace: lab}}
spec:
  data: |
    version: \"0.1\"
    name: linked
    tasks:
      - name: provision
        worker: \"{{{{.device_1}}}}\"
        actions:
          - name: chroot-on-linked-dev
            image: quay.io/tinkerbell-actions/cexec:v1.0.0
            timeout: 30
            environment:
              BLOCK_DEVICE: {linked}
              FS_TYPE: ext4
              CHROOT: y
              DEFAULT_INTERPRETER: /bin/busybox sh -c
              CMD_LINE: 'true'
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata: {{name: wf-a-linked, namespace: lab}}
spec:
  templateRef: linked
  hardwareRef: a
  hardwareMap: {{device_1: \"{MAC_A}\"}}
",
            linked = linked.device,
        ),
    );
    let worker = run_worker_unshared(&lab);
    let status = &workflow_json(&lab, "wf-a-linked")["status"];
    let said = format!("{status:#}\n{}", output_text(&worker));
    assert_eq!(status["actions"][0]["state"], "FAILED", "{said}");
    assert!(
        status["actions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("/dev is a symlink")),
        "{said}"
    );
}

/// A real podman, private to one test: its images and containers live under `dir` (vfs, so
/// nothing stays mounted), and its defaults fit this lab machine, whose root lacks
/// CAP_SYS_RESOURCE (podman's default limits cannot be set) and whose cgroup v2 has no pids
/// controller. A provisioning OS that ships podman needs neither setting.
struct Podman {
    environment: [(&'static str, std::path::PathBuf); 2],
}

impl Podman {
    fn new(dir: &std::path::Path) -> Podman {
        std::fs::create_dir_all(dir).expect("podman's directory");
        let storage = dir.join("storage.conf");
        std::fs::write(
            &storage,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
                dir.display()
            ),
        )
        .expect("storage.conf");
        let (_, open_files) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .expect("the open-files limit");
        let containers = dir.join("containers.conf");
        std::fs::write(
            &containers,
            format!(
                "[containers]\npids_limit = 0\ndefault_ulimits = [\"nofile={open_files}:{open_files}\", \"nproc=4096:4096\"]\n"
            ),
        )
        .expect("containers.conf");
        Podman {
            environment: [
                ("CONTAINERS_STORAGE_CONF", storage),
                ("CONTAINERS_CONF", containers),
            ],
        }
    }

    /// `podman import` of a root filesystem, as `name`.
    fn import(&self, root: &std::path::Path, name: &str) {
        let mut tar = std::process::Command::new("tar")
            .arg("-C")
            .arg(root)
            .args(["-c", "."])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run tar");
        let imported = std::process::Command::new("podman")
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .args(["import", "-", name])
            .stdin(tar.stdout.take().expect("tar's output"))
            .output()
            .expect("run podman import");
        assert!(tar.wait().expect("tar").success());
        assert!(imported.status.success(), "{}", output_text(&imported));
    }
}

#[test]
fn an_image_that_is_not_built_in_runs_in_podman_with_its_environment_volumes_namespaces_and_exit_status(
) {
    require_root!();
    let work = TempDir::new("wf-podman");
    let podman = Podman::new(&work.join("podman"));
    podman.import(&wisp_tests::vm::debian_root(), "localhost/wisp-debian:test");
    let out = work.join("out");
    std::fs::create_dir_all(&out).expect("the volume's directory");
    let actions = format!(
        "          - name: greet
            image: localhost/wisp-debian:test
            timeout: 60
            command: [\"/bin/sh\", \"-c\", \"echo \\\"$GREETING from Debian $(cat /etc/debian_version)\\\" > /out/greeting; ls /sys/class/net > /out/isolated\"]
            volumes: [\"{out}:/out\"]
            environment: {{GREETING: hello}}
            namespaces: {{network: none}}
          - name: fail
            image: localhost/wisp-debian:test
            timeout: 60
            command: [\"/bin/sh\", \"-c\", \"ls /sys/class/net > /out/shared; exit 3\"]
            volumes: [\"{out}:/out\"]
",
        out = out.display()
    );
    let (lab, _daemon, _work) = setup("wf-podman", &actions);
    let token = boot_a(&lab);
    // In a mount namespace of its own, the worker's podman sees cgroup v2 alone (crun refuses
    // this machine's hybrid v1 and v2 layout).
    let worker = lab
        .client
        .command("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "if mountpoint -q /sys/fs/cgroup; then umount -R /sys/fs/cgroup; fi; \
             mount -t cgroup2 none /sys/fs/cgroup && exec \"$@\"",
        )
        .arg("worker")
        .arg(worker_binary())
        .args(["--server", "10.99.0.1", "--agent-id", MAC_A, "--poll", "1"])
        .args(["--token", &token])
        .envs(podman.environment.iter().map(|(k, v)| (k, v)))
        .env("NO_COLOR", "1")
        .output()
        .expect("run wisp-worker");
    let workflow = workflow_json(&lab, "wf-a");
    let actions = &workflow["status"]["actions"];
    // The first action ran in the image (its /etc/debian_version), with its variable and its
    // volume; the second's exit status failed it and the workflow.
    let greeting = std::fs::read_to_string(out.join("greeting")).unwrap_or_default();
    assert!(
        greeting.starts_with("hello from Debian 1"),
        "{greeting:?}\n{workflow:#}\n{}",
        output_text(&worker)
    );
    assert_eq!(actions[0]["state"], "SUCCESS", "{workflow:#}");
    assert_eq!(actions[1]["state"], "FAILED", "{workflow:#}");
    // `namespaces.network: none` reached the runtime; without it, an action shares the
    // provisioning OS's network, as it has no container network of its own.
    let interfaces = |file: &str| std::fs::read_to_string(out.join(file)).unwrap_or_default();
    assert_eq!(interfaces("isolated").trim(), "lo", "{workflow:#}");
    assert!(
        interfaces("shared").contains(CLIENT_IF),
        "{}",
        interfaces("shared")
    );
    assert_eq!(actions[0]["namespaces"]["network"], "none", "{workflow:#}");
    let message = actions[1]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("podman run localhost/wisp-debian:test")
            && message.contains("exit status: 3"),
        "{message}"
    );
    assert_eq!(workflow["status"]["state"], "FAILED", "{workflow:#}");
    assert_eq!(worker.status.code(), Some(1), "{}", output_text(&worker));
}
