//! The whole story, end to end: a QEMU VM with a blank NVMe disk and the MAC of the Tinkerbell
//! example Hardware netboots through Wisp (XDP gate attached) into Wisp's provisioning OS,
//! whose worker runs the example workflow's three actions unchanged: image2disk streams a real
//! Debian image onto the disk, cexec grows its root partition and filesystem to the disk's end
//! in a chroot of it (`growpart`, then `resize2fs` online), writefile writes the netplan file.
//! The VM reboots, Wisp has no more work for it, and it boots the installed system from its
//! disk, which prints the netplan file and its root filesystem's size on the serial console.
//!
//! The workflow ends with one more action, which leaves the provisioning OS: on BIOS, `reboot`
//! (through the firmware, which netboots, finds no work and goes to the disk); on UEFI, `kexec`
//! straight into the installed system's kernel, with no firmware in between.
//!
//! A third run boots the provisioning OS as a Tinkerbell user's Smee-style script in
//! `ipxe.contents` would, with Tinkerbell's kernel parameters only (`hw_addr`, `worker_id`,
//! `grpc_authority`, no token), and Wisp trusting the machine's address, as Tinkerbell does.
use std::time::Duration;

use wisp_images::disk::{ending_with, KEXEC_ACTION, REBOOT_ACTION};
use wisp_tests::{
    apply_ok, gate_stats, require_root,
    vm::{assert_installed, Firmware, InstallLab, Vm},
    BRIDGE_IF,
};

const MAC: &str = "1c:69:7a:11:22:33";

#[test]
fn a_blank_nvme_bios_machine_is_provisioned_and_boots_the_installed_system() {
    require_root!();
    provision(Firmware::Bios, Script::Wisp);
}

#[test]
fn a_blank_nvme_uefi_machine_is_provisioned_and_boots_the_installed_system() {
    require_root!();
    provision(Firmware::Uefi, Script::Wisp);
}

/// The iPXE script a Tinkerbell user's Hardware carries in `ipxe.contents`, as Smee's HookOS
/// script writes it (Wisp's kernel and initramfs names in place of HookOS's), with Tinkerbell's
/// kernel parameters and none of Wisp's: no `wisp.mac`, no token.
const SMEE_STYLE_SCRIPT: &str = "echo Loading the Tinkerbell Hook iPXE script...
set arch x86_64
set download-url http://192.168.1.1:8080/assets
set kernel vmlinuz
set initrd initramfs
kernel ${download-url}/${kernel} facility=onprem syslog_host= grpc_authority=192.168.1.1:42113 tinkerbell_tls=false tinkerbell_insecure_tls=false worker_id=1c:69:7a:11:22:33 hw_addr=1c:69:7a:11:22:33 modules=loop,squashfs,sd-mod,usb-storage initrd=${initrd} console=tty0 console=ttyS0,115200
initrd ${download-url}/${initrd}
boot
";

#[test]
fn the_provisioning_os_runs_the_workflow_when_booted_with_tinkerbells_parameters_only() {
    require_root!();
    provision(Firmware::Bios, Script::SmeeStyle);
}

/// The script the machine boots the provisioning OS with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Wisp's own, with its parameters and the boot's token.
    Wisp,
    /// [`SMEE_STYLE_SCRIPT`], in the Hardware's `ipxe.contents`; with no token, Wisp identifies
    /// the machine by its reserved address, as Tinkerbell does.
    SmeeStyle,
}

fn provision(firmware: Firmware, script: Script) {
    let purpose = match (firmware, script) {
        (Firmware::Bios, Script::Wisp) => "e2e-bios",
        (Firmware::Uefi, Script::Wisp) => "e2e-uefi",
        (_, Script::SmeeStyle) => "e2e-smee",
    };
    // The example resources live on 192.168.1.0/24 with Wisp at 192.168.1.1; the foundation
    // issue's three resources, with its two changes (see `adapted_tinkerbell_example`).
    let install = InstallLab::new(purpose);
    let (lab, work, disk) = (&install.lab, &install.work, &install.disk);
    let mut resources = install.resources.clone();
    let daemon = match script {
        Script::Wisp => install.start_wisp(&[]),
        Script::SmeeStyle => {
            let allow = "        allowWorkflow: true\n";
            assert!(resources.contains(allow), "the Hardware's netboot block");
            let contents: String = SMEE_STYLE_SCRIPT
                .lines()
                .map(|line| format!("            {line}\n"))
                .collect();
            resources = resources.replacen(
                allow,
                &format!("{allow}        ipxe:\n          contents: |\n{contents}"),
                1,
            );
            install.start_wisp(&["--machine-identity", "address"])
        }
    };
    // The custom script boots the provisioning OS again at every netboot, as Smee's does: that
    // machine leaves it through kexec, with no firmware in between.
    let reboots = firmware == Firmware::Bios && script == Script::Wisp;
    let (last_action, last_message) = match reboots {
        true => (REBOOT_ACTION, "rebooting"),
        false => (KEXEC_ACTION, "kexec into the installed kernel"),
    };
    apply_ok(&lab.server, &ending_with(&resources, last_action));

    let vm = Vm::start(
        &lab.server.name,
        BRIDGE_IF,
        "tap0",
        MAC,
        firmware,
        &work.0,
        Some(disk),
    )
    .expect("start the VM");
    let installed = vm.wait_for_serial_unless(
        "== end",
        &["the workflow did not succeed", "Kernel panic"],
        Duration::from_secs(420),
    );
    // The serial console ends lines with CR LF.
    let console = vm.serial_output().replace("\r\n", "\n");
    installed.unwrap_or_else(|err| panic!("{err}\n--- wisp log ---\n{}", daemon.log()));

    // The provisioning OS ran the workflow, then the installed system printed both files:
    // the example's grow-partition (growpart, then resize2fs on the mounted root) grew the
    // root filesystem from the image's partition to the disk's end.
    let from_disk = assert_installed(&console, MAC);
    // The last action left the provisioning OS, not its init after the worker exited.
    let before_disk = &console[..console.len() - from_disk.len()];
    assert!(
        !before_disk.contains("Wisp: workflow complete; rebooting"),
        "{console}"
    );

    let workflow = wisp_tests::workflow_json(&lab.server, "tink-system", "demo-wf");
    let status = &workflow["status"];
    assert_eq!(status["state"], "SUCCESS", "{workflow:#}");
    let actions = status["actions"].as_array().expect("actions");
    let names: Vec<&str> = actions.iter().filter_map(|a| a["name"].as_str()).collect();
    let last_name = last_action
        .split('"')
        .nth(1)
        .expect("the last action's name");
    assert_eq!(
        names,
        [
            "stream-ubuntu-image",
            "grow-partition",
            "write-netplan",
            last_name
        ]
    );
    for action in actions {
        assert_eq!(action["state"], "SUCCESS", "{action:#}");
        assert!(action["duration"].is_string(), "{action:#}");
    }
    assert_eq!(actions[3]["message"], last_message, "{workflow:#}");
    // After `reboot` the firmware netbooted again, found no pending work and left for the disk;
    // after `kexec` the machine never went back to the firmware.
    let log = daemon.log();
    let second_boot = log
        .lines()
        .any(|line| line.contains("iPXE script served") && line.contains("pending_work=false"));
    assert_eq!(second_boot, reboots, "{log}");
    let (counters, stats) = gate_stats(&lab.server);
    assert_eq!(stats["mode"]["kind"], "xdp", "{stats}");
    assert!(counters["passed_known"] >= 4, "{stats}");
}
