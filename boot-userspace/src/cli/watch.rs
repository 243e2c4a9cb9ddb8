//! `wisp watch workflow NAME`: follows a workflow live, with a progress bar over its actions and
//! a line for each change of state, until it finishes.
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use workflow::{
    resource::Kind,
    run::{State, WorkflowStatus},
};

use super::{
    client::{CliError, CliResult, Client},
    find, output,
};

const POLL_PERIOD: Duration = Duration::from_millis(500);

pub fn workflow(client: &Client, name: &str, namespace: Option<&str>) -> CliResult<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {wide_msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
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
        let current = run.current().map(|i| run.actions[i].name.as_str());
        bar.set_message(format!(
            "{} {}{}",
            view.key.name,
            run.state,
            current.map(|c| format!(": {c}")).unwrap_or_default()
        ));
        if run.state.is_final() {
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
