//! Durable leases with group commit: ACKs that arrive together share one fsync, so a rack of
//! machines renewing at once is not limited by the disk's sync rate. An ACK goes out only after
//! its lease is durable.
use std::{future::Future, sync::Arc};

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
                    // place in the order, after the records queued before it.
                    let mut records = Vec::new();
                    let mut waiting = Vec::new();
                    for (change, done) in batch {
                        match change {
                            Change::Record(lease) => {
                                records.push(lease);
                                waiting.push(done);
                            }
                            Change::Remove(mac) => {
                                let flushed = flush(&*store, &mut records, &mut waiting);
                                let removed = flushed.and_then(|()| {
                                    store
                                        .remove_lease(&mac)
                                        .map(drop)
                                        .map_err(|e| e.to_string())
                                });
                                let _ = done.send(removed);
                            }
                        }
                    }
                    let _ = flush(&*store, &mut records, &mut waiting);
                }
            })
            .expect("spawning the lease writer thread");
        LeaseWriter { queue }
    }

    /// Queues the lease now, and returns a future that completes once it is durable. Queueing
    /// at the call, not at the first poll, is what keeps changes in the order the DHCP server
    /// decided them.
    pub fn record(&self, lease: Lease) -> impl Future<Output = Result<(), String>> + use<> {
        self.submit(Change::Record(lease))
    }

    /// Queues the removal now; the future completes once the lease is gone from the store.
    pub fn remove(&self, mac: MacAddr) -> impl Future<Output = Result<(), String>> + use<> {
        self.submit(Change::Remove(mac))
    }

    fn submit(&self, change: Change) -> impl Future<Output = Result<(), String>> + use<> {
        let (done, applied) = oneshot::channel();
        let queued = self
            .queue
            .send((change, done))
            .map_err(|_| "the lease writer has stopped".to_string());
        async move {
            queued?;
            applied
                .await
                .map_err(|_| "the lease writer has stopped".to_string())?
        }
    }
}

/// Writes the pending records in one transaction and tells each writer how it went.
fn flush(
    store: &dyn LeaseStore,
    records: &mut Vec<Lease>,
    waiting: &mut Vec<oneshot::Sender<Result<(), String>>>,
) -> Result<(), String> {
    if records.is_empty() {
        return Ok(());
    }
    let result = store.record_leases(records).map_err(|err| err.to_string());
    records.clear();
    for done in waiting.drain(..) {
        let _ = done.send(result.clone());
    }
    result
}

#[cfg(test)]
mod tests {
    use workflow::store::RedbStore;

    use super::*;

    #[tokio::test]
    async fn changes_apply_in_the_order_they_were_queued() {
        let dir = std::env::temp_dir().join(format!("wisp-leases-test-{}", std::process::id()));
        let store = RedbStore::open(&dir).unwrap();
        let writer = LeaseWriter::start(Arc::new(store.clone()));
        let mac: MacAddr = "1c:69:7a:11:22:33".parse().unwrap();
        let lease = |expires_unix| Lease {
            mac,
            address: [10, 0, 0, 8].into(),
            expires_unix,
            hostname: None,
        };
        // Queued together, as an ACK's lease and the RELEASE right behind it: the lease must not
        // come back after the removal.
        let (recorded, removed) = tokio::join!(writer.record(lease(100)), writer.remove(mac));
        assert_eq!((recorded, removed), (Ok(()), Ok(())));
        assert!(store.leases().unwrap().is_empty());
        writer.record(lease(200)).await.unwrap();
        assert_eq!(store.leases().unwrap(), [lease(200)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
