//! `wisp logs WORKFLOW [ACTION] [-f]`: what a workflow's actions printed, as their worker sent
//! it; with `-f`, followed until the workflow ends.
use std::{collections::HashMap, time::Duration};

use boot_userspace::{action_output::OutputLine, api::OutputView};
use workflow::resource::Kind;

use super::{
    client::{CliError, CliResult, Client},
    find,
};

const POLL_PERIOD: Duration = Duration::from_millis(500);

pub fn run(
    client: &Client,
    name: &str,
    action: Option<&str>,
    namespace: Option<&str>,
    follow: bool,
) -> CliResult<()> {
    let view = find(client, Kind::Workflow, name, namespace)?;
    let key = view.key;
    let names_of = |run: Option<&workflow::run::WorkflowStatus>| -> Vec<String> {
        run.map(|run| run.actions.iter().map(|a| a.name.clone()).collect())
            .unwrap_or_default()
    };
    let mut names = names_of(view.run.as_ref());
    // An action by its name, or by its number (from 1, as `wisp watch` counts them).
    let only = match action {
        None => None,
        Some(action) => Some(
            names
                .iter()
                .position(|name| name == action)
                .or_else(|| {
                    action
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=names.len()).contains(n))
                        .map(|n| n - 1)
                })
                .ok_or_else(|| {
                    CliError(format!(
                        "workflow {} has no action {action:?} (its actions: {})",
                        key.name,
                        names.join(", ")
                    ))
                })?,
        ),
    };
    let path = format!("/v1/workflows/{}/{}/output", key.namespace, key.name);
    // The next line to print, by action.
    let mut next: HashMap<u32, u64> = HashMap::new();
    let mut printed_any = false;
    loop {
        // Whether the workflow had ended before this read: then the read has everything.
        let mut ended = false;
        if follow {
            let run = find(client, Kind::Workflow, &key.name, Some(&key.namespace))?.run;
            ended = run.as_ref().is_some_and(|run| run.state.is_final());
            if names.is_empty() {
                names = names_of(run.as_ref());
            }
        }
        let mut query = Vec::new();
        if let Some(index) = only {
            query.push(("action", index.to_string()));
            query.push((
                "after",
                next.get(&(index as u32)).copied().unwrap_or(0).to_string(),
            ));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let output: OutputView = client.get_with_query(&path, &query)?;
        for line in output.lines {
            let expected = next.entry(line.action).or_insert(0);
            if line.seq < *expected {
                continue;
            }
            if line.seq > *expected && *expected > 0 {
                println!("… {} lines not kept", line.seq - *expected);
            }
            *expected = line.seq + 1;
            print(&line, &names, only.is_none());
            printed_any = true;
        }
        if !follow || ended {
            break;
        }
        std::thread::sleep(POLL_PERIOD);
    }
    if !printed_any {
        eprintln!(
            "No output kept for workflow {}{}.",
            key.name,
            only.map(|i| format!(", action {}", names[i]))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn print(line: &OutputLine, names: &[String], with_action: bool) {
    if with_action {
        let name = names
            .get(line.action as usize)
            .map_or_else(|| line.action.to_string(), Clone::clone);
        println!("[{name}] {}", line.line);
    } else {
        println!("{}", line.line);
    }
}
