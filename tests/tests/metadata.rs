//! The metadata service through curl from the machines' side: EC2 paths and /metadata for the
//! machine at the source address, per-machine tokens, and no machine reading another's data.
use wisp_tests::{apply_ok, boot_token, require_root, wisp_ok, Daemon, Lab, TempDir, SERVER_IF};

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

fn start(lab: &Lab, work: &TempDir, identity: &str) -> Daemon {
    let daemon = Daemon::start(
        &lab.server,
        SERVER_IF,
        &work.join("data"),
        &["--xdp-mode", "native", "--machine-identity", identity],
    );
    apply_ok(&lab.server, MACHINES);
    for extra in ["10.99.0.3/24", "10.99.0.9/24"] {
        lab.client
            .exec_ok("ip", &["addr", "add", extra, "dev", "cli"]);
    }
    daemon
}

#[test]
fn a_machine_reads_its_own_metadata_with_the_token_of_its_current_boot_only() {
    require_root!();
    let lab = Lab::new("meta");
    let work = TempDir::new("meta");
    let _daemon = start(&lab, &work, "token");
    let hostname = "/2009-04-04/meta-data/hostname";

    // The reserved address alone is not enough: a host that took it gets nothing.
    let (status, reason) = fetch(&lab, "10.99.0.2", hostname, &[]);
    assert_eq!(status, 401, "{reason}");
    assert!(reason.contains("a token is required"), "{reason}");
    // A script asked for from an address the Hardware does not reserve gets the answer an
    // unknown MAC gets: MACs are no secret, and the script would carry the token.
    let unknown = fetch(&lab, "10.99.0.2", "/ipxe/1c:69:7a:00:00:0c/auto.ipxe", &[]);
    let (status, body) = fetch(&lab, "10.99.0.2", "/ipxe/1c:69:7a:00:00:0b/auto.ipxe", &[]);
    assert_eq!(
        (status, body.replace("0b", "0c")),
        unknown,
        "bravo's script from alpha's address"
    );
    // Nor does the machine's own address get a token without Wisp's DHCP pointing it there.
    let (status, script) = fetch(&lab, "10.99.0.2", "/ipxe/1c:69:7a:00:00:0a/auto.ipxe", &[]);
    assert!(status == 200 && !script.contains("wisp.token="), "{script}");

    // A boot: DHCP, then the script, whose token reads alpha's metadata.
    let alpha = boot_token(&lab, "1c:69:7a:00:00:0a", "10.99.0.2");
    // One handoff starts one boot: the script asked for again carries no token.
    let (status, again) = fetch(&lab, "10.99.0.2", "/ipxe/1c:69:7a:00:00:0a/auto.ipxe", &[]);
    assert!(status == 200 && !again.contains("wisp.token="), "{again}");
    let with_alpha = format!("X-Wisp-Token: {alpha}");
    assert_eq!(
        fetch(&lab, "10.99.0.2", hostname, &["-H", &with_alpha]),
        (200, "alpha".into())
    );
    assert_eq!(
        fetch(
            &lab,
            "10.99.0.2",
            "/2009-04-04/meta-data/local-ipv4",
            &["-H", &with_alpha]
        ),
        (200, "10.99.0.2".into())
    );
    assert_eq!(
        fetch(
            &lab,
            "10.99.0.2",
            "/2009-04-04/user-data",
            &["-H", &with_alpha]
        ),
        (200, "#cloud-config\nhostname: alpha\n".into())
    );
    let (status, document) = fetch(&lab, "10.99.0.2", "/metadata", &["-H", &with_alpha]);
    assert_eq!(status, 200);
    let document: serde_json::Value = serde_json::from_str(&document).expect("JSON");
    assert_eq!(
        document,
        serde_json::json!({"metadata": {"instance": {"storage": {"disks": null, "filesystems": null}}}})
    );

    // Bravo's token works from bravo's address, as a bearer or a query, and from nowhere else:
    // a token that leaked is no use.
    let bravo = boot_token(&lab, "1c:69:7a:00:00:0b", "10.99.0.3");
    let bearer = format!("Authorization: Bearer {bravo}");
    assert_eq!(
        fetch(&lab, "10.99.0.3", hostname, &["-H", &bearer]),
        (200, "bravo".into())
    );
    let query = format!("/2009-04-04/meta-data/instance-id?token={bravo}");
    assert_eq!(
        fetch(&lab, "10.99.0.3", &query, &[]),
        (200, "i-bravo".into())
    );
    let (status, reason) = fetch(&lab, "10.99.0.9", hostname, &["-H", &bearer]);
    assert_eq!(
        (status, reason.trim()),
        (
            403,
            "the token does not belong to the machine at this address"
        )
    );
    // Alpha cannot read bravo's metadata with bravo's token, nor with a forged one.
    let (status, reason) = fetch(&lab, "10.99.0.2", hostname, &["-H", &bearer]);
    assert_eq!(
        (status, reason.trim()),
        (
            403,
            "the token does not belong to the machine at this address"
        )
    );
    let forged = bravo.replacen("1c697a00000b", "1c697a00000a", 1);
    let (status, reason) = fetch(
        &lab,
        "10.99.0.9",
        hostname,
        &["-H", &format!("Authorization: Bearer {forged}")],
    );
    assert_eq!((status, reason.trim()), (403, "the token is not valid"));

    // Alpha boots again: the earlier boot's token is refused, the new one works.
    let again = boot_token(&lab, "1c:69:7a:00:00:0a", "10.99.0.2");
    let (status, reason) = fetch(&lab, "10.99.0.2", hostname, &["-H", &with_alpha]);
    assert_eq!(status, 403, "{reason}");
    assert!(reason.contains("an earlier boot"), "{reason}");
    let with_again = format!("X-Wisp-Token: {again}");
    assert_eq!(
        fetch(&lab, "10.99.0.2", hostname, &["-H", &with_again]),
        (200, "alpha".into())
    );
    // Its workflow ends (here, deleted): its boot ends, and so does its token.
    wisp_ok(
        &lab.server,
        &["delete", "workflow", "alpha-wf", "-n", "lab"],
    );
    let (status, reason) = fetch(&lab, "10.99.0.2", hostname, &["-H", &with_again]);
    assert_eq!(status, 403, "{reason}");
    assert!(reason.contains("boot has ended"), "{reason}");
    // Bravo's boot goes on.
    assert_eq!(
        fetch(&lab, "10.99.0.3", hostname, &["-H", &bearer]),
        (200, "bravo".into())
    );
}

#[test]
fn with_address_identity_the_reserved_address_is_enough() {
    require_root!();
    let lab = Lab::new("meta-address");
    let work = TempDir::new("meta-address");
    let _daemon = start(&lab, &work, "address");
    assert_eq!(
        fetch(&lab, "10.99.0.2", "/2009-04-04/meta-data/hostname", &[]),
        (200, "alpha".into())
    );
    let (status, index) = fetch(&lab, "10.99.0.2", "/2009-04-04/meta-data/", &[]);
    assert_eq!(
        (status, index.lines().collect::<Vec<_>>()),
        (
            200,
            vec![
                "facility",
                "hostname",
                "instance-id",
                "iqn",
                "local-hostname",
                "local-ipv4",
                "mac",
                "operating-system/",
                "plan",
                "public-ipv4",
                "public-ipv6",
                "public-keys",
                "tags"
            ]
        )
    );
    let (status, reason) = fetch(&lab, "10.99.0.9", "/2009-04-04/meta-data/hostname", &[]);
    assert_eq!((status, reason.trim()), (404, "no machine at 10.99.0.9"));
    // A token, when one is shown, must still be good.
    let (status, _) = fetch(
        &lab,
        "10.99.0.2",
        "/2009-04-04/meta-data/hostname",
        &["-H", "X-Wisp-Token: 1c697a00000a-00-00-00"],
    );
    assert_eq!(status, 403);
}

/// A Hardware with everything Tootles serves.
const TOOTLES: &str = "apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata: {name: full, namespace: lab}
spec:
  metadata:
    facility: {facility_code: onprem, plan_slug: c3.small}
    instance:
      id: i-full
      hostname: full
      tags: [rack-4, gpu]
      ssh_keys: [ssh-ed25519 AAAA one, ssh-ed25519 BBBB two]
      ips:
        - {address: 203.0.113.4, family: 4, public: true}
        - {address: 10.99.0.4, family: 4, public: false}
        - {address: 2001:db8::4, family: 6}
      operating_system: {slug: ubuntu_22_04, distro: ubuntu, version: \"22.04\", image_tag: v1}
      storage:
        disks:
          - device: /dev/nvme0n1
            wipe_table: true
            partitions: [{label: ROOT, number: 1, size: 0}]
        filesystems:
          - mount: {device: /dev/nvme0n1p1, format: ext4, point: /, create: {options: [-L, ROOT]}}
  interfaces:
    - dhcp: {mac: \"1c:69:7a:00:00:0c\", ip: {address: 10.99.0.4, netmask: 255.255.255.0}}
";

#[test]
fn the_metadata_service_answers_as_tootles_does() {
    require_root!();
    let lab = Lab::new("meta-tootles");
    let work = TempDir::new("meta-tootles");
    let _daemon = start(&lab, &work, "address");
    apply_ok(&lab.server, TOOTLES);
    lab.client
        .exec_ok("ip", &["addr", "add", "10.99.0.4/24", "dev", "cli"]);
    let get = |path: &str| fetch(&lab, "10.99.0.4", path, &[]);
    for (path, expected) in [
        ("/2009-04-04", "meta-data/\nuser-data"),
        ("/2009-04-04/", "meta-data/\nuser-data"),
        ("/2009-04-04/meta-data/instance-id", "i-full"),
        ("/2009-04-04/meta-data/hostname", "full"),
        ("/2009-04-04/meta-data/local-hostname", "full"),
        ("/2009-04-04/meta-data/iqn", ""),
        ("/2009-04-04/meta-data/plan", "c3.small"),
        ("/2009-04-04/meta-data/facility", "onprem"),
        ("/2009-04-04/meta-data/tags", "rack-4\ngpu"),
        ("/2009-04-04/meta-data/public-ipv4", "203.0.113.4"),
        ("/2009-04-04/meta-data/public-ipv6", "2001:db8::4"),
        ("/2009-04-04/meta-data/local-ipv4", "10.99.0.4"),
        (
            "/2009-04-04/meta-data/public-keys",
            "ssh-ed25519 AAAA one\nssh-ed25519 BBBB two",
        ),
        (
            "/2009-04-04/meta-data/operating-system",
            "distro\nimage_tag\nlicense_activation/\nslug\nversion",
        ),
        (
            "/2009-04-04/meta-data/operating-system/slug",
            "ubuntu_22_04",
        ),
        ("/2009-04-04/meta-data/operating-system/distro", "ubuntu"),
        ("/2009-04-04/meta-data/operating-system/version", "22.04"),
        ("/2009-04-04/meta-data/operating-system/image_tag", "v1"),
        (
            "/2009-04-04/meta-data/operating-system/license_activation",
            "state",
        ),
        (
            "/2009-04-04/meta-data/operating-system/license_activation/state",
            "",
        ),
        // No userData: empty, as Tootles serves it.
        ("/2009-04-04/user-data", ""),
    ] {
        assert_eq!(get(path), (200, expected.to_string()), "{path}");
    }
    let (status, document) = get("/metadata");
    assert_eq!(status, 200);
    let document: serde_json::Value = serde_json::from_str(&document).expect("JSON");
    assert_eq!(
        document,
        serde_json::json!({"metadata": {"instance": {"storage": {
            "disks": [{"device": "/dev/nvme0n1", "wipe_table": true,
                       "partitions": [{"label": "ROOT", "number": 1, "size": 0}]}],
            "filesystems": [{"mount": {"create": {"options": ["-L", "ROOT"]},
                             "device": "/dev/nvme0n1p1", "format": "ext4", "point": "/"}}]
        }}}})
    );
    assert_eq!(get("/2009-04-04/meta-data/no-such-key").0, 404);
}
