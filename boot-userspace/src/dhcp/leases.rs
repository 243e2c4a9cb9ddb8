//! Durable leases with group commit: ACKs that arrive together share one fsync, so a rack of
//! machines renewing at once is not limited by the disk's sync rate. An ACK goes out only after
//! its lease is durable.
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use workflow::store::{Lease, LeaseStore};

/// At most this many leases share one transaction.
const MAX_BATCH: usize = 1024;

type Pending = (Lease, oneshot::Sender<Result<(), String>>);

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
                    let leases: Vec<Lease> = batch.iter().map(|(lease, _)| lease.clone()).collect();
                    let result = store.record_leases(&leases).map_err(|err| err.to_string());
                    for (_, done) in batch {
                        let _ = done.send(result.clone());
                    }
                }
            })
            .expect("spawning the lease writer thread");
        LeaseWriter { queue }
    }

    /// Returns once the lease is durable.
    pub async fn record(&self, lease: Lease) -> Result<(), String> {
        let (done, durable) = oneshot::channel();
        self.queue
            .send((lease, done))
            .map_err(|_| "the lease writer has stopped".to_string())?;
        durable
            .await
            .map_err(|_| "the lease writer has stopped".to_string())?
    }
}
