//! One-command setup: Debian packages, the nightly's rust-src, and a bpf-linker built against
//! the same LLVM major version as the nightly compiler (a mismatch breaks the eBPF build).
use anyhow::{bail, Context};

use crate::shell::{output, run, step};

/// Debian packages the build and the tests use, besides the LLVM development package.
const PACKAGES: &[&str] = &[
    "iproute2",
    "procps",
    "curl",
    "busybox-static",
    "ca-certificates",
    "ipxe",
    "tftp-hpa",
    "atftp",
];

pub fn ensure() -> anyhow::Result<()> {
    step("setup");
    let llvm = nightly_llvm_major()?;
    let mut packages: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    packages.push(format!("llvm-{llvm}-dev"));
    install_packages(&packages)?;
    install_rust_src()?;
    install_bpf_linker(llvm)?;
    println!("setup: ready (nightly LLVM {llvm}, bpf-linker for llvm-{llvm})");
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

fn install_packages(packages: &[String]) -> anyhow::Result<()> {
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
    args.extend(&missing);
    run("apt-get", &args)
}

fn install_rust_src() -> anyhow::Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    run(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )
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
