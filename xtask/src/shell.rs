//! Running commands, with the command line shown and failures that say which command failed.
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

pub fn step(title: &str) {
    println!("\n\x1b[1m==> {title}\x1b[0m");
}

pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_with_env(program, args, &[])
}

/// [`run`], with these environment variables added.
pub fn run_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs quietly and returns stdout; None when the program is missing or fails.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Deletes network namespaces, first killing what runs in them with `signal` (`TERM`, `KILL`).
/// Missing namespaces are fine: this also clears what an interrupted run left behind.
pub fn remove_netns(names: &[&str], signal: &str) {
    for netns in names {
        if let Ok(output) = Command::new("ip").args(["netns", "pids", netns]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill")
                    .args([&format!("-{signal}"), pid])
                    .status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", netns])
            .stderr(Stdio::null())
            .status();
    }
}

pub fn require_root(why: &str) -> anyhow::Result<()> {
    match output("id", &["-u"]) {
        Some(uid) if uid.trim() == "0" => Ok(()),
        _ => bail!("run this as root: {why}"),
    }
}
