//! Wisp itself in a VM: Debian's kernel and an initramfs holding busybox, the `wisp` binary with
//! the libraries it links, and an init that mounts the VM's data disk (`/dev/vda`) and runs
//! `wisp serve` on it. The power-loss test kills such a VM, rather than shutting it down, and
//! boots it again on the same disk.
//!
//! The init makes the kill a faithful power loss for what Wisp writes: the kernel never writes
//! dirty pages back on its own (`vm.dirty_writeback_centisecs = 0`) and ext4 commits its journal
//! only when a sync forces it (`commit=3600`), so whatever Wisp did not make durable itself is
//! still only in the VM's memory when it dies. A canary shows it: each boot prints the canary
//! file that the boot before wrote without a sync ([`CANARY`]), then writes its own.
//!
//! Wisp runs with `--lease-sync before-ack`, the setting whose promise is that a power loss takes
//! no ACKed lease; the default syncs in the background and promises that only for a kill.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::{cpio::Archive, kernel::DebianKernel, modules};

/// Printed at each boot, followed by the previous boot's unsynced canary and a `.`: after a
/// power loss, `WISP-APPLIANCE canary: .` (it was lost).
pub const CANARY: &str = "WISP-APPLIANCE canary: ";

/// Printed when `wisp serve` is started.
pub const SERVING: &str = "WISP-APPLIANCE: wisp serve started";

/// Where the data disk holds the API token (the test writes it there before the first boot).
pub const API_TOKEN: &str = "api.token";

const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
];

/// The address comes from the kernel command line (`wisp.address=10.99.0.1/24`).
const INIT: &str = concat!(
    crate::init_prelude!(),
    r#"echo 0 > /proc/sys/vm/dirty_writeback_centisecs
echo 360000 > /proc/sys/vm/dirty_expire_centisecs
mkdir -p /data
if ! mount -t ext4 -o commit=3600 /dev/vda /data; then
  echo "WISP-APPLIANCE: /dev/vda did not mount"
  while true; do sleep 3600; done
fi
echo "WISP-APPLIANCE canary: $(cat /data/canary 2>/dev/null)."
cat /proc/sys/kernel/random/boot_id > /data/canary
address=$(sed -n 's/.*wisp\.address=\([^ ]*\).*/\1/p' /proc/cmdline)
ip link set lo up
ip addr add "$address" dev eth0
ip link set eth0 up
echo "WISP-APPLIANCE: wisp serve started"
wisp serve --interface eth0 --data-dir /data/wisp --listen "${address%/*}:7480" \
  --api-token-file /data/api.token --assets-dir /data/assets --lease-sync before-ack
echo "WISP-APPLIANCE: wisp serve exited with $?"
while true; do sleep 3600; done
"#
);

/// Builds the initramfs into `out/appliance-initramfs`, with `wisp` stripped of its debug
/// information (a debug build is mostly that) and iPXE's BIOS binary from `ipxe_dir`.
pub fn build(
    out: &Path,
    kernel: &DebianKernel,
    busybox: &Path,
    wisp: &Path,
    ipxe_dir: &Path,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let stripped = out.join("wisp-stripped");
    let status = std::process::Command::new("objcopy")
        .arg("--strip-debug")
        .args([wisp, &stripped])
        .status()
        .context("running objcopy (binutils)")?;
    if !status.success() {
        bail!("objcopy --strip-debug {} failed", wisp.display());
    }
    let mut archive = Archive::default();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "etc/wisp"] {
        archive.parents(dir).directory(dir);
    }
    archive
        .char_device("dev/console", 5, 1)
        .file("init", 0o755, INIT.as_bytes())
        .file("bin/busybox", 0o755, &read(busybox)?)
        .file("bin/wisp", 0o755, &read(&stripped)?);
    for library in shared_libraries(wisp)? {
        let path = library.to_string_lossy();
        let inside = path.trim_start_matches('/');
        archive
            .parents(inside)
            .file(inside, 0o755, &read(&library)?);
    }
    let ipxe = "usr/lib/ipxe/undionly.kpxe";
    archive
        .parents(ipxe)
        .file(ipxe, 0o644, &read(&ipxe_dir.join("undionly.kpxe"))?);
    let mut load_order = String::new();
    for module in modules::resolve(&kernel.modules, MODULES)? {
        let path = format!("lib/modules/{}", module.display());
        archive
            .parents(&path)
            .file(&path, 0o644, &read(&kernel.modules.join(&module))?);
        load_order.push_str(&format!("{}\n", module.display()));
    }
    archive.file("etc/wisp/modules", 0o644, load_order.as_bytes());
    let initramfs = out.join("appliance-initramfs");
    std::fs::write(&initramfs, archive.finish()?)?;
    std::fs::remove_file(&stripped)?;
    Ok(initramfs)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The shared libraries `binary` loads, and the dynamic loader, as `ldd` lists them.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !output.status.success() {
        bail!("ldd {} failed", binary.display());
    }
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)";
    // the vDSO has no file.
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
