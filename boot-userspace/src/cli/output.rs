//! How the CLI prints: kubectl-like tables, YAML and JSON.
use boot_userspace::{api::ResourceView, gate::GateStats};
use serde_json::{json, Value};
use workflow::{
    resource::Kind,
    run::{ActionStatus, State, WorkflowStatus},
};

use super::Format;

/// Prints rows under a header, columns padded to their widest cell; returns the widths.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    table_line(&header, &widths);
    for row in rows {
        table_line(row, &widths);
    }
    widths
}

/// Prints a row with its cells padded to `widths`.
pub fn table_line(cells: &[String], widths: &[usize]) {
    let padded: Vec<String> = cells
        .iter()
        .zip(widths.iter().chain(std::iter::repeat(&0)))
        .map(|(cell, width)| format!("{cell:<width$}"))
        .collect();
    println!("{}", padded.join("   ").trim_end());
}

/// The object as the user wrote it, with the state Wisp derives added under `status`.
fn with_status(view: &ResourceView) -> Value {
    let mut object = view.object.clone();
    if let (Some(binding), Some(map)) = (&view.binding, object.as_object_mut()) {
        let condition = |kind: &str, what: &str, reference: &workflow::catalog::Reference| {
            json!({
                "type": kind,
                "status": if reference.found { "True" } else { "False" },
                "message": if reference.found {
                    format!("{what} {:?} found", reference.name)
                } else {
                    format!("{what} {:?} not found in namespace {:?}", reference.name, view.key.namespace)
                },
            })
        };
        let status = map.entry("status").or_insert_with(|| json!({}));
        if let (Some(run), Some(status)) = (&view.run, status.as_object_mut()) {
            if let Ok(Value::Object(run)) = serde_json::to_value(run) {
                status.extend(run);
            }
        }
        if let Some(status) = status.as_object_mut() {
            // After the conditions the daemon recorded (bootOptions'), the binding's.
            let mut conditions = status
                .remove("conditions")
                .and_then(|c| c.as_array().cloned())
                .unwrap_or_default();
            conditions.extend([
                condition("TemplateFound", "template", &binding.template),
                condition("HardwareFound", "hardware", &binding.hardware),
            ]);
            status.insert("conditions".into(), Value::Array(conditions));
        }
    }
    object
}

pub fn resources(kind: Kind, views: &[ResourceView], format: Format, single: bool) {
    match format {
        Format::Json | Format::Yaml => {
            let objects: Vec<Value> = views.iter().map(with_status).collect();
            let document = if single {
                objects.into_iter().next().unwrap_or(Value::Null)
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": objects})
            };
            print_document(&document, format);
        }
        Format::Table | Format::Wide => {
            if views.is_empty() {
                eprintln!("No resources found.");
                return;
            }
            let (header, rows) = columns(kind, views, format == Format::Wide);
            table(&header, &rows);
        }
    }
}

/// A kind's table: its header, and a row for each resource.
pub fn columns(
    kind: Kind,
    views: &[ResourceView],
    wide: bool,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    match kind {
        Kind::Hardware => (
            if wide {
                vec![
                    "NAMESPACE",
                    "NAME",
                    "MAC",
                    "IP",
                    "HOSTNAME",
                    "ALLOWPXE",
                    "VERSION",
                ]
            } else {
                vec!["NAMESPACE", "NAME", "MAC", "IP"]
            },
            views.iter().map(|v| hardware_row(v, wide)).collect(),
        ),
        Kind::Template => (
            if wide {
                vec!["NAMESPACE", "NAME", "VERSION"]
            } else {
                vec!["NAMESPACE", "NAME"]
            },
            views.iter().map(|v| key_row(v, wide)).collect(),
        ),
        Kind::Workflow => (
            {
                let mut header = vec![
                    "NAMESPACE",
                    "NAME",
                    "TEMPLATE",
                    "HARDWARE",
                    "STATE",
                    "PROGRESS",
                ];
                if wide {
                    header.extend(["CURRENT", "VERSION"]);
                }
                header
            },
            views.iter().map(|v| workflow_row(v, wide)).collect(),
        ),
        Kind::Machine => (
            vec!["NAMESPACE", "NAME", "HOST", "POWER", "CONTACTABLE"],
            views.iter().map(machine_row).collect(),
        ),
        Kind::Job => (
            vec!["NAMESPACE", "NAME", "MACHINE", "TASKS", "STATE"],
            views.iter().map(job_row).collect(),
        ),
        Kind::Task => (
            vec!["NAMESPACE", "NAME", "ACTION", "STATE"],
            views.iter().map(task_row).collect(),
        ),
        Kind::Secret => (
            vec!["NAMESPACE", "NAME", "TYPE", "DATA"],
            views.iter().map(secret_row).collect(),
        ),
        Kind::WorkflowRuleSet => (
            vec!["NAMESPACE", "NAME", "RULES", "TEMPLATE"],
            views.iter().map(rule_set_row).collect(),
        ),
    }
}

fn print_document(document: &Value, format: Format) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(document).unwrap_or_default()
        ),
        _ => print!("{}", serde_yaml_ng::to_string(document).unwrap_or_default()),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

fn key_row(view: &ResourceView, wide: bool) -> Vec<String> {
    let mut row = vec![view.key.namespace.clone(), view.key.name.clone()];
    if wide {
        row.push(view.version.to_string());
    }
    row
}

/// The status of the condition of `kind` (`True`, `False`), or `-`.
fn condition(view: &ResourceView, kind: &str) -> Option<String> {
    view.object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|condition| condition["type"] == kind)
        .map(|condition| text(&condition["status"]))
}

fn machine_row(view: &ResourceView) -> Vec<String> {
    vec![
        view.key.namespace.clone(),
        view.key.name.clone(),
        text(&view.object["spec"]["connection"]["host"]),
        view.object["status"]["powerState"]
            .as_str()
            .unwrap_or("unknown")
            .to_string(),
        condition(view, "Contactable").unwrap_or_else(|| "-".into()),
    ]
}

/// A Job's or Task's state, from its conditions as Tinkerbell sets them.
fn bmc_state(view: &ResourceView) -> String {
    let is = |kind| condition(view, kind).as_deref() == Some("True");
    if is("Failed") {
        "Failed"
    } else if is("Completed") {
        "Completed"
    } else if view.object["status"]["startTime"].is_string() {
        "Running"
    } else {
        "Pending"
    }
    .into()
}

fn job_row(view: &ResourceView) -> Vec<String> {
    let spec = &view.object["spec"];
    vec![
        view.key.namespace.clone(),
        view.key.name.clone(),
        text(&spec["machineRef"]["name"]),
        spec["tasks"].as_array().map_or(0, Vec::len).to_string(),
        bmc_state(view),
    ]
}

fn task_row(view: &ResourceView) -> Vec<String> {
    let action = view.object["spec"]["task"]
        .as_object()
        .and_then(|task| task.iter().next())
        .map_or_else(|| "-".into(), |(name, value)| format!("{name}: {value}"));
    vec![
        view.key.namespace.clone(),
        view.key.name.clone(),
        action,
        bmc_state(view),
    ]
}

fn secret_row(view: &ResourceView) -> Vec<String> {
    vec![
        view.key.namespace.clone(),
        view.key.name.clone(),
        view.object["type"].as_str().unwrap_or("Opaque").to_string(),
        view.object["data"]
            .as_object()
            .map_or(0, |data| data.len())
            .to_string(),
    ]
}

fn rule_set_row(view: &ResourceView) -> Vec<String> {
    let spec = &view.object["spec"];
    vec![
        view.key.namespace.clone(),
        view.key.name.clone(),
        spec["rules"].as_array().map_or(0, Vec::len).to_string(),
        spec["workflow"]["template"]["ref"]
            .as_str()
            .unwrap_or("-")
            .to_string(),
    ]
}

fn hardware_row(view: &ResourceView, wide: bool) -> Vec<String> {
    let interfaces = view.object["spec"]["interfaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let joined = |field: &dyn Fn(&Value) -> Value| -> String {
        let values: Vec<String> = interfaces
            .iter()
            .map(|i| text(&field(&i["dhcp"])))
            .collect();
        if values.is_empty() {
            "<none>".into()
        } else {
            values.join(",")
        }
    };
    let mut row = vec![
        view.key.namespace.clone(),
        view.key.name.clone(),
        joined(&|dhcp| dhcp["mac"].clone()),
        joined(&|dhcp| dhcp["ip"]["address"].clone()),
    ];
    if wide {
        row.push(joined(&|dhcp| dhcp["hostname"].clone()));
        let allow: Vec<String> = interfaces
            .iter()
            .map(|i| text(&i["netboot"]["allowPXE"]))
            .collect();
        row.push(allow.join(","));
        row.push(view.version.to_string());
    }
    row
}

fn workflow_row(view: &ResourceView, wide: bool) -> Vec<String> {
    let spec = &view.object["spec"];
    let mut row = vec![
        view.key.namespace.clone(),
        view.key.name.clone(),
        text(&spec["templateRef"]),
        text(&spec["hardwareRef"]),
        workflow_state(view),
        view.run.as_ref().map_or_else(|| "-".into(), progress),
    ];
    if wide {
        row.push(
            view.run
                .as_ref()
                .and_then(|run| Some(run.actions[run.current()?].name.clone()))
                .unwrap_or_else(|| "-".into()),
        );
        row.push(view.version.to_string());
    }
    row
}

/// The run's state, or why the workflow cannot start.
fn workflow_state(view: &ResourceView) -> String {
    match (&view.run, &view.binding) {
        (Some(run), _) => run.state.to_string(),
        (None, Some(binding)) => binding.summary(),
        (None, None) => "<unknown>".into(),
    }
}

/// "action i of n": the action running (or next), counting from 1; all of them once done.
pub fn progress(run: &WorkflowStatus) -> String {
    let total = run.actions.len();
    let at = match run.current() {
        Some(current) => current + 1,
        None if run.state == State::Success => total,
        None => run.done() + 1,
    };
    format!("{}/{total}", at.min(total))
}

/// Seconds with one decimal: actions take from milliseconds to hours.
pub fn duration(action: &ActionStatus) -> String {
    match (action.duration, action.span.started_at) {
        (Some(duration), _) => format!("{:.1}s", duration.as_secs_f64()),
        (None, Some(started)) => format!(
            "{:.1}s (running)",
            started.elapsed().unwrap_or_default().as_secs_f64()
        ),
        (None, None) => "-".into(),
    }
}

pub fn describe(view: &ResourceView) {
    let field = |name: &str, value: &str| println!("{:<18}{value}", format!("{name}:"));
    field("Name", &view.key.name);
    field("Namespace", &view.key.namespace);
    field("Kind", view.key.kind.as_str());
    field("Resource Version", &view.version.to_string());
    if let Some(binding) = &view.binding {
        let reference = |r: &workflow::catalog::Reference| {
            if r.found {
                r.name.clone()
            } else {
                format!("{} (NOT FOUND in namespace {})", r.name, view.key.namespace)
            }
        };
        field("Template", &reference(&binding.template));
        field("Hardware", &reference(&binding.hardware));
        field("State", &workflow_state(view));
    }
    if let Some(run) = &view.run {
        field(
            "Progress",
            &format!("action {}", progress(run).replace('/', " of ")),
        );
        if !run.message.is_empty() {
            field("Message", &run.message);
        }
        println!("Actions:");
        let rows: Vec<Vec<String>> = run
            .actions
            .iter()
            .map(|action| {
                vec![
                    format!("  {}", action.name),
                    action.image.clone(),
                    action.state.to_string(),
                    duration(action),
                    action.message.lines().next().unwrap_or("").to_string(),
                ]
            })
            .collect();
        table(&["  NAME", "IMAGE", "STATE", "DURATION", "MESSAGE"], &rows);
    }
    let section = |title: &str, value: &Value| {
        println!("{title}:");
        let text = serde_yaml_ng::to_string(value).unwrap_or_default();
        for line in text.lines() {
            println!("  {line}");
        }
    };
    match view.key.kind {
        // Only the keys: the values are not shown (`get --reveal-secrets` shows them).
        Kind::Secret => {
            field("Type", view.object["type"].as_str().unwrap_or("Opaque"));
            println!("Data:");
            for key in view.object["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                println!("  {key}");
            }
        }
        Kind::Machine | Kind::Job | Kind::Task => {
            section("Spec", &view.object["spec"]);
            if !view.object["status"].is_null() {
                section("Status", &view.object["status"]);
            }
        }
        _ => section("Spec", &view.object["spec"]),
    }
}

pub fn gate_stats(stats: &GateStats, format: Format) {
    if matches!(format, Format::Json | Format::Yaml) {
        print_document(&serde_json::to_value(stats).unwrap_or_default(), format);
        return;
    }
    println!("Interface:  {}", stats.interface);
    println!("Gate:       {}", stats.mode);
    println!(
        "Unknown:    {}",
        if stats.discovery {
            "passed (discovery mode)"
        } else {
            "dropped"
        }
    );
    println!("Allowlist:  {} MAC(s)", stats.allowlist_size);
    println!();
    let rows: Vec<Vec<String>> = stats
        .counters
        .iter()
        .map(|(name, value)| vec![name.clone(), value.to_string()])
        .collect();
    table(&["COUNTER", "PACKETS"], &rows);
    println!();
    if stats.unknown_macs.is_empty() {
        println!("No unknown MACs seen.");
    } else {
        let rows: Vec<Vec<String>> = stats
            .unknown_macs
            .iter()
            .map(|m| {
                vec![
                    m.mac.clone(),
                    m.count.to_string(),
                    format!("{}s ago", m.last_seen_secs_ago),
                ]
            })
            .collect();
        table(&["UNKNOWN MAC", "PACKETS", "LAST SEEN"], &rows);
    }
}

pub fn leases(leases: &[workflow::store::Lease], format: Format) {
    if matches!(format, Format::Json | Format::Yaml) {
        print_document(&serde_json::to_value(leases).unwrap_or_default(), format);
        return;
    }
    if leases.is_empty() {
        eprintln!("No leases.");
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|lease| {
            let left = lease.expires_unix.saturating_sub(now);
            vec![
                lease.mac.to_string(),
                lease.address.to_string(),
                lease.hostname.clone().unwrap_or_else(|| "<none>".into()),
                if left == 0 {
                    "expired".into()
                } else {
                    format!("{left}s")
                },
            ]
        })
        .collect();
    table(&["MAC", "ADDRESS", "HOSTNAME", "EXPIRES IN"], &rows);
}

pub fn events(events: &[boot_userspace::events::Event], format: Format) {
    if matches!(format, Format::Json | Format::Yaml) {
        print_document(&serde_json::to_value(events).unwrap_or_default(), format);
        return;
    }
    if events.is_empty() {
        eprintln!("No events.");
        return;
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|event| {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(event.at_ms);
            vec![
                humantime::format_rfc3339_seconds(at).to_string(),
                event.mac.to_string(),
                event.kind.as_str().to_string(),
                event.message.clone(),
            ]
        })
        .collect();
    table(&["TIME", "MAC", "EVENT", "MESSAGE"], &rows);
}
