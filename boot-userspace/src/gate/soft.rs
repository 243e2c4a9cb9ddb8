//! The userspace gate: the reference classifier applied to what the DHCP socket receives,
//! with the same counters and unknown-MAC record as the XDP program.
use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, RwLock,
    },
};

use boot_ebpf::{
    spec::classify_bootp, Counter, UnknownMacStat, UnknownPolicy, UNKNOWN_MACS_CAPACITY,
};

use super::{monotonic_ns, CounterValues};

pub struct SoftGate {
    policy: UnknownPolicy,
    reason: String,
    allowlist: RwLock<BTreeSet<[u8; 6]>>,
    counters: [AtomicU64; Counter::COUNT as usize],
    unknown: Mutex<HashMap<[u8; 6], UnknownMacStat>>,
}

impl SoftGate {
    pub fn new(policy: UnknownPolicy, reason: String) -> Self {
        SoftGate {
            policy,
            reason,
            allowlist: RwLock::default(),
            counters: Default::default(),
            unknown: Mutex::default(),
        }
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn sync_allowlist(&self, wanted: BTreeSet<[u8; 6]>) {
        *self.allowlist.write().unwrap_or_else(|p| p.into_inner()) = wanted;
    }

    pub fn allowlist_len(&self) -> usize {
        self.allowlist
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn admit(&self, payload: &[u8]) -> bool {
        let verdict = {
            let allowlist = self.allowlist.read().unwrap_or_else(|p| p.into_inner());
            classify_bootp(payload, |mac| allowlist.contains(mac), self.policy)
        };
        self.counters[verdict.counter as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(mac) = verdict.unknown_mac {
            self.record_unknown(mac);
        }
        verdict.pass
    }

    /// Like the kernel's LRU map: bounded, evicting the least recently seen MAC.
    fn record_unknown(&self, mac: [u8; 6]) {
        let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        if !unknown.contains_key(&mac) && unknown.len() >= UNKNOWN_MACS_CAPACITY as usize {
            if let Some(oldest) = unknown
                .iter()
                .min_by_key(|(_, stat)| stat.last_seen_ns)
                .map(|(mac, _)| *mac)
            {
                unknown.remove(&oldest);
            }
        }
        let stat = unknown.entry(mac).or_default();
        stat.count += 1;
        stat.last_seen_ns = monotonic_ns();
    }

    pub fn counters(&self) -> CounterValues {
        std::array::from_fn(|index| self.counters[index].load(Ordering::Relaxed))
    }

    pub fn unknown_macs(&self) -> Vec<([u8; 6], UnknownMacStat)> {
        let unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        unknown.iter().map(|(mac, stat)| (*mac, *stat)).collect()
    }
}
