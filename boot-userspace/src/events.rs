//! Each machine's recent events: its DHCP exchanges, TFTP transfers, iPXE scripts served, and
//! the actions handed out to its worker and reported back. Bounded per machine, kept across
//! restarts, shown by `wisp events` and the API.
//!
//! Recording never waits on the disk: an event goes into its machine's ring in memory and onto
//! a bounded queue, and one thread appends what the queue holds to `events.jsonl` in the data
//! directory (an event that finds the queue full is counted, `wisp_events_dropped_total`, and
//! kept in memory only). The file is not synced: an event is an observation, not state, so a
//! power loss may cost the last moments of them, never a lease or a workflow's state, which
//! the store keeps. At start the file is read back and written again holding only what the
//! rings keep; while running it is compacted the same way once it holds several times that.
use std::{
    collections::{HashMap, VecDeque},
    io::{BufRead, BufWriter, Write},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use workflow::resource::MacAddr;

use crate::machines::Machines;

/// Events kept per machine: a few boots' worth.
pub const PER_MACHINE: usize = 200;
/// Events waiting for the journal's thread, at most.
const QUEUE: usize = 1 << 16;
/// The journal is compacted once it holds this many lines more than at its last compaction.
const COMPACT_AFTER_LINES: usize = 1 << 20;
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
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Dhcp => "dhcp",
            EventKind::Tftp => "tftp",
            EventKind::Script => "script",
            EventKind::ActionHandedOut => "action-handed-out",
            EventKind::ActionReported => "action-reported",
        }
    }
}

type Rings = HashMap<MacAddr, VecDeque<Event>>;

pub struct EventLog {
    rings: Arc<Mutex<Rings>>,
    journal: mpsc::SyncSender<Event>,
    /// To name the machine behind an address (TFTP knows only its client's).
    machines: Arc<Machines>,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl EventLog {
    /// Reads the events kept in `data_dir` and starts the thread that appends new ones.
    pub fn open(
        data_dir: &Path,
        machines: Arc<Machines>,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> anyhow::Result<EventLog> {
        let path = data_dir.join(FILE);
        let rings = Arc::new(Mutex::new(read(&path)?));
        compact(&path, &rings)?;
        let (journal, queued) = mpsc::sync_channel(QUEUE);
        let (writing, file) = (Arc::clone(&rings), path.clone());
        std::thread::Builder::new()
            .name("event journal".into())
            .spawn(move || append(&file, &writing, queued))
            .context("starting the event journal's thread")?;
        Ok(EventLog {
            rings,
            journal,
            machines,
            dropped,
        })
    }

    /// Records an event of `mac`'s now.
    pub fn record(&self, mac: MacAddr, kind: EventKind, message: String) {
        let event = Event {
            at_ms: now_ms(),
            mac,
            kind,
            message,
        };
        keep(
            &mut self.rings.lock().unwrap_or_else(|p| p.into_inner()),
            event.clone(),
        );
        if self.journal.try_send(event).is_err() {
            self.dropped.inc();
        }
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
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        rings.get(mac).and_then(|ring| ring.back()).cloned()
    }

    /// `mac`'s events (or every machine's), oldest first; the last `limit` of them.
    pub fn events(&self, mac: Option<MacAddr>, limit: usize) -> Vec<Event> {
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let mut events: Vec<Event> = match mac {
            Some(mac) => rings.get(&mac).into_iter().flatten().cloned().collect(),
            None => rings.values().flatten().cloned().collect(),
        };
        events.sort_by_key(|event| event.at_ms);
        let skip = events.len().saturating_sub(limit);
        events.split_off(skip)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

fn keep(rings: &mut Rings, event: Event) {
    let ring = rings.entry(event.mac).or_default();
    if ring.len() == PER_MACHINE {
        ring.pop_front();
    }
    ring.push_back(event);
}

/// The events in the journal at `path` (none if there is none); a line that does not read
/// as an event (a write cut short by a crash) is skipped and counted in a warning.
fn read(path: &Path) -> anyhow::Result<Rings> {
    let mut rings = Rings::new();
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(rings),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let mut unreadable = 0usize;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        match serde_json::from_str(&line) {
            Ok(event) => keep(&mut rings, event),
            Err(_) => unreadable += 1,
        }
    }
    if unreadable > 0 {
        tracing::warn!(
            file = %path.display(),
            lines = unreadable,
            "event journal lines that do not read as events were skipped"
        );
    }
    Ok(rings)
}

/// Writes the journal again with what the rings keep, through a file renamed over it.
fn compact(path: &Path, rings: &Mutex<Rings>) -> anyhow::Result<()> {
    let kept: Vec<Event> = rings
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .flatten()
        .cloned()
        .collect();
    let fresh = path.with_extension("jsonl.new");
    let mut file = BufWriter::new(
        std::fs::File::create(&fresh).with_context(|| format!("writing {}", fresh.display()))?,
    );
    for event in kept {
        serde_json::to_writer(&mut file, &event)?;
        file.write_all(b"\n")?;
    }
    file.into_inner()
        .map_err(|err| err.into_error())?
        .sync_all()?;
    std::fs::rename(&fresh, path).with_context(|| format!("replacing {}", path.display()))
}

/// The journal's thread: appends queued events, flushing whenever the queue is empty, and
/// compacts the file as it grows. Ends when the log is dropped.
fn append(path: &PathBuf, rings: &Mutex<Rings>, queued: mpsc::Receiver<Event>) {
    let open = || {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map(BufWriter::new)
    };
    let mut file = match open() {
        Ok(file) => file,
        Err(err) => {
            tracing::error!(file = %path.display(), "events will not be kept across restarts: {err}");
            return;
        }
    };
    let mut lines = 0usize;
    loop {
        let event = match queued.recv_timeout(Duration::from_secs(1)) {
            Ok(event) => event,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = file.flush();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let written = serde_json::to_writer(&mut file, &event)
            .map_err(std::io::Error::other)
            .and_then(|()| file.write_all(b"\n"));
        if let Err(err) = written {
            tracing::warn!(file = %path.display(), "appending an event: {err}");
        }
        lines += 1;
        if lines >= COMPACT_AFTER_LINES {
            let _ = file.flush();
            match compact(path, rings).and_then(|()| open().map_err(Into::into)) {
                Ok(reopened) => file = reopened,
                Err(err) => {
                    tracing::warn!(file = %path.display(), "compacting the events: {err:#}")
                }
            }
            lines = 0;
        }
    }
    let _ = file.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        format!("02:00:00:00:00:{last:02x}").parse().expect("a MAC")
    }

    #[test]
    fn a_machine_keeps_its_last_events_and_they_outlive_a_restart() {
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
        // The journal's thread flushes when its queue is empty, and ends with the log.
        std::thread::sleep(Duration::from_millis(300));
        // A line cut short by a crash is skipped.
        let path = dir.path().join(FILE);
        let mut journal = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        journal.write_all(b"{\"at_ms\":1,\"ma").unwrap();
        drop(journal);
        let again = EventLog::open(dir.path(), machines, Default::default()).expect("reopen");
        assert_eq!(again.events(Some(mac(1)), usize::MAX), first);
        assert_eq!(again.events(None, usize::MAX).len(), PER_MACHINE + 1);
    }
}
