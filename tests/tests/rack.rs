//! The rack view: `/` (the page), `/v1/rack` (every machine's stage) and `/v1/rack/stream`
//! (the rows that change, as server-sent events), behind the API's token, which a browser
//! holds in a read-only session cookie.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use wisp_tests::{
    apply_ok, boot_token, eventually_within, http_status, require_root, Daemon, Lab, TempDir,
    CLIENT_IP, SERVER_IF,
};

const MAC: &str = "02:00:00:00:00:0f";
const API: &str = "http://127.0.0.1:7480";

fn machine_yaml(address: &str) -> String {
    format!(
        "apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata: {{name: r1, namespace: lab}}
spec:
  interfaces:
    - dhcp: {{mac: \"{MAC}\", ip: {{address: {address}, netmask: 255.255.255.0}}}}
      netboot: {{allowPXE: true, allowWorkflow: true}}
---
apiVersion: tinkerbell.org/v1alpha1
kind: Template
metadata: {{name: t, namespace: lab}}
spec: {{data: \"tasks: [{{name: t, actions: [{{name: a, image: i}}]}}]\"}}
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata: {{name: w, namespace: lab}}
spec: {{templateRef: t, hardwareRef: r1}}
"
    )
}

/// The stages the stream's messages gave the machine, in order.
fn streamed_stages(stream: &str) -> Vec<String> {
    stream
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .flat_map(|changes| changes["rows"].as_array().cloned().unwrap_or_default())
        .filter(|row| row["mac"] == MAC)
        .filter_map(|row| row["stage"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_rack_shows_a_machines_stage_and_streams_each_change_to_a_session_that_may_only_read() {
    require_root!();
    let lab = Lab::new("rack");
    let work = TempDir::new("rack");
    let data = work.join("data");
    let _daemon = Daemon::start(&lab.server, SERVER_IF, &data, &[]);
    let address = CLIENT_IP.to_string();
    apply_ok(&lab.server, &machine_yaml(&address));
    let token = std::fs::read_to_string(data.join("api.token")).expect("the API token");
    let bearer = format!("Authorization: Bearer {}", token.trim());

    // The page needs no token; what it reads does.
    let page = lab.server.exec_ok("curl", &["-s", &format!("{API}/")]);
    assert!(
        page.contains("Wisp: the rack") && page.contains("EventSource"),
        "{page}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );
    assert_eq!(
        http_status(&lab.server, &[], &format!("{API}/v1/rack")),
        "401"
    );
    // The session: the token kept in an HttpOnly, SameSite=Strict cookie, good for reads only.
    let cookies = work.join("cookies");
    let cookies = cookies.to_str().expect("utf-8");
    let session = lab.server.exec_ok(
        "curl",
        &[
            "-s",
            "-i",
            "-X",
            "POST",
            "-H",
            &bearer,
            "-c",
            cookies,
            &format!("{API}/v1/session"),
        ],
    );
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert_eq!(
        http_status(&lab.server, &["-b", cookies], &format!("{API}/v1/rack")),
        "200"
    );
    assert_eq!(
        http_status(
            &lab.server,
            &[
                "-b",
                cookies,
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                "{\"files\":[]}"
            ],
            &format!("{API}/v1/apply")
        ),
        "401",
        "a cookie may only read"
    );
    let forged = format!("wisp_token={}", "0".repeat(64));
    assert_eq!(
        http_status(&lab.server, &["-b", &forged], &format!("{API}/v1/rack")),
        "401"
    );

    // The stream, from before the machine boots: it is off, then each stage of its boot
    // arrives as it happens, without asking again.
    let stream_file = work.join("stream");
    let mut stream = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.server.name,
            "curl",
            "-s",
            "-N",
            "-b",
            cookies,
        ])
        .arg(format!("{API}/v1/rack/stream"))
        .stdout(std::fs::File::create(&stream_file).expect("the stream's file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("curl the stream");
    let read = || std::fs::read_to_string(&stream_file).unwrap_or_default();
    eventually_within("the stream's first message", Duration::from_secs(5), || {
        streamed_stages(&read()) == ["off"]
    });
    assert!(read().contains("\"full\":true"), "{}", read());
    boot_token(&lab, MAC, &address);
    eventually_within(
        "the stream shows the boot start",
        Duration::from_secs(5),
        || streamed_stages(&read()).last().map(String::as_str) == Some("provisioning-os"),
    );
    let _ = stream.kill();
    let _ = stream.wait();
    let stages = streamed_stages(&read());
    assert_eq!(
        stages.first().map(String::as_str),
        Some("off"),
        "{stages:?}"
    );

    // The whole rack, as JSON.
    let rack: Value = serde_json::from_str(
        &lab.server
            .exec_ok("curl", &["-s", "-H", &bearer, &format!("{API}/v1/rack")]),
    )
    .expect("JSON");
    let row = &rack[0];
    assert_eq!(row["name"], "lab/r1", "{rack:#}");
    assert_eq!(row["stage"], "provisioning-os", "{rack:#}");
    assert_eq!(row["address"], address.as_str(), "{rack:#}");
}
