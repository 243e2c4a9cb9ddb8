//! One-command setup: Debian packages, the nightly's rust-src and clippy, and a bpf-linker built against
//! the same LLVM major version as the nightly compiler (a mismatch breaks the eBPF build).
use anyhow::{bail, Context};

use crate::shell::{output, run, step};

/// Debian packages the build and the tests use, besides the LLVM development package:
/// lab plumbing, the iPXE binaries Wisp serves, firmware for the test VMs, and the real peers
/// the tests talk to (TFTP clients, perfdhcp, dnsmasq, tshark).
const PACKAGES: &[&str] = &[
    "iproute2",
    "procps",
    "curl",
    "busybox-static",
    "ca-certificates",
    "ipxe",
    "ipxe-qemu",
    "ovmf",
    "tftp-hpa",
    "atftp",
    "kea-admin",
    "dnsmasq-base",
    "tshark",
    // A real DHCP relay agent (dhcrelay), which adds option 82.
    "isc-dhcp-relay",
    // The end-to-end tests build a disk image that boots under BIOS and UEFI: ext4 from a
    // directory, a FAT EFI system partition, and GRUB for both firmwares.
    "e2fsprogs",
    "dosfstools",
    "mtools",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    // The power-loss test strips the `wisp` it puts in its VM (objcopy); the frozen-disk and
    // hostile-image tests use loop devices, fsfreeze and unshare.
    "binutils",
    "util-linux",
    "mount",
    // A real IPMI BMC (ipmi_sim) and the client Wisp drives BMCs with; a Python for the
    // Redfish emulator (sushy-tools, from PyPI) and the certificate it serves.
    "openipmi",
    "ipmitool",
    "python3-venv",
    "openssl",
    // The installed system of the end-to-end tests and the demo is a real Debian root, and the
    // container-action test runs an image imported from it into podman.
    "debootstrap",
    "podman",
    // The worker tests compress images with the real tools.
    "xz-utils",
    "zstd",
    // etcd, the store appliances share (docs/ha.md), and protoc, which builds its client
    // (etcd-client compiles etcd's protos, with the well-known types, when it is built).
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    // The Debian package's build (`cargo xtask package`), and the browser the rack page is
    // tested in.
    "dpkg-dev",
    "binutils",
    "chromium",
    // The peers `cargo xtask bench` measures Wisp against.
    "kea-dhcp4-server",
    "tftpd-hpa",
    "nginx-light",
    "wrk",
    // The font of the benchmark plots.
    "fonts-dejavu-core",
];

/// QEMU comes from backports: the machine's qemu-utils is from there, and bookworm's own
/// qemu-system breaks beside it. qemu-img makes the qcow2 image the worker tests stream.
const BACKPORTS_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-utils"];

pub fn ensure() -> anyhow::Result<()> {
    step("setup");
    let llvm = nightly_llvm_major()?;
    let mut packages: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    packages.push(format!("llvm-{llvm}-dev"));
    install_packages(&packages, None)?;
    let backports = BACKPORTS_PACKAGES
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>();
    if backports.iter().any(|p| !is_installed(p)) {
        let suite = enable_backports()?;
        install_packages(&backports, Some(&suite))?;
    }
    install_nightly_components()?;
    install_worker_target()?;
    install_bpf_linker(llvm)?;
    install_python_tools()?;
    // The kernel the boot tests and the demo netboot, unpacked once from Debian's package.
    let cache = crate::repo_root().join("target/images-cache");
    let kernel = wisp_images::kernel::debian_kernel(&cache)?;
    // The Debian root they install, bootstrapped once.
    wisp_images::debian::root(&cache)?;
    println!(
        "setup: ready (nightly LLVM {llvm}, bpf-linker for llvm-{llvm}, kernel {})",
        kernel.version
    );
    Ok(())
}

/// Python tools the tests run, each in a virtual environment of Debian's Python under
/// `target/lab/<name>`, pinned: OpenStack's Redfish emulator, which the BMC tests run, and
/// grpcio-tools, whose protoc compiles Tinkerbell's edition-2023 protos for the test that plays
/// Tinkerbell's agent.
const PYTHON_TOOLS: &[(&str, &str, &str)] = &[
    ("sushy-tools", "sushy-tools", "2.2.0"),
    ("grpc-tools", "grpcio-tools", "1.85.1"),
];

fn install_python_tools() -> anyhow::Result<()> {
    for (name, package, version) in PYTHON_TOOLS {
        let venv = crate::repo_root().join("target/lab").join(name);
        let installed = output(
            &venv.join("bin/python3").to_string_lossy(),
            &[
                "-c",
                &format!("import importlib.metadata as m; print(m.version('{package}'))"),
            ],
        );
        if installed.as_deref().map(str::trim) == Some(*version) {
            continue;
        }
        run("/usr/bin/python3", &["-m", "venv", &venv.to_string_lossy()])?;
        run(
            &venv.join("bin/pip").to_string_lossy(),
            &["install", "--quiet", &format!("{package}=={version}")],
        )
        .with_context(|| format!("installing {package} from PyPI"))?;
    }
    Ok(())
}

/// The LLVM major version of the nightly toolchain (`LLVM version: 22.1.4` → 22).
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let version = output("rustc", &["+nightly", "-vV"])
        .context("the nightly toolchain is missing: it builds the eBPF program (rustup toolchain install nightly)")?;
    let llvm = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` does not name its LLVM version")?;
    llvm.split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("unreadable LLVM version {llvm:?}"))
}

fn is_installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|status| status.contains("install ok installed"))
}

fn install_packages(packages: &[String], suite: Option<&str>) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .map(String::as_str)
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    if let Some(suite) = suite {
        args.extend(["-t", suite]);
    }
    args.extend(&missing);
    // No debconf questions (tshark asks one): CI has no terminal.
    let status = std::process::Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("`apt-get {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Adds `<codename>-backports` as an apt source, reusing the mirror URI the machine's own
/// Debian source already names. Returns the suite.
fn enable_backports() -> anyhow::Result<String> {
    let wisp_images::debian::Mirror { codename, uri } = wisp_images::debian::mirror()?;
    let suite = format!("{codename}-backports");
    let target = std::path::Path::new("/etc/apt/sources.list.d/wisp-backports.sources");
    if target.exists() {
        return Ok(suite);
    }
    std::fs::write(
        target,
        format!("Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"),
    )
    .with_context(|| format!("writing {}", target.display()))?;
    println!("setup: added {suite} (from {uri})");
    Ok(suite)
}

/// The nightly's `rust-src`, which builds `core` for the bpf target, and its clippy, which lints
/// the XDP program for that target.
fn install_nightly_components() -> anyhow::Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    for component in ["rust-src", "clippy"] {
        if !installed.lines().any(|line| line.starts_with(component)) {
            run(
                "rustup",
                &["component", "add", component, "--toolchain", "nightly"],
            )?;
        }
    }
    Ok(())
}

/// The standard library for the static worker of the provisioning OS.
fn install_worker_target() -> anyhow::Result<()> {
    let target = crate::images::WORKER_TARGET;
    let installed = output("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if installed.lines().any(|line| line.trim() == target) {
        return Ok(());
    }
    run("rustup", &["target", "add", target])
}

/// Whether cargo's install record shows bpf-linker built with the `llvm-N` feature.
fn bpf_linker_matches(llvm: u32) -> bool {
    let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| format!("{}/.cargo", h.to_string_lossy()).into())
    }) else {
        return false;
    };
    let record = std::path::Path::new(&home).join(".crates2.json");
    let Ok(text) = std::fs::read_to_string(record) else {
        return false;
    };
    let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let feature = format!("llvm-{llvm}");
    record["installs"].as_object().is_some_and(|installs| {
        installs.iter().any(|(name, install)| {
            name.starts_with("bpf-linker ")
                && install["features"]
                    .as_array()
                    .is_some_and(|features| features.iter().any(|f| f == feature.as_str()))
        })
    }) && output("bpf-linker", &["--version"]).is_some()
}

fn install_bpf_linker(llvm: u32) -> anyhow::Result<()> {
    if bpf_linker_matches(llvm) {
        return Ok(());
    }
    println!("setup: building bpf-linker against LLVM {llvm} (about a minute)");
    let prefix = format!("/usr/lib/llvm-{llvm}");
    if !std::path::Path::new(&prefix).exists() {
        bail!("{prefix} is missing although llvm-{llvm}-dev is installed");
    }
    let feature = format!("llvm-{llvm}");
    let status = std::process::Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &feature,
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("building bpf-linker against {prefix} failed ({status})");
    }
    Ok(())
}
