//! Real VMs for the lab: QEMU under TCG (KVM is not usable for firmware here) with real firmware,
//! SeaBIOS and its iPXE option ROM or OVMF, on a tap in a lab bridge, with the serial console
//! in a file. The tests and the demo both boot machines through Wisp with it.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// Which firmware the VM runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, netbooting with the NIC's iPXE option ROM.
    Bios,
    /// OVMF with its own PXE (the NIC's option ROM is disabled, as on real UEFI hardware).
    Uefi,
}

/// A QEMU VM in a network namespace, killed on drop.
pub struct Vm {
    child: Option<Child>,
    pub serial: PathBuf,
}

/// `program`, run in the network namespace `netns`.
pub(crate) fn in_netns(netns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, program]);
    command
}

impl Vm {
    /// Starts a VM whose NIC has `mac`, on a new tap `tap` enslaved to `bridge` in `netns`.
    pub fn start(
        netns: &str,
        bridge: &str,
        tap: &str,
        mac: &str,
        firmware: Firmware,
        workdir: &Path,
        disk: Option<&Path>,
    ) -> anyhow::Result<Vm> {
        let args = firmware_args(tap, mac, firmware, workdir, disk, BootFirst::Network)?;
        Vm::launch(netns, bridge, tap, workdir, "512", args)
    }

    /// Boots `kernel` and `initramfs` directly (no firmware, no netboot) with `append` as the
    /// command line, a NIC with `mac`, and `disk` as a virtio disk (`/dev/vda`) opened with the
    /// host's cache off (O_DIRECT), so that a write the guest saw complete is in the file even
    /// when QEMU is killed.
    #[allow(clippy::too_many_arguments)]
    pub fn direct(
        netns: &str,
        bridge: &str,
        tap: &str,
        mac: &str,
        workdir: &Path,
        (kernel, initramfs, append): (&Path, &Path, &str),
        disk: &Path,
    ) -> anyhow::Result<Vm> {
        let args = vec![
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initramfs.display().to_string(),
            "-append".into(),
            append.into(),
            "-drive".into(),
            format!(
                "file={},if=none,id=data,format=raw,cache=none",
                disk.display()
            ),
            "-device".into(),
            "virtio-blk-pci,drive=data".into(),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={mac},romfile="),
        ];
        Vm::launch(netns, bridge, tap, workdir, "1024", args)
    }

    /// Creates the tap, then runs QEMU with `args` and the parts every lab VM shares.
    fn launch(
        netns: &str,
        bridge: &str,
        tap: &str,
        workdir: &Path,
        memory_mib: &str,
        args: Vec<String>,
    ) -> anyhow::Result<Vm> {
        for tap_args in [
            vec!["tuntap", "add", "dev", tap, "mode", "tap"],
            vec!["link", "set", tap, "master", bridge, "up"],
        ] {
            let status = in_netns(netns, "ip").args(&tap_args).status()?;
            if !status.success() {
                bail!("ip {} failed in {netns}", tap_args.join(" "));
            }
        }
        let serial = workdir.join(format!("{tap}-serial.log"));
        let child = in_netns(netns, "qemu-system-x86_64")
            .args(common_args(tap, memory_mib, &serial))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                workdir.join(format!("{tap}-qemu.log")),
            )?)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        Ok(Vm {
            child: Some(child),
            serial,
        })
    }

    /// Kills QEMU at once, as pulling the plug would stop the machine, and removes its tap.
    pub fn pull_the_plug(mut self, netns: &str, tap: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = in_netns(netns, "ip").args(["link", "del", tap]).status();
    }

    /// The console of a VM that another program runs (a simulated BMC): only watched.
    pub fn watching(serial: PathBuf) -> Vm {
        Vm {
            child: None,
            serial,
        }
    }

    pub fn serial_output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the serial console shows `text`; on time-out the error holds the console.
    pub fn wait_for_serial(&self, text: &str, limit: Duration) -> anyhow::Result<()> {
        self.wait_for_serial_unless(text, &[], limit)
    }

    /// As [`Vm::wait_for_serial`], but gives up as soon as one of `failures` shows.
    pub fn wait_for_serial_unless(
        &self,
        text: &str,
        failures: &[&str],
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let output = self.serial_output();
            if output.contains(text) {
                return Ok(());
            }
            if let Some(failure) = failures.iter().find(|failure| output.contains(**failure)) {
                bail!("{failure:?} appeared on the serial console:\n{output}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "{text:?} did not appear on the serial console within {limit:?}:\n{}",
            self.serial_output()
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Which device a VM boots first, the other one second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootFirst {
    Network,
    Disk,
}

/// The firmware, NIC and disk arguments of a lab VM.
fn firmware_args(
    tap: &str,
    mac: &str,
    firmware: Firmware,
    workdir: &Path,
    disk: Option<&Path>,
    first: BootFirst,
) -> anyhow::Result<Vec<String>> {
    let (nic_index, disk_index) = match first {
        BootFirst::Network => (1, 2),
        BootFirst::Disk => (2, 1),
    };
    let mut args: Vec<String> = Vec::new();
    match disk {
        // An NVMe disk (`/dev/nvme0n1`); the VM may reboot, from the network into what was
        // installed.
        Some(disk) => args.extend([
            "-drive".into(),
            format!("file={},if=none,id=disk0,format=raw", disk.display()),
            "-device".into(),
            format!("nvme,drive=disk0,serial=wisp-disk0,bootindex={disk_index}"),
        ]),
        // Without a disk a reboot could only netboot again: end the VM instead.
        None => args.push("-no-reboot".into()),
    }
    match firmware {
        Firmware::Bios => {
            // SeaBIOS and iPXE write to the serial port only when told to.
            let sercon = workdir.join("sercon-port");
            std::fs::write(&sercon, [0xf8, 0x03])?;
            args.extend([
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac={mac},bootindex={nic_index}"),
                "-fw_cfg".into(),
                format!("name=etc/sercon-port,file={}", sercon.display()),
            ]);
        }
        Firmware::Uefi => {
            // The variable store is the machine's NVRAM: made once, kept across power cycles.
            let vars = workdir.join(format!("{tap}-OVMF_VARS.fd"));
            if !vars.exists() {
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                    .context("copying the OVMF variable store")?;
            }
            args.extend([
                "-drive".into(),
                "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                "-drive".into(),
                format!("if=pflash,format=raw,file={}", vars.display()),
                // An empty romfile makes OVMF use its own PXE, like real UEFI firmware.
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac={mac},bootindex={nic_index},romfile="),
                "-fw_cfg".into(),
                "name=opt/org.tianocore/IPv6PXESupport,string=no".into(),
            ]);
        }
    }
    Ok(args)
}

/// The whole QEMU command line of a lab VM with `disk`, booting `first` from the NIC or the disk,
/// for a simulated BMC that starts the VM itself (its serial console goes to `tap`-serial.log in
/// `workdir`, appended to across power cycles).
pub fn command_line(
    tap: &str,
    mac: &str,
    firmware: Firmware,
    workdir: &Path,
    disk: &Path,
    first: BootFirst,
) -> anyhow::Result<Vec<String>> {
    let mut args = common_args(tap, "512", &workdir.join(format!("{tap}-serial.log")));
    args.extend(firmware_args(
        tap,
        mac,
        firmware,
        workdir,
        Some(disk),
        first,
    )?);
    Ok(args)
}

/// What every lab VM's QEMU gets: TCG, its memory, no display, the serial console appended to
/// `serial`, and the tap as its network.
fn common_args(tap: &str, memory_mib: &str, serial: &Path) -> Vec<String> {
    [
        "-machine",
        "q35,accel=tcg",
        "-m",
        memory_mib,
        "-display",
        "none",
        "-monitor",
        "none",
        "-chardev",
        &format!("file,id=serial0,path={},append=on", serial.display()),
        "-serial",
        "chardev:serial0",
        "-netdev",
        &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
    ]
    .map(String::from)
    .to_vec()
}
