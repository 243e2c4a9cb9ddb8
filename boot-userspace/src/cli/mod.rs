//! The client commands: apply, get, describe, watch, logs, delete, power, events and
//! `xdp stats`.
mod client;
mod logs;
mod output;
mod power;
mod watch;

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use boot_userspace::{
    api::{ApplyRequest, ApplyResponse, DeleteResponse, ManifestFile, ResourceView},
    gate::GateStats,
};
use clap::{Subcommand, ValueEnum};
use workflow::{
    resource::Kind,
    store::{ApplyOutcome, Lease},
};

use client::{CliError, CliResult, Client};

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create or update resources from YAML files (multi-document), directories, or `-`.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// List resources, or show one.
    Get {
        /// hardware, templates, workflows (also hw, tpl, wf), machines, jobs, tasks, secrets, or
        /// leases.
        kind: String,
        name: Option<String>,
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        /// Show Secrets' values (redacted otherwise).
        #[arg(long)]
        reveal_secrets: bool,
        /// After the table, print each row that changes, until interrupted (Hardware rows
        /// then carry their machine's stage).
        #[arg(short, long)]
        watch: bool,
    },
    /// Show one resource in detail, with what it refers to.
    Describe {
        kind: String,
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Follow a workflow live, action by action, until it finishes (exits non-zero unless it
    /// succeeds).
    Watch {
        /// workflow (or wf).
        kind: String,
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// What a workflow's actions printed (the last 200 lines of each), as their worker sent
    /// it: every action's, or one's (by name or number).
    Logs {
        workflow: String,
        action: Option<String>,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Follow the output until the workflow ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Delete a resource, or a MAC's lease (`delete lease MAC`).
    Delete {
        kind: String,
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Power a machine on, off (soft: gracefully), cycle or reset it, or read its power,
    /// through its BMC: creates a one-task BMC Job, as Tinkerbell's users do, and waits for it.
    Power {
        /// on, off, soft, cycle, reset or status.
        action: String,
        /// A Machine (bmc.tinkerbell.org), or a Hardware whose spec.bmcRef names one.
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Machines' recent events (DHCP, TFTP, iPXE scripts, actions handed out and reported),
    /// oldest first: one machine's (a MAC or a Hardware name), or every machine's.
    Events {
        machine: Option<String>,
        /// The last this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The XDP DHCP gate.
    Xdp {
        #[command(subcommand)]
        command: XdpCommand,
    },
}

#[derive(Subcommand)]
pub enum XdpCommand {
    /// Counters, attach mode, and the unknown MACs that asked for DHCP.
    Stats {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Yaml,
    Json,
}

pub fn run(server: &str, token_file: &std::path::Path, command: ClientCommand) -> CliResult<()> {
    let client = Client::new(server, token_file)?;
    match command {
        ClientCommand::Apply { files } => apply(&client, &files),
        ClientCommand::Get {
            kind,
            name,
            namespace,
            output,
            reveal_secrets,
            watch,
        } => {
            if watch {
                if name.is_some() || !matches!(output, Format::Table | Format::Wide) {
                    return Err(CliError(
                        "--watch shows a table of every resource of a kind: without a name, \
                         with -o table or wide"
                            .into(),
                    ));
                }
                let kind = parse_kind(&kind)?;
                return watch::resources(
                    &client,
                    kind,
                    namespace.as_deref(),
                    output == Format::Wide,
                );
            }
            if matches!(kind.as_str(), "leases" | "lease") {
                let leases: Vec<Lease> = client.get("/v1/leases")?;
                output::leases(&leases, output);
                return Ok(());
            }
            let kind = parse_kind(&kind)?;
            let reveal = Reveal(reveal_secrets);
            let views = match name {
                Some(name) => vec![find_revealing(
                    &client,
                    kind,
                    &name,
                    namespace.as_deref(),
                    reveal,
                )?],
                None => list(&client, kind, namespace.as_deref(), None, reveal)?,
            };
            output::resources(kind, &views, output, views.len() == 1 && is_single(output));
            Ok(())
        }
        ClientCommand::Describe {
            kind,
            name,
            namespace,
        } => {
            let kind = parse_kind(&kind)?;
            output::describe(&find(&client, kind, &name, namespace.as_deref())?);
            Ok(())
        }
        ClientCommand::Delete {
            kind,
            name,
            namespace,
        } => {
            if matches!(kind.as_str(), "leases" | "lease") {
                let removed: Lease = client.delete(&format!("/v1/leases/{name}"))?;
                println!("lease of {} on {} deleted", removed.address, removed.mac);
                return Ok(());
            }
            let kind = parse_kind(&kind)?;
            let found = find(&client, kind, &name, namespace.as_deref())?;
            let key = &found.key;
            let removed: DeleteResponse = client.delete(&format!(
                "/v1/{}/{}/{}",
                kind.plural(),
                key.namespace,
                key.name
            ))?;
            for warning in &removed.warnings {
                eprintln!("Warning: {warning}");
            }
            println!("{}/{} deleted", qualified(kind), removed.key.name);
            Ok(())
        }
        ClientCommand::Watch {
            kind,
            name,
            namespace,
        } => match parse_kind(&kind)? {
            Kind::Workflow => watch::workflow(&client, &name, namespace.as_deref()),
            other => Err(CliError(format!(
                "only workflows can be watched, not {}",
                other.plural()
            ))),
        },
        ClientCommand::Logs {
            workflow,
            action,
            namespace,
            follow,
        } => logs::run(
            &client,
            &workflow,
            action.as_deref(),
            namespace.as_deref(),
            follow,
        ),
        ClientCommand::Power {
            action,
            name,
            namespace,
        } => power::run(&client, &action, &name, namespace.as_deref()),
        ClientCommand::Events {
            machine,
            limit,
            output,
        } => {
            let mut path = format!("/v1/events?limit={limit}");
            if let Some(machine) = machine {
                let machine: String = percent_encoding::utf8_percent_encode(
                    &machine,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .collect();
                path.push_str(&format!("&machine={machine}"));
            }
            let events: Vec<boot_userspace::events::Event> = client.get(&path)?;
            output::events(&events, output);
            Ok(())
        }
        ClientCommand::Xdp {
            command: XdpCommand::Stats { output },
        } => {
            let stats: GateStats = client.get("/v1/gate")?;
            output::gate_stats(&stats, output);
            Ok(())
        }
    }
}

/// `get NAME` with -o yaml/json prints the object itself, not a list.
fn is_single(format: Format) -> bool {
    matches!(format, Format::Yaml | Format::Json)
}

fn parse_kind(text: &str) -> CliResult<Kind> {
    Kind::from_user(text).ok_or_else(|| {
        CliError(format!("the server doesn't have a resource type \"{text}\" (use hardware, templates, workflows, machines, jobs, tasks or secrets)"))
    })
}

/// kubectl's name for a kind: `hardware.tinkerbell.org`, `machine.bmc.tinkerbell.org`,
/// `secret`.
fn qualified(kind: Kind) -> String {
    let name = kind.as_str().to_lowercase();
    match kind.api_version().split_once('/') {
        Some((group, _)) => format!("{name}.{group}"),
        None => name,
    }
}

/// Whether Secrets' values are asked for.
#[derive(Clone, Copy)]
struct Reveal(bool);

fn list(
    client: &Client,
    kind: Kind,
    namespace: Option<&str>,
    name: Option<&str>,
    Reveal(reveal): Reveal,
) -> CliResult<Vec<ResourceView>> {
    let query: Vec<(&str, &str)> = [
        ("namespace", namespace),
        ("name", name),
        ("reveal", reveal.then_some("true")),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.map(|value| (key, value)))
    .collect();
    client.get_with_query(&format!("/v1/{}", kind.plural()), &query)
}

/// Finds one resource by name; without -n, the name must be unique across namespaces.
fn find(
    client: &Client,
    kind: Kind,
    name: &str,
    namespace: Option<&str>,
) -> CliResult<ResourceView> {
    find_revealing(client, kind, name, namespace, Reveal(false))
}

fn find_revealing(
    client: &Client,
    kind: Kind,
    name: &str,
    namespace: Option<&str>,
    reveal: Reveal,
) -> CliResult<ResourceView> {
    let mut found = list(client, kind, namespace, Some(name), reveal)?;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(CliError(match namespace {
            Some(namespace) => format!(
                "{} \"{name}\" not found in namespace \"{namespace}\" (NotFound)",
                kind.plural()
            ),
            None => format!("{} \"{name}\" not found (NotFound)", kind.plural()),
        })),
        _ => {
            let namespaces: Vec<&str> = found
                .iter()
                .map(|view| view.key.namespace.as_str())
                .collect();
            Err(CliError(format!(
                "{} \"{name}\" exists in several namespaces ({}); choose one with -n",
                kind.plural(),
                namespaces.join(", ")
            )))
        }
    }
}

fn apply(client: &Client, paths: &[PathBuf]) -> CliResult<()> {
    let mut files = Vec::new();
    for path in paths {
        read_manifests(path, &mut files)?;
    }
    let response: ApplyResponse = client.post("/v1/apply", &ApplyRequest { files })?;
    for warning in &response.warnings {
        eprintln!("Warning: {warning}");
    }
    for applied in &response.applied {
        let verb = match applied.outcome {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Configured => "configured",
            ApplyOutcome::Unchanged => "unchanged",
        };
        println!(
            "{}/{} {verb}",
            qualified(applied.key.kind),
            applied.key.name
        );
    }
    Ok(())
}

fn read_manifests(path: &Path, files: &mut Vec<ManifestFile>) -> CliResult<()> {
    if path == Path::new("-") {
        let mut content = String::new();
        std::io::stdin()
            .read_to_string(&mut content)
            .map_err(|err| CliError(format!("reading standard input: {err}")))?;
        files.push(ManifestFile {
            name: "stdin".into(),
            content,
        });
        return Ok(());
    }
    let unreadable = |err: std::io::Error| {
        CliError(format!(
            "the path \"{}\" cannot be read: {err}",
            path.display()
        ))
    };
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(unreadable)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        entries.sort();
        if entries.is_empty() {
            return Err(CliError(format!(
                "no .yaml, .yml or .json files in \"{}\"",
                path.display()
            )));
        }
        for entry in entries {
            read_manifests(&entry, files)?;
        }
        return Ok(());
    }
    let content = std::fs::read_to_string(path).map_err(unreadable)?;
    files.push(ManifestFile {
        name: path.display().to_string(),
        content,
    });
    Ok(())
}
