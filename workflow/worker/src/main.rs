//! `wisp-worker`: the agent of Wisp's provisioning OS. It runs its machine's workflow and
//! exits 0 when the workflow has succeeded, 1 when an action failed or timed out; a reboot or
//! kexec action restarts the machine once its success is reported.
use std::time::Duration;

use clap::Parser;
use wisp_worker::{actions, Agent, Config, Finished};

/// Runs this machine's workflow from Wisp. Without options, reads `grpc_authority` (or
/// `wisp.server`), `wisp.mac` (or Tinkerbell's `worker_id`) and `wisp.token` from the kernel
/// command line, as Wisp's iPXE script sets them.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Wisp's address (the worker API is on port 42113).
    #[arg(long)]
    server: Option<String>,
    /// This machine's MAC.
    #[arg(long)]
    agent_id: Option<String>,
    #[arg(long)]
    token: Option<String>,
    /// Seconds between asks while there is nothing to do.
    #[arg(long, default_value_t = 2)]
    poll: u64,
}

fn kernel_parameter(cmdline: &str, name: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let args = Args::parse();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let from_cmdline = |name: &str| kernel_parameter(&cmdline, name);
    let (Some(server), Some(agent_id)) = (
        // `grpc_authority` (Tinkerbell's parameter, which Wisp's script sets too) carries the
        // worker API's port; `wisp.server` alone means the default port.
        args.server
            .or_else(|| from_cmdline("grpc_authority"))
            .or_else(|| from_cmdline("wisp.server")),
        // Booted by Smee rather than Wisp, the agent goes by Tinkerbell's `worker_id`.
        args.agent_id
            .or_else(|| from_cmdline("wisp.mac"))
            .or_else(|| from_cmdline("worker_id")),
    ) else {
        eprintln!(
            "wisp-worker: give --server and --agent-id, or boot with grpc_authority= (or wisp.server=) and wisp.mac= (or worker_id=)"
        );
        return std::process::ExitCode::from(2);
    };
    let endpoint = |server: &str| {
        if server.contains("://") {
            server.to_string()
        } else if server.contains(':') {
            format!("http://{server}")
        } else {
            format!("http://{server}:42113")
        }
    };
    // The appliances sharing the store with the one that booted the machine, in turn.
    let peers = from_cmdline("wisp.peers").unwrap_or_default();
    let endpoints = std::iter::once(server.as_str())
        .chain(peers.split(',').filter(|peer| !peer.is_empty()))
        .map(endpoint)
        .collect();
    let config = Config {
        endpoints,
        agent_id,
        token: args.token.or_else(|| from_cmdline("wisp.token")),
        poll: Duration::from_secs(args.poll),
    };
    let outcome = Agent::connect(config).and_then(|mut agent| agent.run());
    match outcome {
        Ok(Finished::WorkflowDone) => {
            tracing::info!("workflow complete");
            std::process::ExitCode::SUCCESS
        }
        Ok(Finished::ActionFailed) => {
            tracing::error!("the workflow did not succeed");
            std::process::ExitCode::FAILURE
        }
        Ok(restart @ (Finished::Reboot | Finished::Kexec)) => {
            let err = actions::restart(restart == Finished::Kexec);
            tracing::error!("restarting: {err}");
            std::process::ExitCode::FAILURE
        }
        Err(err) => {
            tracing::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parameters_from_the_kernel_command_line() {
        let cmdline = "initrd=initrd console=ttyS0 wisp.server=10.0.0.1 wisp.mac=1c:69:7a:11:22:33 wisp.token=abc-1";
        assert_eq!(
            kernel_parameter(cmdline, "wisp.server").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            kernel_parameter(cmdline, "wisp.token").as_deref(),
            Some("abc-1")
        );
        assert_eq!(kernel_parameter(cmdline, "wisp.missing"), None);
        assert_eq!(kernel_parameter("wisp.server2=x", "wisp.server"), None);
    }
}
