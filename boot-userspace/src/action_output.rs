//! What running actions print and how far they are, as their workers send it
//! (`wisp.v1.ActionOutput`): the last lines of each action, kept across restarts in
//! `output.jsonl` (a [`Journal`]) for `wisp logs` and the rack page, and each running action's
//! latest progress, in memory only (it means something only while the action runs).
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use crate::journal::{now_ms, Bounds, Entry, Journal};

/// Lines kept per action: what an operator reads to learn why it failed.
pub const PER_ACTION: usize = 200;
/// Actions whose output is kept, the most recently active: a 10,000-machine rollout's current
/// actions, and then some.
const ACTIONS: usize = 16_384;
/// The longest line kept, in bytes; the rest is cut.
pub const MAX_LINE: usize = 512;
const FILE: &str = "output.jsonl";

/// One action of one workflow run: the workflow, `namespace/name`, and the action's index.
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
        })
    }

    /// Keeps `lines`, the action's lines from index `first` on, but for those it already has
    /// (a request sent again); returns how many were new.
    pub fn append(&self, key: &ActionKey, first: u64, lines: &[String]) -> usize {
        let next = self
            .lines
            .rings()
            .get(key)
            .and_then(|ring| ring.back())
            .map_or(0, |line| line.seq + 1);
        let at_ms = now_ms();
        let mut added = 0;
        for (seq, line) in (first..).zip(lines) {
            if seq < next {
                continue;
            }
            self.lines.record(OutputLine {
                at_ms,
                workflow: key.workflow.clone(),
                action: key.action,
                seq,
                line: cut(line),
            });
            added += 1;
        }
        added
    }

    pub fn set_progress(&self, key: ActionKey, progress: Progress) {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, progress);
    }

    pub fn progress(&self, key: &ActionKey) -> Option<Progress> {
        let progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        progress.get(key).copied()
    }

    /// The progress of the workflow's actions that have one, by action.
    pub fn progress_of(&self, workflow: &str) -> BTreeMap<u32, Progress> {
        let progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        progress
            .iter()
            .filter(|(key, _)| key.workflow == workflow)
            .map(|(key, progress)| (key.action, *progress))
            .collect()
    }

    /// Forgets an action's progress: it ended.
    pub fn ended(&self, key: &ActionKey) {
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        progress.remove(key);
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

/// `line` cut to [`MAX_LINE`] bytes, on a character boundary.
fn cut(line: &str) -> String {
    if line.len() <= MAX_LINE {
        return line.to_string();
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} …", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_sent_again_are_kept_once_and_long_ones_are_cut() {
        let dir = tempfile::tempdir().expect("a directory");
        let outputs = ActionOutputs::open(dir.path(), Default::default()).expect("open");
        let key = ActionKey {
            workflow: "lab/wf".into(),
            action: 1,
        };
        let lines = |texts: &[&str]| texts.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert_eq!(outputs.append(&key, 0, &lines(&["a", "b"])), 2);
        // The answer was lost: the worker sends b again, with c.
        assert_eq!(outputs.append(&key, 1, &lines(&["b", "c"])), 1);
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
    }
}
