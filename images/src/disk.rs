//! A small OS image to install: a whole-disk image with an MBR partition table, an ext4 root
//! (partition 1) holding busybox, Debian's kernel and a tiny initrd, and an EFI system
//! partition (partition 2). It boots under BIOS (GRUB in the MBR and the gap after it) and
//! under UEFI (GRUB as `EFI/BOOT/BOOTX64.EFI`). Booted from an NVMe disk, it mounts its root,
//! prints the files that provisioning wrote, and powers off. The end-to-end tests and the demo
//! install it.
//!
//! Built without mounting anything (no loop devices, no root needed for the build itself):
//! `mkfs.ext4 -d` fills the root from a directory, `mkfs.vfat` and mtools make the EFI system
//! partition, `grub-mkimage` makes both GRUB images, and the MBR is written here.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::{cpio::Archive, kernel::DebianKernel, modules};

/// The first line the installed system prints on its console.
pub const INSTALLED_BANNER: &str = "Wisp test system: booted from disk";

/// What the adapted example's cexec action writes in the chroot, and the line it writes.
pub const CEXEC_PROOF: (&str, &str) = ("/var/lib/wisp/cexec-proof", "cexec-ran-in-the-chroot");
/// Where the example's writefile action puts the netplan file.
pub const NETPLAN: &str = "/etc/netplan/config.yaml";
/// The files the installed system prints at boot.
pub const SHOWN_FILES: [&str; 2] = [CEXEC_PROOF.0, NETPLAN];

/// The Tinkerbell example resources (`examples/tinkerbell-demo`) with two changes, so that they
/// install this image: the Workflow's `hardwareRef` names the Hardware that exists
/// (`nuc-demo`), and the template streams `image_url` and runs a command that leaves
/// [`CEXEC_PROOF`]. The end-to-end test and the demo apply these.
pub fn adapted_tinkerbell_example(example: &Path, image_url: &str) -> anyhow::Result<String> {
    let read = |name: &str| {
        std::fs::read_to_string(example.join(name))
            .with_context(|| format!("reading {}", example.join(name).display()))
    };
    let template = read("template.yaml")?
        .replace(
            "http://192.168.1.1:8080/focal-server-cloudimg-amd64.raw.gz",
            image_url,
        )
        .replace(
            "growpart /dev/nvme0n1 1 && resize2fs /dev/nvme0n1p1",
            &format!(
                "/bin/busybox mkdir -p /var/lib/wisp && echo {} > {}",
                CEXEC_PROOF.1, CEXEC_PROOF.0
            ),
        );
    let workflow = read("workflow.yaml")?.replace("hardwareRef: hp-demo", "hardwareRef: nuc-demo");
    if !template.contains(image_url)
        || !template.contains(CEXEC_PROOF.0)
        || !workflow.contains("nuc-demo")
    {
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
const ROOT_BYTES: u64 = 56 << 20;
const ESP_BYTES: u64 = 8 << 20;
const GRUB_BIOS_DIR: &str = "/usr/lib/grub/i386-pc";
/// What GRUB needs, beyond its kernel, to load Linux from the ext4 root, for both firmwares;
/// its embedded configuration does the rest, so no modules or grub.cfg live on the disk.
const GRUB_MODULES: &[&str] = &["part_msdos", "ext2", "linux", "boot"];

/// The root's init: prints the files provisioning left, then powers off.
fn installed_init(files: &[&str]) -> String {
    let mut script = String::from("#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n");
    script.push_str(&format!("echo '{INSTALLED_BANNER}'\n"));
    for file in files {
        script.push_str(&format!(
            "echo '== {file}'\n/bin/busybox cat '{file}' || echo '(missing)'\n"
        ));
    }
    script.push_str("echo '== end'\n/bin/busybox sync\n/bin/busybox poweroff -f\n");
    script
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

/// The raw disk image, built in `work` (removed afterwards). `show` are the files the
/// installed system prints at boot.
fn raw_image(
    work: &Path,
    kernel: &DebianKernel,
    busybox_bytes: &[u8],
    show: &[&str],
) -> anyhow::Result<Vec<u8>> {
    let _ = std::fs::remove_dir_all(work);
    let root = work.join("root");
    for dir in [
        "bin", "sbin", "boot", "dev", "proc", "sys", "etc", "root", "tmp", "var/lib",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::write(root.join("bin/busybox"), busybox_bytes)?;
    std::fs::set_permissions(root.join("bin/busybox"), executable())?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    write_executable(&root.join("sbin/init"), &installed_init(show))?;
    std::fs::copy(&kernel.vmlinuz, root.join("boot/vmlinuz"))?;
    std::fs::write(root.join("boot/initrd"), initrd(kernel, busybox_bytes)?)?;

    let partition = work.join("root.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "wisp-root", "-E", "root_owner=0:0", "-d"])
        .arg(&root)
        .arg(&partition)
        .arg(format!("{}k", ROOT_BYTES / 1024)))?;

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
    // boot.img's code, then the partition table; boot.img loads the core from sector 1.
    disk[..440].copy_from_slice(&boot[..440]);
    let root_sectors = ROOT_BYTES / SECTOR;
    partition_entry(
        &mut disk[446..462],
        true,
        0x83,
        PARTITION_START,
        root_sectors,
    );
    partition_entry(
        &mut disk[462..478],
        false,
        0xef,
        PARTITION_START + root_sectors,
        ESP_BYTES / SECTOR,
    );
    disk[510] = 0x55;
    disk[511] = 0xaa;
    disk[SECTOR as usize..SECTOR as usize + core.len()].copy_from_slice(&core);
    disk.extend_from_slice(&std::fs::read(&partition)?);
    disk.extend_from_slice(&std::fs::read(&esp)?);
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
/// returns its path. `show` are the files the installed system prints at boot.
pub fn build_gzip(
    out: &Path,
    kernel: &DebianKernel,
    busybox: &Path,
    show: &[&str],
) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let busybox =
        std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let disk = raw_image(&out.with_extension("d"), kernel, &busybox, show)?;
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
