//! Project tasks: `cargo xtask setup | images | test | demo [--ha] | bench | fuzz | package`.
mod bench;
mod demo;
mod fuzz;
mod images;
mod package;
mod setup;
mod shell;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Wisp's project tasks")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; fast when already done).
    Setup,
    /// Build the provisioning OS (kernel, initramfs with busybox and wisp-worker) into
    /// target/provisioning-os.
    Images,
    /// Set up, then run every check: fmt, clippy, unit and privileged integration tests, a
    /// short pass of every fuzz target, and the benchmarks' smoke test (`bench --quick`).
    Test {
        /// The long checks at full size: the XDP differential test at a million frames.
        #[arg(long)]
        long: bool,
    },
    /// Run the fuzz targets in tests/fuzz, each for a while (docs/security.md).
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Only these targets (repeatable).
        #[arg(long)]
        target: Vec<String>,
        /// Fold what the run found, minimised, into the corpus in the repository.
        #[arg(long)]
        merge: bool,
    },
    /// Build the Debian package (target/debian/wisp_VERSION_amd64.deb): the binary, its
    /// systemd unit, the default configuration, completions and man pages.
    Package,
    /// Set up, build, and show Wisp at work in a throwaway network-namespace lab.
    Demo {
        /// Two appliances on a three-member etcd cluster instead: the one a VM installs from
        /// is killed mid-install, then an etcd member.
        #[arg(long)]
        ha: bool,
    },
    /// Measure Wisp against Kea, dnsmasq and the other peers, and write
    /// docs/benchmarks/README.md.
    Bench {
        /// Every scenario at small scale: a smoke test that writes no report.
        #[arg(long)]
        quick: bool,
        /// Only these scenarios (repeatable); the report is written only when all run.
        #[arg(long, value_enum)]
        only: Vec<bench::Scenario>,
    },
    /// The flood benchmark's generator of DISCOVERs from unknown MACs (run by `bench`).
    #[command(hide = true)]
    BenchFlood {
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        seconds: f64,
    },
    /// The DHCP benchmark's batched DORA generator (run by `bench` inside its lab); prints a
    /// JSON report.
    #[command(hide = true)]
    BenchDora {
        #[arg(long)]
        hosts: u32,
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        seconds: f64,
    },
    /// The workflow benchmark's simulated machines (run by `bench` inside its lab).
    #[command(hide = true)]
    BenchWorkers {
        #[arg(long)]
        machines: u32,
    },
    /// The TFTP benchmark's in-process client (run by `bench` inside its lab).
    #[command(hide = true)]
    BenchTftp {
        #[arg(long)]
        file: String,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        clients: usize,
    },
    /// The rack-boot benchmark's simulated machines (run by `bench` inside its lab).
    #[command(hide = true)]
    BenchRack {
        #[arg(long)]
        machines: u32,
        /// `as-each-boots`, or `none` for a server that only boots them.
        #[arg(long)]
        workflows: String,
    },
}

fn main() -> anyhow::Result<()> {
    let root = repo_root();
    std::env::set_current_dir(&root)?;
    match Args::parse().task {
        Task::Setup => setup::ensure(),
        Task::Images => {
            setup::ensure()?;
            images::build(&root).map(drop)
        }
        Task::Test { long } => test(long),
        Task::Fuzz {
            seconds,
            target,
            merge,
        } => {
            setup::ensure()?;
            fuzz::run_targets(&root, seconds, &target, merge)
        }
        Task::Bench { quick, only } => {
            shell::require_root("the benchmarks create network namespaces")?;
            setup::ensure()?;
            bench::run_benchmarks(&root, quick, &only)
        }
        Task::BenchWorkers { machines } => bench::simulate_workers(machines),
        Task::BenchTftp {
            file,
            size,
            clients,
        } => bench::simulate_tftp(&file, size, clients),
        Task::BenchRack {
            machines,
            workflows,
        } => {
            let workflows = match workflows.as_str() {
                "as-each-boots" => wisp_simulated_rack::Workflows::AsEachBoots,
                "none" => wisp_simulated_rack::Workflows::None,
                other => anyhow::bail!("--workflows {other}: as-each-boots or none"),
            };
            bench::simulate_rack(machines, workflows)
        }
        Task::BenchFlood { rate, seconds } => bench::generate_flood(rate, seconds),
        Task::BenchDora {
            hosts,
            rate,
            seconds,
        } => bench::generate_dora(hosts, rate, seconds),
        Task::Package => package::build(&root, true).map(drop),
        Task::Demo { ha } => {
            shell::require_root("the demo creates network namespaces and attaches an XDP program")?;
            setup::ensure()?;
            match ha {
                true => demo::show_failover(&root),
                false => demo::show_main_job(&root),
            }
        }
    }
}

/// How long the test command runs each fuzz target; `cargo xtask fuzz` runs them longer.
const FUZZ_SECONDS_IN_TESTS: u32 = 20;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

fn test(long: bool) -> anyhow::Result<()> {
    shell::require_root("the tests create network namespaces and load XDP programs")?;
    setup::ensure()?;
    shell::step("cargo fmt --check");
    shell::run("cargo", &["fmt", "--all", "--", "--check"])?;
    shell::step("cargo clippy");
    shell::run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The XDP program compiles only for the bpf target, which the host clippy never sees.
    shell::step("cargo clippy (the XDP program, for the bpf target)");
    shell::run(
        "cargo",
        &[
            "+nightly",
            "clippy",
            "--package",
            "boot-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            "target/bpf-lint",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The integration tests drive the real `wisp` and `wisp-worker` binaries and boot the
    // provisioning OS, so build them first.
    shell::step("cargo build");
    shell::run("cargo", &["build", "--workspace", "--bins"])?;
    images::build(&repo_root())?;
    // The package test installs the package, built from these binaries.
    package::build(&repo_root(), false)?;
    shell::step("cargo test (unit and privileged integration tests)");
    // Run as root here, so a privileged test that would skip fails instead (tests/src/lib.rs).
    let mut env = vec![("WISP_TESTS_NO_SKIPS", "1")];
    if long {
        env.push(("WISP_TESTS_LONG", "1"));
    }
    shell::run_with_env("cargo", &["test", "--workspace", "--no-fail-fast"], &env)?;
    // Every input that once crashed a target, then a short pass of each from its corpus.
    fuzz::run_targets(&repo_root(), FUZZ_SECONDS_IN_TESTS, &[], false)?;
    // The benchmarks at small scale: each scenario must run and produce numbers.
    bench::run_benchmarks(&repo_root(), true, &[])
}
