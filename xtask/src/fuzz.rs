//! `cargo xtask fuzz`: the cargo-fuzz targets in tests/fuzz (docs/security.md), each run for a
//! while from the corpus kept in the repository, after every input that once crashed it.
//!
//! The corpus in the repository is the seed; what a run discovers goes to target/fuzz-corpus,
//! so a run leaves the work tree clean. `--merge` folds the discoveries back, minimised, into
//! the repository's corpus (after a long run, to publish it).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::shell::{run, step};

/// The targets, as named in tests/fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "dhcp_decide",
    "tftp_packet",
    "asset_head",
    "manifest_template",
    "image_format",
];

const FUZZ_DIR: &str = "tests/fuzz";
const TARGET_DIR: &str = "target/fuzz";

pub fn run_targets(root: &Path, seconds: u32, only: &[String], merge: bool) -> anyhow::Result<()> {
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        for name in only {
            if !TARGETS.contains(&name.as_str()) {
                bail!(
                    "no fuzz target {name:?}; the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        only.iter().map(String::as_str).collect()
    };
    install_cargo_fuzz()?;
    step("cargo fuzz build");
    // Rust is memory-safe, so no sanitizer: what the targets look for are panics, overflows
    // (debug assertions are on), hangs and runaway memory, at full speed.
    run(
        "cargo",
        &[
            "+nightly",
            "fuzz",
            "build",
            "--fuzz-dir",
            FUZZ_DIR,
            "--target-dir",
            TARGET_DIR,
            "--release",
            "--debug-assertions",
            "--sanitizer",
            "none",
        ],
    )?;
    let binaries = root
        .join(TARGET_DIR)
        .join("x86_64-unknown-linux-gnu/release");
    for target in targets {
        let binary = binaries.join(target);
        let regressions = root.join(FUZZ_DIR).join("regressions").join(target);
        let seeds = root.join(FUZZ_DIR).join("corpus").join(target);
        let corpus = root.join("target/fuzz-corpus").join(target);
        let artifacts = root.join("target/fuzz-artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let crashed_before = files(&regressions)?;
        if !crashed_before.is_empty() {
            step(&format!(
                "{target}: {} inputs that once crashed it",
                crashed_before.len()
            ));
            libfuzzer(
                &binary,
                &artifacts,
                crashed_before.iter().map(|p| p.as_os_str()),
            )?;
        }
        step(&format!("{target}: {seconds} s"));
        let mut args = vec![
            format!("-max_total_time={seconds}"),
            // A slow input is a hang an attacker can send again and again.
            "-timeout=10".into(),
            "-rss_limit_mb=2048".into(),
            "-print_final_stats=1".into(),
        ];
        args.push(corpus.display().to_string());
        args.push(seeds.display().to_string());
        libfuzzer(&binary, &artifacts, args.iter().map(|a| a.as_ref())).with_context(|| {
            format!(
                "{target} found an input that fails it, in {}: reproduce it with \
                     `{} <file>`, fix it, and keep it in {}",
                artifacts.display(),
                binary.display(),
                regressions.display()
            )
        })?;
        if merge {
            step(&format!(
                "{target}: merging what was found into {}",
                seeds.display()
            ));
            let merge_arg = "-merge=1".to_string();
            libfuzzer(
                &binary,
                &artifacts,
                [merge_arg.as_ref(), seeds.as_os_str(), corpus.as_os_str()],
            )?;
        }
    }
    Ok(())
}

/// Runs a libFuzzer binary, its crash files going to `artifacts`.
fn libfuzzer<'a>(
    binary: &Path,
    artifacts: &Path,
    args: impl IntoIterator<Item = &'a std::ffi::OsStr>,
) -> anyhow::Result<()> {
    let status = Command::new(binary)
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", binary.display());
    }
    Ok(())
}

/// The files of a directory, sorted; none when it does not exist.
fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files = entries
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<Vec<_>, _>>()?;
    files.retain(|path| path.is_file() && !path.ends_with("README.md"));
    files.sort();
    Ok(files)
}

fn install_cargo_fuzz() -> anyhow::Result<()> {
    if crate::shell::output("cargo", &["fuzz", "--version"]).is_some() {
        return Ok(());
    }
    step("cargo install cargo-fuzz");
    run("cargo", &["install", "cargo-fuzz", "--locked"])
}
