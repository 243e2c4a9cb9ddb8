//! Group commit: changes that arrive together share one transaction and one fsync, so a rack of
//! machines acting at once is not limited by the disk's sync rate. Each caller hears how its own
//! change went only once it is durable, and changes are written in the order they were queued.
use std::{future::Future, sync::Arc};

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Why a queued change was not made durable.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CommitError {
    /// The commit that carried it failed; every change of that commit shares the one error.
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the {0} has stopped")]
    Stopped(&'static str),
    #[error("the {count}-change commit returned too few outcomes")]
    Incomplete { count: usize },
}

type Pending<C, R> = (C, oneshot::Sender<Result<R, CommitError>>);

pub struct GroupCommit<C, R> {
    name: &'static str,
    queue: mpsc::UnboundedSender<Pending<C, R>>,
}

impl<C, R> Clone for GroupCommit<C, R> {
    fn clone(&self) -> Self {
        GroupCommit {
            name: self.name,
            queue: self.queue.clone(),
        }
    }
}

impl<C: Send + 'static, R: Send + 'static> GroupCommit<C, R> {
    /// Starts the writer thread, which ends when the last handle is dropped. `commit` writes up
    /// to `max_batch` changes, in order, and returns one outcome per change.
    pub fn start(
        name: &'static str,
        max_batch: usize,
        mut commit: impl FnMut(Vec<C>) -> Vec<Result<R, Arc<StoreError>>> + Send + 'static,
    ) -> GroupCommit<C, R> {
        let (queue, mut pending) = mpsc::unbounded_channel::<Pending<C, R>>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Some(first) = pending.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < max_batch {
                        match pending.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let (changes, waiting): (Vec<C>, Vec<_>) = batch.into_iter().unzip();
                    let count = changes.len();
                    let mut outcomes = commit(changes).into_iter();
                    for done in waiting {
                        let outcome = match outcomes.next() {
                            Some(outcome) => outcome.map_err(CommitError::Store),
                            None => Err(CommitError::Incomplete { count }),
                        };
                        let _ = done.send(outcome);
                    }
                }
            })
            .expect("spawning a group-commit writer thread");
        GroupCommit { name, queue }
    }

    /// Queues the change now, and returns a future that completes once it is durable. Queueing
    /// at the call, not at the first poll, keeps changes in the order their callers made them.
    pub fn submit(
        &self,
        change: C,
    ) -> impl Future<Output = Result<R, CommitError>> + Send + use<C, R> {
        let (done, applied) = oneshot::channel();
        let stopped = CommitError::Stopped(self.name);
        let queued = self.queue.send((change, done)).map_err(|_| stopped.clone());
        async move {
            queued?;
            applied.await.map_err(|_| stopped)?
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn changes_queued_together_share_a_commit_in_order() {
        let commits = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&commits);
        let (entered, first_commit_started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        // The first commit is held until the rest have queued behind it.
        let writer = GroupCommit::start("test-writer", 100, move |batch: Vec<u32>| {
            if seen.lock().unwrap().is_empty() {
                entered.send(()).unwrap();
                released.recv().unwrap();
            }
            seen.lock().unwrap().push(batch.clone());
            batch.into_iter().map(|n| Ok(n * 10)).collect()
        });
        let first = writer.submit(1);
        first_commit_started.recv().unwrap();
        let rest: Vec<_> = (2..=5).map(|n| writer.submit(n)).collect();
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 10);
        for (n, outcome) in (2..=5).zip(rest) {
            assert_eq!(outcome.await.unwrap(), n * 10);
        }
        assert_eq!(*commits.lock().unwrap(), [vec![1], vec![2, 3, 4, 5]]);
    }

    #[tokio::test]
    async fn a_failed_commit_fails_each_of_its_changes_with_one_shared_error() {
        let (entered, first_commit_started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let writer = GroupCommit::start("test-writer", 100, move |batch: Vec<u32>| {
            if batch == [0] {
                entered.send(()).unwrap();
                released.recv().unwrap();
                return vec![Ok(0)];
            }
            let failed = Arc::new(StoreError::Backend {
                store: "test",
                source: "disk full".into(),
            });
            vec![Err(failed); batch.len()]
        });
        let first = writer.submit(0);
        first_commit_started.recv().unwrap();
        let rest: Vec<_> = (1..=3).map(|n| writer.submit(n)).collect();
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 0);
        let mut errors = Vec::new();
        for outcome in rest {
            match outcome.await {
                Err(CommitError::Store(err)) => errors.push(err),
                other => panic!("expected the commit's error, got {other:?}"),
            }
        }
        assert_eq!(errors[0].to_string(), "store (test): disk full");
        assert!(errors.iter().all(|err| Arc::ptr_eq(err, &errors[0])));
    }
}
