//! A rack booting at once: N simulated machines (`wisp-simulated-rack`) power on together, and
//! each does over the wire, from its own MAC and address, what a real one does: the firmware's
//! DHCP, TFTP of the iPXE binary, iPXE's DHCP, the script over HTTP, the kernel and initramfs
//! over HTTP, and then (against Wisp) its workflow over gRPC, whose first action downloads a
//! shared image over HTTP as image2disk does. Reported: each stage's time (p50, p99, max) across
//! the machines, power-on to booted and to workflow SUCCESS, and the server's peak CPU and
//! memory. The peer for the boot is dnsmasq (DHCP and TFTP) with nginx (HTTP), serving the same
//! files; it has no workflows.
use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context};
use wisp_simulated_rack::{Depth, Outcome, Rack, Stage, Workflows};

use super::{
    dhcp::hosts,
    lab::{self, Lab, Server, CLIENT, CLIENT_IF, SERVER_IP},
    report::{quantile, Table},
    workflows::machines,
    Settings,
};

/// The workflow: image2disk's download first, then four actions that take no time.
const ACTIONS: [&str; 5] = [
    "image2disk",
    "grow-partition",
    "write-config",
    "install-bootloader",
    "reboot",
];
const ASSETS: &str = "http://10.88.0.1:8080/assets";
const PEER: &str = "dnsmasq + nginx";
/// Wisp booting the rack and running its workflows; "Wisp" alone boots it, as the peer does.
const WITH_WORKFLOWS: &str = "Wisp, with workflows";

/// Writes the boot files both servers serve: `vmlinuz`, `initramfs` and the image, of the
/// sizes the settings give (their bytes do not matter: nothing runs them), and the static
/// script the peer serves.
fn write_assets(dir: &Path, settings: &Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let (kernel, initramfs, image) = settings.rack_file_bytes;
    for (name, bytes) in [
        ("vmlinuz", kernel),
        ("initramfs", initramfs),
        ("image.raw", image),
    ] {
        let pattern: Vec<u8> = (0..=255u8).cycle().take(bytes as usize).collect();
        std::fs::write(dir.join(name), pattern)?;
    }
    std::fs::write(
        dir.join("auto.ipxe"),
        format!(
            "#!ipxe\nkernel {ASSETS}/vmlinuz initrd=initrd console=ttyS0\n\
             initrd --name initrd {ASSETS}/initramfs\nboot\n"
        ),
    )?;
    Ok(())
}

/// dnsmasq as the rack's DHCP and TFTP server: the reservations, the iPXE binary to the
/// firmware and the script's URL to iPXE (its user class), and as many TFTP transfers at once
/// as there are machines (its default, 50, would fail most of a rack's firmware).
fn start_dnsmasq(lab: &Lab, work: &Path, count: u32) -> anyhow::Result<Server> {
    let tftp_root = work.join("rack-tftp");
    std::fs::create_dir_all(&tftp_root)?;
    std::fs::copy(
        "/usr/lib/ipxe/undionly.kpxe",
        tftp_root.join("undionly.kpxe"),
    )
    .context("copying Debian's iPXE (package ipxe) for dnsmasq's TFTP")?;
    let mut command = super::dhcp::dnsmasq_command(lab, work, count, "rack-dnsmasq")?;
    command
        .args([
            "--enable-tftp",
            "--dhcp-userclass=set:ipxe,iPXE",
            "--dhcp-boot=tag:!ipxe,undionly.kpxe",
        ])
        .arg(format!("--dhcp-boot=tag:ipxe,{ASSETS}/auto.ipxe"))
        .arg(format!("--tftp-max={}", count.max(50)))
        .arg(format!("--tftp-root={}", tftp_root.display()));
    Server::start("dnsmasq", command, &work.join("rack-dnsmasq.log"), || {
        lab.listening_udp(67)
    })
}

/// Runs the rack against what serves it now; returns its outcome, and the server side's peak
/// CPU (percent of one core, over one-second windows) while it ran.
fn run_rack(
    lab: &Lab,
    settings: &Settings,
    count: u32,
    workflows: &str,
) -> anyhow::Result<(Outcome, f64)> {
    // Built beside `wisp` by the same `cargo build` (this process's own binary may have been
    // replaced by that build).
    let xtask = settings.wisp.with_file_name("xtask");
    let xtask = xtask.to_str().context("UTF-8 path")?;
    lab::reset_peak_memory()?;
    let done = AtomicBool::new(false);
    let (output, peak_cpu) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0.0f64;
            let mut last = lab::server_cpu_seconds();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let now = lab::server_cpu_seconds();
                peak = peak.max((now - last) * 100.0);
                last = now;
            }
            peak
        });
        let output = lab.exec(
            CLIENT,
            xtask,
            &[
                "bench-rack",
                "--machines",
                &count.to_string(),
                "--workflows",
                workflows,
            ],
        );
        done.store(true, Ordering::Relaxed);
        (output, sampler.join().unwrap_or(0.0))
    });
    let (outcome, stderr) = super::workflows::printed_outcome(&output?)?;
    if outcome.failed_workers > 0 {
        bail!(
            "{} of {count} simulated machines failed; the first failures:\n{stderr}",
            outcome.failed_workers
        );
    }
    Ok((outcome, peak_cpu))
}

/// Each machine's time from power-on to the end of `last`: the sum of its stages up to it.
fn totals(outcome: &Outcome, last: Stage) -> Vec<f64> {
    let stages: Vec<&Vec<f64>> = Stage::ALL
        .iter()
        .filter(|stage| **stage <= last)
        .filter_map(|stage| outcome.stages.get(stage))
        .collect();
    let machines = stages.iter().map(|times| times.len()).min().unwrap_or(0);
    (0..machines)
        .map(|machine| stages.iter().map(|times| times[machine]).sum())
        .collect()
}

fn record_times(table: &mut Table, case: &str, server: &str, times: &[f64]) {
    for (column, q) in [("p50 s", 0.5), ("p99 s", 0.99), ("max s", 1.0)] {
        if let Some(value) = quantile(times, q) {
            table.record(case, server, column, value);
        }
    }
}

fn record(stages: &mut Table, whole: &mut Table, server: &str, outcome: &Outcome, peak_cpu: f64) {
    for stage in Stage::ALL {
        if let Some(times) = outcome.stages.get(&stage) {
            record_times(stages, stage.label(), server, times);
        }
        match stage {
            Stage::KernelAndInitramfs => record_times(
                stages,
                "power-on to booted",
                server,
                &totals(outcome, stage),
            ),
            Stage::Workflow if outcome.stages.contains_key(&stage) => record_times(
                stages,
                "power-on to workflow SUCCESS",
                server,
                &totals(outcome, stage),
            ),
            _ => {}
        }
    }
    let case = "whole run";
    whole.record(case, server, "seconds", outcome.seconds_from_power_on);
    whole.record(case, server, "peak CPU %", peak_cpu);
    whole.record(
        case,
        server,
        "peak MiB",
        lab::peak_memory_mib().unwrap_or(f64::NAN),
    );
    whole.record(
        case,
        server,
        "DHCP retransmissions",
        outcome.dhcp_retransmissions as f64,
    );
}

pub fn run(lab: &Lab, work: &Path, settings: &Settings) -> anyhow::Result<Vec<Table>> {
    let count = settings.rack_machines;
    let (kernel, initramfs, image) = settings.rack_file_bytes;
    let size = |bytes: u64| match bytes {
        bytes if bytes < 1 << 20 => format!("{} KiB", bytes >> 10),
        bytes => format!("{} MiB", bytes >> 20),
    };
    let mut stages = Table::new(
        "Rack boot",
        &format!(
            "{count} simulated machines power on together; each does over the wire, from its own \
             MAC and address, what a real one does: the firmware's DHCP (broadcast, retransmitted \
             after 4, 8, 16 and 32 s as PXE firmware does), TFTP of `undionly.kpxe` (block size \
             1456, one block at a time), iPXE's DHCP (retransmitted after 1, 2, 4 s...), the \
             script over HTTP, a {} kernel and a {} initramfs over HTTP, and \
             against Wisp a {}-action workflow over gRPC whose first action downloads a shared \
             {} image over HTTP, as image2disk does. Each stage's time across the \
             machines; \"power-on to\" rows are each machine's sum of stages. The peer serves the \
             boot alone: dnsmasq for DHCP and TFTP (`--tftp-max` raised to the rack's size), \
             nginx (sendfile) for HTTP; \"Wisp\" boots the rack alone too, and \"{WITH_WORKFLOWS}\" \
             also runs every machine's workflow as soon as it has booted, as a real rack does. \
             Every server runs on one core. The ratio compares p99s.",
            size(kernel),
            size(initramfs),
            ACTIONS.len(),
            size(image),
        ),
        &["p50 s", "p99 s", "max s"],
    );
    stages.ratio_of = Some(("p99 s".into(), false));
    let mut whole = Table::new(
        "Rack boot: the server",
        &format!(
            "The same runs: from power-on until the last machine's end (workflow SUCCESS for \
             Wisp, its initramfs for the peer), the server side's peak CPU (percent of one core, \
             over one-second windows, every process of the server) and peak resident memory, and \
             the DHCP messages the {count} machines had to send again."
        ),
        &["seconds", "peak CPU %", "peak MiB", "DHCP retransmissions"],
    );

    let assets = work.join("rack-assets");
    write_assets(&assets, settings)?;
    let _addresses = lab.machine_addresses(hosts(count).map(|(_, address)| address))?;
    let manifests = wisp_simulated_rack::manifests(
        "rack",
        &machines(count)?,
        "255.255.0.0",
        &ACTIONS,
        Some(&format!("{ASSETS}/image.raw")),
        500,
    );
    let assets_arg = format!("--assets-dir={}", assets.display());
    for _ in 0..settings.runs {
        // Wisp booting the rack alone (the peer's job, for the comparison), then booting it and
        // running its workflows.
        for (server, workflows) in [("Wisp", "none"), (WITH_WORKFLOWS, "as-each-boots")] {
            let _wisp = lab::start_wisp(
                lab,
                &settings.wisp,
                work,
                "rack",
                &["--xdp-mode", "native", &assets_arg],
            )?;
            lab::apply(lab, &settings.wisp, work, "rack", &manifests)?;
            let (outcome, peak_cpu) = run_rack(lab, settings, count, workflows)?;
            println!(
                "    {server}: {count} machines in {:.1} s, {} DHCP retransmissions",
                outcome.seconds_from_power_on, outcome.dhcp_retransmissions
            );
            record(&mut stages, &mut whole, server, &outcome, peak_cpu);
        }
        let _dnsmasq = start_dnsmasq(lab, work, count)?;
        let _nginx = super::http::start_nginx(lab, work, &assets, "auto.ipxe")?;
        let (outcome, peak_cpu) = run_rack(lab, settings, count, "none")?;
        println!(
            "    {PEER}: {count} machines in {:.1} s, {} DHCP retransmissions",
            outcome.seconds_from_power_on, outcome.dhcp_retransmissions
        );
        record(&mut stages, &mut whole, PEER, &outcome, peak_cpu);
    }
    Ok(vec![stages, whole])
}

/// `cargo xtask bench-rack`: the simulated rack, run inside the client namespace, each machine
/// from its reserved address (which the scenario has put there); prints its [`Outcome`].
pub fn simulate(count: u32, workflows: Workflows) -> anyhow::Result<()> {
    let rack = Rack {
        server: SERVER_IP.parse()?,
        interface: CLIENT_IF.into(),
        machines: machines(count)?,
        pace: None,
        depth: Depth::Everything,
        workflows,
    };
    let outcome = wisp_simulated_rack::run(&rack)?;
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_machines_total_is_the_sum_of_its_stages_up_to_the_last() {
        let outcome = Outcome {
            seconds: 0.0,
            seconds_from_power_on: 0.0,
            stages: BTreeMap::from([
                (Stage::Dhcp, vec![1.0, 2.0]),
                (Stage::Tftp, vec![0.5, 0.5]),
                (Stage::Workflow, vec![10.0, 20.0]),
            ]),
            dhcp_retransmissions: 0,
            actions: 0,
            retries: 0,
            failed_workers: 0,
        };
        assert_eq!(totals(&outcome, Stage::Tftp), [1.5, 2.5]);
        assert_eq!(totals(&outcome, Stage::Workflow), [11.5, 22.5]);
    }
}
