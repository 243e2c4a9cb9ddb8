//! `cargo xtask images`: builds the provisioning OS that Wisp serves: Debian's kernel and an
//! initramfs with busybox, the static `wisp-worker` and the modules it needs. Cached: an
//! unchanged build is skipped (see `wisp_images::provisioning`).
use std::path::{Path, PathBuf};

use wisp_images::provisioning::{self, ProvisioningOs};

use crate::shell::{run, step};

/// The worker is static (musl), so it runs in an initramfs with no C library.
pub const WORKER_TARGET: &str = "x86_64-unknown-linux-musl";

/// Where the OS is written; `wisp serve --assets-dir` can point here.
pub fn output_dir(root: &Path) -> PathBuf {
    root.join("target/provisioning-os")
}

pub fn build(root: &Path) -> anyhow::Result<ProvisioningOs> {
    step("provisioning OS: wisp-worker (static), busybox, Debian's kernel and modules");
    run(
        "cargo",
        &[
            "build",
            "--release",
            "--package",
            "wisp-worker",
            "--bin",
            "wisp-worker",
            "--target",
            WORKER_TARGET,
        ],
    )?;
    let worker = root.join(format!("target/{WORKER_TARGET}/release/wisp-worker"));
    let kernel = wisp_images::kernel::debian_kernel(&root.join("target/images-cache"))?;
    let built = provisioning::build(
        &output_dir(root),
        &kernel,
        Path::new("/bin/busybox"),
        &worker,
    )?;
    println!(
        "images: {} and {}",
        built.vmlinuz.display(),
        built.initramfs.display()
    );
    Ok(built)
}
