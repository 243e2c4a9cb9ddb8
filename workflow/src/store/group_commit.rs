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
    /// As many changes as the queue holds are waiting for the disk: this one is refused at
    /// once rather than held in memory without bound.
    #[error("the {0} is full: {1} changes are waiting for the disk")]
    Full(&'static str, usize),
    #[error("the {count}-change commit returned too few outcomes")]
    Incomplete { count: usize },
}

type Pending<C, R> = (C, oneshot::Sender<Result<R, CommitError>>);

pub struct GroupCommit<C, R> {
    name: &'static str,
    queue: mpsc::Sender<Pending<C, R>>,
    limit: usize,
}

impl<C, R> Clone for GroupCommit<C, R> {
    fn clone(&self) -> Self {
        GroupCommit {
            name: self.name,
            queue: self.queue.clone(),
            limit: self.limit,
        }
    }
}

impl<C: Send + 'static, R: Send + 'static> GroupCommit<C, R> {
    /// Starts the writer thread, which ends when the last handle is dropped. `commit` writes up
    /// to `max_batch` changes, in order, and returns one outcome per change. At most `limit`
    /// changes wait at once; more are refused with [`CommitError::Full`].
    pub fn start(
        name: &'static str,
        max_batch: usize,
        limit: usize,
        mut commit: impl FnMut(Vec<C>) -> Vec<Result<R, Arc<StoreError>>> + Send + 'static,
    ) -> GroupCommit<C, R> {
        let (queue, mut pending) = mpsc::channel::<Pending<C, R>>(limit);
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
        GroupCommit { name, queue, limit }
    }

    /// Queues the change now, and returns a future that completes once it is durable. Queueing
    /// at the call, not at the first poll, keeps changes in the order their callers made them.
    pub fn submit(
        &self,
        change: C,
    ) -> impl Future<Output = Result<R, CommitError>> + Send + use<C, R> {
        let (done, applied) = oneshot::channel();
        let stopped = CommitError::Stopped(self.name);
        let queued = self
            .queue
            .try_send((change, done))
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => CommitError::Full(self.name, self.limit),
                mpsc::error::TrySendError::Closed(_) => stopped.clone(),
            });
        async move {
            queued?;
            applied.await.map_err(|_| stopped)?
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{mpsc as std_mpsc, Arc, Mutex};

    use super::*;

    /// A writer whose first commit waits until `release` is sent, so that the changes queued
    /// meanwhile meet behind it; `commit` writes every batch.
    struct Held {
        writer: GroupCommit<u32, u32>,
        first_commit_started: std_mpsc::Receiver<()>,
        release: std_mpsc::Sender<()>,
    }

    fn held(
        limit: usize,
        mut commit: impl FnMut(Vec<u32>) -> Vec<Result<u32, Arc<StoreError>>> + Send + 'static,
    ) -> Held {
        let (entered, first_commit_started) = std_mpsc::channel();
        let (release, released) = std_mpsc::channel::<()>();
        let mut first = true;
        let writer = GroupCommit::start("test-writer", 100, limit, move |batch: Vec<u32>| {
            if std::mem::take(&mut first) {
                entered.send(()).unwrap();
                released.recv().unwrap();
            }
            commit(batch)
        });
        Held {
            writer,
            first_commit_started,
            release,
        }
    }

    #[tokio::test]
    async fn changes_queued_together_share_a_commit_in_order() {
        let commits = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&commits);
        let held = held(100, move |batch| {
            seen.lock().unwrap().push(batch.clone());
            batch.into_iter().map(|n| Ok(n * 10)).collect()
        });
        let first = held.writer.submit(1);
        held.first_commit_started.recv().unwrap();
        let rest: Vec<_> = (2..=5).map(|n| held.writer.submit(n)).collect();
        held.release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 10);
        for (n, outcome) in (2..=5).zip(rest) {
            assert_eq!(outcome.await.unwrap(), n * 10);
        }
        assert_eq!(*commits.lock().unwrap(), [vec![1], vec![2, 3, 4, 5]]);
    }

    #[tokio::test]
    async fn a_failed_commit_fails_each_of_its_changes_with_one_shared_error() {
        let held = held(100, |batch| {
            if batch == [0] {
                return vec![Ok(0)];
            }
            let failed = Arc::new(StoreError::Backend {
                store: "test",
                source: "disk full".into(),
            });
            vec![Err(failed); batch.len()]
        });
        let first = held.writer.submit(0);
        held.first_commit_started.recv().unwrap();
        let rest: Vec<_> = (1..=3).map(|n| held.writer.submit(n)).collect();
        held.release.send(()).unwrap();
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

    #[tokio::test]
    async fn beyond_its_limit_a_change_is_refused_at_once() {
        let held = held(2, |batch| batch.into_iter().map(Ok).collect());
        let first = held.writer.submit(0);
        held.first_commit_started.recv().unwrap();
        // The writer holds the first; two more fill the queue, and the next is refused.
        let (second, third) = (held.writer.submit(1), held.writer.submit(2));
        match held.writer.submit(3).await {
            Err(CommitError::Full("test-writer", 2)) => {}
            other => panic!("expected the queue to be full, got {other:?}"),
        }
        held.release.send(()).unwrap();
        assert_eq!(
            (
                first.await.unwrap(),
                second.await.unwrap(),
                third.await.unwrap()
            ),
            (0, 1, 2)
        );
        assert_eq!(
            held.writer.submit(4).await.unwrap(),
            4,
            "room again once written"
        );
    }
}
