//! VMs for the boot tests (see `wisp_images::qemu`), and the payload they boot.
use std::path::Path;

pub use wisp_images::qemu::{Firmware, Vm};

/// The line the test initramfs prints on the serial console.
pub const MARKER: &str = "WISP-TEST-MARKER: the netbooted initramfs is running";

/// Builds the boot assets for the tests: Debian's kernel and an initramfs that prints [`MARKER`].
pub fn marker_assets(assets: &Path) -> anyhow::Result<()> {
    // Tests in one binary run in parallel; only one may unpack the kernel package at a time.
    static UNPACKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = UNPACKING.lock().unwrap_or_else(|p| p.into_inner());
    wisp_images::hello::write_assets(
        assets,
        &crate::repo_root().join("target/images-cache"),
        MARKER,
    )
}
