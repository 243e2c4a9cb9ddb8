//! The metadata service through curl from the machines' side: EC2 paths and /metadata for the
//! machine at the source address, per-machine tokens, and no machine reading another's data.
use wisp_tests::{apply_ok, require_root, Daemon, Lab, TempDir, SERVER_IF};

const MACHINES: &str = "apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata:
  name: alpha
  namespace: lab
spec:
  userData: |
    #cloud-config
    hostname: alpha
  metadata:
    instance:
      id: i-alpha
      hostname: alpha
  interfaces:
    - dhcp:
        mac: 1c:69:7a:00:00:0a
        ip:
          address: 10.99.0.2
          netmask: 255.255.255.0
      netboot:
        allowPXE: true
        allowWorkflow: true
---
apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata:
  name: bravo
  namespace: lab
spec:
  metadata:
    instance:
      id: i-bravo
      hostname: bravo
  interfaces:
    - dhcp:
        mac: 1c:69:7a:00:00:0b
        ip:
          address: 10.99.0.3
          netmask: 255.255.255.0
      netboot:
        allowPXE: true
        allowWorkflow: true
---
apiVersion: tinkerbell.org/v1alpha1
kind: Template
metadata:
  name: noop
  namespace: lab
spec:
  data: \"version: '0.1'\"
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata:
  name: alpha-wf
  namespace: lab
spec:
  templateRef: noop
  hardwareRef: alpha
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata:
  name: bravo-wf
  namespace: lab
spec:
  templateRef: noop
  hardwareRef: bravo
";

/// curl from the client side, from `source`, with extra arguments; returns (status, body).
fn fetch(lab: &Lab, source: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://10.99.0.1:8080{path}");
    let mut args = vec!["-s", "--interface", source, "-w", "\n%{http_code}"];
    args.extend(extra);
    args.push(&url);
    let output = lab.client.exec_ok("curl", &args);
    let (body, status) = output.rsplit_once('\n').expect("curl printed the status");
    (status.trim().parse().expect("a status"), body.to_string())
}

/// A machine's token, as its iPXE script hands it to the kernel when the machine itself (its
/// reserved address) asks (both machines have pending work, so their scripts boot the
/// provisioning OS).
fn token_of(lab: &Lab, mac: &str, address: &str) -> String {
    let (status, script) = fetch(lab, address, &format!("/ipxe/{mac}/auto.ipxe"), &[]);
    assert_eq!(status, 200, "{script}");
    script
        .split_whitespace()
        .find_map(|word| word.strip_prefix("wisp.token="))
        .unwrap_or_else(|| panic!("no wisp.token in:\n{script}"))
        .to_string()
}

#[test]
fn each_machine_reads_its_own_metadata_and_no_other() {
    require_root!();
    let lab = Lab::new("meta");
    let work = TempDir::new("meta");
    let _daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &work.join("data"),
        &["--xdp-mode", "native"],
    );
    apply_ok(&lab.server, MACHINES);
    for extra in ["10.99.0.3/24", "10.99.0.9/24"] {
        lab.client
            .exec_ok("ip", &["addr", "add", extra, "dev", "cli"]);
    }

    // By source address: alpha is the machine at 10.99.0.2.
    assert_eq!(
        fetch(&lab, "10.99.0.2", "/2009-04-04/meta-data/hostname", &[]),
        (200, "alpha".into())
    );
    assert_eq!(
        fetch(&lab, "10.99.0.2", "/2009-04-04/meta-data/instance-id", &[]),
        (200, "i-alpha".into())
    );
    assert_eq!(
        fetch(&lab, "10.99.0.2", "/2009-04-04/meta-data/local-ipv4", &[]),
        (200, "10.99.0.2".into())
    );
    let (status, index) = fetch(&lab, "10.99.0.2", "/2009-04-04/meta-data/", &[]);
    assert_eq!(
        (status, index.lines().collect::<Vec<_>>()),
        (
            200,
            vec![
                "hostname",
                "instance-id",
                "local-hostname",
                "local-ipv4",
                "mac"
            ]
        )
    );
    assert_eq!(
        fetch(&lab, "10.99.0.2", "/2009-04-04/user-data", &[]),
        (200, "#cloud-config\nhostname: alpha\n".into())
    );
    let (status, document) = fetch(&lab, "10.99.0.2", "/metadata", &[]);
    assert_eq!(status, 200);
    let document: serde_json::Value = serde_json::from_str(&document).expect("JSON");
    assert_eq!(document["instance"]["hostname"], "alpha");

    // An address no Hardware reserves gets nothing, unless it shows its machine's token.
    let (status, reason) = fetch(&lab, "10.99.0.9", "/2009-04-04/meta-data/hostname", &[]);
    assert_eq!((status, reason.trim()), (404, "no machine at 10.99.0.9"));
    // A script asked for from another address carries no token: MACs are no secret.
    let (_, script) = fetch(&lab, "10.99.0.2", "/ipxe/1c:69:7a:00:00:0b/auto.ipxe", &[]);
    assert!(
        script.contains("wisp.mac=1c:69:7a:00:00:0b") && !script.contains("wisp.token="),
        "{script}"
    );
    let bravo = token_of(&lab, "1c:69:7a:00:00:0b", "10.99.0.3");
    let bearer = format!("Authorization: Bearer {bravo}");
    assert_eq!(
        fetch(
            &lab,
            "10.99.0.9",
            "/2009-04-04/meta-data/hostname",
            &["-H", &bearer]
        ),
        (200, "bravo".into())
    );
    let query = format!("/2009-04-04/meta-data/instance-id?token={bravo}");
    assert_eq!(
        fetch(&lab, "10.99.0.9", &query, &[]),
        (200, "i-bravo".into())
    );

    // Alpha cannot read bravo's metadata with bravo's token, nor with a forged one.
    let (status, reason) = fetch(
        &lab,
        "10.99.0.2",
        "/2009-04-04/meta-data/hostname",
        &["-H", &bearer],
    );
    assert_eq!(status, 403, "{reason}");
    assert_eq!(
        reason.trim(),
        "the token does not belong to the machine at this address"
    );
    let forged = bravo.replacen("1c697a00000b", "1c697a00000a", 1);
    let (status, _) = fetch(
        &lab,
        "10.99.0.9",
        "/2009-04-04/meta-data/hostname",
        &["-H", &format!("Authorization: Bearer {forged}")],
    );
    assert_eq!(
        status, 403,
        "a token whose tag does not match its MAC is refused"
    );
    // Alpha's own token works from its own address.
    let alpha = token_of(&lab, "1c:69:7a:00:00:0a", "10.99.0.2");
    assert_eq!(
        fetch(
            &lab,
            "10.99.0.2",
            "/2009-04-04/meta-data/hostname",
            &["-H", &format!("X-Wisp-Token: {alpha}")]
        ),
        (200, "alpha".into())
    );
}
