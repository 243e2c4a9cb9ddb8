//! The embedded store: one redb file, whose commits are durable (fsync) before they return.
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    with_version, without_version, Applied, ApplyOutcome, BootRecord, BootStore, BoxError, Lease,
    LeaseStore, RunChange, RunWritten, Store, StoreError, StoredRun, Write,
};
use crate::resource::{Kind, MacAddr, Resource, ResourceKey};

/// `Kind/namespace/name` → JSON of [`Record`]. Names cannot hold '/', so a kind's records form
/// one contiguous key range.
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
/// `revision` → the last resource version handed out.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// MAC (`1c:69:7a:11:22:33`) → JSON of [`Lease`]: where earlier versions kept leases, read
/// once to move them to the [`super::LeaseJournal`].
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// `Workflow/namespace/name` → JSON of [`crate::run::WorkflowStatus`]: the run, kept apart from the spec so
/// that progress never bumps the resourceVersion a user applies against.
const WORKFLOW_STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("workflow_status");
/// `Kind/namespace/name` → the JSON status of a Machine, Job or Task, written by Wisp.
const STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("status");
/// MAC (`1c:69:7a:11:22:33`) → JSON of [`Boot`]: the boot each machine is on.
const BOOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("boots");

#[derive(Serialize, Deserialize)]
struct Record {
    version: u64,
    /// The object without `metadata.resourceVersion`, which is added back on reads.
    object: Value,
}

/// Cheap to clone: clones share one database.
#[derive(Clone)]
pub struct RedbStore {
    db: std::sync::Arc<Database>,
}

impl RedbStore {
    /// Opens (or creates) `wisp.redb` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        super::private::create_dir(data_dir)
            .map_err(|err| backend(format!("cannot create {}: {err}", data_dir.display())))?;
        let path = data_dir.join("wisp.redb");
        // Created here, for its owner alone, before redb opens it.
        super::private::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|err| backend(format!("cannot create {}: {err}", path.display())))?;
        super::private::restrict(&path, 0o600)
            .map_err(|err| backend(format!("cannot restrict {}: {err}", path.display())))?;
        let db = Database::create(&path)
            .map_err(|err| backend(format!("cannot open {}: {err}", path.display())))?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(RESOURCES).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
        txn.open_table(WORKFLOW_STATUS).map_err(backend)?;
        txn.open_table(BOOTS).map_err(backend)?;
        txn.open_table(STATUS).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(RedbStore {
            db: std::sync::Arc::new(db),
        })
    }
}

impl BootStore for RedbStore {
    fn record_boot(&self, mac: &MacAddr, boot: BootRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut boots = txn.open_table(BOOTS).map_err(backend)?;
            let bytes = serde_json::to_vec(&boot).map_err(backend)?;
            boots
                .insert(mac.to_string().as_str(), bytes.as_slice())
                .map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    fn end_boots(&self, macs: &[MacAddr]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut boots = txn.open_table(BOOTS).map_err(backend)?;
            for mac in macs {
                boots.remove(mac.to_string().as_str()).map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)
    }

    fn boots(&self) -> Result<Vec<(MacAddr, BootRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(BOOTS).map_err(backend)?;
        let mut boots = Vec::new();
        for entry in table.iter().map_err(backend)? {
            let (key, bytes) = entry.map_err(backend)?;
            let mac = key
                .value()
                .parse()
                .map_err(|_| backend(format!("unreadable MAC {:?}", key.value())))?;
            let boot = serde_json::from_slice(bytes.value())
                .map_err(|err| StoreError::decode(format_args!("the boot of {mac}"), err))?;
            boots.push((mac, boot));
        }
        Ok(boots)
    }
}

fn backend(err: impl Into<BoxError>) -> StoreError {
    StoreError::Backend {
        store: "redb",
        source: err.into(),
    }
}

fn storage_key(key: &ResourceKey) -> String {
    format!("{}/{}/{}", key.kind, key.namespace, key.name)
}

fn decode_record(key: ResourceKey, bytes: &[u8]) -> Result<Resource, StoreError> {
    let Record { version, object } =
        serde_json::from_slice(bytes).map_err(|err| StoreError::decode(&key, err))?;
    Ok(with_version(key, object, version))
}

fn parse_storage_key(text: &str) -> Option<ResourceKey> {
    let mut parts = text.splitn(3, '/');
    let kind = parts.next()?;
    let kind = Kind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    Some(ResourceKey {
        kind,
        namespace: parts.next()?.to_string(),
        name: parts.next()?.to_string(),
    })
}

impl Store for RedbStore {
    fn apply(&self, writes: Vec<Write>) -> Result<Vec<Applied>, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let mut applied = Vec::with_capacity(writes.len());
        {
            let mut resources = txn.open_table(RESOURCES).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            let mut revision = meta
                .get(REVISION)
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0);
            for write in writes {
                let storage_key = storage_key(&write.key);
                let current = match resources.get(storage_key.as_str()).map_err(backend)? {
                    Some(bytes) => Some(decode_record(write.key.clone(), bytes.value())?),
                    None => None,
                };
                if let Some(expected) = write.expected_version {
                    let actual = current.as_ref().map(|c| c.version);
                    if actual != Some(expected) {
                        // Dropping the transaction without commit discards the whole batch.
                        return Err(StoreError::Conflict {
                            key: write.key,
                            expected,
                            actual: actual.map_or_else(
                                || "absent (it does not exist)".into(),
                                |v| v.to_string(),
                            ),
                        });
                    }
                }
                let object = without_version(write.object);
                let outcome = match current {
                    Some(current) if without_version(current.object.clone()) == object => {
                        applied.push(Applied {
                            key: write.key,
                            version: current.version,
                            outcome: ApplyOutcome::Unchanged,
                        });
                        continue;
                    }
                    Some(_) => ApplyOutcome::Configured,
                    None => ApplyOutcome::Created,
                };
                revision += 1;
                let bytes = serde_json::to_vec(&Record {
                    version: revision,
                    object,
                })
                .map_err(backend)?;
                resources
                    .insert(storage_key.as_str(), bytes.as_slice())
                    .map_err(backend)?;
                applied.push(Applied {
                    key: write.key,
                    version: revision,
                    outcome,
                });
            }
            meta.insert(REVISION, revision).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(applied)
    }

    fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let resources = txn.open_table(RESOURCES).map_err(backend)?;
        let found = resources.get(storage_key(key).as_str()).map_err(backend)?;
        found
            .map(|bytes| decode_record(key.clone(), bytes.value()))
            .transpose()
    }

    fn list(&self, kind: Kind) -> Result<Vec<Resource>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let resources = txn.open_table(RESOURCES).map_err(backend)?;
        // '0' is the character after '/', so this range is exactly the kind's keys.
        let (start, end) = (format!("{kind}/"), format!("{kind}0"));
        let mut listed = Vec::new();
        for entry in resources
            .range(start.as_str()..end.as_str())
            .map_err(backend)?
        {
            let (key, bytes) = entry.map_err(backend)?;
            let key = parse_storage_key(key.value())
                .ok_or_else(|| backend(format!("unreadable key {:?}", key.value())))?;
            listed.push(decode_record(key, bytes.value())?);
        }
        Ok(listed)
    }

    fn delete(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let removed = {
            let mut resources = txn.open_table(RESOURCES).map_err(backend)?;
            let removed = resources
                .remove(storage_key(key).as_str())
                .map_err(backend)?;
            // A run or status belongs to its resource: one applied again later starts afresh.
            for table in [WORKFLOW_STATUS, STATUS] {
                txn.open_table(table)
                    .map_err(backend)?
                    .remove(storage_key(key).as_str())
                    .map_err(backend)?;
            }
            if removed.is_some() {
                let mut meta = txn.open_table(META).map_err(backend)?;
                let revision = meta
                    .get(REVISION)
                    .map_err(backend)?
                    .map_or(0, |v| v.value());
                meta.insert(REVISION, revision + 1).map_err(backend)?;
            }
            removed
                .map(|bytes| decode_record(key.clone(), bytes.value()))
                .transpose()?
        };
        txn.commit().map_err(backend)?;
        Ok(removed)
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        Ok(meta
            .get(REVISION)
            .map_err(backend)?
            .map_or(0, |v| v.value()))
    }

    fn put_workflow_statuses(&self, runs: &[RunChange]) -> Result<Vec<RunWritten>, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let mut stored = Vec::with_capacity(runs.len());
        {
            let resources = txn.open_table(RESOURCES).map_err(backend)?;
            let mut statuses = txn.open_table(WORKFLOW_STATUS).map_err(backend)?;
            for RunChange { key, status, .. } in runs {
                let storage_key = storage_key(key);
                let exists = resources
                    .get(storage_key.as_str())
                    .map_err(backend)?
                    .is_some();
                if exists {
                    let bytes = serde_json::to_vec(status).map_err(backend)?;
                    statuses
                        .insert(storage_key.as_str(), bytes.as_slice())
                        .map_err(backend)?;
                }
                stored.push(if exists {
                    RunWritten::Stored(0)
                } else {
                    RunWritten::WorkflowGone
                });
            }
        }
        txn.commit().map_err(backend)?;
        Ok(stored)
    }

    fn put_status(&self, key: &ResourceKey, status: &Value) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let storage_key = storage_key(key);
        let exists = txn
            .open_table(RESOURCES)
            .map_err(backend)?
            .get(storage_key.as_str())
            .map_err(backend)?
            .is_some();
        if exists {
            let bytes = serde_json::to_vec(status).map_err(backend)?;
            txn.open_table(STATUS)
                .map_err(backend)?
                .insert(storage_key.as_str(), bytes.as_slice())
                .map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(exists)
    }

    fn status(&self, key: &ResourceKey) -> Result<Option<Value>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(STATUS).map_err(backend)?;
        let found = table.get(storage_key(key).as_str()).map_err(backend)?;
        found
            .map(|bytes| {
                serde_json::from_slice(bytes.value())
                    .map_err(|err| StoreError::decode(format_args!("the status of {key}"), err))
            })
            .transpose()
    }

    fn workflow_status(&self, key: &ResourceKey) -> Result<Option<StoredRun>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(WORKFLOW_STATUS).map_err(backend)?;
        let Some(bytes) = table.get(storage_key(key).as_str()).map_err(backend)? else {
            return Ok(None);
        };
        let status = serde_json::from_slice(bytes.value())
            .map_err(|err| StoreError::decode(format_args!("the status of {key}"), err))?;
        Ok(Some(StoredRun { status, version: 0 }))
    }

    fn workflow_statuses(&self) -> Result<Vec<(ResourceKey, StoredRun)>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(WORKFLOW_STATUS).map_err(backend)?;
        let mut statuses = Vec::new();
        for entry in table.iter().map_err(backend)? {
            let (key, bytes) = entry.map_err(backend)?;
            let key = parse_storage_key(key.value())
                .ok_or_else(|| backend(format!("unreadable key {:?}", key.value())))?;
            let status = serde_json::from_slice(bytes.value())
                .map_err(|err| StoreError::decode(format_args!("the status of {key}"), err))?;
            statuses.push((key, StoredRun { status, version: 0 }));
        }
        Ok(statuses)
    }
}

impl RedbStore {
    /// Moves the leases that earlier versions kept in this database to `journal`. They are
    /// durable there before they are deleted here, so a crash in between only repeats the move.
    /// Returns how many moved.
    pub fn move_leases_to(&self, journal: &dyn LeaseStore) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let leases = {
            let table = txn.open_table(LEASES).map_err(backend)?;
            let mut leases: Vec<Lease> = Vec::new();
            for entry in table.iter().map_err(backend)? {
                let (_, bytes) = entry.map_err(backend)?;
                leases.push(serde_json::from_slice(bytes.value()).map_err(backend)?);
            }
            leases
        };
        if leases.is_empty() {
            return Ok(0);
        }
        journal.record_leases(&leases)?;
        txn.delete_table(LEASES).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(leases.len())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{conformance, LeaseJournal};

    #[test]
    fn does_what_every_store_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        conformance::resources(&store);
        conformance::runs_and_statuses(&store);
        conformance::boots(&store);
        let journal = LeaseJournal::open(&dir.path().join("journal")).unwrap();
        conformance::leases(&journal);
    }

    #[test]
    fn leases_kept_by_earlier_versions_move_to_the_journal_once() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Lease {
            mac: "1c:69:7a:11:22:33".parse().unwrap(),
            address: [10, 0, 0, 8].into(),
            expires_unix: 100,
            hostname: None,
        };
        let store = RedbStore::open(dir.path()).unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(LEASES)
            .unwrap()
            .insert(
                "1c:69:7a:11:22:33",
                serde_json::to_vec(&lease).unwrap().as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();

        let journal = LeaseJournal::open(&dir.path().join("journal")).unwrap();
        assert_eq!(store.move_leases_to(&journal).unwrap(), 1);
        assert_eq!(journal.leases().unwrap(), [lease]);
        assert_eq!(store.move_leases_to(&journal).unwrap(), 0, "moved once");
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            store
                .apply(vec![conformance::write("a", json!(1), None)])
                .unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(conformance::hardware_names(&store), ["a"]);
    }
}
