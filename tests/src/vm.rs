//! Real VMs for the boot tests: QEMU under TCG with real firmware (SeaBIOS and its iPXE option
//! ROM, or OVMF), on a tap in a lab bridge, with the serial console in a file.
use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::Netns;

/// The marker the test initramfs prints on the serial console.
pub const MARKER: &str = "WISP-TEST-MARKER: the netbooted initramfs is running";

/// Builds (once per directory) the boot assets for the tests: Debian's kernel and an
/// initramfs of busybox whose init prints [`MARKER`] and powers off.
pub fn marker_assets(assets: &Path) -> anyhow::Result<()> {
    let cache = crate::repo_root().join("target/images-cache");
    let kernel = wisp_images::kernel::debian_kernel(&cache)?;
    std::fs::create_dir_all(assets)?;
    std::fs::copy(&kernel.vmlinuz, assets.join("vmlinuz"))?;
    let busybox = std::fs::read("/bin/busybox")?;
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\n/bin/busybox echo '{MARKER}' > /dev/ttyS0\n/bin/busybox poweroff -f\n"
    );
    let mut archive = wisp_images::cpio::Archive::default();
    archive
        .directory("bin")
        .directory("dev")
        .char_device("dev/console", 5, 1)
        .file("bin/busybox", 0o755, &busybox)
        .file("init", 0o755, init.as_bytes());
    std::fs::write(assets.join("initramfs"), archive.finish()?)?;
    Ok(())
}

/// Which firmware the VM runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, netbooting with the NIC's iPXE option ROM.
    Bios,
    /// OVMF with its own PXE (the NIC's option ROM is disabled, as on real UEFI hardware).
    Uefi,
}

/// A QEMU VM in a namespace, killed on drop.
pub struct Vm {
    child: Option<Child>,
    pub serial: PathBuf,
}

impl Vm {
    /// Starts a VM whose NIC has `mac`, on a new tap `tap` enslaved to `bridge` in `netns`.
    pub fn start(
        netns: &Netns,
        bridge: &str,
        tap: &str,
        mac: &str,
        firmware: Firmware,
        workdir: &Path,
    ) -> Vm {
        netns.exec_ok("ip", &["tuntap", "add", "dev", tap, "mode", "tap"]);
        netns.exec_ok("ip", &["link", "set", tap, "master", bridge, "up"]);
        let serial = workdir.join(format!("{tap}-serial.log"));
        let mut args: Vec<String> = vec![
            "-machine".into(),
            "q35,accel=tcg".into(),
            "-m".into(),
            "512".into(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", serial.display()),
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        ];
        match firmware {
            Firmware::Bios => {
                // SeaBIOS and iPXE write to the serial port only when told to.
                let sercon = workdir.join("sercon-port");
                std::fs::write(&sercon, [0xf8, 0x03]).expect("write the sercon file");
                args.extend([
                    "-device".into(),
                    format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"),
                    "-fw_cfg".into(),
                    format!("name=etc/sercon-port,file={}", sercon.display()),
                ]);
            }
            Firmware::Uefi => {
                let vars = workdir.join(format!("{tap}-OVMF_VARS.fd"));
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                    .expect("copy the OVMF variable store");
                args.extend([
                    "-drive".into(),
                    "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                    "-drive".into(),
                    format!("if=pflash,format=raw,file={}", vars.display()),
                    // An empty romfile makes OVMF use its own PXE, like real UEFI firmware.
                    "-device".into(),
                    format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1,romfile="),
                    "-fw_cfg".into(),
                    "name=opt/org.tianocore/IPv6PXESupport,string=no".into(),
                ]);
            }
        }
        let child = netns
            .command("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(workdir.join(format!("{tap}-qemu.log")))
                    .expect("create the QEMU log"),
            )
            .spawn()
            .expect("start qemu-system-x86_64");
        Vm {
            child: Some(child),
            serial,
        }
    }

    pub fn serial_output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the serial console shows `text`, failing with the console after `limit`.
    pub fn wait_for_serial(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.serial_output().contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "{text:?} did not appear on the serial console within {limit:?}:\n{}",
            self.serial_output()
        );
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
