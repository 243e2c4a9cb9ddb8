//! `wisp power on|off|soft|cycle|reset|status NAME`: a one-task BMC Job, as Tinkerbell's users
//! write one by hand, applied and followed to its end.
use std::time::{Duration, Instant, SystemTime};

use boot_userspace::api::{ApplyRequest, ApplyResponse, ManifestFile, ResourceView};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use workflow::resource::{bmc::PowerAction, Kind};

use super::{
    client::{CliError, CliResult, Client},
    find,
};

/// Longer than a Task can take (its retries and the power timeout).
const LIMIT: Duration = Duration::from_secs(15 * 60);

pub fn run(client: &Client, action: &str, name: &str, namespace: Option<&str>) -> CliResult<()> {
    let action: PowerAction = serde_json::from_value(json!(action)).map_err(|_| {
        CliError(format!(
            "{action:?} is not a power action (on, off, soft, cycle, reset or status)"
        ))
    })?;
    // A Machine of that name, or the one the Hardware of that name names in its bmcRef.
    let (namespace, machine) = match find(client, Kind::Machine, name, namespace) {
        Ok(machine) => (machine.key.namespace, machine.key.name),
        Err(_) => {
            let hardware = find(client, Kind::Hardware, name, namespace).map_err(|_| {
                CliError(format!(
                    "no machine or hardware \"{name}\" found{} (NotFound)",
                    namespace
                        .map(|ns| format!(" in namespace \"{ns}\""))
                        .unwrap_or_default()
                ))
            })?;
            let machine = hardware.object["spec"]["bmcRef"]["name"]
                .as_str()
                .ok_or_else(|| {
                    CliError(format!(
                        "hardware \"{name}\" has no spec.bmcRef: it names no BMC Machine"
                    ))
                })?
                .to_string();
            (hardware.key.namespace, machine)
        }
    };
    let seconds = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let job = format!("{machine}-power-{}-{seconds}", action.as_str());
    let document = json!({
        "apiVersion": workflow::resource::bmc::API_VERSION,
        "kind": "Job",
        "metadata": {"name": job, "namespace": namespace},
        "spec": {
            "machineRef": {"name": machine, "namespace": namespace},
            "tasks": [{"powerAction": action.as_str()}],
        },
    });
    let _: ApplyResponse = client.post(
        "/v1/apply",
        &ApplyRequest {
            files: vec![ManifestFile {
                name: "wisp power".into(),
                // YAML reads JSON.
                content: document.to_string(),
            }],
        },
    )?;
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a template"),
    );
    spinner.set_message(format!("job {job}: power {} on {machine}", action.as_str()));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    let outcome = loop {
        let view = find(client, Kind::Job, &job, Some(&namespace))?;
        if let Some(ended) = ended(&view) {
            break ended;
        }
        if started.elapsed() > LIMIT {
            break Err(format!("still running after {} s", LIMIT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    spinner.finish_and_clear();
    match outcome {
        Ok(()) => {
            let task = find(
                client,
                Kind::Task,
                &format!("{job}-task-0"),
                Some(&namespace),
            )?;
            let found = condition(&task, "Completed")
                .filter(|message| !message.is_empty())
                .unwrap_or_else(|| format!("power {}: done", action.as_str()));
            println!("machine {namespace}/{machine}: {found} (job {job})");
            Ok(())
        }
        Err(message) => Err(CliError(format!("job {job}: {message}"))),
    }
}

/// The message of the condition of `kind` that holds.
fn condition(view: &ResourceView, kind: &str) -> Option<String> {
    view.object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
        .map(|c| c["message"].as_str().unwrap_or_default().to_string())
}

fn ended(job: &ResourceView) -> Option<Result<(), String>> {
    if let Some(message) = condition(job, "Failed") {
        return Some(Err(message));
    }
    condition(job, "Completed").map(|_| Ok(()))
}
