//! `wisp`: the appliance daemon (`wisp serve`) and the kubectl-like client for it.
mod cli;

use std::process::ExitCode;

use boot_userspace::{
    api::{auth::DEFAULT_TOKEN_FILE, DEFAULT_SERVER},
    config::ServeArgs,
    daemon,
};
use clap::{CommandFactory, Parser, Subcommand};

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
    /// The file holding the API's token (the daemon's `api-token-file`), for the client
    /// commands [default: /var/lib/wisp/api.token]. No default here: `wisp serve` takes the
    /// same flag, and its default follows `--data-dir`.
    #[arg(long, global = true, env = "WISP_API_TOKEN_FILE")]
    api_token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance on an interface.
    Serve(Box<ServeArgs>),
    #[command(flatten)]
    Client(cli::ClientCommand),
    /// Print the shell completion script for SHELL (`source <(wisp completion bash)`).
    Completion { shell: clap_complete::Shell },
    /// Write the man pages (wisp.1, and wisp-COMMAND.1 for each command) into DIR.
    #[command(hide = true)]
    ManPages { dir: std::path::PathBuf },
    /// Print the configuration file a package installs: every setting, documented, at its
    /// default.
    #[command(hide = true)]
    DefaultConfig,
}

/// jemalloc rather than glibc's malloc, whose per-thread arenas fragmented under ten thousand
/// worker connections (docs/benchmarks/findings.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Args::command(), "wisp", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::ManPages { dir } => match clap_mangen::generate_to(Args::command(), &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&format!(
                "writing the man pages to {}: {err}",
                dir.display()
            )),
        },
        Command::DefaultConfig => {
            print!("{}", boot_userspace::config::default_file());
            ExitCode::SUCCESS
        }
        Command::Client(command) => {
            let token_file = args
                .api_token_file
                .unwrap_or_else(|| DEFAULT_TOKEN_FILE.into());
            match cli::run(&args.server, &token_file, command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(&err.to_string()),
            }
        }
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
