//! What every store backend must do, as tests that take the backend: the redb store's unit
//! tests and the etcd store's (against a real etcd) run the same ones.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value};

use super::{
    ApplyOutcome, Boot, BootRecord, BootStore, EtcdStore, Lease, LeaseStore, RunChange, RunWritten,
    Store, StoreError, Write,
};
use crate::{
    resource::{Kind, ResourceKey},
    run::{Plan, WorkflowStatus},
};

pub fn key(kind: Kind, name: &str) -> ResourceKey {
    ResourceKey {
        kind,
        namespace: "ns".into(),
        name: name.into(),
    }
}

pub fn write(name: &str, spec: Value, expected_version: Option<u64>) -> Write {
    Write {
        key: key(Kind::Hardware, name),
        object: json!({"metadata": {"name": name}, "spec": spec}),
        expected_version,
    }
}

/// The names of the Hardware stored, in the store's order.
pub fn hardware_names(store: &dyn Store) -> Vec<String> {
    store
        .list(Kind::Hardware)
        .unwrap()
        .into_iter()
        .map(|resource| resource.key.name)
        .collect()
}

/// Versions, unchanged applies, conflicts, all-or-nothing batches, listing, deletes, and the
/// revision that says when derived views are stale.
pub fn resources(store: &dyn Store) {
    let start = store.revision().unwrap();
    let first = store.apply(vec![write("a", json!(1), None)]).unwrap();
    assert_eq!(first[0].outcome, ApplyOutcome::Created);
    let after_create = store.revision().unwrap();
    assert!(after_create > start);
    let again = store.apply(vec![write("a", json!(1), None)]).unwrap();
    assert_eq!(
        (again[0].outcome, again[0].version),
        (ApplyOutcome::Unchanged, first[0].version)
    );
    assert_eq!(store.revision().unwrap(), after_create, "nothing changed");
    let stale = store.apply(vec![write("a", json!(2), Some(first[0].version + 7))]);
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let updated = store
        .apply(vec![write("a", json!(2), Some(first[0].version))])
        .unwrap();
    assert_eq!(updated[0].outcome, ApplyOutcome::Configured);
    assert!(updated[0].version > first[0].version);
    let got = store.get(&key(Kind::Hardware, "a")).unwrap().unwrap();
    assert_eq!(got.version, updated[0].version);
    assert_eq!(
        got.object["metadata"]["resourceVersion"],
        updated[0].version.to_string()
    );
    assert_eq!(got.object["spec"], 2);

    // A batch with a stale write writes nothing.
    let batch = vec![write("b", json!(1), None), write("a", json!(9), Some(1))];
    assert!(store.apply(batch).is_err());
    assert!(store.get(&key(Kind::Hardware, "b")).unwrap().is_none());
    store.apply(vec![write("c", json!(3), None)]).unwrap();
    assert_eq!(
        hardware_names(store),
        ["a", "c"],
        "ordered by namespace and name"
    );
    assert!(store.list(Kind::Template).unwrap().is_empty());

    let before_delete = store.revision().unwrap();
    let removed = store.delete(&key(Kind::Hardware, "a")).unwrap();
    assert_eq!(removed.map(|r| r.object["spec"].clone()), Some(json!(2)));
    assert!(store.get(&key(Kind::Hardware, "a")).unwrap().is_none());
    assert!(store.revision().unwrap() > before_delete);
    assert!(store.delete(&key(Kind::Hardware, "a")).unwrap().is_none());
}

/// Runs and statuses live beside their resource, only while it exists, and go with it.
pub fn runs_and_statuses(store: &dyn Store) {
    let workflow = key(Kind::Workflow, "w");
    let gone = key(Kind::Workflow, "gone");
    store
        .apply(vec![Write {
            key: workflow.clone(),
            object: json!({"metadata": {"name": "w"}, "spec": {}}),
            expected_version: None,
        }])
        .unwrap();
    let plan = Plan::parse("tasks: [{name: t, actions: [{name: a, image: i}]}]").unwrap();
    let run = WorkflowStatus::new(&plan);
    let change = |key: &ResourceKey, read_at| RunChange {
        key: key.clone(),
        status: run.clone(),
        read_at,
    };
    let stored = store
        .put_workflow_statuses(&[change(&workflow, 0), change(&gone, 0)])
        .unwrap();
    let [RunWritten::Stored(version), RunWritten::WorkflowGone] = stored[..] else {
        panic!("{stored:?}");
    };
    let listed = store.workflow_statuses().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, workflow);
    assert_eq!(listed[0].1.status, run);
    assert_eq!(listed[0].1.version, version);
    assert_eq!(
        store.workflow_status(&workflow).unwrap(),
        Some(listed[0].1.clone())
    );
    assert_eq!(store.workflow_status(&gone).unwrap(), None);
    if store.shared() {
        // Written only over the run as it was read: a change decided from an older one (or
        // from none, when there is one) is stale, and writes nothing.
        let stored = store
            .put_workflow_statuses(&[change(&workflow, version)])
            .unwrap();
        let [RunWritten::Stored(newer)] = stored[..] else {
            panic!("{stored:?}");
        };
        assert!(newer > version);
        for read_at in [version, 0] {
            let stale = store
                .put_workflow_statuses(&[change(&workflow, read_at)])
                .unwrap();
            assert_eq!(stale, [RunWritten::Stale]);
        }
        // In one batch, a stale change does not keep the others from being written.
        let other = key(Kind::Workflow, "other");
        store
            .apply(vec![Write {
                key: other.clone(),
                object: json!({"metadata": {"name": "other"}, "spec": {}}),
                expected_version: None,
            }])
            .unwrap();
        let batch = store
            .put_workflow_statuses(&[
                change(&workflow, version),
                change(&other, 0),
                change(&gone, 0),
            ])
            .unwrap();
        assert!(matches!(
            batch[..],
            [
                RunWritten::Stale,
                RunWritten::Stored(_),
                RunWritten::WorkflowGone
            ]
        ));
        store.delete(&other).unwrap();
    }
    assert!(store.put_status(&workflow, &json!({"seen": 1})).unwrap());
    assert!(!store.put_status(&gone, &json!({"seen": 1})).unwrap());
    assert_eq!(store.status(&workflow).unwrap(), Some(json!({"seen": 1})));
    assert_eq!(store.status(&gone).unwrap(), None);
    // A run or status does not bump the revision users apply against.
    let version = store.get(&workflow).unwrap().unwrap().version;
    store.put_status(&workflow, &json!({"seen": 2})).unwrap();
    assert_eq!(store.get(&workflow).unwrap().unwrap().version, version);
    store.delete(&workflow).unwrap();
    assert!(store.workflow_statuses().unwrap().is_empty());
    assert_eq!(store.status(&workflow).unwrap(), None);
}

pub fn leases(store: &dyn LeaseStore) {
    let lease = |last: u8, expires_unix: u64| Lease {
        mac: format!("1c:69:7a:00:00:{last:02x}").parse().unwrap(),
        address: [10, 0, 0, last].into(),
        expires_unix,
        hostname: None,
    };
    // More than one etcd transaction holds by default.
    let many: Vec<Lease> = (1..=200).map(|last| lease(last, 100)).collect();
    store.record_leases(&many).unwrap();
    store.record_leases(&[lease(1, 200)]).unwrap();
    let mut stored = store.leases().unwrap();
    stored.sort_by_key(|lease| lease.address);
    assert_eq!(stored.len(), 200);
    assert_eq!(stored[0], lease(1, 200), "renewed");
    assert_eq!(
        store.remove_lease(&lease(2, 0).mac).unwrap(),
        Some(lease(2, 100))
    );
    assert_eq!(store.remove_lease(&lease(2, 0).mac).unwrap(), None);
    assert_eq!(store.leases().unwrap().len(), 199);
}

pub fn boots(store: &dyn BootStore) {
    let (a, b) = (
        "1c:69:7a:00:00:0a".parse().unwrap(),
        "1c:69:7a:00:00:0b".parse().unwrap(),
    );
    let record = |id, address| BootRecord {
        boot: Boot {
            id,
            expires_unix: 99,
        },
        address,
    };
    store.record_boot(&a, record(1, None)).unwrap();
    store
        .record_boot(&b, record(2, Some([10, 0, 0, 9].into())))
        .unwrap();
    store.record_boot(&a, record(3, None)).unwrap();
    let mut boots = store.boots().unwrap();
    boots.sort_by_key(|(mac, _)| *mac);
    assert_eq!(
        boots,
        [
            (a, record(3, None)),
            (b, record(2, Some([10, 0, 0, 9].into())))
        ]
    );
    store.end_boots(&[a]).unwrap();
    assert_eq!(store.boots().unwrap().len(), 1);
}

/// A real etcd (Debian's `etcd-server`) on loopback, in a directory of its own; stopped
/// and removed when dropped.
pub struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

impl Etcd {
    pub fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("a directory");
        let (client, peer) = (free_port(), free_port());
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--name", "test", "--log-level", "error"])
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=test=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (cargo xtask setup installs etcd-server)");
        Etcd {
            child,
            url: format!("etcd://127.0.0.1:{client}"),
            _dir: dir,
        }
    }

    /// Stops (`STOP`) or resumes (`CONT`) the member, as a host that hangs would.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} etcd");
    }

    pub fn store(&self) -> EtcdStore {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match EtcdStore::connect(&self.url) {
                Ok(store) => return store,
                Err(err) if std::time::Instant::now() > deadline => {
                    panic!("etcd did not come up: {err}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
