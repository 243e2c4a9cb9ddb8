//! What running actions print and how far they are, as their workers send it
//! (`wisp.v1.ActionOutput`): the last lines of each action, kept across restarts in
//! `output.jsonl` (a [`Journal`]) for `wisp logs` and the rack page, and each running action's
//! latest progress, in memory only (it means something only while the action runs).
//!
//! Only a running action's worker may send: the actions handed out are kept here with their
//! machine, so that a call is checked without the engine. An action handed out again (its
//! worker or its machine restarted) starts its output again.
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Mutex,
};

use serde::{Deserialize, Serialize};
use workflow::resource::ResourceKey;

use crate::journal::{now_ms, Bounds, Entry, Journal};

/// Lines kept per action (each cut to `wisp_proto::MAX_OUTPUT_LINE` bytes): what an operator
/// reads to learn why it failed.
pub const PER_ACTION: usize = 200;
/// Actions whose output is kept, the most recently active: a 10,000-machine rollout's current
/// actions, and then some.
const ACTIONS: usize = 16_384;
const FILE: &str = "output.jsonl";

/// One action of a workflow: the workflow, `namespace/name`, and the action's index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActionKey {
    pub workflow: String,
    pub action: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLine {
    pub at_ms: u64,
    pub workflow: String,
    pub action: u32,
    /// Its index among all the lines the action printed (the first is 0).
    pub seq: u64,
    pub line: String,
    /// Marks a new start of the action in the journal: the lines before it are gone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reset: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

impl Entry for OutputLine {
    type Key = ActionKey;

    fn key(&self) -> ActionKey {
        ActionKey {
            workflow: self.workflow.clone(),
            action: self.action,
        }
    }

    fn at_ms(&self) -> u64 {
        self.at_ms
    }

    fn resets(&self) -> bool {
        self.reset
    }
}

/// How far a running action is, as its worker last said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub bytes: u64,
    /// `None` when the worker cannot know (a compressed stream).
    pub total: Option<u64>,
    pub bytes_per_second: u64,
    /// When the worker said so, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

pub struct ActionOutputs {
    lines: Journal<OutputLine>,
    progress: Mutex<HashMap<ActionKey, Progress>>,
    /// The actions running, with their machine's Hardware.
    running: Mutex<HashMap<ActionKey, ResourceKey>>,
}

impl ActionOutputs {
    pub fn open(
        data_dir: &Path,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> anyhow::Result<ActionOutputs> {
        let bounds = Bounds {
            per_key: PER_ACTION,
            keys: ACTIONS,
        };
        Ok(ActionOutputs {
            lines: Journal::open(data_dir.join(FILE), bounds, dropped)?,
            progress: Mutex::default(),
            running: Mutex::default(),
        })
    }

    /// The action was handed out to the machine of `hardware`: it runs, from its start.
    pub fn handed_out(&self, key: ActionKey, hardware: ResourceKey) {
        self.lines.record(OutputLine {
            at_ms: now_ms(),
            workflow: key.workflow.clone(),
            action: key.action,
            seq: 0,
            line: String::new(),
            reset: true,
        });
        self.lock_progress().remove(&key);
        self.lock_running().insert(key, hardware);
    }

    /// The action runs on the machine of `hardware`, as the engine says (handed out before a
    /// restart, or by another appliance).
    pub fn runs(&self, key: ActionKey, hardware: ResourceKey) {
        self.lock_running().insert(key, hardware);
    }

    /// Whether the action is known to run on the machine of `hardware`.
    pub fn runs_on(&self, key: &ActionKey, hardware: &ResourceKey) -> bool {
        self.lock_running().get(key) == Some(hardware)
    }

    /// The action ended: no more output or progress for it.
    pub fn ended(&self, key: &ActionKey) {
        self.lock_running().remove(key);
        self.lock_progress().remove(key);
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<ActionKey, ResourceKey>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_progress(&self) -> std::sync::MutexGuard<'_, HashMap<ActionKey, Progress>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `lines`, the action's lines from index `first` on, but for those it already has
    /// (a request sent again).
    pub fn append(&self, key: &ActionKey, first: u64, lines: &[String]) {
        let at_ms = now_ms();
        self.lines.record_with(|rings| {
            let next = rings
                .get(key)
                .and_then(|ring| ring.back())
                .map_or(0, |line| line.seq.saturating_add(1));
            (first..)
                .zip(lines)
                .filter(|(seq, _)| *seq >= next)
                .map(|(seq, line)| OutputLine {
                    at_ms,
                    workflow: key.workflow.clone(),
                    action: key.action,
                    seq,
                    line: wisp_proto::output_line(line),
                    reset: false,
                })
                .collect()
        });
    }

    /// The running action's progress (of an action that does not run, none is kept).
    pub fn set_progress(&self, key: ActionKey, progress: Progress) {
        if self.lock_running().contains_key(&key) {
            self.lock_progress().insert(key, progress);
        }
    }

    pub fn progress(&self, key: &ActionKey) -> Option<Progress> {
        self.lock_progress().get(key).copied()
    }

    /// The progress of the workflow's actions that have one, by action.
    pub fn progress_of(&self, workflow: &str) -> BTreeMap<u32, Progress> {
        self.lock_progress()
            .iter()
            .filter(|(key, _)| key.workflow == workflow)
            .map(|(key, progress)| (key.action, *progress))
            .collect()
    }

    /// The workflow's kept lines (of one action, or of all) with an index of `after` or more,
    /// by action, in order.
    pub fn lines(&self, workflow: &str, action: Option<u32>, after: u64) -> Vec<OutputLine> {
        let rings = self.lines.rings();
        let mut lines: Vec<OutputLine> = rings
            .iter()
            .filter(|(key, _)| {
                key.workflow == workflow && action.is_none_or(|action| key.action == action)
            })
            .flat_map(|(_, ring)| ring.iter().filter(|line| line.seq >= after).cloned())
            .collect();
        lines.sort_by_key(|line| (line.action, line.seq));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_sent_again_are_kept_once_long_ones_are_cut_and_a_new_start_empties_them() {
        let dir = tempfile::tempdir().expect("a directory");
        let outputs = ActionOutputs::open(dir.path(), Default::default()).expect("open");
        let key = ActionKey {
            workflow: "lab/wf".into(),
            action: 1,
        };
        let lines = |texts: &[&str]| texts.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        outputs.append(&key, 0, &lines(&["a", "b"]));
        // The answer was lost: the worker sends b again, with c.
        outputs.append(&key, 1, &lines(&["b", "c"]));
        let other = ActionKey {
            workflow: "lab/wf".into(),
            action: 0,
        };
        outputs.append(&other, 0, &lines(&["first", &"é".repeat(400)]));
        let kept: Vec<(u32, u64, String)> = outputs
            .lines("lab/wf", None, 0)
            .into_iter()
            .map(|line| (line.action, line.seq, line.line))
            .collect();
        assert_eq!(kept.len(), 5);
        assert_eq!(kept[0], (0, 0, "first".to_string()));
        assert_eq!(kept[1].2, format!("{} …", "é".repeat(256)));
        assert_eq!(
            kept[2..],
            [(1, 0, "a".into()), (1, 1, "b".into()), (1, 2, "c".into())]
        );
        assert_eq!(outputs.lines("lab/wf", Some(1), 2).len(), 1);
        assert_eq!(outputs.lines("lab/wf", Some(0), 0).len(), 2);
        assert!(outputs.lines("lab/other", None, 0).is_empty());
        // Handed out again, the action starts over, from its first line; and that outlives a
        // restart.
        let hardware = ResourceKey {
            kind: workflow::resource::Kind::Hardware,
            namespace: "lab".into(),
            name: "m".into(),
        };
        outputs.handed_out(key.clone(), hardware.clone());
        assert!(outputs.runs_on(&key, &hardware));
        outputs.append(&key, 0, &lines(&["again"]));
        let again = |outputs: &ActionOutputs| -> Vec<String> {
            outputs
                .lines("lab/wf", Some(1), 0)
                .into_iter()
                .map(|line| line.line)
                .collect()
        };
        assert_eq!(again(&outputs), ["again"]);
        drop(outputs);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let reopened = ActionOutputs::open(dir.path(), Default::default()).expect("reopen");
        assert_eq!(again(&reopened), ["again"]);
        assert_eq!(reopened.lines("lab/wf", Some(0), 0).len(), 2);
        // Progress is kept only for an action that runs.
        let progress = Progress {
            bytes: 1,
            total: None,
            bytes_per_second: 0,
            at_ms: 0,
        };
        reopened.set_progress(key.clone(), progress);
        assert_eq!(reopened.progress(&key), None);
        reopened.runs(key.clone(), hardware);
        reopened.set_progress(key.clone(), progress);
        assert_eq!(reopened.progress(&key), Some(progress));
        reopened.ended(&key);
        assert_eq!(reopened.progress(&key), None);
    }
}
