//! The store on an etcd cluster (`--store etcd://host1:2379,host2:2379`), for appliances that
//! share one state: a second implementation of the store traits, under the same callers.
//!
//! Keys, under the prefix `/wisp/`:
//! - `resources/<Kind>/<namespace>/<name>`: the object, without `metadata.resourceVersion`,
//!   which is the key's `mod_revision`: etcd's revisions carry resourceVersion, as in
//!   Kubernetes;
//! - `revision`: rewritten in every transaction that changes resources, so its `mod_revision`
//!   is [`Store::revision`];
//! - `runs/<namespace>/<name>`, `status/<Kind>/<namespace>/<name>`: a workflow's run, and the
//!   status Wisp keeps for a BMC kind;
//! - `leases/<mac>`, `boots/<mac>`: DHCP leases and machines' boots.
//!
//! Every change is one etcd transaction. A write that depends on what it read (an apply, a run
//! recorded only while its workflow exists) compares the revisions it read, and is tried again
//! when another appliance wrote in between. Calls are tried again, a few times, when a member
//! does not answer: the client does not move to another endpoint by itself.
//!
//! The traits are blocking; the client is async. The store drives it on a small runtime of its
//! own and waits for each call on a channel, so that it can be called from any thread, a
//! runtime's worker included (which blocks for the call, as a redb call blocks it for its I/O).
use std::{future::Future, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};
use serde_json::Value;

use super::{
    with_version, without_version, Applied, ApplyOutcome, BootRecord, BootStore, BoxError, Lease,
    LeaseStore, RunChange, RunWritten, Store, StoreError, StoredRun, Write,
};
use crate::resource::{Kind, MacAddr, Resource, ResourceKey};

/// Keys per range request when listing: a page of resources stays far below gRPC's 4 MiB
/// message limit.
const LIST_PAGE: i64 = 500;

/// The end of the range of keys that start with `prefix` (exclusive), as etcd's own clients
/// compute it: the prefix with its last byte below 0xff raised by one.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // No such byte: every key from the prefix on.
    vec![0]
}

const PREFIX: &str = "/wisp/";
/// Operations written per transaction: etcd refuses more than 128 in one by default
/// (`--max-txn-ops`). Leases, boots and runs do not depend on each other, so a batch of them
/// may take several transactions; an apply must be one, and says so when etcd refuses it.
const OPS_PER_TXN: usize = 100;
/// How many times a call is made when members do not answer, or a transaction lost a race.
const TRIES: u32 = 5;

pub struct EtcdStore {
    members: std::sync::Arc<Members>,
    runtime: Background,
    /// The endpoints, to name the store in errors.
    endpoints: String,
}

/// One duty (answering DHCP on a boot segment, say) that one appliance at a time holds: a key
/// bound to an etcd lease of a few seconds, which the holder keeps alive. An appliance that
/// dies stops keeping it alive, and another takes the duty once the lease runs out. One that
/// cannot reach etcd holds on until etcd answers that its lease ran out: when the cluster has
/// lost its quorum, no other can take the duty meanwhile, and the machines it knows go on being
/// answered (cut off from a cluster that still has its quorum, it answers beside the one that
/// took over until it reaches etcd again; see docs/ha.md). Given up when dropped.
pub struct Leadership {
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// How many times this appliance has taken the duty: what was learnt while another held
    /// it is read again once per term.
    term: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    /// The lease held, to revoke when dropped (0 while none).
    lease: std::sync::Arc<std::sync::atomic::AtomicI64>,
    members: std::sync::Arc<Members>,
    runtime: tokio::runtime::Handle,
}

impl Leadership {
    pub fn held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The current term: how many times the duty has been taken here.
    pub fn term(&self) -> u64 {
        self.term.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
        self.held.store(false, std::sync::atomic::Ordering::SeqCst);
        let lease = self.lease.load(std::sync::atomic::Ordering::SeqCst);
        if lease != 0 {
            // Revoked, so that another takes the duty now rather than when the lease runs out.
            let (_, mut client) = self.members.client();
            let (done, revoked) = std::sync::mpsc::channel();
            self.runtime.spawn(async move {
                let _ = client.lease_revoke(lease).await;
                let _ = done.send(());
            });
            // Waited for, briefly: the store's runtime may stop right after this.
            let _ = revoked.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// A client per member. etcd's client spreads calls over its endpoints without skipping one
/// that is down, so the store calls one member at a time and moves on to the next when it
/// does not answer.
struct Members {
    clients: Vec<Client>,
    current: std::sync::atomic::AtomicUsize,
}

impl Members {
    /// The member calls go to now, and its place.
    fn client(&self) -> (usize, Client) {
        let index = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len();
        (index, self.clients[index].clone())
    }

    /// The member at `index` did not answer: calls go to the next (unless another call moved
    /// on already).
    fn failed(&self, index: usize) {
        let next = (index + 1) % self.clients.len();
        let _ = self.current.compare_exchange(
            index,
            next,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// What [`EtcdStore::watch`] follows.
#[derive(Clone, Copy, Debug)]
pub enum Watched {
    /// Any resource's change (the revision key).
    Resources,
    /// Any machine's boot starting or ending, on any appliance.
    Boots,
}

/// What [`EtcdStore::watch_runs`] reports.
pub enum RunsChanged {
    /// Any run may have changed: read them all.
    All,
    /// These runs changed: each as now stored, or `None` when deleted with its workflow.
    These(Vec<(ResourceKey, Option<StoredRun>)>),
}

/// The store's own runtime, shut down without waiting when dropped: the store may be dropped
/// on a runtime's worker (a daemon stopping), where waiting is not allowed.
struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("running until dropped")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl EtcdStore {
    /// Connects to the cluster at `url` (`etcd://host1:2379,host2:2379`). Fails, naming the
    /// endpoints, when no member answers.
    pub fn connect(url: &str) -> Result<EtcdStore, StoreError> {
        let endpoints: Vec<String> = url
            .strip_prefix("etcd://")
            .ok_or_else(|| {
                backend(
                    url,
                    format!("{url:?} is not an etcd URL (etcd://host1:2379,host2:2379)"),
                )
            })?
            .split(',')
            .filter(|endpoint| !endpoint.is_empty())
            .map(|endpoint| format!("http://{endpoint}"))
            .collect();
        let runtime = Background(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("etcd-store")
                .enable_all()
                .build()
                .map_err(|err| backend(url, err))?,
        ));
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_require_leader(true);
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in &endpoints {
            // Connects lazily: a member that is down now is called once it is up.
            let client = wait(
                runtime.runtime(),
                Client::connect([endpoint.clone()], Some(options.clone())),
            )
            .map_err(|err| backend(url, err))?
            .map_err(|err| backend(url, err))?;
            clients.push(client);
        }
        if clients.is_empty() {
            return Err(backend(url, format!("{url:?} names no etcd member")));
        }
        let store = EtcdStore {
            members: std::sync::Arc::new(Members {
                clients,
                current: Default::default(),
            }),
            runtime,
            endpoints: endpoints.join(","),
        };
        // A first read, so that a cluster that does not answer is said at start.
        store.call(|mut client| async move { client.status().await })?;
        Ok(store)
    }

    /// Calls `changed` whenever `what` changes, from any appliance: an etcd watch, resumed
    /// from the last revision it saw after a disconnect, and with a call regardless when the
    /// history it would resume from was compacted away (what changed in between is unknown:
    /// everything derived must be derived again). Runs until the store is dropped.
    pub fn watch(&self, what: Watched, changed: impl Fn() + Send + Sync + 'static) {
        let (key, prefix) = match what {
            Watched::Resources => (revision_key(), false),
            Watched::Boots => (format!("{PREFIX}boots/"), true),
        };
        self.follow(key, prefix, move |_| changed());
    }

    /// Calls `changed` with the runs other appliances (and this one) change, as they are
    /// stored; with [`RunsChanged::All`] first, and whenever what changed is unknown (after a
    /// compaction): then every run must be read again.
    pub fn watch_runs(&self, changed: impl Fn(RunsChanged) + Send + Sync + 'static) {
        let prefix = format!("{PREFIX}runs/");
        let endpoints = self.endpoints.clone();
        self.follow(prefix.clone(), true, move |events| {
            let Some(events) = events else {
                return changed(RunsChanged::All);
            };
            let mut runs = Vec::with_capacity(events.len());
            for event in events {
                let Some(kv) = event.kv() else { continue };
                let key = kv
                    .key_str()
                    .ok()
                    .and_then(|key| key.strip_prefix(&prefix))
                    .and_then(|rest| parse_key(rest, Some(Kind::Workflow)));
                let Some(key) = key else {
                    tracing::warn!(store = endpoints, "a run under an unreadable key");
                    continue;
                };
                let run = match event.event_type() {
                    etcd_client::EventType::Delete => None,
                    etcd_client::EventType::Put => match serde_json::from_slice(kv.value()) {
                        Ok(status) => Some(StoredRun {
                            status,
                            version: kv.mod_revision() as u64,
                        }),
                        Err(err) => {
                            tracing::warn!(
                                store = endpoints,
                                "the run of {key} does not decode: {err}"
                            );
                            continue;
                        }
                    },
                };
                runs.push((key, run));
            }
            changed(RunsChanged::These(runs));
        });
    }

    /// Watches `key` (every key under it, with `prefix`), calling `changed` with each batch of
    /// events, or with `None` when what changed is unknown: once at the start, for what changed
    /// before the watch began, and after a compaction.
    fn follow(
        &self,
        key: String,
        prefix: bool,
        changed: impl Fn(Option<&[etcd_client::Event]>) + Send + Sync + 'static,
    ) {
        let members = std::sync::Arc::clone(&self.members);
        let endpoints = self.endpoints.clone();
        self.runtime.runtime().spawn(async move {
            let mut next: i64 = 0;
            loop {
                let (member, client) = members.client();
                if next == 0 {
                    match client.kv_client().get(key.clone(), None).await {
                        Ok(response) => {
                            next = response.header().map_or(0, |header| header.revision()) + 1;
                            // Whatever changed up to this read is covered by deriving again;
                            // what changes after, by the watch from the revision it saw.
                            changed(None);
                        }
                        Err(err) => {
                            tracing::warn!(store = endpoints, key, "watching: {err}; again in 1 s");
                            members.failed(member);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                }
                let mut options = etcd_client::WatchOptions::new().with_start_revision(next);
                if prefix {
                    options = options.with_prefix();
                }
                let mut watch = client.watch_client();
                let mut stream = match watch.watch(key.clone(), Some(options)).await {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::warn!(store = endpoints, key, "watching: {err}; again in 1 s");
                        members.failed(member);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(response)) if response.canceled() => {
                            if response.compact_revision() > 0 {
                                tracing::info!(
                                    store = endpoints,
                                    key,
                                    "the history was compacted; deriving everything again"
                                );
                                // Read afresh, derived again, and watched from there.
                                next = 0;
                            }
                            break;
                        }
                        Ok(Some(response)) => {
                            let events = response.events();
                            if let Some(last) = events
                                .iter()
                                .filter_map(|event| event.kv())
                                .map(|kv| kv.mod_revision())
                                .max()
                            {
                                next = last + 1;
                                changed(Some(events));
                            }
                        }
                        Ok(None) => break,
                        Err(err) => {
                            tracing::warn!(store = endpoints, key, "the watch ended: {err}");
                            members.failed(member);
                            break;
                        }
                    }
                }
                // The stream ended (a member went away): resume after a pause, from `next`.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// Takes part in the election for `duty` as `me`, with a lease of `ttl` (a few seconds:
    /// how long the others wait for a holder that went silent).
    pub fn lead(&self, duty: &str, me: &str, ttl: Duration) -> Leadership {
        use std::sync::atomic::Ordering;
        let key = format!("{PREFIX}leaders/{duty}");
        let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let term = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task_term = std::sync::Arc::clone(&term);
        let lease = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let (task_held, task_lease) = (std::sync::Arc::clone(&held), std::sync::Arc::clone(&lease));
        let (members, me) = (std::sync::Arc::clone(&self.members), me.to_string());
        let seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(2);
        let beat = ttl / 3;
        let task = self.runtime.runtime().spawn(async move {
            // Said once per outage, not at every beat.
            let mut unanswered = false;
            // etcd answered that the lease ran out: another may hold the duty.
            let give_up = || {
                if task_held.swap(false, Ordering::SeqCst) {
                    tracing::warn!(duty = key, "leadership given up: its lease ran out");
                }
            };
            loop {
                let (member, client) = members.client();
                let granted = match client.lease_client().grant(seconds, None).await {
                    Ok(granted) => granted.id(),
                    Err(_) => {
                        members.failed(member);
                        tokio::time::sleep(beat).await;
                        continue;
                    }
                };
                task_lease.store(granted, Ordering::SeqCst);
                // Keeps this lease alive, its stream made again (with the next member, when
                // one went away) whenever it breaks, until etcd says the lease ran out.
                'lease: loop {
                    let (member, client) = members.client();
                    let kept =
                        tokio::time::timeout(ttl, client.lease_client().keep_alive(granted)).await;
                    let (mut keeper, mut replies) = match kept {
                        Ok(Ok(pair)) => pair,
                        // etcd answered that the lease ran out (while it was out of reach):
                        // another may hold the duty.
                        Ok(Err(etcd_client::Error::LeaseKeepAliveError(message)))
                            if message == "lease not found" =>
                        {
                            give_up();
                            break 'lease;
                        }
                        _ => {
                            members.failed(member);
                            tokio::time::sleep(beat).await;
                            continue 'lease;
                        }
                    };
                    // Campaign, and hold, for as long as the lease lives.
                    loop {
                        if !task_held.load(Ordering::SeqCst) {
                            // Held when the key is free, or already bound to this lease (a
                            // campaign whose answer was lost may have taken it).
                            let txn = Txn::new()
                                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                                .and_then([TxnOp::put(
                                    key.clone(),
                                    me.clone(),
                                    Some(etcd_client::PutOptions::new().with_lease(granted)),
                                )])
                                .or_else([TxnOp::get(key.clone(), None)]);
                            if let Ok(response) = client.kv_client().txn(txn).await {
                                let ours = response.succeeded()
                                    || response.op_responses().iter().any(|op| {
                                        matches!(op, TxnOpResponse::Get(got)
                                            if got.kvs().iter().any(|kv| kv.lease() == granted))
                                    });
                                if ours {
                                    task_term.fetch_add(1, Ordering::SeqCst);
                                    task_held.store(true, Ordering::SeqCst);
                                    tracing::info!(duty = key, "leadership taken");
                                }
                            }
                        }
                        tokio::time::sleep(beat).await;
                        if keeper.keep_alive().await.is_err() {
                            members.failed(member);
                            continue 'lease;
                        }
                        // Waited for no longer than a beat, so that a keep-alive through the
                        // next member still lands before the lease runs out.
                        match tokio::time::timeout(beat, replies.message()).await {
                            Ok(Ok(Some(reply))) if reply.ttl() > 0 => {
                                if std::mem::take(&mut unanswered) {
                                    tracing::info!(duty = key, "etcd answers again");
                                }
                            }
                            // etcd answered that the lease ran out: another may hold the duty.
                            Ok(Ok(Some(_))) => {
                                give_up();
                                break 'lease;
                            }
                            // No answer: etcd is out of reach, or has lost its quorum. The duty
                            // stays held: without quorum no other can take it, and the
                            // machines this appliance knows go on being answered.
                            _ => {
                                if !std::mem::replace(&mut unanswered, true)
                                    && task_held.load(Ordering::SeqCst)
                                {
                                    tracing::warn!(
                                        duty = key,
                                        "etcd does not answer; holding on to the leadership"
                                    );
                                }
                                members.failed(member);
                                continue 'lease;
                            }
                        }
                    }
                }
            }
        });
        Leadership {
            held,
            term,
            task,
            lease,
            members: std::sync::Arc::clone(&self.members),
            runtime: self.runtime.runtime().handle().clone(),
        }
    }

    /// Records that an appliance at `me` (its worker API's `address:port`) serves `segment`.
    /// Kept when it stops: it may come back, and its address may be in URLs (an image's), so
    /// workers are told of it, and skip it while it does not answer.
    pub fn register(&self, segment: &str, me: &str) -> Result<(), StoreError> {
        let (key, me) = (format!("{PREFIX}appliances/{segment}/{me}"), me.to_string());
        self.call(|mut client| {
            let (key, me) = (key.clone(), me.clone());
            async move { client.put(key, me, None).await }
        })
        .map(drop)
    }

    /// The appliances that registered for `segment`.
    pub fn appliances(&self, segment: &str) -> Result<Vec<String>, StoreError> {
        let listed = self.list_prefix(&format!("{PREFIX}appliances/{segment}/"))?;
        Ok(listed
            .into_iter()
            .filter_map(|(_, value, _)| String::from_utf8(value).ok())
            .collect())
    }

    /// Runs `call` against the cluster, again when a member did not answer. Only for calls
    /// that may safely be made twice (reads, and writes whose second making changes nothing):
    /// an unanswered call may still have been carried out.
    fn call<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let mut delay = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            tries += 1;
            let (member, client) = self.members.client();
            let result = wait(self.runtime.runtime(), call(client))
                .map_err(|err| backend(&self.endpoints, err))?;
            match result {
                Ok(value) => return Ok(value),
                Err(err) if tries < TRIES && retryable(&err) => {
                    self.members.failed(member);
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(err) => return Err(backend(&self.endpoints, err)),
            }
        }
    }

    fn get_value(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let key = key.to_string();
        let response = self.call(|mut client| {
            let key = key.clone();
            async move { client.get(key, None).await }
        })?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    /// Every key under `prefix`, as of one revision, read in pages of [`LIST_PAGE`] keys: in one
    /// response, 10,000 Hardware passed gRPC's 4 MiB message limit, and the listing failed.
    fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let mut listed = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        // The first page's revision, so that later pages show the same moment.
        let mut revision = None;
        loop {
            let response = self.call(|mut client| {
                let (from, end) = (from.clone(), end.clone());
                let mut options = GetOptions::new().with_range(end).with_limit(LIST_PAGE);
                if let Some(revision) = revision {
                    options = options.with_revision(revision);
                }
                async move { client.get(from, Some(options)).await }
            })?;
            revision = revision.or(response.header().map(|header| header.revision()));
            for kv in response.kvs() {
                let key = kv
                    .key_str()
                    .map_err(|err| backend(&self.endpoints, err))?
                    .to_string();
                listed.push((key, kv.value().to_vec(), kv.mod_revision()));
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    // The next page starts just after the last key of this one.
                    from = [last.key(), &[0]].concat();
                }
                _ => return Ok(listed),
            }
        }
    }

    /// Runs `call` once (see [`Self::call`]).
    fn call_once<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let (member, client) = self.members.client();
        wait(self.runtime.runtime(), call(client))
            .map_err(|err| backend(&self.endpoints, err))?
            .map_err(|err| {
                if retryable(&err) {
                    // The next call goes to another member.
                    self.members.failed(member);
                }
                backend(
                    &self.endpoints,
                    format!("{err} (the write may or may not have been made: read it back)"),
                )
            })
    }

    /// Commits `txn` once; whether its comparisons held, and the revision it made. Not made
    /// again when unanswered: a compare-and-swap that did commit would then fail its own
    /// comparison, and be reported as a conflict.
    fn commit_once(&self, txn: Txn) -> Result<(bool, i64), StoreError> {
        let response = self.call_once(|mut client| async move { client.txn(txn).await })?;
        let revision = response.header().map_or(0, |header| header.revision());
        Ok((response.succeeded(), revision))
    }

    /// Commits a transaction of puts and deletes that may be made twice.
    fn commit_idempotent(&self, ops: Vec<TxnOp>) -> Result<(), StoreError> {
        self.call(|mut client| {
            let txn = Txn::new().and_then(ops.clone());
            async move { client.txn(txn).await }
        })
        .map(drop)
    }

    fn run_put(&self, change: &RunChange) -> Result<TxnOp, StoreError> {
        let bytes =
            serde_json::to_vec(&change.status).map_err(|err| backend(&self.endpoints, err))?;
        Ok(TxnOp::put(run_key(&change.key), bytes, None))
    }

    /// Writes `value` at each key only if the resource it belongs to exists, in one
    /// transaction; for each, whether it was written.
    fn put_if_resources_exist(
        &self,
        writes: Vec<(ResourceKey, String, Vec<u8>)>,
    ) -> Result<Vec<bool>, StoreError> {
        // etcd refuses a key twice in one transaction: a batch's later write to a key wins,
        // as it would have in turn. And it refuses more than 128 operations in one.
        let mut last: std::collections::BTreeMap<&str, usize> = Default::default();
        for (index, (_, key, _)) in writes.iter().enumerate() {
            last.insert(key.as_str(), index);
        }
        let latest: Vec<usize> = last.into_values().collect();
        let mut stored = vec![false; writes.len()];
        for chunk in latest.chunks(OPS_PER_TXN / 2) {
            let part: Vec<_> = chunk.iter().map(|&index| writes[index].clone()).collect();
            for (&index, was) in chunk.iter().zip(self.put_if_resources_exist_once(part)?) {
                stored[index] = was;
            }
        }
        // An earlier write to a key is stored if the one that replaced it was.
        for (index, (_, key, _)) in writes.iter().enumerate() {
            if let Some(&winner) = latest.iter().find(|&&w| writes[w].1 == *key) {
                stored[index] = stored[winner];
            }
        }
        Ok(stored)
    }

    fn put_if_resources_exist_once(
        &self,
        writes: Vec<(ResourceKey, String, Vec<u8>)>,
    ) -> Result<Vec<bool>, StoreError> {
        for _ in 0..TRIES {
            let mut exists = Vec::with_capacity(writes.len());
            let mut compares = Vec::new();
            let mut puts = Vec::new();
            for (resource, key, value) in &writes {
                let resource_key = resource_key(resource);
                let current = self.get_value(&resource_key)?;
                match current {
                    Some((_, revision)) => {
                        compares.push(Compare::mod_revision(
                            resource_key,
                            CompareOp::Equal,
                            revision,
                        ));
                        puts.push(TxnOp::put(key.clone(), value.clone(), None));
                        exists.push(true);
                    }
                    None => {
                        compares.push(Compare::version(resource_key, CompareOp::Equal, 0));
                        exists.push(false);
                    }
                }
            }
            let (held, _) = self.commit_once(Txn::new().when(compares).and_then(puts))?;
            if held {
                return Ok(exists);
            }
        }
        Err(raced(&self.endpoints))
    }
}

/// Runs `future` on the store's runtime and waits for it on this thread.
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = T> + Send + 'static,
) -> Result<T, &'static str> {
    let (done, result) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = done.send(future.await);
    });
    result
        .recv()
        .map_err(|_| "the etcd store's runtime stopped")
}

/// Errors worth another try: a member that did not answer, or had no leader for a moment.
fn retryable(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            // Cancelled: the client's own request timeout, a member that hangs.
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

fn backend(endpoints: &str, err: impl Into<BoxError>) -> StoreError {
    StoreError::Backend {
        store: "etcd",
        source: format!("{endpoints}: {}", err.into()).into(),
    }
}

fn raced(endpoints: &str) -> StoreError {
    backend(
        endpoints,
        format!("other writers changed the same keys {TRIES} times in a row; try again"),
    )
}

fn resource_key(key: &ResourceKey) -> String {
    format!(
        "{PREFIX}resources/{}/{}/{}",
        key.kind, key.namespace, key.name
    )
}

fn revision_key() -> String {
    format!("{PREFIX}revision")
}

fn run_key(key: &ResourceKey) -> String {
    format!("{PREFIX}runs/{}/{}", key.namespace, key.name)
}

fn status_key(key: &ResourceKey) -> String {
    format!("{PREFIX}status/{}/{}/{}", key.kind, key.namespace, key.name)
}

fn lease_key(mac: &MacAddr) -> String {
    format!("{PREFIX}leases/{mac}")
}

fn boot_key(mac: &MacAddr) -> String {
    format!("{PREFIX}boots/{mac}")
}

/// The resource key after a prefix: `<Kind>/<namespace>/<name>`, or `<namespace>/<name>` of
/// `kind`.
fn parse_key(rest: &str, kind: Option<Kind>) -> Option<ResourceKey> {
    let mut parts = rest.splitn(if kind.is_some() { 2 } else { 3 }, '/');
    let kind = match kind {
        Some(kind) => kind,
        None => {
            let text = parts.next()?;
            Kind::ALL.into_iter().find(|kind| kind.as_str() == text)?
        }
    };
    Some(ResourceKey {
        kind,
        namespace: parts.next()?.to_string(),
        name: parts.next()?.to_string(),
    })
}

fn decode_run(key: &ResourceKey, bytes: &[u8], revision: i64) -> Result<StoredRun, StoreError> {
    let status = serde_json::from_slice(bytes)
        .map_err(|err| StoreError::decode(format_args!("the status of {key}"), err))?;
    Ok(StoredRun {
        status,
        version: revision as u64,
    })
}

/// The comparisons under which a run's change is written: its workflow exists, and the run is
/// as the change read it (absent, when read at 0).
fn run_unchanged(change: &RunChange) -> [Compare; 2] {
    let run = run_key(&change.key);
    [
        Compare::version(resource_key(&change.key), CompareOp::Greater, 0),
        match change.read_at {
            0 => Compare::version(run, CompareOp::Equal, 0),
            read_at => Compare::mod_revision(run, CompareOp::Equal, read_at as i64),
        },
    ]
}

fn decode_resource(key: ResourceKey, bytes: &[u8], revision: i64) -> Result<Resource, StoreError> {
    let object: Value =
        serde_json::from_slice(bytes).map_err(|err| StoreError::decode(&key, err))?;
    Ok(with_version(
        key,
        object,
        u64::try_from(revision).unwrap_or(0),
    ))
}

impl Store for EtcdStore {
    fn apply(&self, writes: Vec<Write>) -> Result<Vec<Applied>, StoreError> {
        'tries: for _ in 0..TRIES {
            let mut compares = Vec::new();
            let mut puts = Vec::new();
            // What each write does: unchanged at its version, or written (and how).
            let mut outcomes: Vec<(ResourceKey, Option<u64>, ApplyOutcome)> = Vec::new();
            for write in &writes {
                let key = resource_key(&write.key);
                let current = self.get_value(&key)?;
                if let Some(expected) = write.expected_version {
                    let actual = current.as_ref().map(|(_, revision)| *revision as u64);
                    if actual != Some(expected) {
                        return Err(StoreError::Conflict {
                            key: write.key.clone(),
                            expected,
                            actual: actual.map_or_else(
                                || "absent (it does not exist)".into(),
                                |v| v.to_string(),
                            ),
                        });
                    }
                }
                let object = without_version(write.object.clone());
                compares.push(match &current {
                    Some((_, revision)) => {
                        Compare::mod_revision(key.clone(), CompareOp::Equal, *revision)
                    }
                    None => Compare::version(key.clone(), CompareOp::Equal, 0),
                });
                let outcome = match &current {
                    Some((bytes, revision)) => {
                        let stored: Value = serde_json::from_slice(bytes)
                            .map_err(|err| StoreError::decode(&write.key, err))?;
                        if stored == object {
                            outcomes.push((
                                write.key.clone(),
                                Some(*revision as u64),
                                ApplyOutcome::Unchanged,
                            ));
                            continue;
                        }
                        ApplyOutcome::Configured
                    }
                    None => ApplyOutcome::Created,
                };
                let bytes =
                    serde_json::to_vec(&object).map_err(|err| backend(&self.endpoints, err))?;
                puts.push(TxnOp::put(key, bytes, None));
                outcomes.push((write.key.clone(), None, outcome));
            }
            if !puts.is_empty() {
                puts.push(TxnOp::put(revision_key(), Vec::new(), None));
            }
            // An apply is one transaction: one compare and one put a resource, and the
            // revision; etcd takes 128 operations in one unless started with more.
            let committed = self.commit_once(Txn::new().when(compares).and_then(puts));
            let (held, revision) = committed.map_err(|err| match err {
                StoreError::Backend { source, .. }
                    if source.to_string().contains("too many operations") =>
                {
                    backend(
                        &self.endpoints,
                        format!(
                            "an apply of {} resources is more than one etcd transaction takes \
                             (etcd's --max-txn-ops, 128 by default): apply them in smaller files, \
                             or raise it",
                            writes.len()
                        ),
                    )
                }
                other => other,
            })?;
            if !held {
                // Another appliance wrote one of these keys since they were read.
                continue 'tries;
            }
            return Ok(outcomes
                .into_iter()
                .map(|(key, unchanged, outcome)| Applied {
                    key,
                    version: unchanged.unwrap_or(revision as u64),
                    outcome,
                })
                .collect());
        }
        Err(raced(&self.endpoints))
    }

    fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        self.get_value(&resource_key(key))?
            .map(|(bytes, revision)| decode_resource(key.clone(), &bytes, revision))
            .transpose()
    }

    fn list(&self, kind: Kind) -> Result<Vec<Resource>, StoreError> {
        let prefix = format!("{PREFIX}resources/{kind}/");
        self.list_prefix(&prefix)?
            .into_iter()
            .map(|(key, bytes, revision)| {
                let resource = key
                    .strip_prefix(&prefix)
                    .and_then(|rest| parse_key(rest, Some(kind)))
                    .ok_or_else(|| backend(&self.endpoints, format!("unreadable key {key:?}")))?;
                decode_resource(resource, &bytes, revision)
            })
            .collect()
    }

    fn delete(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let resource = resource_key(key);
        // Once: made again after it went through unanswered, it would find nothing to delete.
        let deleted = self.call_once(|mut client| {
            // The resource, its run and its status go together, with the revision bumped.
            let txn = Txn::new()
                .when([Compare::version(resource.clone(), CompareOp::Greater, 0)])
                .and_then([
                    TxnOp::delete(
                        resource.clone(),
                        Some(etcd_client::DeleteOptions::new().with_prev_key()),
                    ),
                    TxnOp::delete(run_key(key), None),
                    TxnOp::delete(status_key(key), None),
                    TxnOp::put(revision_key(), Vec::new(), None),
                ]);
            async move { client.txn(txn).await }
        })?;
        if !deleted.succeeded() {
            return Ok(None);
        }
        let previous = deleted.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Delete(delete) => delete.prev_kvs().first().cloned(),
            _ => None,
        });
        previous
            .map(|kv| decode_resource(key.clone(), kv.value(), kv.mod_revision()))
            .transpose()
    }

    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self
            .get_value(&revision_key())?
            .map_or(0, |(_, revision)| revision as u64))
    }

    fn put_workflow_statuses(&self, runs: &[RunChange]) -> Result<Vec<RunWritten>, StoreError> {
        let mut written = Vec::with_capacity(runs.len());
        // Two comparisons a run, counted against etcd's limit on operations.
        for chunk in runs.chunks(OPS_PER_TXN / 2) {
            let mut compares = Vec::with_capacity(chunk.len() * 2);
            let mut puts = Vec::with_capacity(chunk.len());
            for change in chunk {
                compares.extend(run_unchanged(change));
                puts.push(self.run_put(change)?);
            }
            let (held, revision) = self.commit_once(Txn::new().when(compares).and_then(puts))?;
            if held {
                written.extend(chunk.iter().map(|_| RunWritten::Stored(revision as u64)));
                continue;
            }
            // Some run changed, or its workflow went: each alone, to learn which.
            for change in chunk {
                let txn = Txn::new()
                    .when(run_unchanged(change))
                    .and_then([self.run_put(change)?])
                    .or_else([TxnOp::get(resource_key(&change.key), None)]);
                let response = self.call_once(|mut client| async move { client.txn(txn).await })?;
                written.push(if response.succeeded() {
                    RunWritten::Stored(response.header().map_or(0, |h| h.revision()) as u64)
                } else if response
                    .op_responses()
                    .into_iter()
                    .any(|op| matches!(op, TxnOpResponse::Get(get) if !get.kvs().is_empty()))
                {
                    RunWritten::Stale
                } else {
                    RunWritten::WorkflowGone
                });
            }
        }
        Ok(written)
    }

    fn workflow_status(&self, key: &ResourceKey) -> Result<Option<StoredRun>, StoreError> {
        self.get_value(&run_key(key))?
            .map(|(bytes, revision)| decode_run(key, &bytes, revision))
            .transpose()
    }

    fn workflow_statuses(&self) -> Result<Vec<(ResourceKey, StoredRun)>, StoreError> {
        let prefix = format!("{PREFIX}runs/");
        self.list_prefix(&prefix)?
            .into_iter()
            .map(|(key, bytes, revision)| {
                let resource = key
                    .strip_prefix(&prefix)
                    .and_then(|rest| parse_key(rest, Some(Kind::Workflow)))
                    .ok_or_else(|| backend(&self.endpoints, format!("unreadable key {key:?}")))?;
                let run = decode_run(&resource, &bytes, revision)?;
                Ok((resource, run))
            })
            .collect()
    }

    fn shared(&self) -> bool {
        true
    }

    fn put_status(&self, key: &ResourceKey, status: &Value) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(status).map_err(|err| backend(&self.endpoints, err))?;
        let stored = self.put_if_resources_exist(vec![(key.clone(), status_key(key), bytes)])?;
        Ok(stored.first().copied().unwrap_or(false))
    }

    fn status(&self, key: &ResourceKey) -> Result<Option<Value>, StoreError> {
        self.get_value(&status_key(key))?
            .map(|(bytes, _)| {
                serde_json::from_slice(&bytes)
                    .map_err(|err| StoreError::decode(format_args!("the status of {key}"), err))
            })
            .transpose()
    }
}

impl LeaseStore for EtcdStore {
    fn record_leases(&self, leases: &[Lease]) -> Result<(), StoreError> {
        // The latest of a MAC's leases in the batch (etcd refuses a key twice in one).
        let mut latest: std::collections::BTreeMap<MacAddr, &Lease> = Default::default();
        for lease in leases {
            latest.insert(lease.mac, lease);
        }
        let latest: Vec<&Lease> = latest.into_values().collect();
        for chunk in latest.chunks(OPS_PER_TXN) {
            let puts = chunk
                .iter()
                .map(|lease| {
                    let bytes =
                        serde_json::to_vec(lease).map_err(|err| backend(&self.endpoints, err))?;
                    Ok(TxnOp::put(lease_key(&lease.mac), bytes, None))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            self.commit_idempotent(puts)?;
        }
        Ok(())
    }

    fn remove_lease(&self, mac: &MacAddr) -> Result<Option<Lease>, StoreError> {
        let key = lease_key(mac);
        let response = self.call(|mut client| {
            let key = key.clone();
            async move {
                client
                    .delete(key, Some(etcd_client::DeleteOptions::new().with_prev_key()))
                    .await
            }
        })?;
        response
            .prev_kvs()
            .first()
            .map(|kv| {
                serde_json::from_slice(kv.value())
                    .map_err(|err| StoreError::decode(format_args!("the lease of {mac}"), err))
            })
            .transpose()
    }

    fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.list_prefix(&format!("{PREFIX}leases/"))?
            .into_iter()
            .map(|(key, bytes, _)| {
                serde_json::from_slice(&bytes).map_err(|err| StoreError::decode(&key, err))
            })
            .collect()
    }
}

impl BootStore for EtcdStore {
    fn record_boot(&self, mac: &MacAddr, boot: BootRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(&boot).map_err(|err| backend(&self.endpoints, err))?;
        self.commit_idempotent(vec![TxnOp::put(boot_key(mac), bytes, None)])
    }

    fn end_boots(&self, macs: &[MacAddr]) -> Result<(), StoreError> {
        let macs: std::collections::BTreeSet<&MacAddr> = macs.iter().collect();
        let macs: Vec<&MacAddr> = macs.into_iter().collect();
        for chunk in macs.chunks(OPS_PER_TXN) {
            self.commit_idempotent(
                chunk
                    .iter()
                    .map(|mac| TxnOp::delete(boot_key(mac), None))
                    .collect(),
            )?;
        }
        Ok(())
    }

    fn shared_token_key(&self, candidate: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = format!("{PREFIX}keys/token");
        // The first appliance's key stays: put only where there is none, then read what is.
        self.call(|mut client| {
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), candidate.to_vec(), None)]);
            async move { client.txn(txn).await }
        })?;
        Ok(self.get_value(&key)?.map(|(value, _)| value))
    }

    fn boots(&self) -> Result<Vec<(MacAddr, BootRecord)>, StoreError> {
        let prefix = format!("{PREFIX}boots/");
        self.list_prefix(&prefix)?
            .into_iter()
            .map(|(key, bytes, _)| {
                let mac: MacAddr = key
                    .strip_prefix(&prefix)
                    .and_then(|mac| mac.parse().ok())
                    .ok_or_else(|| backend(&self.endpoints, format!("unreadable key {key:?}")))?;
                let boot = serde_json::from_slice(&bytes)
                    .map_err(|err| StoreError::decode(format_args!("the boot of {mac}"), err))?;
                Ok((mac, boot))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, free_port, Etcd};

    #[test]
    fn does_what_every_store_does_on_a_real_etcd() {
        let etcd = Etcd::start();
        let store = etcd.store();
        conformance::resources(&store);
        conformance::runs_and_statuses(&store);
        conformance::leases(&store);
        conformance::boots(&store);
    }

    #[test]
    fn two_appliances_see_each_others_writes_and_conflict_on_the_same_version() {
        let etcd = Etcd::start();
        let (one, two) = (etcd.store(), etcd.store());
        let key = conformance::key(Kind::Hardware, "shared");
        let write =
            |spec: Value, expected_version| conformance::write("shared", spec, expected_version);
        let created = one.apply(vec![write(serde_json::json!(1), None)]).unwrap();
        let seen = two.get(&key).unwrap().expect("written by the other");
        assert_eq!(seen.version, created[0].version);
        assert_eq!(two.revision().unwrap(), one.revision().unwrap());
        // Both apply against the version they read: one wins, the other is told.
        two.apply(vec![write(serde_json::json!(2), Some(seen.version))])
            .unwrap();
        let err = one
            .apply(vec![write(serde_json::json!(3), Some(seen.version))])
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    }

    #[test]
    fn an_apply_larger_than_an_etcd_transaction_says_so_and_writes_nothing() {
        let etcd = Etcd::start();
        let store = etcd.store();
        let writes: Vec<Write> = (0..200)
            .map(|n| conformance::write(&format!("m{n}"), serde_json::json!(n), None))
            .collect();
        let err = store.apply(writes).unwrap_err().to_string();
        assert!(err.contains("--max-txn-ops"), "{err}");
        assert!(conformance::hardware_names(&store).is_empty());
    }

    #[test]
    fn a_listing_larger_than_a_grpc_message_is_read_whole_in_pages() {
        let etcd = Etcd::start();
        let store = etcd.store();
        // 1,300 Hardware of 4 KiB each: 5 MiB in all, past gRPC's 4 MiB limit for one
        // response, and three pages.
        let padding = "x".repeat(4096);
        for batch in (0..1300).collect::<Vec<u32>>().chunks(100) {
            let writes = batch
                .iter()
                .map(|n| conformance::write(&format!("m{n:04}"), serde_json::json!(padding), None))
                .collect();
            store.apply(writes).unwrap();
        }
        let names = conformance::hardware_names(&store);
        assert_eq!(names.len(), 1300);
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 1300, "no key twice across pages");
    }

    #[test]
    fn the_range_of_a_prefix_ends_past_its_last_byte() {
        assert_eq!(prefix_end(b"/wisp/hw/"), b"/wisp/hw0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn one_appliance_at_a_time_leads_and_another_takes_over_when_it_goes() {
        let etcd = Etcd::start();
        let (one, two) = (etcd.store(), etcd.store());
        let ttl = Duration::from_secs(2);
        let first = one.lead("dhcp/lab", "one", ttl);
        let second = two.lead("dhcp/lab", "two", ttl);
        let holders =
            |a: &Leadership, b: &Leadership| usize::from(a.held()) + usize::from(b.held());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while holders(&first, &second) == 0 {
            assert!(std::time::Instant::now() < deadline, "nobody took the lead");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Never two, over a few beats.
        for _ in 0..40 {
            assert_eq!(holders(&first, &second), 1);
            std::thread::sleep(Duration::from_millis(50));
        }
        let (leader, follower) = if first.held() {
            (first, second)
        } else {
            (second, first)
        };
        drop(leader);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !follower.held() {
            assert!(std::time::Instant::now() < deadline, "nobody took over");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_leader_holds_on_while_etcd_is_silent_and_campaigns_again_once_its_lease_ran_out() {
        let etcd = Etcd::start();
        let store = etcd.store();
        let ttl = Duration::from_secs(2);
        let leader = store.lead("dhcp/lab", "one", ttl);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !leader.held() {
            assert!(std::time::Instant::now() < deadline, "no lead taken");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(leader.term(), 1);
        // etcd hangs for twice the lease's time: the leader holds on (without quorum, no other
        // can take the duty).
        etcd.signal("STOP");
        std::thread::sleep(2 * ttl);
        let held_while_silent = leader.held();
        etcd.signal("CONT");
        assert!(
            held_while_silent,
            "the leader gave up while etcd was silent"
        );
        // etcd answers that the lease ran out: the leader gives up, and takes the duty again
        // with a new lease, as nobody else holds it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while leader.term() < 2 || !leader.held() {
            assert!(
                std::time::Instant::now() < deadline,
                "no new term (term {}, held {})",
                leader.term(),
                leader.held()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn appliances_share_the_first_token_key() {
        let etcd = Etcd::start();
        let (one, two) = (etcd.store(), etcd.store());
        let first = one.shared_token_key(&[1; 32]).unwrap();
        assert_eq!(first, Some(vec![1; 32]));
        assert_eq!(two.shared_token_key(&[2; 32]).unwrap(), first);
    }

    #[test]
    fn a_cluster_that_does_not_answer_is_named() {
        let port = free_port();
        let err = match EtcdStore::connect(&format!("etcd://127.0.0.1:{port}")) {
            Ok(_) => panic!("nothing listens there"),
            Err(err) => err.to_string(),
        };
        assert!(
            err.contains("store (etcd)") && err.contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        let err = match EtcdStore::connect("http://127.0.0.1:2379") {
            Ok(_) => panic!("not an etcd URL"),
            Err(err) => err.to_string(),
        };
        assert!(err.contains("is not an etcd URL"), "{err}");
    }
}
