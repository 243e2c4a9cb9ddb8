//! `cargo xtask bench`: Wisp measured side by side with the servers users would pick instead,
//! on the same machine, in the same run, in a network-namespace lab. Each scenario runs every
//! server in turn on the same inputs; the report gives medians over the runs, with ratios.
//!
//! `--quick` runs every scenario at small scale, as the test command's smoke test: it checks
//! only that each scenario ran and produced numbers.
mod dhcp;
mod lab;
mod report;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::shell::{output, run, step};

/// Sizes and repetitions.
pub struct Settings {
    pub wisp: PathBuf,
    pub runs: usize,
    pub probe_seconds: u32,
    pub dhcp_hosts: u32,
    pub dhcp_start_rate: u32,
    pub dhcp_max_rate: u32,
    pub bisect_steps: u32,
}

impl Settings {
    fn full(root: &Path) -> Settings {
        Settings {
            wisp: root.join("target/release/wisp"),
            runs: 3,
            probe_seconds: 5,
            dhcp_hosts: 10_000,
            dhcp_start_rate: 1_000,
            dhcp_max_rate: 128_000,
            bisect_steps: 3,
        }
    }

    fn quick(root: &Path) -> Settings {
        Settings {
            wisp: root.join("target/debug/wisp"),
            runs: 1,
            probe_seconds: 2,
            dhcp_hosts: 1_000,
            dhcp_start_rate: 200,
            dhcp_max_rate: 400,
            bisect_steps: 0,
        }
    }
}

pub fn run_benchmarks(root: &Path, quick: bool) -> anyhow::Result<()> {
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

    step("bench: DHCP DORA (perfdhcp against Wisp, Kea and dnsmasq)");
    let tables = vec![dhcp::run(&lab, &work, &settings)?];
    drop(lab);

    let mut problems = Vec::new();
    for table in &tables {
        if let Err(problem) = table.complete() {
            problems.push(problem);
        }
        print!("\n{}", table.markdown());
    }
    if !problems.is_empty() {
        bail!(
            "some scenarios produced no numbers: {}",
            problems.join("; ")
        );
    }
    if quick {
        println!("bench --quick: every scenario ran and produced numbers");
        return Ok(());
    }
    let path = root.join("docs/benchmarks/README.md");
    std::fs::create_dir_all(path.parent().context("a parent")?)?;
    std::fs::write(&path, document(&tables, &settings))?;
    println!("results written to {}", path.display());
    Ok(())
}

fn document(tables: &[report::Table], settings: &Settings) -> String {
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
    let kernel = output("uname", &["-r"]).unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| info.lines().next().map(str::to_string))
        .unwrap_or_default();
    let mut text = String::from(
        "# Benchmarks\n\nMade by `cargo xtask bench` (see `xtask/src/bench/`): every server runs in \
         turn in the same network-namespace lab (a veth pair), on the same inputs, in the same \
         run. Numbers are medians over the runs; ratios compare Wisp with each peer.\n\n",
    );
    text.push_str(&format!(
        "## Machine\n\n- CPU: {cpu} ({cores} cores)\n- Kernel: {}\n- {}\n- Runs per \
         measurement: {}\n\n## Peers\n\n",
        kernel.trim(),
        memory.split_whitespace().collect::<Vec<_>>().join(" "),
        settings.runs
    ));
    for (name, version) in dhcp::versions() {
        text.push_str(&format!("- {name}: {version}\n"));
    }
    text.push_str("\n## Results\n\n");
    for table in tables {
        text.push_str(&table.markdown());
    }
    text
}
