//! Zero-touch provisioning: applying resources is all it takes. A powered-off VM with a blank
//! NVMe disk has a BMC (OpenIPMI's ipmi_sim, whose chassis control starts and stops the VM).
//! The Tinkerbell example resources are applied with a Secret, a Machine, `bmcRef` on the
//! Hardware (netboot off) and `bootOptions` on the Workflow; Wisp turns netboot on, powers the
//! VM on through IPMI with a one-time PXE boot, the VM netboots through the XDP gate into the
//! provisioning OS and installs the image, and Wisp turns netboot off and power-cycles the VM,
//! which boots its installed disk.
use std::time::Duration;

use serde_json::Value;
use wisp_images::{
    disk::INSTALLED_BANNER,
    ipmi_sim::zero_touch_example,
    qemu::{command_line, BootFirst},
};
use wisp_tests::{
    apply_ok,
    bmc::{ipmi_sim, Chassis},
    eventually_within, require_root,
    vm::{Firmware, InstallLab, Vm},
    wisp_ok, BRIDGE_IF,
};

const MAC: &str = "1c:69:7a:11:22:33";
const PASSWORD: &str = "ipmi-Passw0rd";

#[test]
fn a_powered_off_bios_machine_is_switched_on_through_ipmi_provisioned_and_left_on_its_disk() {
    require_root!();
    zero_touch(Firmware::Bios);
}

#[test]
fn a_powered_off_uefi_machine_is_switched_on_through_ipmi_provisioned_and_left_on_its_disk() {
    require_root!();
    zero_touch(Firmware::Uefi);
}

fn zero_touch(firmware: Firmware) {
    let purpose = match firmware {
        Firmware::Bios => "zt-bios",
        Firmware::Uefi => "zt-uefi",
    };
    let install = InstallLab::new(purpose);
    let (lab, work, disk) = (&install.lab, &install.work, &install.disk);
    let daemon = install.start_wisp(&["--bmc-poll-interval", "2s"]);
    // The VM's tap is on the lab bridge; its BMC listens on the server namespace's loopback.
    for args in [
        vec!["tuntap", "add", "dev", "tap0", "mode", "tap"],
        vec!["link", "set", "tap0", "master", BRIDGE_IF, "up"],
    ] {
        lab.server.exec_ok("ip", &args);
    }
    let qemu = |first| {
        command_line("tap0", MAC, firmware, &work.0, disk, first).expect("QEMU's arguments")
    };
    let bmc = ipmi_sim(
        &lab.server,
        work,
        ("127.0.0.1", 6230),
        PASSWORD,
        Chassis::Vm {
            network_first: qemu(BootFirst::Network),
            disk_first: qemu(BootFirst::Disk),
        },
    );
    let console = Vm::watching(work.join("tap0-serial.log"));
    assert!(
        console.serial_output().is_empty(),
        "the VM starts powered off"
    );

    // The example, with the BMC parts a Tinkerbell user adds for zero-touch.
    let resources = zero_touch_example(&install.resources, ("127.0.0.1", 6230), PASSWORD)
        .expect("the zero-touch resources");
    apply_ok(&lab.server, &resources);

    let installed = console.wait_for_serial_unless(
        "== end",
        &["the workflow did not succeed", "Kernel panic"],
        Duration::from_secs(600),
    );
    let text = console.serial_output().replace("\r\n", "\n");
    installed.unwrap_or_else(|err| {
        panic!(
            "{err}\n--- BMC calls ---\n{}\n--- wisp log ---\n{}",
            bmc.calls(),
            daemon.log()
        )
    });
    let booted = text
        .find(INSTALLED_BANNER)
        .unwrap_or_else(|| panic!("the installed system did not boot:\n{text}"));
    assert!(text[..booted].contains("Wisp provisioning OS"), "{text}");

    let get = |kind: &str, name: &str| -> Value {
        serde_json::from_str(&wisp_ok(
            &lab.server,
            &["get", kind, name, "-n", "tink-system", "-o", "json"],
        ))
        .expect("JSON")
    };
    let mut workflow = Value::Null;
    eventually_within(
        "the post-install power cycle is done",
        Duration::from_secs(120),
        || {
            workflow = get("workflow", "demo-wf");
            workflow["status"]["conditions"]
                .as_array()
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c["type"] == "PostBootJobComplete")
                })
        },
    );
    assert_eq!(workflow["status"]["state"], "SUCCESS", "{workflow:#}");
    for kind in [
        "AllowNetbootTrue",
        "BootJobComplete",
        "AllowNetbootFalse",
        "PostBootJobComplete",
    ] {
        assert!(
            workflow["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True")),
            "{kind}: {workflow:#}"
        );
    }
    let hardware = get("hardware", "nuc-demo");
    assert_eq!(
        hardware["spec"]["interfaces"][0]["netboot"]["allowPXE"],
        false
    );
    // Wisp switched the VM on (IPMI's `chassis power on` through ipmi_sim), with a PXE boot first.
    let calls = bmc.calls();
    let pxe = calls.find("set boot pxe").expect("a PXE boot was set");
    assert!(calls[pxe..].contains("set power 1"), "{calls}");
}
