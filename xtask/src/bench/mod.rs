//! `cargo xtask bench`: Wisp measured side by side with the servers users would pick instead,
//! on the same machine, in the same run, in a network-namespace lab. Each scenario runs every
//! server in turn on the same inputs; the report gives medians over the runs, with ratios.
//!
//! `--quick` runs every scenario at small scale, as the test command's smoke test: it checks
//! only that each scenario ran and produced numbers.
mod dhcp;
mod dora;
mod flood;
mod http;
mod lab;
mod plot;
mod provision;
mod rack_boot;
mod report;
mod tftp;
mod workflows;

pub use dora::generate as generate_dora;
pub use flood::generate as generate_flood;
pub use rack_boot::simulate as simulate_rack;
pub use tftp::simulate as simulate_tftp;
pub use workflows::simulate as simulate_workers;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::shell::{output, run, step};

type Run = fn(&lab::Lab, &Path, &Settings) -> anyhow::Result<Vec<report::Table>>;

/// Sizes and repetitions.
pub struct Settings {
    pub root: PathBuf,
    pub wisp: PathBuf,
    pub runs: usize,
    pub probe_seconds: u32,
    pub dhcp_hosts: u32,
    pub dhcp_start_rate: u32,
    pub dhcp_max_rate: u32,
    pub bisect_steps: u32,
    pub tftp_large_bytes: u32,
    pub tftp_clients: Vec<usize>,
    pub http_file_bytes: u32,
    /// Each concurrency wrk runs at, with how many seconds it runs there.
    pub http_connections: Vec<(usize, u32)>,
    pub workflow_machines: Vec<u32>,
    /// Foreign-MAC flood rates per second (0: none; [`flood::UNPACED`]: as fast as possible).
    pub flood_rates: Vec<u32>,
    /// Simulated machines in the rack that boots at once.
    pub rack_machines: u32,
    /// The rack's kernel, initramfs and image, in bytes.
    pub rack_file_bytes: (u64, u64, u64),
    /// The known hosts' exchanges per second during the flood.
    pub flood_known_rate: u32,
    /// The VMs provisioned from power-on, one run each.
    pub provision_machines: Vec<provision::Machine>,
}

impl Settings {
    fn full(root: &Path) -> Settings {
        Settings {
            root: root.to_path_buf(),
            wisp: root.join("target/release/wisp"),
            runs: 3,
            probe_seconds: 3,
            dhcp_hosts: 10_000,
            dhcp_start_rate: 1_000,
            dhcp_max_rate: 128_000,
            bisect_steps: 4,
            tftp_large_bytes: 16 << 20,
            tftp_clients: vec![1, 50, 200],
            http_file_bytes: 64 << 20,
            // Long enough for every connection to finish several 64 MiB responses: one
            // connection makes ~70 a second; 500 sharing the link's 4-5 GiB/s take ~8 s for
            // one round, and the slowest of them up to 30 s (their p99), so they keep 40 s.
            http_connections: vec![(1, 10), (100, 15), (500, 40)],
            workflow_machines: vec![1_000, 10_000],
            rack_machines: 1_000,
            rack_file_bytes: (2 << 20, 8 << 20, 8 << 20),
            flood_rates: vec![0, 10_000, 30_000, 100_000, flood::UNPACED],
            flood_known_rate: 500,
            provision_machines: vec![
                provision::Machine::Bios,
                provision::Machine::Uefi,
                provision::Machine::BiosWaitingForIpv6,
            ],
        }
    }

    fn quick(root: &Path) -> Settings {
        Settings {
            root: root.to_path_buf(),
            wisp: root.join("target/debug/wisp"),
            runs: 1,
            probe_seconds: 2,
            dhcp_hosts: 1_000,
            dhcp_start_rate: 200,
            dhcp_max_rate: 400,
            bisect_steps: 0,
            tftp_large_bytes: 1 << 20,
            tftp_clients: vec![1, 10],
            http_file_bytes: 4 << 20,
            http_connections: vec![(1, 2), (20, 2)],
            workflow_machines: vec![50],
            rack_machines: 50,
            rack_file_bytes: (256 << 10, 1 << 20, 1 << 20),
            flood_rates: vec![0, 2_000],
            flood_known_rate: 100,
            provision_machines: vec![provision::Machine::Bios],
        }
    }
}

/// The scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Dhcp,
    Flood,
    Tftp,
    Http,
    Workflows,
    Rack,
    Provision,
}

/// Runs the scenarios in `only` (every one when empty). The report is written only by a full
/// run of every scenario.
pub fn run_benchmarks(root: &Path, quick: bool, only: &[Scenario]) -> anyhow::Result<()> {
    let run_started = std::time::Instant::now();
    let run_date = output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let settings = if quick {
        run("cargo", &["build", "--bins"])?;
        Settings::quick(root)
    } else {
        step("cargo build --release");
        run("cargo", &["build", "--release", "--bins"])?;
        Settings::full(root)
    };
    let work = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let lab = lab::Lab::create()?;

    let mut tables = Vec::new();
    let mut failures = Vec::new();
    for scenario in [
        Scenario::Dhcp,
        Scenario::Flood,
        Scenario::Tftp,
        Scenario::Http,
        Scenario::Workflows,
        Scenario::Rack,
        Scenario::Provision,
    ] {
        if !only.is_empty() && !only.contains(&scenario) {
            continue;
        }
        let (title, run): (&str, Run) = match scenario {
            Scenario::Dhcp => (
                "DHCP DORA (perfdhcp against Wisp, Kea and dnsmasq)",
                |lab, work, settings| dhcp::run(lab, work, settings).map(|table| vec![table]),
            ),
            Scenario::Flood => (
                "foreign-MAC flood (Wisp with and without its XDP gate)",
                |lab, work, settings| flood::run(lab, work, settings).map(|table| vec![table]),
            ),
            Scenario::Tftp => (
                "TFTP (atftp against Wisp and tftpd-hpa)",
                |lab, work, settings| tftp::run(lab, work, settings).map(|table| vec![table]),
            ),
            Scenario::Http => (
                "HTTP (wrk against Wisp and nginx)",
                |lab, work, settings| http::run(lab, work, settings).map(|table| vec![table]),
            ),
            Scenario::Workflows => (
                "workflows (simulated workers against the gRPC worker API)",
                |lab, work, settings| workflows::run(lab, work, settings).map(|table| vec![table]),
            ),
            Scenario::Rack => (
                "a rack booting at once (simulated machines against Wisp, and dnsmasq with nginx)",
                rack_boot::run,
            ),
            Scenario::Provision => (
                "time to a provisioned machine (QEMU VMs with real firmware)",
                |_, _, settings| provision::run(settings).map(|table| vec![table]),
            ),
        };
        step(&format!("bench: {title}"));
        let started = std::time::Instant::now();
        // A full run keeps the other scenarios' numbers when one fails, and reports it.
        let result = run(&lab, &work, &settings);
        println!("  {title}: {:.0} s", started.elapsed().as_secs_f64());
        match result {
            Ok(produced) => tables.extend(produced),
            Err(err) if !quick => {
                eprintln!("warning: {title} failed: {err:#}");
                failures.push(format!("{title}: {err:#}"));
            }
            Err(err) => return Err(err),
        }
    }
    drop(lab);

    let mut problems = failures.clone();
    for table in &tables {
        if let Err(problem) = table.complete() {
            problems.push(problem);
        }
        print!("\n{}", table.markdown());
    }
    // The smoke test insists on numbers; a full run reports what is missing and goes on.
    if quick && !problems.is_empty() {
        bail!(
            "some scenarios produced no numbers: {}",
            problems.join("; ")
        );
    }
    for problem in &problems {
        eprintln!("warning: {problem}");
    }
    // The report and its plots go to docs/ only from a full run of every scenario.
    let partial = quick || !only.is_empty();
    let directory = if partial {
        work.join("plots")
    } else {
        root.join("docs/benchmarks")
    };
    std::fs::create_dir_all(&directory)?;
    // The smoke test insists on plots too; a full run keeps its numbers when a plot fails.
    let mut plot_files = Vec::new();
    for table in &tables {
        match plots(table, &directory) {
            Ok(files) => plot_files.push(files),
            Err(err) if !quick => {
                eprintln!("warning: {err:#}");
                plot_files.push(Vec::new());
            }
            Err(err) => return Err(err),
        }
    }
    if quick {
        println!("bench --quick: every scenario ran and produced numbers and plots");
        return Ok(());
    }
    if !only.is_empty() {
        println!(
            "plots in {}; not written to docs/benchmarks: the report needs every scenario",
            directory.display()
        );
        return Ok(());
    }
    let path = directory.join("README.md");
    let run = format!(
        "{}, {:.0} minutes from the build to this report",
        run_date.trim(),
        run_started.elapsed().as_secs_f64() / 60.0
    );
    std::fs::write(
        &path,
        document(&tables, &plot_files, &failures, &settings, &run),
    )?;
    println!("results written to {}", path.display());
    Ok(())
}

/// Draws `table`'s plots into `directory`; returns their file names.
fn plots(table: &report::Table, directory: &Path) -> anyhow::Result<Vec<String>> {
    use plot::Across;
    let every = |_: &str| true;
    let mut drawn = Vec::new();
    let mut draw = |name: &str, result: anyhow::Result<()>| -> anyhow::Result<()> {
        result.with_context(|| format!("drawing {name}"))?;
        drawn.push(name.to_string());
        Ok(())
    };
    let path = |name: &str| directory.join(name);
    match table.title.as_str() {
        "DHCP DORA" => draw("dhcp.png", plot::bars(table, "leases/s", &path("dhcp.png")))?,
        "Foreign-MAC flood" => {
            for (name, column) in [
                ("flood-cpu.png", "Wisp CPU %"),
                ("flood-p99.png", "known p99 ms"),
            ] {
                let across = Across::Column("flood pkt/s");
                let result = plot::lines(
                    table,
                    across,
                    "flood (packets/s)",
                    column,
                    every,
                    &path(name),
                );
                draw(name, result)?;
            }
        }
        "TFTP" => draw(
            "tftp.png",
            plot::lines(
                table,
                Across::CaseNumber,
                "concurrent fetches of the large file (one client)",
                "MiB/s",
                |case| case.starts_with("ipxe.efi") && case.ends_with("(one client)"),
                &path("tftp.png"),
            ),
        )?,
        "HTTP" => draw(
            "http.png",
            plot::lines(
                table,
                Across::CaseNumber,
                "concurrent connections",
                "MiB/s",
                every,
                &path("http.png"),
            ),
        )?,
        "Workflows" => draw(
            "workflows.png",
            plot::lines(
                table,
                Across::CaseNumber,
                "machines",
                "actions/s",
                every,
                &path("workflows.png"),
            ),
        )?,
        "Rack boot" => draw(
            "rack-boot.png",
            plot::bars_by_case(table, "p99 s", &path("rack-boot.png")),
        )?,
        "Time to a provisioned machine" => draw(
            "provision.png",
            plot::bars_by_case(table, "stage s", &path("provision.png")),
        )?,
        _ => {}
    }
    Ok(drawn)
}

/// The peers and load generators, with how each tells its version.
const PEERS: [(&str, &str, &[&str]); 7] = [
    ("Kea", "kea-dhcp4", &["-v"]),
    ("dnsmasq", "dnsmasq", &["--version"]),
    ("perfdhcp", "perfdhcp", &["-v"]),
    ("tftpd-hpa", "in.tftpd", &["-V"]),
    ("atftp", "atftp", &["-V"]),
    ("nginx", "nginx", &["-v"]),
    ("wrk", "wrk", &["-v"]),
];

/// The first line a program prints about its version.
fn version_of(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().map(|line| line.trim().to_string())
        })
        .unwrap_or_else(|| "not found".into())
}

fn document(
    tables: &[report::Table],
    plots: &[Vec<String>],
    failures: &[String],
    settings: &Settings,
    run: &str,
) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let pinning = match (lab::core_of(lab::SERVER), lab::core_of(lab::CLIENT)) {
        (Some(server), Some(client)) => format!(
            "Pinning: every server (Wisp and each peer, all their threads) runs on core {server}, \
             every load generator on core {client} (`taskset`, or `sched_setaffinity` for the \
             generators started directly); the kernel's packet processing is where the kernel \
             puts it"
        ),
        _ => "Pinning: none (one core): servers and load generators share it".to_string(),
    };
    let kernel = output("uname", &["-r"]).unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| info.lines().next().map(str::to_string))
        .unwrap_or_default();
    let mut text = String::from(
        "# Benchmarks\n\nMade by `cargo xtask bench` (see `xtask/src/bench/`): every server runs in \
         turn in the same network-namespace lab (a veth pair), on the same inputs, in the same \
         run. Numbers are medians over the runs; ratios compare Wisp with each peer. What the \
         numbers showed, and what was changed because of them, is in [findings.md](findings.md).\n\n",
    );
    text.push_str(&format!(
        "## Machine\n\n- CPU: {cpu} ({cores} cores)\n- {pinning}\n- Kernel: {}\n- {}\n- Runs \
         per measurement: {}\n- This run: {run}\n\n## Peers\n\n",
        kernel.trim(),
        memory.split_whitespace().collect::<Vec<_>>().join(" "),
        settings.runs
    ));
    for (name, program, args) in PEERS {
        text.push_str(&format!("- {name}: {}\n", version_of(program, args)));
    }
    text.push_str("\n## Results\n\n");
    for (table, plots) in tables.iter().zip(plots) {
        text.push_str(&table.markdown());
        for plot in plots {
            text.push_str(&format!("![{}]({plot})\n\n", table.title));
        }
    }
    if !failures.is_empty() {
        text.push_str("## Scenarios that failed in this run\n\n");
        for failure in failures {
            text.push_str(&format!("- {}\n", failure.replace('\n', " ")));
        }
    }
    text
}
