//! A minimal netboot payload: Debian's kernel and an initramfs of busybox whose init prints a
//! line on the serial console and powers off. The boot-path tests and the demo boot it.
use std::path::Path;

use crate::{cpio::Archive, kernel::debian_kernel};

/// Writes `vmlinuz` and `initramfs` into `assets`. `cache` keeps the unpacked kernel package.
pub fn write_assets(assets: &Path, cache: &Path, message: &str) -> anyhow::Result<()> {
    let kernel = debian_kernel(cache)?;
    std::fs::create_dir_all(assets)?;
    std::fs::copy(&kernel.vmlinuz, assets.join("vmlinuz"))?;
    let busybox = std::fs::read("/bin/busybox")?;
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\n/bin/busybox echo '{message}' > /dev/ttyS0\n/bin/busybox poweroff -f\n"
    );
    let mut archive = Archive::default();
    archive
        .directory("bin")
        .directory("dev")
        .char_device("dev/console", 5, 1)
        .file("bin/busybox", 0o755, &busybox)
        .file("init", 0o755, init.as_bytes());
    std::fs::write(assets.join("initramfs"), archive.finish()?)?;
    Ok(())
}
