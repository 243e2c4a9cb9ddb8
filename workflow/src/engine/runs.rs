//! The runs an appliance keeps in memory, and how their changes reach the store.
//!
//! Appliances that share a store (etcd) may each change a run: a worker reports to whichever
//! answers. So a change is written only over the run it was decided from (compare-and-swap on
//! the run's version), and one found stale is not made: its caller decides again from the
//! store. Changes this appliance queues to one run follow each other in its writer's order,
//! each over the one before it, without waiting for it.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::EngineState;
use crate::{
    resource::ResourceKey,
    run::WorkflowStatus,
    store::{RunChange, RunWritten, Store, StoreError, StoredRun},
};

/// Every workflow's run that this appliance knows of.
#[derive(Default)]
pub(super) struct Runs {
    kept: HashMap<ResourceKey, Kept>,
    /// The number of the last write this appliance queued.
    last_write: u64,
}

struct Kept {
    status: WorkflowStatus,
    at: At,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// As stored at this version.
    Stored(u64),
    /// Changed here, by the write of this number, which is on its way to the store.
    Queued(u64),
}

/// A run's change on its way to the writer.
pub(super) struct QueuedRun {
    key: ResourceKey,
    status: WorkflowStatus,
    /// The version the change was decided from; `None`: over this appliance's previous write
    /// of the run.
    read_at: Option<u64>,
    write: u64,
}

impl Runs {
    pub(super) fn from_store(stored: Vec<(ResourceKey, StoredRun)>) -> Runs {
        let kept = stored
            .into_iter()
            .map(|(key, run)| {
                let kept = Kept {
                    status: run.status,
                    at: At::Stored(run.version),
                };
                (key, kept)
            })
            .collect();
        Runs {
            kept,
            last_write: 0,
        }
    }

    /// Takes every run from the store, as after a failed commit: memory must not keep a
    /// change the store does not have. The writes' numbering goes on.
    pub(super) fn replace(&mut self, stored: Vec<(ResourceKey, StoredRun)>) {
        let last_write = self.last_write;
        *self = Runs::from_store(stored);
        self.last_write = last_write;
    }

    /// Takes every run as the store has it (see [`Runs::observe`]), after a watch lost track.
    pub(super) fn observe_all(&mut self, stored: Vec<(ResourceKey, StoredRun)>) {
        let listed: std::collections::HashSet<ResourceKey> =
            stored.iter().map(|(key, _)| key.clone()).collect();
        let gone: Vec<ResourceKey> = self
            .kept
            .keys()
            .filter(|key| !listed.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            self.observe(&key, None);
        }
        for (key, run) in stored {
            self.observe(&key, Some(run));
        }
    }

    pub(super) fn get(&self, key: &ResourceKey) -> Option<&WorkflowStatus> {
        self.kept.get(key).map(|kept| &kept.status)
    }

    pub(super) fn contains_key(&self, key: &ResourceKey) -> bool {
        self.kept.contains_key(key)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&ResourceKey, &WorkflowStatus)> {
        self.kept.iter().map(|(key, kept)| (key, &kept.status))
    }

    pub(super) fn remove(&mut self, key: &ResourceKey) {
        self.kept.remove(key);
    }

    /// Keeps a change made here, and returns it numbered, for the writer.
    pub(super) fn change(&mut self, key: &ResourceKey, status: WorkflowStatus) -> QueuedRun {
        self.last_write += 1;
        let write = self.last_write;
        let read_at = match self.kept.get(key).map(|kept| kept.at) {
            Some(At::Stored(version)) => Some(version),
            Some(At::Queued(_)) => None,
            None => Some(0),
        };
        self.kept.insert(
            key.clone(),
            Kept {
                status: status.clone(),
                at: At::Queued(write),
            },
        );
        QueuedRun {
            key: key.clone(),
            status,
            read_at,
            write,
        }
    }

    /// Takes a run as the store has it (`None`: it has none), unless what is kept is as new:
    /// a change of this appliance's on its way is newer, or will be found stale.
    pub(super) fn observe(&mut self, key: &ResourceKey, stored: Option<StoredRun>) {
        let at = self.kept.get(key).map(|kept| kept.at);
        match (at, stored) {
            (Some(At::Queued(_)), _) => {}
            (Some(At::Stored(version)), Some(run)) if run.version <= version => {}
            (_, Some(run)) => {
                let kept = Kept {
                    status: run.status,
                    at: At::Stored(run.version),
                };
                self.kept.insert(key.clone(), kept);
            }
            (Some(At::Stored(_)), None) => {
                self.kept.remove(key);
            }
            (None, None) => {}
        }
    }

    /// A run whose last change here, the write numbered `write`, failed: kept until the store
    /// is read again, and then replaced by whatever the store has (version 0 is older than any
    /// stored one). Kept as queued, a watch or a read of the store would never replace it.
    fn unsettle(&mut self, key: &ResourceKey, write: u64) {
        if let Some(kept) = self
            .kept
            .get_mut(key)
            .filter(|kept| kept.at == At::Queued(write))
        {
            kept.at = At::Stored(0);
        }
    }

    /// Whether a run was last changed here, by the write numbered `write`.
    fn last_changed_by(&self, key: &ResourceKey, write: u64) -> bool {
        self.kept
            .get(key)
            .is_some_and(|kept| kept.at == At::Queued(write))
    }
}

/// The writer's memory: the version each run has after this appliance's last write of it, so
/// that a change queued over that write is written over its version. A run whose last write
/// was not made is absent: what was queued over it is stale.
#[derive(Default)]
pub(super) struct Written(HashMap<ResourceKey, u64>);

/// Writes a batch of queued changes (`None`: a barrier, which writes nothing): one change per
/// run, the last, over the version the first of its run's changes was decided from. Each
/// queued change hears what became of it.
pub(super) fn commit(
    store: &dyn Store,
    state: &Mutex<EngineState>,
    written: &mut Written,
    batch: Vec<Option<QueuedRun>>,
) -> Vec<Result<RunWritten, Arc<StoreError>>> {
    // Per run, the changes of the batch that its written change carries: those since the last
    // one decided from the store (a change decided from the store does not carry the ones
    // queued before it, which it replaced in memory: they are stale).
    let mut outcomes: Vec<Option<RunWritten>> = batch
        .iter()
        .map(|queued| queued.is_none().then_some(RunWritten::Stored(0)))
        .collect();
    let mut carried: HashMap<&ResourceKey, Vec<usize>> = HashMap::new();
    for (index, queued) in batch.iter().enumerate() {
        let Some(queued) = queued else { continue };
        let run = carried.entry(&queued.key).or_default();
        if queued.read_at.is_some() {
            for earlier in run.drain(..) {
                outcomes[earlier] = Some(RunWritten::Stale);
            }
        }
        run.push(index);
    }
    let mut changes = Vec::with_capacity(carried.len());
    let mut carriers = Vec::with_capacity(carried.len());
    for indices in carried.into_values() {
        let (first, last) = (&batch[indices[0]], &batch[indices[indices.len() - 1]]);
        let (Some(first), Some(last)) = (first, last) else {
            continue;
        };
        let read_at = match first.read_at {
            Some(version) => Some(version),
            None => written.0.get(&first.key).copied(),
        };
        let Some(read_at) = read_at else {
            for index in indices {
                outcomes[index] = Some(RunWritten::Stale);
            }
            continue;
        };
        changes.push(RunChange {
            key: last.key.clone(),
            status: last.status.clone(),
            read_at,
        });
        carriers.push(indices);
    }
    let stored = match store.put_workflow_statuses(&changes) {
        Ok(stored) => stored,
        Err(err) => {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            for (change, indices) in changes.iter().zip(&carriers) {
                written.0.remove(&change.key);
                if let Some(Some(last)) = indices.last().map(|&index| &batch[index]) {
                    state.runs.unsettle(&change.key, last.write);
                }
            }
            let err = Arc::new(err);
            return batch.iter().map(|_| Err(Arc::clone(&err))).collect();
        }
    };
    let mut stale = Vec::new();
    {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        for ((change, indices), outcome) in changes.iter().zip(&carriers).zip(stored) {
            let Some(Some(last)) = indices.last().map(|&index| &batch[index]) else {
                continue;
            };
            let ours = state.runs.last_changed_by(&change.key, last.write);
            match outcome {
                RunWritten::Stored(version) => {
                    written.0.insert(change.key.clone(), version);
                    if ours {
                        state.runs.kept.insert(
                            change.key.clone(),
                            Kept {
                                status: change.status.clone(),
                                at: At::Stored(version),
                            },
                        );
                    }
                }
                RunWritten::Stale | RunWritten::WorkflowGone => {
                    written.0.remove(&change.key);
                    if ours {
                        state.runs.remove(&change.key);
                        stale.push(change.key.clone());
                    }
                }
            }
            for &index in indices {
                outcomes[index] = Some(outcome);
            }
        }
    }
    // What another appliance made of the runs this one's changes were stale on, kept for the
    // next decision and for the views.
    for key in stale {
        if let Ok(stored) = store.workflow_status(&key) {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            if !state.runs.contains_key(&key) {
                state.runs.observe(&key, stored);
            }
        }
    }
    outcomes
        .into_iter()
        .map(|outcome| Ok(outcome.unwrap_or(RunWritten::Stale)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{resource::Kind, run::State};

    fn key(name: &str) -> ResourceKey {
        ResourceKey {
            kind: Kind::Workflow,
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn run(state: State, version: u64) -> StoredRun {
        let mut status = WorkflowStatus::failed_to_start("x".into(), std::time::UNIX_EPOCH);
        status.state = state;
        StoredRun { status, version }
    }

    #[test]
    fn a_change_is_decided_from_the_version_kept_and_chains_behind_its_own() {
        let mut runs = Runs::from_store(vec![(key("a"), run(State::Running, 7))]);
        let first = runs.change(&key("a"), run(State::Success, 0).status);
        assert_eq!(first.read_at, Some(7));
        let second = runs.change(&key("a"), run(State::Failed, 0).status);
        assert_eq!(second.read_at, None);
        assert_eq!(
            runs.change(&key("new"), run(State::Pending, 0).status)
                .read_at,
            Some(0)
        );
        // What the store says meanwhile does not replace a change on its way.
        runs.observe(&key("a"), Some(run(State::Timeout, 9)));
        assert_eq!(runs.get(&key("a")).map(|s| s.state), Some(State::Failed));
    }

    #[test]
    fn the_store_replaces_only_an_older_stored_run() {
        let mut runs = Runs::from_store(vec![(key("a"), run(State::Running, 7))]);
        runs.observe(&key("a"), Some(run(State::Success, 5)));
        assert_eq!(runs.get(&key("a")).map(|s| s.state), Some(State::Running));
        runs.observe(&key("a"), Some(run(State::Success, 8)));
        assert_eq!(runs.get(&key("a")).map(|s| s.state), Some(State::Success));
        runs.observe(&key("a"), None);
        assert!(!runs.contains_key(&key("a")));
    }
}
