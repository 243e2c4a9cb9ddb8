//! The kernel Wisp boots: the one in Debian's `linux-image-amd64`, taken out of the package with
//! `apt-get download` and `dpkg -x` (nothing is installed on the host).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

/// The unpacked kernel package: its vmlinuz and its modules.
pub struct DebianKernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` inside the unpacked package.
    pub modules: PathBuf,
}

/// Downloads and unpacks the kernel into `cache`, unless it is there already.
pub fn debian_kernel(cache: &Path) -> anyhow::Result<DebianKernel> {
    let package = kernel_package()?;
    let version = package.trim_start_matches("linux-image-").to_string();
    let root = cache.join(&package);
    let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
    let modules = root.join(format!("lib/modules/{version}"));
    if !vmlinuz.exists() {
        std::fs::create_dir_all(cache)?;
        run(Command::new("apt-get")
            .args(["download", &package])
            .current_dir(cache))?;
        let deb = std::fs::read_dir(cache)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .with_context(|| {
                format!(
                    "apt-get download left no {package} package in {}",
                    cache.display()
                )
            })?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
        std::fs::remove_file(&deb)?;
        if !vmlinuz.exists() {
            bail!("{} holds no {}", package, vmlinuz.display());
        }
    }
    Ok(DebianKernel {
        version,
        vmlinuz,
        modules,
    })
}

/// The versioned package `linux-image-amd64` depends on, such as `linux-image-6.1.0-56-amd64`.
fn kernel_package() -> anyhow::Result<String> {
    let output = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("running apt-cache")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-"))
        .map(str::to_string)
        .context("apt-cache knows no linux-image-amd64 (run apt-get update)")
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}
