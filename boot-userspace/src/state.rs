//! The appliance's shared state: the workflow engine (and through it the catalog of
//! resources), the machine table, the gate, the leases and the metrics. Every service holds
//! one `Arc<AppState>`; only [`AppState::sync_hardware`] changes the machine table and the
//! gate's allowlist, together, from what the store says.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use workflow::{
    catalog::Catalog,
    engine::Engine,
    store::{LeaseStore, StoreError},
};

use crate::{
    action_output::ActionOutputs,
    dhcp::{LeaseHolders, ScriptHandoffs},
    events::EventLog,
    gate::Gate,
    identity::{MachineIdentity, MachineTokens},
    machines::{MachineTable, Machines},
    metrics::Metrics,
};

/// What every service of the appliance shares.
pub struct AppState {
    /// The workflow engine, which owns the catalog of resources.
    pub engine: Engine,
    pub gate: Arc<Gate>,
    pub machines: Arc<Machines>,
    /// Each machine's recent events.
    pub events: Arc<EventLog>,
    /// What running actions print, and how far they are.
    pub outputs: Arc<ActionOutputs>,
    pub metrics: Arc<Metrics>,
    pub leases: Arc<dyn LeaseStore>,
    /// Who holds each leased address: the DHCP server keeps it, deleting a lease updates it.
    pub holders: Arc<LeaseHolders>,
    /// Each machine's boot and its token; a boot ends when its machine has no more work.
    pub tokens: Arc<MachineTokens>,
    /// What identifies a machine to the worker API and the metadata service.
    pub machine_identity: MachineIdentity,
    /// Which machines Wisp's DHCP just pointed at their iPXE script: a script fetched then
    /// starts a boot, and carries its token.
    pub script_handoffs: Arc<ScriptHandoffs>,
    /// Serialises Hardware syncs, so that an older snapshot of the store never overwrites a
    /// newer one in the gate or the DHCP server.
    hardware_sync: Mutex<()>,
    coalesced_syncs: CoalescedSyncs,
    /// The other appliances serving this boot segment from the shared store (their worker
    /// APIs, `address:port`), which a machine's script names so that its worker can go on
    /// with any of them. Empty with a store of this appliance's own.
    pub peers: std::sync::RwLock<Vec<String>>,
}

/// Hardware syncs asked for together share one run: a sync that starts after a request covers
/// it, so a rack of workflows finishing at once costs a few syncs, not one each.
#[derive(Default)]
struct CoalescedSyncs {
    turn: tokio::sync::Mutex<()>,
    requested: AtomicU64,
    covered: AtomicU64,
}

impl AppState {
    pub fn new(
        engine: Engine,
        (machines, events, outputs): (Arc<Machines>, Arc<EventLog>, Arc<ActionOutputs>),
        gate: Arc<Gate>,
        metrics: Arc<Metrics>,
        leases: (Arc<dyn LeaseStore>, Arc<LeaseHolders>),
        (tokens, machine_identity): (Arc<MachineTokens>, MachineIdentity),
        chainload_window: Duration,
    ) -> AppState {
        let (leases, holders) = leases;
        AppState {
            engine,
            gate,
            machines,
            events,
            outputs,
            metrics,
            leases,
            holders,
            tokens,
            machine_identity,
            script_handoffs: Arc::new(ScriptHandoffs::new(chainload_window)),
            hardware_sync: Mutex::new(()),
            coalesced_syncs: CoalescedSyncs::default(),
            peers: Default::default(),
        }
    }

    pub fn catalog(&self) -> &Catalog {
        self.engine.catalog()
    }

    /// Every machine's row of the rack view. Blocking (it reads the store's revision).
    pub fn rack(&self) -> Result<Vec<crate::rack::RackRow>, StoreError> {
        let runs = self.engine.current_runs()?;
        let machines = self.machines.current();
        Ok(crate::rack::rows(
            &machines,
            &runs,
            |mac| self.events.last(mac),
            |action| self.outputs.progress(action),
        ))
    }

    /// Makes the machine table (with which machines have workflows) and the gate's allowlist
    /// exactly what the store says; returns how many machines there are. Blocking (store
    /// reads, BPF syscalls): call it from a blocking thread.
    pub fn sync_hardware(&self) -> anyhow::Result<usize> {
        let _sync = self
            .hardware_sync
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let hardware = self.catalog().hardware()?;
        let bound = self.catalog().bound_hardware()?;
        let table = MachineTable::build(hardware.iter().map(|(key, spec)| (key, spec)), &bound);

        let macs = table.macs().copied().collect();
        self.gate.sync_allowlist(&macs)?;
        let machines = table.len();
        self.machines.replace(table);
        // A machine with no more work (its workflow ended, or Wisp no longer owns it) needs no
        // token: its boot ends, and its token is refused from now on. After the table, so that
        // a boot minted meanwhile sees the new one (`MachineTokens::mint`); a failure here is
        // logged, and the reconcile loop tries again.
        let table = self.machines.current();
        if let Err(err) = self
            .tokens
            .end_boots_unless(|mac| table.get(mac).is_some_and(|machine| machine.pending_work()))
        {
            tracing::error!("ending the boots of machines without work: {err}");
        }
        Ok(machines)
    }

    /// The reserved addresses that another MAC still holds on an unexpired lease, each said as
    /// a sentence: the machine gets no address until that lease ends or is released.
    pub fn lease_conflicts(&self) -> Result<Vec<String>, StoreError> {
        let machines = self.machines.current();
        let now = SystemTime::now();
        let now_unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut conflicts = Vec::new();
        for lease in self.leases.leases()? {
            let Some(machine) = machines.by_address(lease.address) else {
                continue;
            };
            if machine.mac != lease.mac && lease.expires_unix > now_unix {
                let until = UNIX_EPOCH + Duration::from_secs(lease.expires_unix);
                conflicts.push(format!(
                    "{address}, reserved for {hardware} ({mac}), is leased to {holder} until \
                     {until}: {hardware} gets no address until that lease ends or is released \
                     (`wisp delete lease {holder}` frees it now)",
                    address = lease.address,
                    hardware = machine.hardware,
                    mac = machine.mac,
                    holder = lease.mac,
                    until = humantime::format_rfc3339_seconds(until),
                ));
            }
        }
        Ok(conflicts)
    }

    /// Puts the engine's runs back in line with the store after a commit failed.
    pub async fn reload_runs(self: &Arc<Self>) {
        let state = Arc::clone(self);
        let reloaded = tokio::task::spawn_blocking(move || state.engine.reload()).await;
        if !matches!(reloaded, Ok(Ok(()))) {
            tracing::error!("the workflow runs could not be reloaded from the store");
        }
    }

    /// [`AppState::sync_hardware`], shared with the callers waiting at the same time; returns
    /// once a sync that started after this call has finished.
    pub async fn sync_hardware_coalesced(self: &Arc<Self>) -> anyhow::Result<()> {
        let syncs = &self.coalesced_syncs;
        let ticket = syncs.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = syncs.turn.lock().await;
        if syncs.covered.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        let covering = syncs.requested.load(Ordering::SeqCst);
        let state = Arc::clone(self);
        tokio::task::spawn_blocking(move || state.sync_hardware()).await??;
        syncs.covered.store(covering, Ordering::SeqCst);
        Ok(())
    }
}
