//! Each machine's recent events: its DHCP exchanges, TFTP transfers, iPXE scripts served, the
//! actions handed out to its worker and reported back, and its BMC's power changes. Bounded per
//! machine and kept across restarts in `events.jsonl` (a [`Journal`]); shown by `wisp events`,
//! the API and the rack page.
use std::{net::Ipv4Addr, path::Path, sync::Arc};

use serde::{Deserialize, Serialize};
use workflow::resource::MacAddr;

use crate::{
    journal::{now_ms, Bounds, Entry, Journal},
    machines::Machines,
};

/// Events kept per machine: a few boots' worth.
pub const PER_MACHINE: usize = 200;
/// Machines whose events are kept: far more than one appliance serves.
const MACHINES: usize = 1 << 20;
const FILE: &str = "events.jsonl";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub mac: MacAddr,
    pub kind: EventKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Dhcp,
    Tftp,
    Script,
    ActionHandedOut,
    ActionReported,
    Power,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Dhcp => "dhcp",
            EventKind::Tftp => "tftp",
            EventKind::Script => "script",
            EventKind::ActionHandedOut => "action-handed-out",
            EventKind::ActionReported => "action-reported",
            EventKind::Power => "power",
        }
    }
}

impl Entry for Event {
    type Key = MacAddr;

    fn key(&self) -> MacAddr {
        self.mac
    }

    fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

pub struct EventLog {
    journal: Journal<Event>,
    /// To name the machine behind an address (TFTP knows only its client's).
    machines: Arc<Machines>,
}

impl EventLog {
    /// Reads the events kept in `data_dir` and starts the thread that appends new ones.
    pub fn open(
        data_dir: &Path,
        machines: Arc<Machines>,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> anyhow::Result<EventLog> {
        let bounds = Bounds {
            per_key: PER_MACHINE,
            keys: MACHINES,
        };
        Ok(EventLog {
            journal: Journal::open(data_dir.join(FILE), bounds, dropped)?,
            machines,
        })
    }

    /// Records an event of `mac`'s now.
    pub fn record(&self, mac: MacAddr, kind: EventKind, message: String) {
        self.journal.record(Event {
            at_ms: now_ms(),
            mac,
            kind,
            message,
        });
    }

    /// Records an event of the machine whose reserved address is `address`, if Wisp has one.
    pub fn record_at(&self, address: Ipv4Addr, kind: EventKind, message: String) {
        let mac = self.machines.current().by_address(address).map(|m| m.mac);
        if let Some(mac) = mac {
            self.record(mac, kind, message);
        }
    }

    /// `mac`'s last event.
    pub fn last(&self, mac: &MacAddr) -> Option<Event> {
        let rings = self.journal.rings();
        rings.get(mac).and_then(|ring| ring.back()).cloned()
    }

    /// `mac`'s events (or every machine's), oldest first; the last `limit` of them.
    pub fn events(&self, mac: Option<MacAddr>, limit: usize) -> Vec<Event> {
        let rings = self.journal.rings();
        let mut events: Vec<Event> = match mac {
            Some(mac) => rings.get(&mac).into_iter().flatten().cloned().collect(),
            None => rings.values().flatten().cloned().collect(),
        };
        events.sort_by_key(|event| event.at_ms);
        let skip = events.len().saturating_sub(limit);
        events.split_off(skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        format!("02:00:00:00:00:{last:02x}").parse().expect("a MAC")
    }

    #[test]
    fn a_machine_keeps_its_last_events_and_they_outlive_a_restart_in_the_data_directory() {
        let dir = tempfile::tempdir().expect("a directory");
        let machines = Arc::new(Machines::default());
        let log =
            EventLog::open(dir.path(), Arc::clone(&machines), Default::default()).expect("open");
        for n in 0..PER_MACHINE + 5 {
            log.record(mac(1), EventKind::Dhcp, format!("ACK {n}"));
        }
        log.record(mac(2), EventKind::Script, "served".into());
        let first = log.events(Some(mac(1)), usize::MAX);
        assert_eq!(first.len(), PER_MACHINE);
        assert_eq!(first[0].message, "ACK 5");
        assert_eq!(log.events(Some(mac(1)), 3).len(), 3);
        drop(log);
        // The journal's thread writes its last batch, and ends with the log.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let again = EventLog::open(dir.path(), machines, Default::default()).expect("reopen");
        assert_eq!(again.events(Some(mac(1)), usize::MAX), first);
        assert_eq!(again.events(None, usize::MAX).len(), PER_MACHINE + 1);
    }
}
