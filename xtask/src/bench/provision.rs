//! Time to a provisioned machine: a QEMU VM with real firmware and a blank NVMe disk powers on
//! and is provisioned through Wisp, as in the demo and `tests/tests/provision.rs`. It takes its
//! lease, iPXE over TFTP, the script, the provisioning OS over HTTP, and runs the Tinkerbell
//! example's workflow: image2disk streams a Debian image to the disk, cexec grows its root,
//! writefile writes the netplan file. A last action leaves for the installed system: `reboot`
//! through the firmware (BIOS), or `kexec` (UEFI), as in the provisioning test.
//!
//! Each stage ends when its mark first shows in Wisp's log or on the VM's serial console, both
//! read every 50 ms from the moment QEMU starts (power-on). QEMU runs under TCG here (KVM is not
//! usable for firmware), so firmware and kernels run several times slower than on hardware.
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use wisp_images::{
    disk::{self, KEXEC_ACTION, REBOOT_ACTION},
    qemu::{Firmware, Vm},
};

use super::{report::Table, Settings};
use crate::demo::{self, Prepared};

/// The Tinkerbell example's Hardware.
const MAC: &str = "1c:69:7a:11:22:33";
/// How long a whole provisioning may take under TCG before the run fails.
const LIMIT: Duration = Duration::from_secs(420);

/// A machine the scenario provisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    Bios,
    Uefi,
    /// BIOS with `--answer-router-solicitations false`: iPXE waits for IPv6 as it did before.
    BiosWaitingForIpv6,
}

impl Machine {
    fn label(self) -> &'static str {
        match self {
            Machine::Bios => "BIOS",
            Machine::Uefi => "UEFI",
            Machine::BiosWaitingForIpv6 => "BIOS, router solicitations unanswered",
        }
    }

    fn firmware(self) -> Firmware {
        match self {
            Machine::Uefi => Firmware::Uefi,
            Machine::Bios | Machine::BiosWaitingForIpv6 => Firmware::Bios,
        }
    }
}

/// Where a stage's mark shows.
#[derive(Clone, Copy)]
enum Source {
    Log,
    Serial,
}

/// A stage ends at the `occurrence`-th line of `source` that holds every one of `parts`.
struct Mark {
    stage: &'static str,
    source: Source,
    parts: &'static [&'static str],
    occurrence: usize,
}

const fn mark(
    stage: &'static str,
    source: Source,
    parts: &'static [&'static str],
    occurrence: usize,
) -> Mark {
    Mark {
        stage,
        source,
        parts,
        occurrence,
    }
}

/// The stages, in the order they happen. The workflow has four actions, the last of which
/// leaves the provisioning OS.
const MARKS: [Mark; 8] = [
    mark("the firmware's lease", Source::Log, &["DHCP reply"], 1),
    mark("iPXE over TFTP", Source::Log, &["TFTP read request"], 1),
    mark("iPXE's script", Source::Log, &["iPXE script served"], 1),
    mark(
        "the provisioning OS started",
        Source::Serial,
        &["Wisp provisioning OS"],
        1,
    ),
    mark(
        "the first action handed out",
        Source::Log,
        &["action handed out"],
        1,
    ),
    mark(
        "the image on the disk",
        Source::Log,
        &["action reported", "state=SUCCESS"],
        1,
    ),
    mark(
        "workflow SUCCESS",
        Source::Log,
        &["action reported", "state=SUCCESS"],
        4,
    ),
    mark(
        "the installed OS booted",
        Source::Serial,
        &[disk::INSTALLED_BANNER],
        1,
    ),
];

/// Whether `text` has an `occurrence`-th line that holds every one of `parts`.
fn found(text: &str, parts: &[&str], occurrence: usize) -> bool {
    text.lines()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .nth(occurrence - 1)
        .is_some()
}

pub fn run(settings: &Settings) -> anyhow::Result<Table> {
    let prepared = demo::prepare_with(&settings.wisp, &settings.root, "wisp-bench-provision")?;
    let mut table = Table::new(
        "Time to a provisioned machine",
        "A QEMU VM (TCG, 512 MiB) with real firmware and a blank 1 GiB NVMe disk powers on and is \
         provisioned through Wisp: its lease, iPXE over TFTP, the script, the provisioning OS \
         over HTTP, the Tinkerbell example's workflow (image2disk streams a Debian image to the \
         disk, cexec grows its root, writefile), and a last action into the installed system: \
         `reboot` through the firmware on BIOS, `kexec` on UEFI. Each stage ends when its mark \
         first shows in Wisp's log or on the serial console; seconds from power-on, and the \
         stage's own. The third machine is BIOS with Wisp's router advertisements off: stock \
         iPXE waits for IPv6 autoconfiguration at each of its two DHCPs, as before Wisp \
         answered. One run of each.",
        &["from power-on s", "stage s"],
    );
    for &machine in &settings.provision_machines {
        println!("  {}", machine.label());
        let marks = provision(&prepared, machine)?;
        let mut previous = 0.0;
        for (mark, at) in MARKS.iter().zip(marks) {
            println!("    {}: {at:.1} s", mark.stage);
            table.record(mark.stage, machine.label(), "from power-on s", at);
            table.record(mark.stage, machine.label(), "stage s", at - previous);
            previous = at;
        }
    }
    Ok(table)
}

/// Provisions one VM; the seconds from power-on to each of [`MARKS`].
fn provision(prepared: &Prepared, machine: Machine) -> anyhow::Result<Vec<f64>> {
    let _lab = demo::Lab::create(&[])?;
    let extra: &[&str] = match machine {
        Machine::BiosWaitingForIpv6 => &["--answer-router-solicitations", "false"],
        Machine::Bios | Machine::Uefi => &[],
    };
    // Each machine has a Wisp of its own, with nothing stored from the machine before.
    let name = machine.label().replace([' ', ','], "-");
    let work = prepared.work.join(&name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let data = format!("{name}/data");
    let (_daemon, log) = demo::start_wisp(prepared, demo::LAB, "br0", &data, extra)?;

    let last_action = match machine.firmware() {
        Firmware::Bios => REBOOT_ACTION,
        Firmware::Uefi => KEXEC_ACTION,
    };
    let resources = work.join("provision.yaml");
    std::fs::write(
        &resources,
        disk::ending_with(&prepared.adapted, last_action),
    )?;
    demo::cli(
        prepared,
        demo::LAB,
        &data,
        &["apply", "-f", resources.to_str().context("UTF-8 path")?],
    )?;
    let disk = work.join("nvme.raw");
    std::fs::File::create(&disk)?.set_len(disk::BLANK_DISK_BYTES)?;

    let started = Instant::now();
    let vm = Vm::start(
        demo::LAB,
        "br0",
        "tap0",
        MAC,
        machine.firmware(),
        &work,
        Some(&disk),
    )?;
    let mut marks = Vec::with_capacity(MARKS.len());
    while let Some(next) = MARKS.get(marks.len()) {
        let text = match next.source {
            Source::Log => std::fs::read_to_string(&log).unwrap_or_default(),
            Source::Serial => vm.serial_output(),
        };
        if found(&text, next.parts, next.occurrence) {
            marks.push(started.elapsed().as_secs_f64());
            continue;
        }
        if started.elapsed() > LIMIT {
            bail!(
                "{} never came within {} s ({}); the console:\n{}",
                next.stage,
                LIMIT.as_secs(),
                machine.label(),
                vm.serial_output()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(marks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_the_nth_line_with_every_part() {
        let log = "action reported state=RUNNING\naction reported state=SUCCESS\n\
                   other state=SUCCESS\naction reported state=SUCCESS\n";
        let parts = &["action reported", "state=SUCCESS"];
        assert!(found(log, parts, 1));
        assert!(found(log, parts, 2));
        assert!(!found(log, parts, 3));
    }
}
