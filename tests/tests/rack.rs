//! The rack view: `/` (the page), `/v1/rack` (every machine's stage) and `/v1/rack/stream`
//! (the rows that change, as server-sent events), behind the API's token, which a browser
//! holds in a read-only session cookie; and the page in headless Chromium during a rollout of
//! a thousand simulated machines (`wisp-simulated-rack`, the workflow benchmark's).
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use wisp_images::browser::Browser;
use wisp_simulated_rack::{Depth, Machine, Rack, Workflows, FAILURE};
use wisp_tests::{
    apply_ok, boot_token, eventually_within, http_status, require_root, Daemon, Lab, TempDir,
    CLIENT_IF, CLIENT_IP, SERVER_IF,
};

/// Outside the simulated rack's 02:00:00:00:HH:LL.
const MAC: &str = "1c:69:7a:00:00:0f";
const API: &str = "http://127.0.0.1:7480";

/// Machine `r1` at `address`, with a one-action workflow.
fn machine_yaml(address: &str) -> String {
    wisp_tests::machine_with_workflow_yaml("r1", MAC, address)
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
    // And `wisp get hardware --watch`, kubectl's way: the table, then each row that changes.
    let watched_file = work.join("watched");
    let mut watch = lab
        .server
        .wisp_command()
        .args(["get", "hardware", "--watch"])
        .stdout(std::fs::File::create(&watched_file).expect("the watch's file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("wisp get hardware --watch");
    let watched = || std::fs::read_to_string(&watched_file).unwrap_or_default();
    eventually_within("the stream's first message", Duration::from_secs(5), || {
        streamed_stages(&read()) == ["off"]
    });
    eventually_within("the watch's table", Duration::from_secs(5), || {
        watched().lines().count() == 2
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
    eventually_within(
        "the watch shows the boot start",
        Duration::from_secs(5),
        || watched().contains("provisioning-os"),
    );
    let _ = watch.kill();
    let _ = watch.wait();
    let watched = watched();
    let words: Vec<Vec<&str>> = watched
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        words[0],
        ["NAMESPACE", "NAME", "MAC", "IP", "STAGE"],
        "{watched}"
    );
    assert_eq!(
        words[1],
        ["lab", "r1", MAC, address.as_str(), "off"],
        "{watched}"
    );
    assert!(
        words[2..]
            .iter()
            .all(|row| row[..4] == words[1][..4] && row[4] != "off"),
        "only the row that changed, once a change: {watched}"
    );
    let stages = streamed_stages(&read());
    assert_eq!(
        stages.first().map(String::as_str),
        Some("off"),
        "{stages:?}"
    );

    // And in Prometheus: machines by stage.
    eventually_within("the stage's gauge", Duration::from_secs(5), || {
        wisp_tests::metric(&lab.server, "wisp_machines{stage=\"provisioning-os\"}") == Some(1)
    });
    assert_eq!(
        wisp_tests::metric(&lab.server, "wisp_machines{stage=\"off\"}"),
        Some(0)
    );

    // Every metric the shipped Grafana dashboard charts is one the daemon exports.
    let dashboard =
        std::fs::read_to_string(wisp_tests::repo_root().join("docs/grafana/wisp-rollout.json"))
            .expect("the dashboard");
    let exported = lab.server.api_get("/metrics");
    for name in dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("wisp_"))
    {
        let family = ["_total", "_bucket"].iter().fold(name, |name, suffix| {
            name.strip_suffix(suffix).unwrap_or(name)
        });
        assert!(
            exported.contains(&format!("# TYPE {family} ")),
            "the dashboard charts {name}, which /metrics does not have"
        );
    }

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

/// What `expression` evaluates to in the page.
fn page(browser: &mut Browser, expression: &str) -> Value {
    browser.eval(expression).expect("the page")
}

/// Waits until `expression` holds in the page; failing, shows what the machine's panel says.
fn wait(browser: &mut Browser, what: &str, expression: &str, limit: Duration) {
    if let Err(err) = browser.wait_for(what, expression, limit) {
        let panel = browser.eval("document.querySelector('#machine').innerText");
        panic!("{err:#}; the machine's panel: {panel:?}");
    }
}

/// The rack of simulated machines: perfdhcp's MACs (02:00:00:00:HH:LL) at 10.99.(4+HH).LL,
/// every 250th failing.
fn simulated_machines(count: u16) -> Vec<Machine> {
    (0..count)
        .map(|index| {
            let (high, low) = (index >> 8, index & 0xff);
            Machine {
                mac: format!("02:00:00:00:{high:02x}:{low:02x}"),
                address: std::net::Ipv4Addr::new(10, 99, 4 + high as u8, low as u8),
                fails: index % 250 == 7,
            }
        })
        .collect()
}

/// Puts the machines' addresses on the client side, and routes them from the server.
fn give_addresses(lab: &Lab, work: &TempDir, machines: &[Machine]) {
    let batch = work.join("addresses");
    let commands: String = machines
        .iter()
        .map(|machine| format!("addr add {}/32 dev {CLIENT_IF}\n", machine.address))
        .collect();
    std::fs::write(&batch, commands).expect("the address batch");
    lab.client
        .exec_ok("ip", &["-batch", batch.to_str().expect("utf-8")]);
    lab.server
        .exec_ok("ip", &["route", "add", "10.99.4.0/22", "via", "10.99.0.2"]);
}

#[test]
fn in_a_browser_a_rollout_of_1000_simulated_machines_shows_live_with_its_failures_and_filter() {
    require_root!();
    let lab = Lab::new("rack-ui");
    let work = TempDir::new("rack-ui");
    let data = work.join("data");
    let _daemon = Daemon::start(&lab.server, SERVER_IF, &data, &["--xdp-mode", "native"]);
    let machines = simulated_machines(1000);
    let actions = ["stream-image", "grow-partition", "install-bootloader"];
    for apply in
        wisp_simulated_rack::manifests("rack", &machines, "255.255.0.0", &actions, None, 500)
    {
        apply_ok(&lab.server, &apply);
    }
    give_addresses(&lab, &work, &machines);
    let token = std::fs::read_to_string(data.join("api.token")).expect("the API token");

    // The page, logged in with the token in its address's fragment.
    let mut browser = Browser::open(
        &lab.server.name,
        &format!("{API}/#token={}", token.trim()),
        (1400, 1000),
        &work.join("chromium"),
    )
    .expect("open the page in chromium");
    wait(
        &mut browser,
        "1000 machines, all off",
        "document.querySelectorAll('#grid .cell[data-stage=off]').length === 1000",
        Duration::from_secs(30),
    );
    // The table is virtualised: a screenful of rows in the document, not a thousand.
    let rows = page(
        &mut browser,
        "document.querySelectorAll('#scroller .row').length",
    );
    assert!(
        rows.as_u64().is_some_and(|rows| (10..100).contains(&rows)),
        "{rows}"
    );
    // Marks this document: the changes below must reach it without a reload.
    page(&mut browser, "window.loadedOnce = true");
    let shots = wisp_tests::repo_root().join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("the screenshots' directory");

    // The rack boots and runs its workflows (each action a few seconds, the first streaming
    // an image), while the page is watched.
    let rack = Rack {
        server: wisp_tests::SERVER_IP,
        interface: CLIENT_IF.into(),
        machines: machines.clone(),
        pace: Some(Duration::from_secs(4)),
        depth: Depth::Script,
        workflows: Workflows::AsEachBoots,
    };
    let outcome = std::thread::scope(|scope| {
        let rollout = scope.spawn(|| lab.client.within(|| wisp_simulated_rack::run(&rack)));
        wait(
            &mut browser,
            "cells turning as machines boot",
            "document.querySelectorAll('#grid .cell[data-stage=provisioning-os]').length > 0",
            Duration::from_secs(60),
        );
        // A machine streaming its image: its cell and its page say how far it is.
        wait(
            &mut browser,
            "a machine streaming its image",
            "[...document.querySelectorAll('#grid .cell[data-stage=action]')]\
             .some((cell) => cell.title.includes('stream-image') && cell.title.includes('of 2.0 GiB'))",
            Duration::from_secs(120),
        );
        page(
            &mut browser,
            "[...document.querySelectorAll('#grid .cell[data-stage=action]')]\
             .find((cell) => cell.title.includes('of 2.0 GiB')).click()",
        );
        wait(
            &mut browser,
            "the machine's page with its progress and timeline",
            "!document.querySelector('#machine .progress').hidden && \
             document.querySelector('#machine .timeline').textContent.includes('RUNNING')",
            Duration::from_secs(10),
        );
        let shot = browser.screenshot().expect("a screenshot");
        std::fs::write(shots.join("rack-rollout.png"), shot).expect("the screenshot");
        rollout
            .join()
            .expect("the rollout's thread")
            .expect("the simulated rack")
    });
    assert_eq!(outcome.failed_workers, 0, "{outcome:?}");
    wait(
        &mut browser,
        "996 installed and 4 failed",
        "document.querySelectorAll('#grid .cell[data-stage=installed]').length === 996 && \
         document.querySelectorAll('#grid .cell[data-stage=failed]').length === 4",
        Duration::from_secs(30),
    );
    assert_eq!(
        page(&mut browser, "window.loadedOnce === true"),
        true,
        "the page reloaded"
    );
    let failed = &machines[7].mac;
    let cell = format!("document.querySelector('#grid .cell[data-mac=\"{failed}\"]')");
    assert!(
        page(&mut browser, &format!("{cell}.title"))
            .as_str()
            .is_some_and(|title| title.contains("grow-partition") && title.contains(FAILURE)),
        "the cell names the failure"
    );

    // The filter: one word, the failed machines' rows, with the failing action's message.
    page(
        &mut browser,
        "(() => { const f = document.getElementById('filter'); f.value = 'failed'; \
         f.dispatchEvent(new Event('input')); })()",
    );
    wait(
        &mut browser,
        "four rows with the failure",
        &format!(
            "document.querySelectorAll('#scroller .row').length === 4 && \
             [...document.querySelectorAll('#scroller .row')].every((r) => r.textContent.includes({FAILURE:?}))"
        ),
        Duration::from_secs(5),
    );
    assert_eq!(
        page(&mut browser, "document.getElementById('shown').textContent"),
        "4 of 1000"
    );
    // Its page: the timeline with the failed action, what it printed, and its events. (The
    // simulated machines do not ask for their addresses, so there is no lease to show.)
    page(
        &mut browser,
        "document.querySelector('#scroller .row').click()",
    );
    wait(
        &mut browser,
        "the failed machine's page",
        &format!(
            "document.querySelector('#machine .timeline').textContent.includes('FAILED') && \
             document.querySelector('#machine .output').textContent.includes('[grow-partition] ' + {FAILURE:?}) && \
             document.querySelector('#machine .events').textContent.includes('FAILED')"
        ),
        Duration::from_secs(5),
    );
    // What the run showed, for the docs.
    page(
        &mut browser,
        "(() => { const f = document.getElementById('filter'); f.value = ''; \
         f.dispatchEvent(new Event('input')); })()",
    );
    let shot = browser.screenshot().expect("a screenshot");
    std::fs::write(shots.join("rack.png"), shot).expect("the screenshot");
}
