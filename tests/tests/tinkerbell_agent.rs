//! Tinkerbell's worker protocol, from Tinkerbell's side: a client generated from Tinkerbell's
//! own `.proto` files (`tests/tinkerbell-agent`) makes the calls Tinkerbell's agent makes, in its
//! order, through a whole workflow against `wisp serve`, as a stock agent would: no token (Wisp
//! runs with `machine-identity = address`, as Tinkerbell trusts an address), its Hardware's
//! `agentID` as its agent id, and a Workflow without `hardwareRef`, as Tinkerbell allows.
use serde_json::Value;
use wisp_tests::{
    apply_ok, output_text, repo_root, require_root, wisp_ok, Daemon, Lab, TempDir, SERVER_IF,
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

#[test]
fn a_client_from_tinkerbells_protos_runs_a_workflow_as_tinkerbells_agent_does() {
    require_root!();
    let python = repo_root().join("target/lab/grpc-tools/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup`",
        python.display()
    );
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
    let agent = lab
        .client
        .command(&python)
        .arg(repo_root().join("tests/tinkerbell-agent/agent.py"))
        .args(["10.99.0.1:42113", AGENT_ID, "2", "60"])
        .output()
        .expect("run the agent");
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
