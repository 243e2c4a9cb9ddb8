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

/// A machine `vm` (namespace `lab`) that netboots at `address` and has a workflow with no
/// actions: its boot ends in the payload of [`marker_assets`].
pub fn netboot_machine_yaml(mac: &str, address: &str) -> String {
    format!(
        "apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata:
  name: vm
  namespace: lab
spec:
  interfaces:
    - dhcp:
        mac: {mac}
        hostname: vm
        ip:
          address: {address}
          netmask: 255.255.255.0
        lease_time: 600
      netboot:
        allowPXE: true
        allowWorkflow: true
---
apiVersion: tinkerbell.org/v1alpha1
kind: Template
metadata:
  name: noop
  namespace: lab
spec:
  data: |
    version: \"0.1\"
    name: noop
    tasks: []
---
apiVersion: tinkerbell.org/v1alpha1
kind: Workflow
metadata:
  name: boot-vm
  namespace: lab
spec:
  templateRef: noop
  hardwareRef: vm
"
    )
}

/// Copies the provisioning OS that `cargo xtask images` built into `assets`.
pub fn provisioning_os_assets(assets: &Path) {
    let built = crate::repo_root().join("target/provisioning-os");
    std::fs::create_dir_all(assets).expect("create the assets directory");
    for name in ["vmlinuz", "initramfs"] {
        let source = built.join(name);
        assert!(
            source.exists(),
            "{} is missing: run `cargo xtask images` (`cargo xtask test` does)",
            source.display()
        );
        std::fs::copy(&source, assets.join(name)).expect("copy the provisioning OS");
    }
}

/// The Debian root the end-to-end tests install and the container test imports (see
/// `wisp_images::debian`), bootstrapped once into the image cache.
pub fn debian_root() -> std::path::PathBuf {
    static BOOTSTRAPPING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BOOTSTRAPPING.lock().unwrap_or_else(|p| p.into_inner());
    wisp_images::debian::root(&crate::repo_root().join("target/images-cache"))
        .expect("bootstrap the Debian root")
}

/// Builds the OS image the end-to-end tests install (see `wisp_images::disk`), gzip-compressed,
/// at `path`.
pub fn installable_image(path: &Path) {
    static UNPACKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let debian = debian_root();
    let kernel = {
        let _one_at_a_time = UNPACKING.lock().unwrap_or_else(|p| p.into_inner());
        wisp_images::kernel::debian_kernel(&crate::repo_root().join("target/images-cache"))
            .expect("unpack Debian's kernel")
    };
    wisp_images::disk::build_gzip(path, &debian, &kernel, Path::new("/bin/busybox"))
        .expect("build the installable image");
}

/// The image URL the Tinkerbell example is pointed at in the end-to-end tests.
pub const INSTALL_IMAGE_URL: &str = "http://192.168.1.1:8080/assets/wisp-test-os.raw.gz";

/// The lab of the end-to-end installs: the Tinkerbell example's network (a bridge with Wisp at
/// 192.168.1.1/24), the provisioning OS and the installable image in `assets`, a blank
/// `wisp_images::disk::BLANK_DISK_BYTES` disk, and the example resources adapted to install that image.
pub struct InstallLab {
    pub lab: crate::Lab,
    pub work: crate::TempDir,
    pub assets: std::path::PathBuf,
    pub disk: std::path::PathBuf,
    pub resources: String,
}

impl InstallLab {
    pub fn new(purpose: &str) -> InstallLab {
        let lab = crate::Lab::bridged_at(purpose, "192.168.1.1/24");
        let work = crate::TempDir::new(purpose);
        let assets = work.join("assets");
        provisioning_os_assets(&assets);
        installable_image(&assets.join("wisp-test-os.raw.gz"));
        let disk = work.join("nvme.raw");
        std::fs::File::create(&disk)
            .and_then(|file| file.set_len(wisp_images::disk::BLANK_DISK_BYTES))
            .expect("create the blank disk");
        let resources = wisp_images::disk::adapted_tinkerbell_example(
            &crate::repo_root().join("examples/tinkerbell-demo"),
            INSTALL_IMAGE_URL,
        )
        .expect("the example resources");
        InstallLab {
            lab,
            work,
            assets,
            disk,
            resources,
        }
    }

    /// `wisp serve` on the bridge, serving `assets`, with `extra` flags.
    pub fn start_wisp(&self, extra: &[&str]) -> crate::Daemon {
        let mut args = vec!["--assets-dir", self.assets.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        crate::Daemon::start(
            &self.lab.server,
            crate::BRIDGE_IF,
            &self.work.join("data"),
            &args,
        )
    }
}

/// Checks what the installed system printed on the serial `console` once it booted from its
/// disk: its root filesystem grown to the disk's end by the example's grow-partition, and
/// writefile's netplan file for `mac`. Returns the console from that boot on.
pub fn assert_installed<'a>(console: &'a str, mac: &str) -> &'a str {
    use wisp_images::disk::{
        root_bytes, BLANK_DISK_BYTES, INSTALLED_BANNER, NETPLAN, ROOT_SIZE_LINE,
    };
    let booted = console
        .find(INSTALLED_BANNER)
        .unwrap_or_else(|| panic!("the installed system did not boot:\n{console}"));
    let from_disk = &console[booted..];
    let root_size: u64 = from_disk
        .split_once(&format!("{ROOT_SIZE_LINE}\n"))
        .and_then(|(_, rest)| rest.lines().next())
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("the installed system printed no root size:\n{from_disk}"));
    let imaged = root_bytes(&debian_root()).expect("the image's root partition size");
    assert!(
        root_size > imaged + (BLANK_DISK_BYTES - imaged) / 2,
        "the root filesystem ({root_size} bytes) did not grow from the image's {imaged}:\n{from_disk}"
    );
    assert!(
        from_disk.contains(&format!("== {NETPLAN}\nnetwork:"))
            && from_disk.contains(&format!("macaddress: {mac}")),
        "writefile's netplan file:\n{from_disk}"
    );
    from_disk
}
