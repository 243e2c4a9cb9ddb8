//! The userspace gate: the reference classifier applied to what the DHCP socket receives,
//! with the same counters and unknown-MAC record as the XDP program.
use std::{
    collections::BTreeSet,
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, RwLock,
    },
};

use lru::LruCache;

use boot_ebpf::{
    spec::classify_bootp, Counter, UnknownMacStat, UnknownPolicy, UNKNOWN_MACS_CAPACITY,
};

use super::{monotonic_ns, CounterValues};

pub struct SoftGate {
    policy: UnknownPolicy,
    reason: String,
    allowlist: RwLock<BTreeSet<[u8; 6]>>,
    counters: [AtomicU64; Counter::COUNT as usize],
    /// Like the kernel's LRU map: bounded, the least recently seen MAC evicted first, in
    /// constant time.
    unknown: Mutex<LruCache<[u8; 6], UnknownMacStat>>,
}

impl SoftGate {
    pub fn new(policy: UnknownPolicy, reason: String) -> Self {
        SoftGate {
            policy,
            reason,
            allowlist: RwLock::default(),
            counters: Default::default(),
            unknown: Mutex::new(LruCache::new(
                NonZeroUsize::new(UNKNOWN_MACS_CAPACITY as usize).expect("a non-zero capacity"),
            )),
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

    fn record_unknown(&self, mac: [u8; 6]) {
        let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        let stat = unknown.get_or_insert_mut(mac, UnknownMacStat::default);
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

#[cfg(test)]
mod tests {
    use boot_ebpf::wire::{BOOTP_CHADDR_OFFSET, BOOTP_HEADER_LEN};

    use super::*;

    fn asks(gate: &SoftGate, index: usize) {
        let mut payload = vec![0u8; BOOTP_HEADER_LEN];
        payload[..3].copy_from_slice(&[1, 1, 6]);
        payload[BOOTP_CHADDR_OFFSET..BOOTP_CHADDR_OFFSET + 6].copy_from_slice(&mac(index));
        assert!(!gate.admit(&payload), "unknown MACs are dropped");
    }

    fn mac(index: usize) -> [u8; 6] {
        let [.., high, low] = (index as u32).to_be_bytes();
        [2, 0, 0, 0, high, low]
    }

    #[test]
    fn unknown_macs_are_bounded_and_the_least_recently_seen_goes_first() {
        let gate = SoftGate::new(UnknownPolicy::Drop, "test".into());
        let capacity = UNKNOWN_MACS_CAPACITY as usize;
        for index in 0..capacity {
            asks(&gate, index);
        }
        asks(&gate, 0); // seen again: now the most recent
        asks(&gate, capacity); // one more than fits: evicts MAC 1, the least recent
        let seen = gate.unknown_macs();
        assert_eq!(seen.len(), capacity);
        let count = |index| {
            seen.iter()
                .find(|(seen, _)| *seen == mac(index))
                .map(|(_, stat)| stat.count)
        };
        assert_eq!(count(0), Some(2));
        assert_eq!(count(1), None, "the least recently seen was evicted");
        assert_eq!(count(capacity), Some(1));
        assert_eq!(
            gate.counters()[Counter::DroppedUnknown as usize],
            capacity as u64 + 2
        );
    }
}
