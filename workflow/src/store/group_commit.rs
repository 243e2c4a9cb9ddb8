//! Group commit: changes that arrive together share one transaction and one fsync, so a rack of
//! machines acting at once is not limited by the disk's sync rate. Each caller hears how its own
//! change went only once it is durable, and changes are written in the order they were queued.
use std::future::Future;

use tokio::sync::{mpsc, oneshot};

type Pending<C, R> = (C, oneshot::Sender<Result<R, String>>);

pub struct GroupCommit<C, R> {
    queue: mpsc::UnboundedSender<Pending<C, R>>,
}

impl<C, R> Clone for GroupCommit<C, R> {
    fn clone(&self) -> Self {
        GroupCommit {
            queue: self.queue.clone(),
        }
    }
}

impl<C: Send + 'static, R: Send + 'static> GroupCommit<C, R> {
    /// Starts the writer thread, which ends when the last handle is dropped. `commit` writes up
    /// to `max_batch` changes, in order, and returns one outcome per change.
    pub fn start(
        name: &str,
        max_batch: usize,
        mut commit: impl FnMut(Vec<C>) -> Vec<Result<R, String>> + Send + 'static,
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
                        let outcome = outcomes.next().unwrap_or_else(|| {
                            Err(format!(
                                "the {count}-change commit returned too few outcomes"
                            ))
                        });
                        let _ = done.send(outcome);
                    }
                }
            })
            .expect("spawning a group-commit writer thread");
        GroupCommit { queue }
    }

    /// Queues the change now, and returns a future that completes once it is durable. Queueing
    /// at the call, not at the first poll, keeps changes in the order their callers made them.
    pub fn submit(&self, change: C) -> impl Future<Output = Result<R, String>> + Send + use<C, R> {
        let (done, applied) = oneshot::channel();
        let queued = self
            .queue
            .send((change, done))
            .map_err(|_| "the store writer has stopped".to_string());
        async move {
            queued?;
            applied
                .await
                .map_err(|_| "the store writer has stopped".to_string())?
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
        assert_eq!(first.await, Ok(10));
        for (n, outcome) in (2..=5).zip(rest) {
            assert_eq!(outcome.await, Ok(n * 10));
        }
        assert_eq!(*commits.lock().unwrap(), [vec![1], vec![2, 3, 4, 5]]);
    }
}
