//! `wisp`: the appliance daemon (`wisp serve`) and the kubectl-like client for it.
mod cli;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use boot_userspace::{
    api::{DEFAULT_LISTEN, DEFAULT_SERVER},
    daemon,
    dhcp::handler::Mode,
    gate::RequestedMode,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wisp",
    version,
    about = "Wisp: an XDP-accelerated bare-metal provisioning appliance"
)]
struct Args {
    /// The daemon's API, for the client commands.
    #[arg(
        long,
        global = true,
        env = "WISP_SERVER",
        default_value = DEFAULT_SERVER
    )]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance on an interface.
    Serve {
        /// The interface the machines boot on; the XDP gate attaches here.
        #[arg(long, short)]
        interface: String,
        #[arg(long, default_value = "/var/lib/wisp")]
        data_dir: PathBuf,
        /// Address of the HTTP API (and /metrics).
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: RequestedMode,
        /// Pass DHCP from unknown MACs to userspace instead of dropping it.
        #[arg(long)]
        discovery: bool,
        /// Where the iPXE binaries are.
        #[arg(long, default_value = "/usr/lib/ipxe")]
        ipxe_dir: PathBuf,
        /// `reservation`: hand out each machine's reserved address. `proxy`: another server
        /// hands out addresses; answer PXE clients with boot information only.
        #[arg(long, value_enum, default_value = "reservation")]
        dhcp_mode: Mode,
        /// Boot assets (kernel, initramfs, images), served at http://<interface address>:8080/assets/.
        /// Defaults to <data-dir>/assets.
        #[arg(long)]
        assets_dir: Option<PathBuf>,
    },
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Serve {
            interface,
            data_dir,
            listen,
            xdp_mode,
            discovery,
            ipxe_dir,
            dhcp_mode,
            assets_dir,
        } => {
            init_logging();
            let assets_dir = assets_dir.unwrap_or_else(|| data_dir.join("assets"));
            let config = daemon::ServeConfig {
                interface,
                data_dir,
                listen,
                xdp_mode,
                discovery,
                ipxe_dir,
                dhcp_mode,
                assets_dir,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(err) => return fail(&format!("cannot start the runtime: {err}")),
            };
            match runtime.block_on(daemon::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(&format!("{err:#}")),
            }
        }
        Command::Client(command) => match cli::run(&args.server, command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err.to_string()),
        },
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
}
