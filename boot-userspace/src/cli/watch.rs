//! `wisp watch workflow NAME`: follows a workflow live, with a progress bar over its actions, a
//! bar of bytes and rate for an action that says how far it is (image2disk), and a line for
//! each change of state, until it finishes. And `wisp get KIND --watch`: the table, then each
//! row that changes, as kubectl's.
use std::{collections::HashMap, time::Duration};

use boot_userspace::{api::OutputView, rack::RackRow};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use workflow::{
    resource::{Kind, ResourceKey},
    run::{State, WorkflowStatus},
};

use super::{
    client::{CliError, CliResult, Client},
    find, list, output, Reveal,
};

const POLL_PERIOD: Duration = Duration::from_millis(500);

/// The bar of bytes of the action running, while it says how far it is.
struct BytesBar {
    bar: ProgressBar,
    action: usize,
}

pub fn workflow(client: &Client, name: &str, namespace: Option<&str>) -> CliResult<()> {
    let bars = MultiProgress::new();
    let bar = bars.add(ProgressBar::new(0));
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {wide_msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut bytes: Option<BytesBar> = None;
    // Printed through the bar, so that the lines and the bar do not overwrite each other; and
    // printed even when the bar is hidden (output not a terminal).
    let say = |line: String| bar.suspend(|| println!("{line}"));
    let mut seen: Option<WorkflowStatus> = None;
    loop {
        let view = find(client, Kind::Workflow, name, namespace)?;
        let Some(run) = view.run else {
            let why = view
                .binding
                .as_ref()
                .map_or_else(|| "unknown".into(), |binding| binding.summary());
            bar.set_message(format!("{}: waiting ({why})", view.key.name));
            std::thread::sleep(POLL_PERIOD);
            continue;
        };
        bar.set_length(run.actions.len() as u64);
        bar.set_position(run.done() as u64);
        for (index, action) in run.actions.iter().enumerate() {
            let before = seen.as_ref().and_then(|seen| seen.actions.get(index));
            if before.map(|before| before.state) != Some(action.state)
                && !(before.is_none() && action.state == State::Pending)
            {
                let mut line = format!(
                    "[{}/{}] {:<24} {:<8}",
                    index + 1,
                    run.actions.len(),
                    action.name,
                    action.state
                );
                if action.state.is_final() {
                    line.push_str(&format!(" {}", output::duration(action)));
                }
                if !action.message.is_empty() && action.state != State::Success {
                    line.push_str(&format!("  {}", action.message));
                }
                say(line);
            }
        }
        show_progress(client, &bars, &mut bytes, &view.key, &run)?;
        let current = run.current().map(|i| run.actions[i].name.as_str());
        bar.set_message(format!(
            "{} {}{}",
            view.key.name,
            run.state,
            current.map(|c| format!(": {c}")).unwrap_or_default()
        ));
        if run.state.is_final() {
            if let Some(bytes) = bytes.take() {
                bytes.bar.finish_and_clear();
            }
            bar.finish_and_clear();
            println!(
                "workflow {} {} ({} of {} actions succeeded)",
                view.key.name,
                run.state,
                run.done(),
                run.actions.len()
            );
            return match run.state {
                State::Success => Ok(()),
                _ => Err(CliError(format!(
                    "workflow {} {}: {}",
                    view.key.name, run.state, run.message
                ))),
            };
        }
        seen = Some(run);
        std::thread::sleep(POLL_PERIOD);
    }
}

/// Shows the running action's bytes and rate, while it has a progress; the bar goes when the
/// action ends.
fn show_progress(
    client: &Client,
    bars: &MultiProgress,
    bytes: &mut Option<BytesBar>,
    workflow: &ResourceKey,
    run: &WorkflowStatus,
) -> CliResult<()> {
    let running = run
        .current()
        .filter(|&index| run.actions[index].state == State::Running);
    if bytes.as_ref().map(|b| Some(b.action)) != Some(running) {
        if let Some(done) = bytes.take() {
            done.bar.finish_and_clear();
        }
    }
    let Some(action) = running else {
        return Ok(());
    };
    let path = format!(
        "/v1/workflows/{}/{}/output",
        workflow.namespace, workflow.name
    );
    let query = [
        ("action", action.to_string()),
        ("after", u64::MAX.to_string()),
    ];
    let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output: OutputView = client.get_with_query(&path, &query)?;
    let Some(progress) = output.progress.get(&(action as u32)) else {
        return Ok(());
    };
    let shown = bytes.get_or_insert_with(|| {
        let bar = bars.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template(
                "  {prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ({elapsed})",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_prefix(run.actions[action].name.clone());
        BytesBar { bar, action }
    });
    shown
        .bar
        .set_length(progress.total.unwrap_or(progress.bytes));
    shown.bar.set_position(progress.bytes);
    shown
        .bar
        .set_message(format!("{}/s", HumanBytes(progress.bytes_per_second)));
    Ok(())
}

/// `wisp get KIND --watch`: the table, then a line for each resource that changes or comes,
/// and for each that goes, until interrupted. Hardware rows carry their machine's stage of
/// provisioning, which is what changes during a rollout.
pub fn resources(
    client: &Client,
    kind: Kind,
    namespace: Option<&str>,
    wide: bool,
) -> CliResult<()> {
    let mut shown: HashMap<ResourceKey, Vec<String>> = HashMap::new();
    let mut widths: Option<Vec<usize>> = None;
    loop {
        let views = list(client, kind, namespace, None, Reveal(false))?;
        let (mut header, mut rows) = output::columns(kind, &views, wide);
        if kind == Kind::Hardware {
            let rack: Vec<RackRow> = client.get("/v1/rack")?;
            let stages: HashMap<&str, &RackRow> =
                rack.iter().map(|row| (row.name.as_str(), row)).collect();
            header.push("STAGE");
            for (view, row) in views.iter().zip(&mut rows) {
                let name = format!("{}/{}", view.key.namespace, view.key.name);
                row.push(
                    stages
                        .get(name.as_str())
                        .map_or_else(|| "-".to_string(), |row| row.stage.as_str().to_string()),
                );
            }
        }
        let now: HashMap<ResourceKey, Vec<String>> = views
            .iter()
            .map(|view| view.key.clone())
            .zip(rows.iter().cloned())
            .collect();
        match &widths {
            None if rows.is_empty() => {}
            None => widths = Some(output::table(&header, &rows)),
            Some(widths) => {
                for (key, row) in views.iter().map(|view| &view.key).zip(&rows) {
                    if shown.get(key) != Some(row) {
                        output::table_line(row, widths);
                    }
                }
                for (key, row) in &shown {
                    if !now.contains_key(key) {
                        let mut row = row.clone();
                        row.push("(deleted)".into());
                        output::table_line(&row, widths);
                    }
                }
            }
        }
        shown = now;
        std::thread::sleep(POLL_PERIOD);
    }
}
