//! The OS image the end-to-end tests and the demo install: a real Debian root (see
//! [`crate::debian`]) on a whole-disk image laid out as cloud images are. Partition 1, the ext4
//! root, comes last on the disk, so that a first-boot `growpart` can grow it to the disk's end;
//! partition 2, the EFI system partition, sits before it. The root holds Debian's kernel and a
//! tiny initrd; GRUB boots it under BIOS (in the MBR and the gap after it) and under UEFI (as
//! `EFI/BOOT/BOOTX64.EFI`). Booted from an NVMe disk, it prints the file provisioning wrote
//! and the size of its root filesystem, and powers off.
//!
//! Built without mounting anything (no loop devices): `mkfs.ext4 -d` fills the root from a
//! directory, `mkfs.vfat` and mtools make the EFI system partition, `grub-mkimage` makes both
//! GRUB images, and the MBR is written here.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::{cpio::Archive, kernel::DebianKernel, modules};

/// The first line the installed system prints on its console.
pub const INSTALLED_BANNER: &str = "Wisp test system: booted from disk";

/// Where the example's writefile action puts the netplan file, which the installed system
/// prints at boot.
pub const NETPLAN: &str = "/etc/netplan/config.yaml";

/// The line before the root filesystem's size in bytes, which the installed system prints at
/// boot: larger than [`root_bytes`] once the example's `grow-partition` action has run.
pub const ROOT_SIZE_LINE: &str = "== root filesystem bytes";

/// `resources` (the adapted example) with `action` appended to its template's actions.
pub fn ending_with(resources: &str, action: &str) -> String {
    let last_line = "              DIRMODE: 0755\n";
    assert!(resources.contains(last_line), "the template's last line");
    resources.replacen(last_line, &format!("{last_line}{action}"), 1)
}

/// The action that leaves the provisioning OS through the firmware: it netboots, finds no
/// work, and goes to the disk.
pub const REBOOT_ACTION: &str = "          - name: \"restart\"
            image: quay.io/tinkerbell-actions/reboot:v1.0.0
            timeout: 30
";

/// The action that leaves the provisioning OS through kexec, straight into the installed
/// system's kernel, with no firmware in between.
pub const KEXEC_ACTION: &str = "          - name: \"kexec-installed\"
            image: quay.io/tinkerbell-actions/kexec:v1.0.0
            timeout: 90
            environment:
              BLOCK_DEVICE: /dev/nvme0n1p1
              FS_TYPE: ext4
              KERNEL_PATH: /boot/vmlinuz
              INITRD_PATH: /boot/initrd
              CMD_LINE: console=ttyS0,115200 panic=5
";

/// The size of the blank disk the image is installed on, in the tests and the demo: well
/// beyond the image's root partition, so that the example's `grow-partition` visibly grows it.
pub const BLANK_DISK_BYTES: u64 = 1 << 30;

/// The Tinkerbell example resources (`examples/tinkerbell-demo`) with the two changes a user
/// makes: the template streams `image_url`, and the Workflow's `hardwareRef` names the
/// Hardware that exists (`nuc-demo`). Its three actions run unchanged. The end-to-end tests
/// and the demo apply these.
pub fn adapted_tinkerbell_example(example: &Path, image_url: &str) -> anyhow::Result<String> {
    let read = |name: &str| {
        std::fs::read_to_string(example.join(name))
            .with_context(|| format!("reading {}", example.join(name).display()))
    };
    let template = read("template.yaml")?.replace(
        "http://192.168.1.1:8080/focal-server-cloudimg-amd64.raw.gz",
        image_url,
    );
    let workflow = read("workflow.yaml")?.replace("hardwareRef: hp-demo", "hardwareRef: nuc-demo");
    if !template.contains(image_url) || !workflow.contains("nuc-demo") {
        bail!(
            "{} no longer has the fields the adaptation changes",
            example.display()
        );
    }
    Ok(format!(
        "{}\n---\n{template}\n---\n{workflow}",
        read("hardware.yaml")?
    ))
}

const SECTOR: u64 = 512;
/// The partition starts at 1 MiB, as partitioning tools align it; GRUB's core image lives in
/// the gap before it.
const PARTITION_START: u64 = 2048;
const ESP_BYTES: u64 = 8 << 20;
const GRUB_BIOS_DIR: &str = "/usr/lib/grub/i386-pc";
/// What GRUB needs, beyond its kernel, to load Linux from the ext4 root, for both firmwares;
/// its embedded configuration does the rest, so no modules or grub.cfg live on the disk.
const GRUB_MODULES: &[&str] = &["part_msdos", "ext2", "linux", "boot"];

/// The root's init, in Debian's shell: prints the netplan file and the root filesystem's
/// size, then powers off (through sysrq: a minbase root has no init system to ask).
fn installed_init() -> String {
    format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\n\
         echo '{INSTALLED_BANNER}'\n\
         echo '== {NETPLAN}'\n\
         cat '{NETPLAN}' || echo '(missing)'\n\
         echo '{ROOT_SIZE_LINE}'\n\
         echo $(( $(stat -f -c '%b*%S' /) ))\n\
         echo '== end'\n\
         sync\n\
         echo o > /proc/sysrq-trigger\n\
         sleep 60\n"
    )
}

/// The initrd: loads the NVMe and ext4 modules, mounts the root partition, and switches to it.
fn initrd(kernel: &DebianKernel, busybox: &[u8]) -> anyhow::Result<Vec<u8>> {
    let modules = modules::resolve(&kernel.modules, &["nvme", "crc32c_generic", "ext4"])?;
    let init = "#!/bin/busybox sh\n\
        /bin/busybox mount -t devtmpfs dev /dev\n\
        for m in $(/bin/busybox cat /modules); do /bin/busybox insmod \"/$m\"; done\n\
        n=0\n\
        while [ ! -b /dev/nvme0n1p1 ] && [ $n -lt 100 ]; do /bin/busybox sleep 0.1; n=$((n+1)); done\n\
        /bin/busybox mount -t ext4 /dev/nvme0n1p1 /root\n\
        exec /bin/busybox switch_root /root /sbin/init\n";
    let mut archive = Archive::default();
    archive
        .directory("bin")
        .directory("dev")
        .directory("root")
        .char_device("dev/console", 5, 1)
        .file("bin/busybox", 0o755, busybox)
        .file("init", 0o755, init.as_bytes());
    let mut order = String::new();
    for (index, module) in modules.iter().enumerate() {
        // Flat names: the initrd needs no module tree.
        let name = format!("m{index}.ko");
        archive.file(&name, 0o644, &std::fs::read(kernel.modules.join(module))?);
        order.push_str(&name);
        order.push('\n');
    }
    archive.file("modules", 0o644, order.as_bytes());
    Ok(archive.finish()?)
}

/// The size of the root partition in the image: the Debian root and a margin, much less than
/// the disks the tests install it on, so that `growpart` has room.
pub fn root_bytes(debian: &Path) -> anyhow::Result<u64> {
    let output = Command::new("du")
        .args(["-s", "--block-size=1M"])
        .arg(debian)
        .output()
        .context("running du")?;
    let used: u64 = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .and_then(|mebibytes| mebibytes.parse().ok())
        .with_context(|| format!("du printed no size for {}", debian.display()))?;
    // The kernel and initrd, and ext4's own metadata and reserve.
    Ok((used + used / 4 + 64) << 20)
}

/// The raw disk image, built in `work` (removed afterwards) from the Debian root `debian`.
fn raw_image(
    work: &Path,
    debian: &Path,
    kernel: &DebianKernel,
    busybox_bytes: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let root = work.join("root");
    run(Command::new("cp").arg("-a").arg(debian).arg(&root))?;
    std::fs::create_dir_all(root.join("boot"))?;
    std::fs::create_dir_all(root.join("etc/netplan"))?;
    // Replaces the link to a missing init system; the kernel runs this one.
    let _ = std::fs::remove_file(root.join("sbin/init"));
    write_executable(&root.join("sbin/init"), &installed_init())?;
    std::fs::copy(&kernel.vmlinuz, root.join("boot/vmlinuz"))?;
    std::fs::write(root.join("boot/initrd"), initrd(kernel, busybox_bytes)?)?;

    let root_bytes = root_bytes(debian)?;
    let partition = work.join("root.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "wisp-root", "-d"])
        .arg(&root)
        .arg(&partition)
        .arg(format!("{}k", root_bytes / 1024)))?;

    // GRUB's core image runs this embedded configuration itself: no grub.cfg or modules on disk.
    let early = work.join("early.cfg");
    std::fs::write(
        &early,
        "linux (hd0,msdos1)/boot/vmlinuz console=ttyS0,115200 panic=5\n\
         initrd (hd0,msdos1)/boot/initrd\n\
         boot\n",
    )?;
    let grub = |format: &str, output: &Path, extra: &str| {
        run(Command::new("grub-mkimage")
            .args(["-O", format, "-p", "(hd0,msdos1)/boot/grub", "-c"])
            .arg(&early)
            .arg("-o")
            .arg(output)
            .arg(extra)
            .args(GRUB_MODULES))
    };
    let core = work.join("core.img");
    grub("i386-pc", &core, "biosdisk")?;
    let core = std::fs::read(&core)?;
    if core.len() as u64 > (PARTITION_START - 1) * SECTOR {
        bail!(
            "GRUB's core image ({} bytes) does not fit before the partition",
            core.len()
        );
    }
    let boot = std::fs::read(Path::new(GRUB_BIOS_DIR).join("boot.img"))?;

    // The EFI system partition: FAT with GRUB at the removable-media path firmware looks for.
    let grub_efi = work.join("BOOTX64.EFI");
    grub("x86_64-efi", &grub_efi, "fat")?;
    let esp = work.join("esp.vfat");
    run(Command::new("mkfs.vfat")
        .args(["-n", "WISP-ESP", "-C"])
        .arg(&esp)
        .arg((ESP_BYTES / 1024).to_string()))?;
    let image = format!("{}", esp.display());
    run(Command::new("mmd").args(["-i", &image, "::/EFI", "::/EFI/BOOT"]))?;
    run(Command::new("mcopy")
        .args(["-i", &image])
        .arg(&grub_efi)
        .arg("::/EFI/BOOT/BOOTX64.EFI"))?;

    let mut disk = vec![0u8; (PARTITION_START * SECTOR) as usize];
    // boot.img's code, then the partition table; boot.img loads the core from sector 1. The
    // ESP comes first on the disk and the root (partition 1) last, so the root can grow.
    disk[..440].copy_from_slice(&boot[..440]);
    let esp_sectors = ESP_BYTES / SECTOR;
    partition_entry(
        &mut disk[446..462],
        true,
        0x83,
        PARTITION_START + esp_sectors,
        root_bytes / SECTOR,
    );
    partition_entry(
        &mut disk[462..478],
        false,
        0xef,
        PARTITION_START,
        esp_sectors,
    );
    disk[510] = 0x55;
    disk[511] = 0xaa;
    disk[SECTOR as usize..SECTOR as usize + core.len()].copy_from_slice(&core);
    disk.extend_from_slice(&std::fs::read(&esp)?);
    disk.extend_from_slice(&std::fs::read(&partition)?);
    std::fs::remove_dir_all(work)?;
    Ok(disk)
}

/// An MBR partition entry addressed by LBA only (the CHS fields say so).
fn partition_entry(entry: &mut [u8], active: bool, kind: u8, start: u64, sectors: u64) {
    entry[0] = if active { 0x80 } else { 0 };
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[4] = kind;
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&(start as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
}

/// Builds the disk image, gzip-compressed at `out` (image2disk's `COMPRESSED: true`), and
/// returns its path. `debian` is the root to install (see [`crate::debian::root`]).
pub fn build_gzip(
    out: &Path,
    debian: &Path,
    kernel: &DebianKernel,
    busybox: &Path,
) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let busybox =
        std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let disk = raw_image(&out.with_extension("d"), debian, kernel, &busybox)?;
    let mut gzip = flate2::write::GzEncoder::new(
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
        flate2::Compression::fast(),
    );
    gzip.write_all(&disk)?;
    gzip.finish()?;
    Ok(out.to_path_buf())
}

fn executable() -> std::fs::Permissions {
    std::os::unix::fs::PermissionsExt::from_mode(0o755)
}

fn write_executable(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents)?;
    std::fs::set_permissions(path, executable())?;
    Ok(())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
