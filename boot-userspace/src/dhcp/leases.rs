//! Durable leases with group commit: ACKs that arrive together share one fsync, so a rack of
//! machines renewing at once is not limited by the disk's sync rate. An ACK goes out only after
//! its lease is durable.
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use workflow::{
    resource::MacAddr,
    store::{Lease, LeaseStore},
};

/// At most this many leases share one transaction.
const MAX_BATCH: usize = 1024;

/// A change to the lease table. Both kinds share one queue, so they apply in arrival order: a
/// RELEASE right after an ACK cannot be overtaken by that ACK's lease.
enum Change {
    Record(Lease),
    Remove(MacAddr),
}

type Pending = (Change, oneshot::Sender<Result<(), String>>);

#[derive(Clone)]
pub struct LeaseWriter {
    queue: mpsc::UnboundedSender<Pending>,
}

impl LeaseWriter {
    /// Starts the writer thread; it ends when the last `LeaseWriter` is dropped.
    pub fn start(store: Arc<dyn LeaseStore>) -> LeaseWriter {
        let (queue, mut pending) = mpsc::unbounded_channel::<Pending>();
        std::thread::Builder::new()
            .name("lease-writer".into())
            .spawn(move || {
                while let Some(first) = pending.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match pending.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    // Consecutive records share one transaction; a removal is applied in its
                    // place in the order.
                    let mut records = Vec::new();
                    let mut results = Vec::with_capacity(batch.len());
                    for (change, done) in batch {
                        match change {
                            Change::Record(lease) => {
                                records.push(lease);
                                results.push((done, None));
                            }
                            Change::Remove(mac) => {
                                let flushed = flush(&*store, &mut records);
                                let removed = flushed.and_then(|()| {
                                    store
                                        .remove_lease(&mac)
                                        .map(drop)
                                        .map_err(|e| e.to_string())
                                });
                                results.push((done, Some(removed)));
                            }
                        }
                    }
                    let last = flush(&*store, &mut records);
                    for (done, outcome) in results {
                        let _ = done.send(outcome.unwrap_or_else(|| last.clone()));
                    }
                }
            })
            .expect("spawning the lease writer thread");
        LeaseWriter { queue }
    }

    /// Returns once the lease is durable.
    pub async fn record(&self, lease: Lease) -> Result<(), String> {
        self.submit(Change::Record(lease)).await
    }

    /// Returns once the lease is gone from the store.
    pub async fn remove(&self, mac: MacAddr) -> Result<(), String> {
        self.submit(Change::Remove(mac)).await
    }

    async fn submit(&self, change: Change) -> Result<(), String> {
        let (done, applied) = oneshot::channel();
        self.queue
            .send((change, done))
            .map_err(|_| "the lease writer has stopped".to_string())?;
        applied
            .await
            .map_err(|_| "the lease writer has stopped".to_string())?
    }
}

/// Writes the pending records in one transaction.
fn flush(store: &dyn LeaseStore, records: &mut Vec<Lease>) -> Result<(), String> {
    if records.is_empty() {
        return Ok(());
    }
    let result = store.record_leases(records).map_err(|err| err.to_string());
    records.clear();
    result
}
