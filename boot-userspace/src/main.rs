//! `wisp`: the appliance daemon (`wisp serve`) and the kubectl-like client for it.
mod cli;

use std::process::ExitCode;

use boot_userspace::{api::DEFAULT_SERVER, config::ServeArgs, daemon};
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
    Serve(ServeArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Serve(args) => {
            let print = args.print_config;
            let settings = match args.settings() {
                Ok(settings) => settings,
                Err(err) => return fail(&format!("{err:#}")),
            };
            if print {
                print!("{}", settings.to_toml());
                return ExitCode::SUCCESS;
            }
            init_logging();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(err) => return fail(&format!("cannot start the runtime: {err}")),
            };
            match runtime.block_on(daemon::serve(settings)) {
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
