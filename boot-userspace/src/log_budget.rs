//! Log lines that peers on the boot network cause, rationed, so that an attacker does not set
//! the log's volume: every TFTP request is a line, and anyone can send them as fast as the link
//! allows. Each peer (a TFTP or HTTP client's address, a DHCP client's MAC) gets a burst of
//! lines and a steady trickle, and all peers together get a ceiling. A line beyond either is
//! dropped and counted in `wisp_log_lines_suppressed_total{protocol}`; the peer's next line that
//! is written is preceded by one that says how many of its lines were dropped.
//!
//! Written here rather than with a rate-limiting crate: governor's keyed limiter keeps a state
//! for every key it has seen until it is swept, and spoofed sources are unlimited keys; an LRU of
//! buckets (the `lru` crate, as the userspace gate uses) bounds the memory to its capacity.
use std::{
    fmt::Display,
    hash::Hash,
    num::NonZeroUsize,
    sync::{Mutex, OnceLock},
    time::Instant,
};

use lru::LruCache;
use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::metrics::ProtocolLabels;

/// Lines one peer may cause at once, and per second after that: a machine's boot is a handful
/// of DHCP, TFTP and HTTP lines within seconds.
const PEER_BURST: f64 = 20.0;
const PEER_PER_SECOND: f64 = 2.0;
/// Lines all peers of one protocol may cause at once, and per second: a rack booting at once
/// fits, a flood from spoofed sources does not.
const ALL_BURST: f64 = 5_000.0;
const ALL_PER_SECOND: f64 = 1_000.0;
/// Peers remembered; beyond that the least recently heard from is forgotten (and starts anew).
const PEERS: usize = 4_096;

/// A token bucket: `tokens` lines may be written now.
struct Bucket {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            refilled: now,
            suppressed: 0,
        }
    }

    fn take(&mut self, now: Instant, burst: f64, per_second: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The log budget of one protocol's peers.
pub struct LogBudget<Peer> {
    protocol: &'static str,
    peers: Mutex<LruCache<Peer, Bucket>>,
    all: Mutex<Bucket>,
    suppressed: Counter,
}

impl<Peer: Hash + Eq + Clone + Display> LogBudget<Peer> {
    pub fn new(protocol: &'static str, suppressed: &Family<ProtocolLabels, Counter>) -> Self {
        LogBudget {
            protocol,
            peers: Mutex::new(LruCache::new(
                NonZeroUsize::new(PEERS).expect("a non-zero capacity"),
            )),
            all: Mutex::new(Bucket::full(ALL_BURST, Instant::now())),
            suppressed: suppressed
                .get_or_create(&ProtocolLabels { protocol })
                .clone(),
        }
    }

    /// Whether a line that `peer` caused may be written; when not, it is counted.
    pub fn allow(&self, peer: Peer) -> bool {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = peers.get_or_insert_mut(peer.clone(), || Bucket::full(PEER_BURST, now));
        let allowed = bucket.take(now, PEER_BURST, PEER_PER_SECOND)
            && self.all.lock().unwrap_or_else(|p| p.into_inner()).take(
                now,
                ALL_BURST,
                ALL_PER_SECOND,
            );
        if !allowed {
            bucket.suppressed += 1;
            self.suppressed.inc();
            return false;
        }
        let suppressed = std::mem::take(&mut bucket.suppressed);
        drop(peers);
        if suppressed > 0 {
            tracing::info!(
                protocol = self.protocol,
                %peer,
                suppressed,
                "lines about this peer were left out of the log: it caused more than the log takes"
            );
        }
        true
    }
}

/// Panics, logged through tracing on one line each (no backtrace), at most as many as one
/// budget allows: dhcproto asserts on some malformed packets, which the DHCP server contains,
/// so a stream of them would otherwise write a stream of panic messages.
pub fn log_panics(suppressed: &Family<ProtocolLabels, Counter>) {
    static BUDGET: OnceLock<LogBudget<String>> = OnceLock::new();
    let budget = BUDGET.get_or_init(|| LogBudget::new("panic", suppressed));
    std::panic::set_hook(Box::new(move |info| {
        // A budget per place: a stream of one contained panic cannot hide another.
        let place = info
            .location()
            .map(|location| location.to_string())
            .unwrap_or_default();
        if !budget.allow(place) {
            return;
        }
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|location| location.to_string())
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            %location,
            "panicked: {payload}"
        );
    }));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_peer_gets_its_burst_then_its_rate_and_the_rest_is_counted() {
        let family = Family::default();
        let budget = LogBudget::new("tftp", &family);
        let allowed = (0..100).filter(|_| budget.allow("10.0.0.9")).count();
        assert_eq!(allowed, PEER_BURST as usize);
        // Another peer is not held back by the first.
        assert!(budget.allow("10.0.0.10"));
        let suppressed = family
            .get_or_create(&ProtocolLabels { protocol: "tftp" })
            .get();
        assert_eq!(suppressed, 100 - PEER_BURST as u64);
    }

    #[test]
    fn the_bucket_refills_at_its_rate_up_to_its_burst() {
        let start = Instant::now();
        let mut bucket = Bucket::full(3.0, start);
        assert!((0..3).all(|_| bucket.take(start, 3.0, 2.0)));
        assert!(!bucket.take(start, 3.0, 2.0));
        let half_a_second = start + Duration::from_millis(500);
        assert!(
            bucket.take(half_a_second, 3.0, 2.0),
            "one line a half second"
        );
        assert!(!bucket.take(half_a_second, 3.0, 2.0));
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take(later, 3.0, 2.0)).count(), 3);
    }
}
