//! Images that are not built in run through a container runtime, as Tinkerbell runs every
//! action: docker or podman (`run --rm --privileged`), or containerd's `ctr`.
use std::{path::Path, process::Command};

use super::{fail, run_command, ActionResult, Invocation, Succeeded};

const RUNTIMES: [&str; 3] = ["docker", "podman", "ctr"];

/// Whether `runtime` can run a container here: its client is installed and, for the two that
/// talk to a daemon, the daemon's socket is there (a docker client alone is common and runs
/// nothing).
fn usable(runtime: &str) -> bool {
    on_path(runtime)
        && match runtime {
            "docker" => {
                std::env::var_os("DOCKER_HOST").is_some()
                    || Path::new("/var/run/docker.sock").exists()
            }
            "ctr" => Path::new("/run/containerd/containerd.sock").exists(),
            _ => true,
        }
}

pub fn run(invocation: &Invocation) -> ActionResult<Succeeded> {
    let Some(runtime) = RUNTIMES.into_iter().find(|runtime| usable(runtime)) else {
        return Err(fail(format!(
            "{:?} is not a built-in action (image2disk, cexec, writefile, kexec, reboot), and no \
             container runtime ({}, with its daemon running) is installed to run it",
            invocation.image,
            RUNTIMES.join(", ")
        )));
    };
    // A name of its own, so that each action's container can be found and removed.
    static ACTIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "wisp-{}-{}",
        std::process::id(),
        ACTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut command = Command::new(runtime);
    if runtime == "ctr" {
        run_command(
            invocation,
            Command::new("ctr").args(["image", "pull", &invocation.image]),
            &format!("ctr image pull {}", invocation.image),
        )?;
        command.args(["run", "--rm", "--privileged"]);
        if invocation.network.as_deref().unwrap_or("host") == "host" {
            command.arg("--net-host");
        }
        for volume in &invocation.volumes {
            let (source, target) = volume.split_once(':').unwrap_or((volume, volume));
            let target = target.split(':').next().unwrap_or(target);
            command.arg("--mount").arg(format!(
                "type=bind,src={source},dst={target},options=rbind:rw"
            ));
        }
        for (key, value) in &invocation.environment {
            command.arg("--env").arg(format!("{key}={value}"));
        }
        command.arg(&invocation.image).arg(&name);
    } else {
        command.args(["run", "--rm", "--privileged", "--name", &name]);
        command.arg(format!(
            "--network={}",
            invocation.network.as_deref().unwrap_or("host")
        ));
        if let Some(pid) = &invocation.pid {
            command.arg(format!("--pid={pid}"));
        }
        for volume in &invocation.volumes {
            command.arg("-v").arg(volume);
        }
        for (key, value) in &invocation.environment {
            command.arg("-e").arg(format!("{key}={value}"));
        }
        command.arg(&invocation.image);
    }
    command.args(&invocation.command);
    let result = run_command(
        invocation,
        &mut command,
        &format!("{runtime} run {}", invocation.image),
    );
    if result == Err(super::ActionError::TimedOut) {
        // Killing the client leaves the container running under the runtime's daemon.
        remove(runtime, &name);
    }
    Ok(Succeeded::Done(result?))
}

fn remove(runtime: &str, name: &str) {
    let commands: &[&[&str]] = if runtime == "ctr" {
        &[
            &["task", "kill", "--signal", "SIGKILL", name],
            &["container", "rm", name],
        ]
    } else {
        &[&["rm", "--force", name]]
    };
    for args in commands {
        if let Err(err) = Command::new(runtime).args(*args).status() {
            tracing::warn!("removing the timed-out container {name}: {err}");
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
