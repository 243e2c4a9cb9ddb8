//! BMC control against real BMCs: OpenIPMI's `ipmi_sim` on the client side of a lab, driven by
//! the daemon through `ipmitool` from the server side. Jobs as Tinkerbell's users write them;
//! the faults a rack has (a dead BMC, a wrong password, a machine that never powers on, a
//! missing Secret) each end their Task as Failed with a message that says so.
use std::time::{Duration, Instant};

use serde_json::Value;
use wisp_tests::{
    apply_ok,
    bmc::{ipmi_sim, machine_yaml, Chassis},
    eventually_within, require_root, wisp, wisp_ok, Daemon, Lab, TempDir, SERVER_IF,
};

const PASSWORD: &str = "t0p-Secret";

fn start(purpose: &str, extra: &[&str]) -> (Lab, TempDir, Daemon) {
    let lab = Lab::new(purpose);
    let work = TempDir::new(purpose);
    let mut args = vec!["--bmc-poll-interval", "2s"];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(&lab.server, SERVER_IF, &work.join("data"), &args);
    (lab, work, daemon)
}

fn get(lab: &Lab, kind: &str, name: &str) -> Value {
    serde_json::from_str(&wisp_ok(
        &lab.server,
        &["get", kind, name, "-n", "lab", "-o", "json"],
    ))
    .expect("JSON")
}

/// The condition of `kind` in a resource's status: (status, message).
fn condition(resource: &Value, kind: &str) -> Option<(String, String)> {
    resource["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// Waits until the Job has Completed or Failed; returns it.
fn finished_job(lab: &Lab, name: &str, limit: Duration) -> Value {
    let mut job = Value::Null;
    eventually_within(&format!("job {name} finishes"), limit, || {
        job = get(lab, "job", name);
        condition(&job, "Completed").is_some() || condition(&job, "Failed").is_some()
    });
    job
}

/// An IPMI BMC that does as it is told, at the client side's 10.99.0.2:623.
fn obedient_bmc(lab: &Lab, work: &TempDir) -> wisp_tests::bmc::IpmiSim {
    ipmi_sim(
        &lab.client,
        work,
        ("10.99.0.2", 623),
        PASSWORD,
        Chassis::Obedient,
    )
}

fn job_yaml(name: &str, machine: &str, tasks: &str) -> String {
    format!(
        "apiVersion: bmc.tinkerbell.org/v1alpha1
kind: Job
metadata: {{name: {name}, namespace: lab}}
spec:
  machineRef: {{name: {machine}, namespace: lab}}
  tasks:
{tasks}"
    )
}

#[test]
fn a_job_powers_a_machine_on_and_sets_its_boot_device_through_ipmi() {
    require_root!();
    let (lab, work, daemon) = start("bmc-ipmi", &[]);
    let bmc = obedient_bmc(&lab, &work);
    apply_ok(
        &lab.server,
        &machine_yaml("node-1", "10.99.0.2", 623, PASSWORD),
    );

    // The Machine's power is read as soon as it exists.
    eventually_within(
        "the machine is read as off",
        Duration::from_secs(20),
        || {
            let machine = get(&lab, "machine", "node-1");
            machine["status"]["powerState"] == "off"
                && condition(&machine, "Contactable").is_some_and(|(status, _)| status == "True")
        },
    );

    // Tinkerbell's netboot Job: off, a one-time PXE boot in EFI mode, on.
    apply_ok(
        &lab.server,
        &job_yaml(
            "netboot-wf1",
            "node-1",
            "    - powerAction: \"off\"
    - oneTimeBootDeviceAction: {device: [pxe], efiBoot: true}
    - powerAction: \"on\"
",
        ),
    );
    let job = finished_job(&lab, "netboot-wf1", Duration::from_secs(60));
    assert_eq!(
        condition(&job, "Completed"),
        Some(("True".into(), String::new())),
        "{job:#}\n{}",
        daemon.log()
    );
    assert_eq!(condition(&job, "Running").map(|c| c.0), Some("True".into()));
    assert!(job["status"]["startTime"].is_string() && job["status"]["completionTime"].is_string());
    assert_eq!(bmc.power(), "1", "the chassis is on");
    assert_eq!(
        bmc.boot_device(),
        "pxe",
        "the next boot is from the network"
    );

    // One Task per action, named and owned as Tinkerbell names them, each Completed.
    for index in 0..3 {
        let task = get(&lab, "task", &format!("netboot-wf1-task-{index}"));
        assert_eq!(task["metadata"]["labels"]["owner-name"], "netboot-wf1");
        assert_eq!(task["metadata"]["ownerReferences"][0]["kind"], "Job");
        assert_eq!(task["spec"]["connection"]["host"], "10.99.0.2");
        assert_eq!(
            condition(&task, "Completed").map(|c| c.0),
            Some("True".into()),
            "{task:#}"
        );
    }
    let tasks = wisp_ok(&lab.server, &["get", "tasks", "-n", "lab"]);
    assert_eq!(tasks.matches("Completed").count(), 3, "{tasks}");

    // After the Job, the Machine reads as on, without waiting for its next poll.
    eventually_within("the machine is read as on", Duration::from_secs(10), || {
        get(&lab, "machine", "node-1")["status"]["powerState"] == "on"
    });
    let machines = wisp_ok(&lab.server, &["get", "machines", "-n", "lab"]);
    assert!(
        machines.lines().any(|l| l.contains("node-1")
            && l.contains("10.99.0.2")
            && l.contains(" on ")
            && l.ends_with("True")),
        "{machines}"
    );

    let described = wisp_ok(&lab.server, &["describe", "machine", "node-1", "-n", "lab"]);
    assert!(
        described.contains("Status:")
            && described.contains("powerState: on")
            && described.contains("type: Contactable"),
        "{described}"
    );

    // `wisp power`: a one-task Job, followed to its end.
    let off = wisp_ok(&lab.server, &["power", "off", "node-1", "-n", "lab"]);
    assert!(
        off.starts_with("machine lab/node-1: power off: done (job node-1-power-off-"),
        "{off}"
    );
    assert_eq!(bmc.power(), "0");
    let status = wisp_ok(&lab.server, &["power", "status", "node-1"]);
    assert!(
        status.starts_with("machine lab/node-1: power is off"),
        "{status}"
    );
    let nothing = wisp(&lab.server, &["power", "on", "nothing"]);
    assert!(!nothing.status.success());
    assert!(
        String::from_utf8_lossy(&nothing.stderr)
            .contains("no machine or hardware \"nothing\" found (NotFound)"),
        "{}",
        String::from_utf8_lossy(&nothing.stderr)
    );

    // The credentials are stored, and shown only when asked for.
    let secret = wisp_ok(
        &lab.server,
        &["get", "secret", "node-1-auth", "-n", "lab", "-o", "yaml"],
    );
    assert!(
        secret.contains("password: <redacted>") && !secret.contains("dDBwLVNlY3JldA=="),
        "{secret}"
    );
    let described = wisp_ok(
        &lab.server,
        &["describe", "secret", "node-1-auth", "-n", "lab"],
    );
    assert!(
        described.contains("  password") && !described.contains("dDBw"),
        "{described}"
    );
    let revealed = wisp_ok(
        &lab.server,
        &[
            "get",
            "secret",
            "node-1-auth",
            "-n",
            "lab",
            "-o",
            "yaml",
            "--reveal-secrets",
        ],
    );
    assert!(
        revealed.contains("password: dDBwLVNlY3JldA=="),
        "{revealed}"
    );
    assert!(
        !daemon.log().contains(PASSWORD),
        "the password reached the log"
    );
}

#[test]
fn dead_bmcs_wrong_passwords_and_stuck_machines_fail_their_tasks_clearly() {
    require_root!();
    let (lab, work, daemon) = start("bmc-faults", &["--bmc-power-timeout", "6s"]);
    let _good = obedient_bmc(&lab, &work);
    let _stuck = ipmi_sim(
        &lab.client,
        &work,
        ("10.99.0.2", 624),
        PASSWORD,
        Chassis::NeverPowersOn,
    );
    // The dead BMC is an address on the lab's link that nothing answers.
    let machines = [
        machine_yaml("good", "10.99.0.2", 623, PASSWORD),
        machine_yaml("stuck", "10.99.0.2", 624, PASSWORD),
        machine_yaml("dead", "10.99.0.77", 623, PASSWORD),
        // The BMC is fine; the Secret says another password.
        machine_yaml("wrong-password", "10.99.0.2", 623, "not-the-password"),
    ]
    .join("---\n");
    apply_ok(&lab.server, &machines);
    let power_on = "    - powerAction: \"on\"\n";
    apply_ok(
        &lab.server,
        &[
            job_yaml("dead-on", "dead", power_on),
            job_yaml("wrong-password-on", "wrong-password", power_on),
            job_yaml("stuck-on", "stuck", power_on),
            job_yaml("missing-machine-on", "no-such-machine", power_on),
            job_yaml("good-on", "good", power_on),
        ]
        .join("---\n"),
    );

    // A dead BMC holds up only its own Job: the good one finishes while it is still trying.
    let good = finished_job(&lab, "good-on", Duration::from_secs(30));
    assert_eq!(
        condition(&good, "Completed").map(|c| c.0),
        Some("True".into()),
        "{good:#}"
    );
    let dead_meanwhile = get(&lab, "job", "dead-on");
    assert!(
        condition(&dead_meanwhile, "Failed").is_none(),
        "the dead BMC's job was still trying when the good one finished: {dead_meanwhile:#}"
    );

    let started = Instant::now();
    let dead = finished_job(&lab, "dead-on", Duration::from_secs(120));
    let (status, message) = condition(&dead, "Failed").expect("dead-on failed");
    assert_eq!(status, "True");
    assert!(
        message.contains("task lab/dead-on-task-0 failed")
            && message.contains("ipmitool: no answer from the BMC")
            && message.contains("3 tries"),
        "{message}\n{}",
        daemon.log()
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    let task = get(&lab, "task", "dead-on-task-0");
    assert_eq!(condition(&task, "Failed").map(|c| c.0), Some("True".into()));
    assert!(task["status"]["completionTime"].is_null(), "{task:#}");

    let wrong = finished_job(&lab, "wrong-password-on", Duration::from_secs(60));
    let (_, message) = condition(&wrong, "Failed").expect("wrong-password-on failed");
    assert!(message.contains("wrong username or password"), "{message}");

    let stuck = finished_job(&lab, "stuck-on", Duration::from_secs(60));
    let (_, message) = condition(&stuck, "Failed").expect("stuck-on failed");
    assert!(
        message.contains("accepted power on but the machine was not on after 6 s"),
        "{message}"
    );

    let missing = finished_job(&lab, "missing-machine-on", Duration::from_secs(30));
    let (_, message) = condition(&missing, "Failed").expect("missing-machine-on failed");
    assert_eq!(message, "machine lab/no-such-machine not found");

    // The Machines say who can be reached; a Machine whose Secret is missing says so.
    apply_ok(
        &lab.server,
        &machine_yaml("no-secret", "10.99.0.2", 623, PASSWORD)
            .split("---\n")
            .nth(1)
            .expect("the Machine document")
            .replace("no-secret-auth", "absent"),
    );
    eventually_within(
        "the machines' contactability is known",
        Duration::from_secs(60),
        || {
            let contactable = |name: &str| condition(&get(&lab, "machine", name), "Contactable");
            contactable("dead").is_some_and(|(s, m)| s == "False" && m.contains("no answer"))
                && contactable("wrong-password")
                    .is_some_and(|(s, m)| s == "False" && m.contains("wrong username or password"))
                && contactable("no-secret")
                    .is_some_and(|(s, m)| s == "False" && m == "secret lab/absent not found")
                && contactable("good").is_some_and(|(s, _)| s == "True")
        },
    );
    let listed = wisp(&lab.server, &["get", "jobs", "-n", "lab"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.matches("Failed").count(), 4, "{listed}");
    assert_eq!(listed.matches("Completed").count(), 1, "{listed}");
}

const MAC_A: &str = "02:00:00:00:00:0a";

/// Hardware `a` at the client namespace's address, netboot off, with `bmc_ref` (YAML) if any;
/// a one-action template; a Workflow with `boot_options` (YAML).
fn provisioning_yaml(bmc_ref: &str, boot_options: &str) -> String {
    format!(
        "apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata: {{name: a, namespace: lab}}
spec:
  {bmc_ref}
  interfaces:
    - dhcp: {{mac: \"{MAC_A}\", ip: {{address: 10.99.0.2, netmask: 255.255.255.0}}}}
      netboot: {{allowPXE: false, allowWorkflow: false}}
---
apiVersion: tinkerbell.org/v1alpha1
kind: Template
metadata: {{name: steps, namespace: lab}}
spec:
  data: |
    version: \"0.1\"
    name: steps
    tasks:
      - name: provision
        worker: \"{{{{.device_1}}}}\"
        actions:
          - name: done
            image: quay.io/tinkerbell-actions/cexec:v1.0.0
            timeout: 30
            environment: {{DEFAULT_INTERPRETER: /bin/sh -c, CMD_LINE: 'true'}}
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata: {{name: wf-a, namespace: lab}}
spec:
  templateRef: steps
  hardwareRef: a
  hardwareMap: {{device_1: \"{MAC_A}\"}}
  bootOptions: {boot_options}
"
    )
}

fn netboot_flags(lab: &Lab) -> (Value, Value) {
    let hardware = get(lab, "hardware", "a");
    let netboot = &hardware["spec"]["interfaces"][0]["netboot"];
    (
        netboot["allowPXE"].clone(),
        netboot["allowWorkflow"].clone(),
    )
}

#[test]
fn boot_options_power_the_machine_into_netboot_and_send_it_to_its_disk_after() {
    require_root!();
    let (lab, work, daemon) = start("bmc-boot", &[]);
    let bmc = obedient_bmc(&lab, &work);
    apply_ok(
        &lab.server,
        &(machine_yaml("node-a", "10.99.0.2", 623, PASSWORD)
            + "---\n"
            + &provisioning_yaml(
                "bmcRef: {kind: machine.bmc.tinkerbell.org, name: node-a}",
                "{toggleAllowNetboot: true, bootMode: netboot}",
            )),
    );

    // Before the actions: netboot allowed, and Tinkerbell's netboot Job run through the BMC.
    let mut workflow = Value::Null;
    eventually_within("the workflow is prepared", Duration::from_secs(60), || {
        workflow = get(&lab, "workflow", "wf-a");
        workflow["status"]["state"] == "PENDING"
    });
    let said = format!("{workflow:#}\n{}", daemon.log());
    for kind in [
        "AllowNetbootTrue",
        "BootJobSetupComplete",
        "BootJobComplete",
    ] {
        assert_eq!(
            condition(&workflow, kind).map(|c| c.0),
            Some("True".into()),
            "{kind}: {said}"
        );
    }
    assert_eq!(
        workflow["status"]["bootOptions"]["jobs"]["netboot-wf-a"]["complete"], true,
        "{said}"
    );
    assert_eq!(netboot_flags(&lab), (Value::Bool(true), Value::Bool(true)));
    let job = get(&lab, "job", "netboot-wf-a");
    assert_eq!(
        job["spec"]["tasks"],
        serde_json::json!([
            {"powerAction": "off"},
            {"oneTimeBootDeviceAction": {"device": ["pxe"], "efiBoot": false}},
            {"powerAction": "on"}
        ])
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "Workflow");
    let calls = bmc.calls();
    let order: Vec<usize> = ["set power 0", "set boot pxe", "set power 1"]
        .iter()
        .map(|call| {
            calls
                .find(call)
                .unwrap_or_else(|| panic!("{call:?} in {calls}"))
        })
        .collect();
    assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "{calls}");

    // The machine netboots and its worker runs the workflow.
    let token = wisp_tests::boot_token(&lab, MAC_A, "10.99.0.2");
    let worker = lab
        .client
        .command(wisp_tests::worker_binary())
        .args(["--server", "10.99.0.1", "--agent-id", MAC_A, "--poll", "1"])
        .args(["--token", &token])
        .output()
        .expect("run wisp-worker");
    assert!(
        worker.status.success(),
        "{}",
        wisp_tests::output_text(&worker)
    );

    // After success: netboot off again, and the machine power-cycled into its disk.
    eventually_within(
        "what follows success is done",
        Duration::from_secs(60),
        || {
            workflow = get(&lab, "workflow", "wf-a");
            condition(&workflow, "PostBootJobComplete").is_some()
        },
    );
    let said = format!("{workflow:#}\n{}", daemon.log());
    assert_eq!(workflow["status"]["state"], "SUCCESS", "{said}");
    assert_eq!(
        condition(&workflow, "AllowNetbootFalse").map(|c| c.0),
        Some("True".into()),
        "{said}"
    );
    assert_eq!(
        netboot_flags(&lab),
        (Value::Bool(false), Value::Bool(false))
    );
    // Netboot is off, so the disk is what the machine boots: only a power cycle is needed.
    assert_eq!(
        get(&lab, "job", "netboot-post-wf-a")["spec"]["tasks"],
        serde_json::json!([{"powerAction": "cycle"}])
    );
    // The Hardware's name finds its Machine.
    let status = wisp_ok(&lab.server, &["power", "status", "a", "-n", "lab"]);
    assert!(
        status.starts_with("machine lab/node-a: power is"),
        "{status}"
    );
    // Each power change the Jobs made is an event of the machine, in order, among its boot's.
    let events = wisp_ok(&lab.server, &["events", "lab/a", "--limit", "200"]);
    let at = |change: &str| {
        events
            .find(&format!("power {change} through ipmitool (Task netboot-"))
            .unwrap_or_else(|| panic!("power {change} in {events}"))
    };
    assert!(at("off") < at("on") && at("on") < at("cycle"), "{events}");
    assert!(
        events.contains("dhcp") && events.contains("action-reported"),
        "{events}"
    );
    // ipmi_sim carries out a cycle as a power-off of the chassis.
    let calls = bmc.calls();
    let powered_on = calls
        .find("set power 1")
        .expect("the netboot powered it on");
    assert!(calls[powered_on..].contains("set power 0"), "{calls}");

    // The Jobs belong to the Workflow, and their Tasks to them: deleting it deletes them.
    wisp_ok(&lab.server, &["delete", "workflow", "wf-a", "-n", "lab"]);
    for kind in ["jobs", "tasks"] {
        // What `wisp power` made is its own, and stays.
        let left = wisp_ok(&lab.server, &["get", kind, "-n", "lab"]);
        assert!(
            !left.contains("wf-a") && left.contains("node-a-power-status-"),
            "{left}"
        );
    }
}

#[test]
fn a_netboot_workflow_without_a_bmc_fails_with_the_reason() {
    require_root!();
    let (lab, _work, _daemon) = start("bmc-nobmc", &[]);
    apply_ok(&lab.server, &provisioning_yaml("", "{bootMode: netboot}"));
    let mut workflow = Value::Null;
    eventually_within("the workflow fails", Duration::from_secs(30), || {
        workflow = get(&lab, "workflow", "wf-a");
        workflow["status"]["state"] == "FAILED"
    });
    assert_eq!(
        workflow["status"]["message"], "hardware \"a\" does not have a BMC (spec.bmcRef)",
        "{workflow:#}"
    );
    assert_eq!(
        condition(&workflow, "BootJobSetupFailed").map(|c| c.0),
        Some("True".into())
    );
}

/// A Machine reached over Redfish only, at the emulator's port.
fn redfish_machine_yaml(name: &str, port: u16, password: &str, insecure_tls: bool) -> String {
    machine_yaml(name, "10.99.0.2", port, password)
        .replace(
            "insecureTLS: false",
            &format!("insecureTLS: {insecure_tls}"),
        )
        .replace("preferredOrder: [ipmitool]", "preferredOrder: [gofish]")
        .replace(
            &format!("ipmitool: {{port: {port}, cipherSuite: \"3\"}}"),
            &format!("redfish: {{port: {port}}}"),
        )
}

#[test]
fn redfish_power_boot_override_and_virtual_media_through_sushy_tools() {
    require_root!();
    let (lab, work, daemon) = start("bmc-redfish", &[]);
    let bmc =
        wisp_tests::bmc::SushyEmulator::start(&lab.client, &work, ("10.99.0.2", 8443), PASSWORD);
    let system = "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094";
    apply_ok(
        &lab.server,
        &[
            redfish_machine_yaml("node-r", 8443, PASSWORD, true),
            // Its certificate is self-signed: without insecureTLS it is refused.
            redfish_machine_yaml("strict-tls", 8443, PASSWORD, false),
            redfish_machine_yaml("wrong-password", 8443, "not-the-password", true),
        ]
        .join("---\n"),
    );
    // The BMC downloads the image it inserts: Wisp serves it.
    let assets = work.join("data/assets");
    std::fs::create_dir_all(&assets).expect("assets");
    std::fs::write(assets.join("boot.iso"), vec![0u8; 64 << 10]).expect("an ISO image");
    let media = "http://10.99.0.1:8080/assets/boot.iso";
    apply_ok(
        &lab.server,
        &[
            job_yaml(
                "redfish-setup",
                "node-r",
                &format!(
                    "    - powerAction: \"on\"
    - bootDevice: {{device: pxe, efiBoot: true}}
    - virtualMediaAction: {{mediaURL: \"{media}\", kind: CD}}
"
                ),
            ),
            job_yaml("strict-on", "strict-tls", "    - powerAction: \"on\"\n"),
            job_yaml("wrong-on", "wrong-password", "    - powerAction: \"on\"\n"),
        ]
        .join("---\n"),
    );
    let job = finished_job(&lab, "redfish-setup", Duration::from_secs(90));
    assert_eq!(
        condition(&job, "Completed").map(|c| c.0),
        Some("True".into()),
        "{job:#}\n{}",
        daemon.log()
    );
    let state = bmc.get(&lab.client, system);
    assert_eq!(state["PowerState"], "On", "{state:#}");
    assert_eq!(
        state["Boot"]["BootSourceOverrideTarget"], "Pxe",
        "{state:#}"
    );
    assert_eq!(state["Boot"]["BootSourceOverrideMode"], "UEFI", "{state:#}");
    let cd = bmc.get(&lab.client, &format!("{system}/VirtualMedia/Cd"));
    assert_eq!(
        (cd["Inserted"].clone(), cd["Image"].clone()),
        (Value::Bool(true), Value::String(media.into())),
        "{cd:#}"
    );

    let strict = finished_job(&lab, "strict-on", Duration::from_secs(60));
    let (_, message) = condition(&strict, "Failed").expect("strict-on failed");
    assert!(
        message.contains("gofish: TLS") && message.contains("insecureTLS: true"),
        "{message}"
    );
    let wrong = finished_job(&lab, "wrong-on", Duration::from_secs(60));
    let (_, message) = condition(&wrong, "Failed").expect("wrong-on failed");
    assert!(
        message.contains("gofish: the BMC refused the credentials"),
        "{message}"
    );
    eventually_within(
        "the Redfish machine reads as on",
        Duration::from_secs(20),
        || get(&lab, "machine", "node-r")["status"]["powerState"] == "on",
    );
}

#[test]
fn isoboot_inserts_the_iso_through_redfish_and_an_ipmi_only_machine_says_it_cannot() {
    require_root!();
    let (lab, work, daemon) = start("bmc-iso", &[]);
    let redfish =
        wisp_tests::bmc::SushyEmulator::start(&lab.client, &work, ("10.99.0.2", 8443), PASSWORD);
    let _ipmi = obedient_bmc(&lab, &work);
    let assets = work.join("data/assets");
    std::fs::create_dir_all(&assets).expect("assets");
    std::fs::write(assets.join("boot.iso"), vec![0u8; 64 << 10]).expect("an ISO image");
    let iso = "http://10.99.0.1:8080/assets/boot.iso";
    let boot_options = format!("{{bootMode: isoboot, isoURL: \"{iso}\"}}");
    // One machine behind Redfish (namespace lab), one behind IPMI only (namespace ipmi-only).
    let over_redfish = redfish_machine_yaml("node-r", 8443, PASSWORD, true)
        + "---\n"
        + &provisioning_yaml(
            "bmcRef: {kind: machine.bmc.tinkerbell.org, name: node-r}",
            &boot_options,
        );
    let over_ipmi = (machine_yaml("node-i", "10.99.0.2", 623, PASSWORD)
        + "---\n"
        + &provisioning_yaml(
            "bmcRef: {kind: machine.bmc.tinkerbell.org, name: node-i}",
            &boot_options,
        ))
        .replace("namespace: lab", "namespace: ipmi-only")
        .replace(MAC_A, "02:00:00:00:00:0b")
        .replace("10.99.0.2, netmask", "10.99.0.3, netmask");
    apply_ok(&lab.server, &format!("{over_redfish}---\n{over_ipmi}"));

    let mut workflow = Value::Null;
    eventually_within(
        "the Redfish machine is prepared",
        Duration::from_secs(120),
        || {
            workflow = get(&lab, "workflow", "wf-a");
            workflow["status"]["state"] == "PENDING"
        },
    );
    assert_eq!(
        condition(&workflow, "BootJobComplete").map(|c| c.0),
        Some("True".into()),
        "{workflow:#}\n{}",
        daemon.log()
    );
    let job = get(&lab, "job", "iso-mount-wf-a");
    assert_eq!(
        job["spec"]["tasks"].as_array().map(Vec::len),
        Some(5),
        "{job:#}"
    );
    let system = redfish.get(
        &lab.client,
        "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094",
    );
    assert_eq!(system["PowerState"], "On", "{system:#}");
    assert_eq!(
        system["Boot"]["BootSourceOverrideTarget"], "Cd",
        "{system:#}"
    );
    let cd = redfish.get(
        &lab.client,
        "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094/VirtualMedia/Cd",
    );
    assert_eq!(cd["Image"], iso, "{cd:#}");

    let mut failed = Value::Null;
    eventually_within(
        "the IPMI-only workflow fails",
        Duration::from_secs(120),
        || {
            failed = serde_json::from_str(&wisp_ok(
                &lab.server,
                &["get", "workflow", "wf-a", "-n", "ipmi-only", "-o", "json"],
            ))
            .expect("JSON");
            failed["status"]["state"] == "FAILED"
        },
    );
    let message = failed["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("job iso-mount-wf-a failed")
            && message.contains("IPMI has no virtual media; it needs Redfish"),
        "{failed:#}"
    );
    assert_eq!(
        condition(&failed, "BootJobFailed").map(|c| c.0),
        Some("True".into())
    );
}
