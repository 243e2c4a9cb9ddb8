//! The DHCP gate: the XDP program when it can be attached, otherwise the same classifier in
//! userspace. Either way an unknown MAC's DHCP never reaches the DHCP handler (unless discovery
//! mode passes it), and nothing fails open.
mod soft;
pub mod xdp;

use std::{
    collections::BTreeSet,
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use boot_ebpf::{Counter, UnknownMacStat, UnknownPolicy};
use serde::{Deserialize, Serialize};
use workflow::resource::MacAddr;

pub use soft::SoftGate;
pub use xdp::{XdpGate, XdpMode};

/// What `--xdp-mode` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestedMode {
    /// Native (driver) mode, falling back to generic (skb) mode, then to the userspace gate.
    Auto,
    Native,
    Skb,
    /// No XDP: the reference classifier runs in userspace on what the DHCP socket receives.
    Off,
}

/// Where the gate runs, as reported by `wisp xdp stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ActiveMode {
    Xdp { mode: XdpMode },
    Userspace { reason: String },
}

impl fmt::Display for ActiveMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActiveMode::Xdp { mode } => write!(f, "XDP ({mode} mode)"),
            ActiveMode::Userspace { reason } => write!(f, "userspace classifier ({reason})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownMac {
    pub mac: String,
    pub count: u64,
    /// Seconds since the latest packet from this MAC.
    pub last_seen_secs_ago: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateStats {
    pub interface: String,
    pub mode: ActiveMode,
    pub discovery: bool,
    pub allowlist_size: usize,
    /// Counter name → packets, summed over CPUs.
    pub counters: Vec<(String, u64)>,
    /// Most recently seen first.
    pub unknown_macs: Vec<UnknownMac>,
}

/// What enforces the gate: the XDP program in the kernel, or the userspace classifier.
enum Enforcer {
    Xdp(Box<XdpGate>, XdpMode),
    Soft(Arc<SoftGate>),
    /// After shutdown: admits nothing.
    Detached,
}

pub struct Gate {
    interface: String,
    policy: UnknownPolicy,
    /// For syncs, statistics and detaching. Admission never takes it: reading statistics walks
    /// the maps (a syscall per key), and DHCP must not wait for that.
    enforcer: Mutex<Enforcer>,
    /// The userspace classifier, when it is the gate; admission asks it directly.
    soft: Option<Arc<SoftGate>>,
    detached: AtomicBool,
}

impl Gate {
    /// Attaches the gate to `interface` as `requested` says. An explicit native or skb request
    /// that cannot be met is an error; `auto` falls back and logs why.
    pub fn start(
        interface: &str,
        requested: RequestedMode,
        policy: UnknownPolicy,
    ) -> anyhow::Result<Gate> {
        let attempts: &[XdpMode] = match requested {
            RequestedMode::Auto => &[XdpMode::Native, XdpMode::Skb],
            RequestedMode::Native => &[XdpMode::Native],
            RequestedMode::Skb => &[XdpMode::Skb],
            RequestedMode::Off => &[],
        };
        let mut failures = Vec::new();
        for &mode in attempts {
            match XdpGate::attach(interface, mode, policy) {
                Ok(gate) => {
                    tracing::info!(interface, %mode, "XDP gate attached in {mode} mode");
                    return Ok(Gate::new(
                        interface,
                        policy,
                        Enforcer::Xdp(Box::new(gate), mode),
                    ));
                }
                Err(err) => {
                    tracing::warn!(interface, %mode, "XDP gate could not attach in {mode} mode: {err:#}");
                    failures.push(format!("{mode}: {err:#}"));
                }
            }
        }
        let reason = match requested {
            RequestedMode::Off => "--xdp-mode off".to_string(),
            RequestedMode::Auto => format!("XDP unavailable: {}", failures.join("; ")),
            RequestedMode::Native | RequestedMode::Skb => {
                anyhow::bail!(
                    "cannot attach the XDP gate to {interface}: {}",
                    failures.join("; ")
                )
            }
        };
        tracing::warn!(interface, "DHCP gate runs in userspace: {reason}");
        Ok(Gate::new(
            interface,
            policy,
            Enforcer::Soft(Arc::new(SoftGate::new(policy, reason))),
        ))
    }

    fn new(interface: &str, policy: UnknownPolicy, enforcer: Enforcer) -> Gate {
        let soft = match &enforcer {
            Enforcer::Soft(gate) => Some(Arc::clone(gate)),
            _ => None,
        };
        Gate {
            interface: interface.to_string(),
            policy,
            enforcer: Mutex::new(enforcer),
            soft,
            detached: AtomicBool::new(false),
        }
    }

    fn enforcer(&self) -> std::sync::MutexGuard<'_, Enforcer> {
        self.enforcer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the allowlist exactly `macs`, changing only the entries that differ.
    pub fn sync_allowlist(&self, macs: &BTreeSet<MacAddr>) -> anyhow::Result<()> {
        let wanted: BTreeSet<[u8; 6]> = macs.iter().map(|mac| mac.0).collect();
        match &mut *self.enforcer() {
            Enforcer::Xdp(gate, _) => gate.sync_allowlist(&wanted),
            Enforcer::Soft(gate) => {
                gate.sync_allowlist(wanted);
                Ok(())
            }
            Enforcer::Detached => Ok(()),
        }
    }

    /// Detaches the XDP program now, rather than whenever the last reference goes away.
    pub fn detach(&self) -> bool {
        self.detached.store(true, Ordering::SeqCst);
        let enforcer = std::mem::replace(&mut *self.enforcer(), Enforcer::Detached);
        matches!(enforcer, Enforcer::Xdp(..))
    }

    /// Whether a datagram that reached the DHCP socket may be handled. Under XDP the kernel has
    /// already decided, and only passed packets arrive here. Takes no lock of the gate's own.
    pub fn admit(&self, payload: &[u8]) -> bool {
        if self.detached.load(Ordering::Relaxed) {
            return false;
        }
        match &self.soft {
            Some(gate) => gate.admit(payload),
            None => true,
        }
    }

    pub fn stats(&self) -> anyhow::Result<GateStats> {
        let enforcer = self.enforcer();
        let (mode, counters, unknown, allowlist_size) = match &*enforcer {
            Enforcer::Xdp(gate, mode) => (
                ActiveMode::Xdp { mode: *mode },
                gate.counters()?,
                gate.unknown_macs()?,
                gate.allowlist_len()?,
            ),
            Enforcer::Soft(gate) => (
                ActiveMode::Userspace {
                    reason: gate.reason().to_string(),
                },
                gate.counters(),
                gate.unknown_macs(),
                gate.allowlist_len(),
            ),
            Enforcer::Detached => anyhow::bail!("the gate is detached"),
        };
        let now = monotonic_ns();
        let mut unknown_macs: Vec<(u64, UnknownMac)> = unknown
            .into_iter()
            .map(
                |(
                    mac,
                    UnknownMacStat {
                        count,
                        last_seen_ns,
                    },
                )| {
                    let entry = UnknownMac {
                        mac: MacAddr(mac).to_string(),
                        count,
                        last_seen_secs_ago: now.saturating_sub(last_seen_ns) / 1_000_000_000,
                    };
                    (last_seen_ns, entry)
                },
            )
            .collect();
        unknown_macs.sort_by_key(|(last_seen_ns, _)| std::cmp::Reverse(*last_seen_ns));
        Ok(GateStats {
            interface: self.interface.clone(),
            mode,
            discovery: self.policy == UnknownPolicy::Pass,
            allowlist_size,
            counters: Counter::ALL
                .iter()
                .map(|c| (c.name().to_string(), counters[*c as usize]))
                .collect(),
            unknown_macs: unknown_macs.into_iter().map(|(_, entry)| entry).collect(),
        })
    }
}

/// Counters indexed by [`Counter`].
type CounterValues = [u64; Counter::COUNT as usize];

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub(crate) fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use boot_ebpf::wire::{BOOTP_CHADDR_OFFSET, BOOTP_HEADER_LEN};

    use super::*;

    const MAC: [u8; 6] = [0x1c, 0x69, 0x7a, 0, 0, 1];

    fn bootp_from(mac: [u8; 6]) -> Vec<u8> {
        let mut payload = vec![0u8; BOOTP_HEADER_LEN];
        payload[..3].copy_from_slice(&[1, 1, 6]); // BOOTREQUEST, Ethernet, 6-byte address
        payload[BOOTP_CHADDR_OFFSET..BOOTP_CHADDR_OFFSET + 6].copy_from_slice(&mac);
        payload
    }

    #[test]
    fn admission_does_not_wait_while_statistics_or_a_sync_hold_the_gate() {
        let soft = SoftGate::new(UnknownPolicy::Drop, "test".into());
        let gate = Arc::new(Gate::new(
            "test0",
            UnknownPolicy::Drop,
            Enforcer::Soft(Arc::new(soft)),
        ));
        gate.sync_allowlist(&[MacAddr(MAC)].into()).unwrap();
        // As a scrape walking the maps, or the periodic allowlist sync, would hold it.
        let held = gate.enforcer();
        let (verdicts, admitted) = std::sync::mpsc::channel();
        let admitting = Arc::clone(&gate);
        std::thread::spawn(move || {
            let known = admitting.admit(&bootp_from(MAC));
            let unknown = admitting.admit(&bootp_from([2, 0, 0, 0, 0, 9]));
            verdicts.send((known, unknown)).unwrap();
        });
        let verdicts = admitted
            .recv_timeout(Duration::from_secs(5))
            .expect("admission waited for the gate's lock");
        assert_eq!(verdicts, (true, false));
        drop(held);
        assert!(!gate.detach(), "a userspace gate has no XDP to detach");
        assert!(
            !gate.admit(&bootp_from(MAC)),
            "a detached gate admits nothing"
        );
    }
}
