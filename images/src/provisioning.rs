//! Wisp's provisioning OS: Debian's kernel and an initramfs holding busybox, the `wisp-worker`
//! agent and the modules for common virtual and physical hardware. Its init loads the modules,
//! brings up the interface whose MAC the kernel command line names (`wisp.mac=`, or Tinkerbell's
//! `hw_addr=`) with DHCP, and runs the worker. A workflow that succeeds ends in a reboot (into
//! the installed system, since Wisp then has no pending work for the machine); one that fails
//! leaves the machine up, with a shell on the console, for inspection.
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::{cpio::Archive, kernel::DebianKernel, modules};

/// NICs, disks and filesystems. Virtual machines: virtio, e1000. Servers: Intel (e1000e,
/// igb, ixgbe, i40e), Broadcom (tg3, bnxt_en) and Realtek (r8169) NICs; NVMe, AHCI SATA, and the
/// common SAS/RAID HBAs (megaraid_sas, mpt3sas). Filesystems the actions write into: ext4, xfs
/// and vfat (EFI system partitions). NICs that need firmware files (some tg3, bnxt_en and r8169
/// parts) also need Debian's firmware packages, which are not included.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "tg3",
    "bnxt_en",
    "r8169",
    "nvme",
    "ahci",
    "sd_mod",
    "megaraid_sas",
    "mpt3sas",
    "crc32c_generic",
    "ext4",
    "xfs",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
];

/// The start of every init Wisp builds: busybox's applets, the kernel's filesystems, and the
/// modules listed in `/etc/wisp/modules`, in order.
#[macro_export]
macro_rules! init_prelude {
    () => {
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin NO_COLOR=1
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
for module in $(cat /etc/wisp/modules); do insmod "/lib/modules/$module" 2>/dev/null; done
"#
    };
}

const INIT: &str = concat!(
    init_prelude!(),
    r#"echo "Wisp provisioning OS: $(uname -r)"
mac=$(sed -n 's/.*wisp\.mac=\([^ ]*\).*/\1/p' /proc/cmdline)
# Booted by a Tinkerbell-style script (Smee's parameters only), the MAC is `hw_addr`.
[ -z "$mac" ] && mac=$(sed -n 's/.*hw_addr=\([^ ]*\).*/\1/p' /proc/cmdline)
ip link set lo up
interface=
tries=0
while [ -z "$interface" ] && [ $tries -lt 50 ]; do
  for dev in /sys/class/net/*; do
    [ "$(cat "$dev/address" 2>/dev/null)" = "$mac" ] && interface=${dev##*/}
  done
  [ -z "$interface" ] && sleep 0.2
  tries=$((tries + 1))
done
if [ -z "$interface" ]; then
  echo "Wisp: no interface has MAC $mac (wisp.mac= or hw_addr=); is its driver missing?"
else
  ip link set "$interface" up
  udhcpc -i "$interface" -s /etc/wisp/udhcpc -t 20 -T 1 -A 2 -n -q
fi
/bin/wisp-worker
status=$?
if [ $status -eq 0 ]; then
  echo "Wisp: workflow complete; rebooting"
  sync
  reboot -f
fi
echo "Wisp: the workflow did not succeed (worker exit $status); a shell is on the console"
while true; do setsid cttyhack sh; done
"#
);

/// busybox udhcpc's hook: it sets the address and route it was given.
const UDHCPC: &str = r#"#!/bin/sh
case "$1" in
  bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}"
    [ -n "$router" ] && route add default gw "${router%% *}" dev "$interface"
    : > /etc/resolv.conf
    for server in $dns; do echo "nameserver $server" >> /etc/resolv.conf; done
    echo "Wisp: $interface is $ip"
    ;;
esac
"#;

/// What the build wrote.
pub struct ProvisioningOs {
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
}

/// Builds the OS into `out` (as `vmlinuz` and `initramfs`). The same inputs give the same
/// bytes (no timestamps, a fixed order), so an unchanged build is skipped.
pub fn build(
    out: &Path,
    kernel: &DebianKernel,
    busybox: &Path,
    worker: &Path,
) -> anyhow::Result<ProvisioningOs> {
    let built = ProvisioningOs {
        vmlinuz: out.join("vmlinuz"),
        initramfs: out.join("initramfs"),
    };
    let fingerprint = format!(
        "kernel {}\nbusybox {}\nworker {}\ninit {}\n",
        kernel.version,
        file_fingerprint(busybox)?,
        file_fingerprint(worker)?,
        content_fingerprint(&[
            INIT.as_bytes(),
            UDHCPC.as_bytes(),
            MODULES.join(",").as_bytes()
        ]),
    );
    let stamp = out.join("inputs");
    if built.initramfs.exists()
        && built.vmlinuz.exists()
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(fingerprint.as_str())
    {
        return Ok(built);
    }
    std::fs::create_dir_all(out)?;
    let modules = modules::resolve(&kernel.modules, MODULES)?;
    let mut archive = Archive::default();
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "etc/wisp",
        "lib/modules",
    ] {
        archive.parents(dir).directory(dir);
    }
    archive
        .char_device("dev/console", 5, 1)
        .file("init", 0o755, INIT.as_bytes())
        .file("etc/wisp/udhcpc", 0o755, UDHCPC.as_bytes())
        .file(
            "bin/busybox",
            0o755,
            &std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?,
        )
        .file(
            "bin/wisp-worker",
            0o755,
            &std::fs::read(worker).with_context(|| format!("reading {}", worker.display()))?,
        );
    let mut load_order = String::new();
    for module in &modules {
        let path = format!("lib/modules/{}", module.display());
        archive
            .parents(&path)
            .file(&path, 0o644, &std::fs::read(kernel.modules.join(module))?);
        load_order.push_str(&format!("{}\n", module.display()));
    }
    archive.file("etc/wisp/modules", 0o644, load_order.as_bytes());
    std::fs::write(&built.initramfs, archive.finish()?)?;
    std::fs::copy(&kernel.vmlinuz, &built.vmlinuz)?;
    std::fs::write(&stamp, fingerprint)?;
    Ok(built)
}

fn file_fingerprint(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(content_fingerprint(&[&bytes]))
}

/// CRC-32 and length: enough to notice a changed input, which is all the cache needs.
fn content_fingerprint(parts: &[&[u8]]) -> String {
    let mut crc = flate2::Crc::new();
    let mut length = 0;
    for part in parts {
        crc.update(part);
        length += part.len();
    }
    format!("{:08x}-{length}", crc.sum())
}
