//! The Debian package (`cargo xtask package`; `cargo xtask test` builds it from the test
//! build): its files, and the appliance it installs, started as its systemd unit starts it:
//! as an unprivileged user holding only the unit's capabilities, telling systemd when it is
//! ready. That appliance netboots a real VM in a lab.
use std::{
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use wisp_tests::{
    apply_ok, repo_root, require_root,
    vm::{marker_assets, netboot_machine_yaml, Firmware, Vm, MARKER},
    Lab, TempDir, BRIDGE_IF,
};

/// `nobody`: the unit's `User=wisp` is made by the package's postinst, which the test does not
/// run on this host; what the daemon may do comes from its capabilities, not from its name.
const UNPRIVILEGED: &str = "65534";
const VM_MAC: &str = "52:54:00:57:49:0d";

fn package() -> PathBuf {
    let deb = repo_root().join(format!(
        "target/debian/wisp_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        deb.exists(),
        "{} is missing: run `cargo xtask package` (`cargo xtask test` does)",
        deb.display()
    );
    deb
}

fn dpkg_deb(args: &[&str]) -> String {
    let output = Command::new("dpkg-deb")
        .args(args)
        .output()
        .expect("dpkg-deb");
    assert!(
        output.status.success(),
        "dpkg-deb {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of `key` in the unit's `[Service]` section.
fn service_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.split("[Service]")
        .nth(1)
        .and_then(|service| {
            service
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{key}=")))
        })
        .unwrap_or_else(|| panic!("the unit has no {key}=:\n{unit}"))
}

/// `CAP_NET_ADMIN CAP_BPF` as setpriv's `-all,+net_admin,+bpf`.
fn setpriv_caps(capabilities: &str) -> String {
    let mut caps = String::from("-all");
    for cap in capabilities.split_whitespace() {
        let name = cap
            .strip_prefix("CAP_")
            .expect("a capability")
            .to_lowercase();
        caps.push_str(&format!(",+{name}"));
    }
    caps
}

/// Waits for `state` (`READY=1`) on the notify socket, as systemd would.
fn notified(socket: &UnixDatagram, state: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buffer = [0u8; 1024];
    while Instant::now() < deadline {
        if let Ok(length) = socket.recv(&mut buffer) {
            if String::from_utf8_lossy(&buffer[..length])
                .lines()
                .any(|line| line == state)
            {
                return true;
            }
        }
    }
    false
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn the_package_runs_the_appliance_unprivileged_as_its_unit_says_and_it_netboots_a_vm() {
    require_root!();
    let deb = package();
    let work = TempDir::new("package");
    let root = work.join("root");
    dpkg_deb(&[
        "-x",
        deb.to_str().expect("utf-8"),
        root.to_str().expect("utf-8"),
    ]);

    // What it installs, and what it asks for.
    let depends = dpkg_deb(&["-f", deb.to_str().expect("utf-8"), "Depends"]);
    assert!(
        depends.contains("ipxe") && depends.contains("libc6"),
        "{depends}"
    );
    for (path, mode) in [
        ("usr/bin/wisp", 0o755),
        ("lib/systemd/system/wisp.service", 0o644),
        ("etc/wisp/wisp.toml", 0o644),
        ("usr/share/bash-completion/completions/wisp", 0o644),
        ("usr/share/zsh/vendor-completions/_wisp", 0o644),
        ("usr/share/man/man1/wisp.1.gz", 0o644),
        ("usr/share/man/man1/wisp-serve.1.gz", 0o644),
        ("usr/share/doc/wisp/copyright", 0o644),
    ] {
        assert_eq!(mode_of(&root.join(path)), mode, "{path}");
    }
    let completion =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/wisp"))
            .expect("the bash completion");
    assert!(completion.contains("apply") && completion.contains("--interface"));
    let config = std::fs::read_to_string(root.join("etc/wisp/wisp.toml")).expect("the config");
    assert!(
        config.contains("# interface = ") && config.contains("# xdp-mode = \"auto\""),
        "{config}"
    );

    // The daemon, started as the unit starts it: its ExecStart (paths under the unpacked
    // root), an unprivileged user, exactly the unit's capabilities, and a notify socket.
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/wisp.service")).expect("the unit");
    assert_eq!(service_value(&unit, "Type"), "notify");
    let capabilities = service_value(&unit, "AmbientCapabilities");
    assert_eq!(capabilities, service_value(&unit, "CapabilityBoundingSet"));
    assert!(!capabilities.contains("CAP_SYS_ADMIN"), "{capabilities}");
    let mut exec = service_value(&unit, "ExecStart")
        .split_whitespace()
        .map(|word| match word.strip_prefix('/') {
            Some(path) => root.join(path).display().to_string(),
            None => word.to_string(),
        });
    let program = exec.next().expect("a program");
    let lab = Lab::bridged("package");
    let data = work.join("data");
    let assets = work.join("assets");
    marker_assets(&assets).expect("build the test kernel and initramfs");
    std::fs::create_dir(&data).expect("the data directory");
    nix::unistd::chown(&data, Some(65534.into()), Some(65534.into())).expect("chown");
    let notify_path = work.join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("the notify socket");
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777))
        .expect("chmod the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a timeout");
    let caps = setpriv_caps(capabilities);
    let log = work.join("wisp.log");
    let mut daemon = lab
        .server
        .command("setpriv")
        .args([
            &format!("--reuid={UNPRIVILEGED}"),
            &format!("--regid={UNPRIVILEGED}"),
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            &format!("--bounding-set={caps}"),
            "--",
            &program,
        ])
        .args(exec)
        .env("WISP_INTERFACE", BRIDGE_IF)
        .env("WISP_DATA_DIR", &data)
        .env("WISP_ASSETS_DIR", &assets)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("the log"))
        .spawn()
        .expect("start the packaged wisp");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        notified(&notify, "READY=1", Duration::from_secs(30)),
        "no READY=1:\n{}",
        log_text()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.id())).expect("status");
    assert!(
        status
            .lines()
            .any(|line| line.starts_with("Uid:") && line.contains(UNPRIVILEGED)),
        "{status}"
    );
    assert!(
        log_text().contains("XDP gate attached"),
        "the gate did not attach without root:\n{}",
        log_text()
    );

    // It provisions: a VM netboots through it to its payload.
    lab.server
        .use_api("http://127.0.0.1:7480", &data.join("api.token"));
    apply_ok(&lab.server, &netboot_machine_yaml(VM_MAC, "10.99.0.50"));
    let vm = Vm::start(
        &lab.server.name,
        BRIDGE_IF,
        "tap0",
        VM_MAC,
        Firmware::Bios,
        &work.0,
        None,
    )
    .expect("start the VM");
    vm.wait_for_serial(MARKER, Duration::from_secs(240))
        .unwrap_or_else(|err| panic!("{err}\n{}", log_text()));

    // A stop as systemd makes it: SIGTERM, STOPPING=1, a clean exit.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert!(notified(&notify, "STOPPING=1", Duration::from_secs(10)));
    let exit = daemon.wait().expect("wisp exits");
    assert!(exit.success(), "{exit}:\n{}", log_text());
}
