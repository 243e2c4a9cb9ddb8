//! Tinkerbell's worker protocol, from Tinkerbell's side: a client generated from Tinkerbell's
//! own `.proto` files (`tests/tinkerbell-agent`) makes the calls Tinkerbell's agent makes, in its
//! order, through a whole workflow against `wisp serve`, as a stock agent would: no token (Wisp
//! runs with `machine-identity = address`, as Tinkerbell trusts an address), its Hardware's
//! `agentID` as its agent id, and a Workflow without `hardwareRef`, as Tinkerbell allows.
use serde_json::Value;
use wisp_tests::{
    apply_ok, boot_token, output_text, repo_root, require_root, wisp_ok, Daemon, Lab, TempDir,
    SERVER_IF,
};

const AGENT_ID: &str = "rack4-u12";

const RESOURCES: &str = "apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata: {name: u12, namespace: lab}
spec:
  agentID: rack4-u12
  interfaces:
    - dhcp: {mac: \"02:00:00:00:00:0a\", ip: {address: 10.99.0.2, netmask: 255.255.255.0}}
      netboot: {allowPXE: true, allowWorkflow: true}
---
apiVersion: tinkerbell.org/v1alpha1
kind: Template
metadata: {name: install, namespace: lab}
spec:
  data: |
    version: \"0.1\"
    name: install
    global_timeout: 600
    tasks:
      - name: os-installation
        worker: \"{{.device_1}}\"
        volumes: [/dev:/dev]
        environment: {SHARED: from-task, TASK_ONLY: yes}
        actions:
          - name: stream
            image: quay.io/tinkerbell-actions/image2disk:v1.0.0
            timeout: 600
            volumes: [/lib/firmware:/lib/firmware:ro]
            environment: {SHARED: from-action, DEST_DISK: /dev/nvme0n1}
            namespaces: {network: host, pid: host}
          - name: grow
            image: quay.io/tinkerbell-actions/cexec:v1.0.0
            timeout: 90
            pid: host
            command: [sh, -c, 'true']
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata: {name: install-u12, namespace: lab}
spec:
  templateRef: install
  hardwareMap: {device_1: rack4-u12}
";

/// Runs the agent in the client namespace from `address` (an address of that namespace), for
/// `actions` actions.
fn run_agent(lab: &Lab, address: &str, actions: usize) -> std::process::Output {
    let python = repo_root().join("target/lab/grpc-tools/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup`",
        python.display()
    );
    // Its connection leaves from `address`.
    lab.client.exec_ok(
        "ip",
        &[
            "route",
            "replace",
            "10.99.0.0/24",
            "dev",
            "cli",
            "src",
            address,
        ],
    );
    lab.client
        .command(&python)
        .arg(repo_root().join("tests/tinkerbell-agent/agent.py"))
        .args(["10.99.0.1:42113", AGENT_ID, &actions.to_string(), "30"])
        .output()
        .expect("run the agent")
}

#[test]
fn a_client_from_tinkerbells_protos_runs_a_workflow_as_tinkerbells_agent_does() {
    require_root!();
    let lab = Lab::new("tink-agent");
    let work = TempDir::new("tink-agent");
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &work.join("data"),
        &["--machine-identity", "address"],
    );
    apply_ok(&lab.server, RESOURCES);
    // From the machine's reserved address, with no token, as a stock agent calls.
    let agent = run_agent(&lab, "10.99.0.2", 2);
    assert!(agent.status.success(), "{}", output_text(&agent));
    let actions: Vec<Value> = String::from_utf8_lossy(&agent.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON ActionResponse"))
        .collect();
    assert_eq!(actions.len(), 2, "{}", output_text(&agent));

    // Protobuf's JSON names, as Tinkerbell's generated code reads them.
    let stream = &actions[0];
    assert_eq!(stream["workflowId"], "lab/install-u12", "{stream:#}");
    assert_eq!(stream["agentId"], AGENT_ID, "{stream:#}");
    assert_eq!(stream["name"], "stream");
    assert_eq!(
        stream["timeout"], "600",
        "int64 is a string in protobuf JSON"
    );
    // Task volumes, then the action's; the task's environment under the action's, sorted.
    assert_eq!(
        stream["volumes"],
        serde_json::json!(["/dev:/dev", "/lib/firmware:/lib/firmware:ro"])
    );
    assert_eq!(
        stream["environment"],
        serde_json::json!([
            "DEST_DISK=/dev/nvme0n1",
            "SHARED=from-action",
            "TASK_ONLY=yes"
        ])
    );
    // Field 12, and namespaces.pid over the deprecated pid.
    assert_eq!(
        stream["namespaces"],
        serde_json::json!({"network": "host", "pid": "host"})
    );
    assert_eq!(stream["pid"], "host");
    let grow = &actions[1];
    assert_eq!(grow["pid"], "host", "{grow:#}");
    assert!(grow.get("namespaces").is_none(), "{grow:#}");
    assert_eq!(grow["command"], serde_json::json!(["sh", "-c", "true"]));

    let workflow: Value = serde_json::from_str(&wisp_ok(
        &lab.server,
        &["get", "workflow", "install-u12", "-n", "lab", "-o", "json"],
    ))
    .expect("JSON");
    assert_eq!(workflow["status"]["state"], "SUCCESS", "{workflow:#}");
    for action in workflow["status"]["actions"].as_array().expect("actions") {
        assert_eq!(action["state"], "SUCCESS", "{action:#}");
        assert_eq!(action["message"], "action completed", "{action:#}");
    }
}

#[test]
fn without_a_reserved_address_the_agent_is_known_by_the_address_its_own_dhcp_gave_it() {
    require_root!();
    let lab = Lab::new("tink-proxy");
    let work = TempDir::new("tink-proxy");
    // proxyDHCP beside another DHCP server, which hands out the addresses: the Hardware
    // reserves none.
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &work.join("data"),
        &["--machine-identity", "address", "--dhcp-mode", "proxy"],
    );
    let resources = RESOURCES.replace(", ip: {address: 10.99.0.2, netmask: 255.255.255.0}", "");
    assert_ne!(resources, RESOURCES);
    apply_ok(&lab.server, &resources);
    lab.client
        .exec_ok("ip", &["addr", "add", "10.99.0.3/24", "dev", "cli"]);
    // Before its boot, the machine is known at no address: a stock agent is refused.
    let early = run_agent(&lab, "10.99.0.2", 1);
    assert!(!early.status.success(), "{}", output_text(&early));
    assert!(
        output_text(&early).contains("UNAUTHENTICATED")
            || output_text(&early).contains("PERMISSION_DENIED"),
        "{}",
        output_text(&early)
    );
    // Its boot: Wisp's proxy offers point its iPXE at the script, which it fetches from the
    // address the other server gave it.
    boot_token(&lab, "02:00:00:00:00:0a", "10.99.0.2");
    // Another host on the LAN, naming the machine's agent id, is still refused.
    let stranger = run_agent(&lab, "10.99.0.3", 1);
    assert!(!stranger.status.success(), "{}", output_text(&stranger));
    let agent = run_agent(&lab, "10.99.0.2", 2);
    assert!(agent.status.success(), "{}", output_text(&agent));
    let workflow: Value = serde_json::from_str(&wisp_ok(
        &lab.server,
        &["get", "workflow", "install-u12", "-n", "lab", "-o", "json"],
    ))
    .expect("JSON");
    assert_eq!(workflow["status"]["state"], "SUCCESS", "{workflow:#}");
}
