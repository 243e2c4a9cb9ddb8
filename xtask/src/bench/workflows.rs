//! Workflows: a rack's worth of simulated machines (`wisp-simulated-rack`), all at once, each
//! running a five-action workflow against Wisp's real gRPC worker API. Reported: the time until
//! every workflow has succeeded, actions per second, and Wisp's peak memory. No peer:
//! Tinkerbell is not on this machine, so the numbers stand alone.
//!
//! The simulated machines run in the client namespace (`cargo xtask bench-workers`, started by
//! this scenario): each boots as far as Wisp can tell (DHCP, iPXE's DHCP, its script), and then
//! does over its own HTTP/2 connection what `wisp-worker` does. Actions take no time, so the
//! server is what is measured.
use std::{net::Ipv4Addr, path::Path};

use anyhow::{bail, Context};
use wisp_images::etcd::Etcd;
use wisp_simulated_rack::{Depth, Machine, Outcome, Rack, Workflows};

use super::{
    dhcp::hosts,
    lab::{self, Lab, CLIENT, CLIENT_IF, SERVER_IP},
    report::Table,
    Settings,
};

const ACTIONS: usize = 5;

/// Machines per apply: an apply is one transaction, and on etcd one of 500 machines (1,000
/// resources) is within what docs/ha.md has etcd started with (`--max-txn-ops=4096`).
const MACHINES_PER_APPLY: usize = 500;

/// The bench's machines: perfdhcp's MACs, at the addresses the DHCP scenarios reserve.
pub(super) fn machines(count: u32) -> anyhow::Result<Vec<Machine>> {
    hosts(count)
        .map(|(mac, address)| {
            Ok(Machine {
                mac,
                address: address.parse()?,
                fails: false,
            })
        })
        .collect()
}

/// The resources for `count` machines, in applies of [`MACHINES_PER_APPLY`].
fn manifests(count: u32) -> anyhow::Result<Vec<String>> {
    let steps: Vec<String> = (1..=ACTIONS).map(|step| format!("step-{step}")).collect();
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    Ok(wisp_simulated_rack::manifests(
        "bench",
        &machines(count)?,
        "255.255.0.0",
        &steps,
        None,
        MACHINES_PER_APPLY,
    ))
}

/// Where the runs are kept: the embedded store (the default), or an etcd cluster (one member
/// here) as appliances sharing their state keep them.
#[derive(Clone, Copy)]
enum Backend {
    Redb,
    Etcd,
}

impl Backend {
    fn server(self) -> &'static str {
        match self {
            Backend::Redb => "Wisp",
            Backend::Etcd => "Wisp on etcd",
        }
    }
}

/// etcd's address: on the client side, so that the server side's peak memory stays Wisp's
/// alone.
const ETCD_ADDRESS: &str = "10.88.0.2";

pub fn run(lab: &Lab, work: &Path, settings: &Settings) -> anyhow::Result<Table> {
    let mut table = Table::new(
        "Workflows",
        &format!(
            "Simulated machines, all started at once, each running a {ACTIONS}-action workflow \
             over its own gRPC connection (GetAction, then RUNNING and SUCCESS reports per \
             action; transient failures retried, as `wisp-worker` does, and counted). The time until \
             every workflow succeeded, actions per second, and Wisp's peak resident memory while \
             they ran. \"Wisp on etcd\" keeps its state in a one-member etcd on the same machine \
             (`--store etcd://`, as appliances sharing their state do; etcd's own memory is not \
             counted), against the embedded store's \"Wisp\"; the ratio is how many times the \
             embedded store's time it takes."
        ),
        &["seconds", "actions/s", "retried calls", "peak MiB"],
    );
    table.ratio_of = Some(("seconds".into(), false));
    // Built beside `wisp` by the same `cargo build` (this process's own binary may have been
    // replaced by that build).
    let xtask = settings.wisp.with_file_name("xtask");
    for &count in &settings.workflow_machines {
        let case = format!("{count} machines");
        let _addresses = lab.machine_addresses(hosts(count).map(|(_, address)| address))?;
        let manifests = manifests(count)?;
        for backend in [Backend::Redb, Backend::Etcd] {
            for _ in 0..settings.runs {
                let etcd = match backend {
                    Backend::Redb => None,
                    Backend::Etcd => {
                        // A fresh member each run.
                        let dir = work.join("etcd");
                        let _ = std::fs::remove_dir_all(&dir);
                        Some(Etcd::start(CLIENT, ETCD_ADDRESS, &dir)?)
                    }
                };
                let store = etcd.as_ref().map(|etcd| format!("--store={}", etcd.url));
                let mut args = vec!["--xdp-mode", "off"];
                args.extend(store.as_deref());
                let _server = lab::start_wisp(lab, &settings.wisp, work, "workflows", &args)?;
                lab::apply(lab, &settings.wisp, work, "workflows", &manifests)?;
                lab::reset_peak_memory()?;
                let output = lab.exec(
                    CLIENT,
                    xtask.to_str().context("UTF-8 path")?,
                    &["bench-workers", "--machines", &count.to_string()],
                )?;
                let (outcome, stderr) = printed_outcome(&output)?;
                if outcome.failed_workers > 0
                    || outcome.actions != u64::from(count) * ACTIONS as u64
                {
                    bail!(
                        "{}: {} of {count} simulated workers failed, {} actions ran; the \
                         first failures:\n{stderr}",
                        backend.server(),
                        outcome.failed_workers,
                        outcome.actions
                    );
                }
                let rate = outcome.actions as f64 / outcome.seconds;
                let server = backend.server();
                println!(
                    "    {case}, {server}: {:.1} s, {rate:.0} actions/s, {} retried calls",
                    outcome.seconds, outcome.retries
                );
                table.record(&case, server, "seconds", outcome.seconds);
                table.record(&case, server, "actions/s", rate);
                table.record(&case, server, "retried calls", outcome.retries as f64);
                table.record(&case, server, "peak MiB", lab::peak_memory_mib()?);
            }
        }
    }
    Ok(table)
}

/// The [`Outcome`] the simulated rack printed last, and what it printed on stderr (its first
/// failures).
pub(super) fn printed_outcome(output: &std::process::Output) -> anyhow::Result<(Outcome, String)> {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let outcome = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .with_context(|| format!("the simulated rack printed no outcome: {stderr}"))?;
    Ok((outcome, stderr))
}

/// `cargo xtask bench-workers`: the simulated machines, run inside the client namespace, each
/// from its reserved address (which the scenario has put there); prints their [`Outcome`].
pub fn simulate(count: u32) -> anyhow::Result<()> {
    let rack = Rack {
        server: SERVER_IP.parse::<Ipv4Addr>()?,
        interface: CLIENT_IF.into(),
        machines: machines(count)?,
        pace: None,
        depth: Depth::Script,
        workflows: Workflows::Together,
    };
    let outcome = wisp_simulated_rack::run(&rack)?;
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}
