//! Stored leases with group commit: ACKs that arrive together share one store write, so a rack
//! of machines renewing at once is not limited by the store. An ACK goes out only after its lease
//! is stored; how far "stored" goes on the embedded store is [`LeaseSync`]'s choice.
use std::{
    collections::HashMap,
    future::Future,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use workflow::{
    resource::MacAddr,
    store::{CommitError, GroupCommit, Lease, LeaseJournal, LeaseStore, StoreError},
};

/// When the embedded store's lease journal syncs a lease to the disk, relative to its ACK. Either
/// way an ACKed lease survives a crash or kill -9 of Wisp (it is in the kernel's page cache); the
/// choice is what a power loss can take (docs/boot.md, "Durability").
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseSync {
    /// A thread syncs every 10 ms; a power loss can take the leases ACKed in that last
    /// moment, whose machines then get the same reserved address again.
    Background,
    /// Each group commit is fdatasync'd before its ACKs go out: a power loss takes no ACKed
    /// lease, and each ACK waits for the disk.
    BeforeAck,
}

impl LeaseSync {
    /// Opens the lease journal in `data_dir`, syncing as this says.
    pub fn open_journal(self, data_dir: &Path) -> Result<LeaseJournal, StoreError> {
        match self {
            LeaseSync::Background => LeaseJournal::open_syncing_in_background(data_dir),
            LeaseSync::BeforeAck => LeaseJournal::open(data_dir),
        }
    }
}

/// At most this many leases share one transaction.
const MAX_BATCH: usize = 1024;
/// At most this many lease changes wait for the disk. Spoofed REQUESTs for a known MAC, sent
/// faster than fdatasync, would otherwise grow memory without bound; beyond this the ACK is
/// not sent, and a real client retries.
const QUEUE_LIMIT: usize = 1 << 16;

/// A change to the lease table. Both kinds share one queue, so they apply in arrival order: a
/// RELEASE right after an ACK cannot be overtaken by that ACK's lease.
enum Change {
    Record(Lease),
    Remove(MacAddr),
}

#[derive(Clone)]
pub struct LeaseWriter {
    writer: GroupCommit<Change, ()>,
    unstored: Arc<Unstored>,
}

/// Leases ACKed while a shared store did not answer (etcd without its quorum): the latest per
/// MAC, which one task stores once the store answers again. A lease recorded or removed since
/// takes its MAC's place, so an older lease never lands over a newer one or a release.
#[derive(Default)]
struct Unstored {
    leases: Mutex<HashMap<MacAddr, Lease>>,
    /// Whether the task that stores them runs.
    storing: AtomicBool,
}

impl LeaseWriter {
    /// Starts the writer thread; it ends when the last `LeaseWriter` is dropped.
    pub fn start(store: Arc<dyn LeaseStore>) -> LeaseWriter {
        let writer =
            GroupCommit::start("lease writer", MAX_BATCH, QUEUE_LIMIT, move |batch| {
                // Consecutive records share one transaction; a removal is applied in its place in
                // the order, after the records queued before it.
                let mut outcomes = Vec::with_capacity(batch.len());
                let mut records = Vec::new();
                for change in batch {
                    match change {
                        Change::Record(lease) => records.push(lease),
                        Change::Remove(mac) => {
                            let flushed = flush(&*store, &mut records, &mut outcomes);
                            outcomes.push(flushed.and_then(|()| {
                                store.remove_lease(&mac).map(drop).map_err(Arc::new)
                            }));
                        }
                    }
                }
                let _ = flush(&*store, &mut records, &mut outcomes);
                outcomes
            });
        LeaseWriter {
            writer,
            unstored: Arc::default(),
        }
    }

    /// Queues the lease now, and returns a future that completes once it is durable. Queueing
    /// at the call, not at the first poll, is what keeps changes in the order the DHCP server
    /// decided them.
    pub fn record(&self, lease: Lease) -> impl Future<Output = Result<(), CommitError>> + use<> {
        let mut unstored = self.unstored.lock();
        unstored.remove(&lease.mac);
        self.writer.submit(Change::Record(lease))
    }

    /// Queues the removal now; the future completes once the lease is gone from the store.
    pub fn remove(&self, mac: MacAddr) -> impl Future<Output = Result<(), CommitError>> + use<> {
        let mut unstored = self.unstored.lock();
        unstored.remove(&mac);
        self.writer.submit(Change::Remove(mac))
    }

    /// Stores `lease`, ACKed without the store, once the store answers: tried again, with
    /// backoff, until it is stored or a later change of its MAC takes its place.
    pub fn store_later(&self, lease: Lease) {
        self.unstored.lock().insert(lease.mac, lease);
        if !self.unstored.storing.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().store_unstored());
        }
    }

    async fn store_unstored(self) {
        let mut pause = Duration::from_secs(1);
        loop {
            tokio::time::sleep(pause).await;
            let waiting: Vec<Lease> = self.unstored.lock().values().cloned().collect();
            let mut failed = false;
            for lease in waiting {
                // Queued only while it is still the latest for its MAC, under the lock that
                // `record` and `remove` take, so that it is queued before them or not at all.
                let stored = {
                    let unstored = self.unstored.lock();
                    if unstored.get(&lease.mac) != Some(&lease) {
                        continue;
                    }
                    self.writer.submit(Change::Record(lease.clone()))
                };
                match stored.await {
                    Ok(()) => {
                        let mut unstored = self.unstored.lock();
                        if unstored.get(&lease.mac) == Some(&lease) {
                            unstored.remove(&lease.mac);
                        }
                        tracing::info!(client = %lease.mac, "lease stored, the store answering again");
                    }
                    Err(err) => {
                        tracing::debug!(client = %lease.mac, "lease still not stored: {err}");
                        failed = true;
                        break;
                    }
                }
            }
            pause = match failed {
                true => (pause * 2).min(Duration::from_secs(30)),
                false => Duration::from_secs(1),
            };
            // Ends when none waits; checked under the lock `store_later` inserts under, so
            // that a lease inserted meanwhile finds this task running or starts another.
            let unstored = self.unstored.lock();
            if unstored.is_empty() {
                self.unstored.storing.store(false, Ordering::SeqCst);
                return;
            }
        }
    }
}

impl Unstored {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MacAddr, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes the pending records in one transaction, with an outcome for each.
fn flush(
    store: &dyn LeaseStore,
    records: &mut Vec<Lease>,
    outcomes: &mut Vec<Result<(), Arc<StoreError>>>,
) -> Result<(), Arc<StoreError>> {
    if records.is_empty() {
        return Ok(());
    }
    let result = store.record_leases(records).map_err(Arc::new);
    outcomes.extend(std::iter::repeat_n(result.clone(), records.len()));
    records.clear();
    result
}

#[cfg(test)]
mod tests {
    use workflow::store::LeaseJournal;

    use super::*;

    #[tokio::test]
    async fn changes_apply_in_the_order_they_were_queued() {
        let dir = std::env::temp_dir().join(format!("wisp-leases-test-{}", std::process::id()));
        let store = Arc::new(LeaseJournal::open(&dir).unwrap());
        let writer = LeaseWriter::start(Arc::clone(&store) as Arc<dyn LeaseStore>);
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
        recorded.unwrap();
        removed.unwrap();
        assert!(store.leases().unwrap().is_empty());
        writer.record(lease(200)).await.unwrap();
        assert_eq!(store.leases().unwrap(), [lease(200)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
