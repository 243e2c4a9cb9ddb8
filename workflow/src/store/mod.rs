//! Resource storage, behind a trait so that a distributed backend (etcd) can sit beside the
//! embedded one.
#[cfg(test)]
pub(crate) mod conformance;
mod etcd;
mod group_commit;
mod lease_journal;
pub mod private;
mod redb;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::{
    etcd::{EtcdStore, Leadership, RunsChanged, Watched},
    group_commit::{CommitError, GroupCommit},
    lease_journal::LeaseJournal,
    redb::RedbStore,
};
use crate::{
    resource::{Kind, MacAddr, Resource, ResourceKey},
    run::WorkflowStatus,
};

/// One object to write. With `expected_version` set, the write succeeds only if the stored
/// object still has that version (optimistic concurrency, as Kubernetes' resourceVersion).
#[derive(Clone, Debug)]
pub struct Write {
    pub key: ResourceKey,
    pub object: Value,
    pub expected_version: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub key: ResourceKey,
    pub version: u64,
    pub outcome: ApplyOutcome,
}

/// The error a backend passes up, boxed so that each backend keeps its own error types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} has been modified: its resourceVersion is {actual}, not {expected}; get it again and retry")]
    Conflict {
        key: ResourceKey,
        expected: u64,
        actual: String,
    },
    /// The store itself failed (I/O, a transaction); nothing of the call was written.
    #[error("store ({store}): {source}")]
    Backend {
        /// Which store: `redb`, `lease journal`.
        store: &'static str,
        #[source]
        source: BoxError,
    },
    /// A stored object no longer decodes as its kind: written by another version, or damaged.
    #[error("store: {key} is stored but does not decode: {source}")]
    Decode {
        key: String,
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    pub fn decode(key: impl std::fmt::Display, source: impl Into<BoxError>) -> StoreError {
        StoreError::Decode {
            key: key.to_string(),
            source: source.into(),
        }
    }
}

/// An object as stored: without `metadata.resourceVersion`, which is the store's to give.
pub(crate) fn without_version(mut object: Value) -> Value {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("resourceVersion");
    }
    object
}

/// A stored object as read: with its version as `metadata.resourceVersion`.
pub(crate) fn with_version(key: ResourceKey, mut object: Value, version: u64) -> Resource {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("resourceVersion".into(), Value::String(version.to_string()));
    }
    Resource {
        key,
        version,
        object,
    }
}

/// A transactional store of resources. Every method is atomic, and a method that returned
/// `Ok` has made its change durable.
pub trait Store: Send + Sync {
    /// Writes all objects in one transaction, or none of them.
    fn apply(&self, writes: Vec<Write>) -> Result<Vec<Applied>, StoreError>;
    fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError>;
    /// All resources of a kind, ordered by namespace and name.
    fn list(&self, kind: Kind) -> Result<Vec<Resource>, StoreError>;
    /// Removes a resource (and a workflow's run) and returns what it was.
    fn delete(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError>;
    /// Advances with every change to the resources (an apply that changed something, a
    /// delete), so that what is derived from them knows when to be derived again.
    fn revision(&self) -> Result<u64, StoreError>;
    /// Records workflows' runs, each over the version its change was decided from, at most one
    /// change per run. For each, what became of it.
    fn put_workflow_statuses(&self, runs: &[RunChange]) -> Result<Vec<RunWritten>, StoreError>;
    fn workflow_statuses(&self) -> Result<Vec<(ResourceKey, StoredRun)>, StoreError>;
    fn workflow_status(&self, key: &ResourceKey) -> Result<Option<StoredRun>, StoreError>;
    /// Whether other appliances write this store too, so that what this one keeps in memory
    /// may be behind it. A store one appliance alone writes (redb, which locks its file) has
    /// no versions (they are 0) and never finds a change stale.
    fn shared(&self) -> bool {
        false
    }
    /// Records the status Wisp keeps for a Machine, Job or Task: apart from the spec, as with
    /// Kubernetes' status subresource, so it never bumps the resourceVersion a user applies
    /// against. False, writing nothing, when the resource is gone.
    fn put_status(&self, key: &ResourceKey, status: &Value) -> Result<bool, StoreError>;
    fn status(&self, key: &ResourceKey) -> Result<Option<Value>, StoreError>;
}

/// A change to a workflow's run, decided from the run as stored at `read_at` (0: no run yet),
/// and written only if the run is still that: two appliances never both change one run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunChange {
    pub key: ResourceKey,
    pub status: WorkflowStatus,
    pub read_at: u64,
}

/// What became of a [`RunChange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunWritten {
    /// Stored; the run's version is now this.
    Stored(u64),
    /// Not written: the workflow is gone.
    WorkflowGone,
    /// Not written: the run changed since `read_at` (another appliance changed it).
    Stale,
}

/// A workflow's run as stored, with its version (0 in a store that keeps none).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRun {
    pub status: WorkflowStatus,
    pub version: u64,
}

/// A DHCP lease: which address a MAC holds, and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: MacAddr,
    pub address: std::net::Ipv4Addr,
    /// Seconds since the Unix epoch.
    pub expires_unix: u64,
    pub hostname: Option<String>,
}

/// The boot a machine is on, which its token names: a token of any other boot of the machine,
/// or of a boot that ended, is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    /// Random, so that a token cannot name a boot that has not been handed out.
    pub id: u64,
    /// Seconds since the Unix epoch.
    pub expires_unix: u64,
}

/// A machine's current boot, and where it fetched the boot's script from when its Hardware
/// reserves no address: the address another DHCP server gave it (proxyDHCP), which then
/// identifies it for the boot's length, as a reserved address would.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    #[serde(flatten)]
    pub boot: Boot,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
}

/// Durable boots, so that a restart mid-install keeps every machine's token good.
pub trait BootStore: Send + Sync {
    /// Records the boot a machine is on, replacing its earlier one; durable when it returns.
    fn record_boot(&self, mac: &MacAddr, boot: BootRecord) -> Result<(), StoreError>;
    /// Ends the boots of these machines (their workflows ended): their tokens are refused.
    fn end_boots(&self, macs: &[MacAddr]) -> Result<(), StoreError>;
    fn boots(&self) -> Result<Vec<(MacAddr, BootRecord)>, StoreError>;
    /// The key tokens are signed with, when the store is shared: the one stored, or
    /// `candidate` if none is yet, so that every appliance signs and verifies with the same.
    /// `None` when the store is this appliance's alone (it keeps its key in its data
    /// directory).
    fn shared_token_key(&self, candidate: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = candidate;
        Ok(None)
    }
}

/// Durable leases, so that a restart loses none.
pub trait LeaseStore: Send + Sync {
    /// Records (or renews) leases in one transaction; durable when it returns.
    fn record_leases(&self, leases: &[Lease]) -> Result<(), StoreError>;
    fn remove_lease(&self, mac: &MacAddr) -> Result<Option<Lease>, StoreError>;
    fn leases(&self) -> Result<Vec<Lease>, StoreError>;
}
