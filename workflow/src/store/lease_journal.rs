//! Durable DHCP leases as an append-only journal, the way ISC dhcpd and Kea's memfile keep
//! theirs. A rack renewing at once makes thousands of small lease
//! changes a second; appending a line per change and syncing once per group commit costs a
//! fraction of a B-tree transaction, which rewrites pages and allocator state on every commit
//! (docs/benchmarks/findings.md).
//!
//! Each line is `<crc32 in hex> <JSON entry>`. A crash can leave a torn last line, which is cut
//! off at the next start; a complete line that fails its checksum is skipped and reported. When
//! the journal holds many more entries than live leases, it is rewritten with only the live
//! ones, into a new file that replaces it atomically.
//!
//! The file is grown ahead of its entries in zero-filled steps, as databases do with their
//! write-ahead logs: an append then writes into space the file already has, so its fdatasync
//! flushes the data alone, not the inode's new size as well (on ext4 with a journal, that would
//! be a journal commit per group commit). The entries end at the first zero byte.
//!
//! When an append returns, its entries are written: in the kernel's page cache, so they survive
//! the process's crash or kill -9. Whether they are also on the disk, surviving a power loss,
//! depends on how the journal was opened: [`LeaseJournal::open`] fdatasyncs before each append
//! returns; [`LeaseJournal::open_syncing_in_background`] returns at once and a thread of its own
//! fdatasyncs whatever was appended since its last sync, every [`SYNC_INTERVAL`], as PostgreSQL's
//! WAL writer does with `synchronous_commit = off`. That takes the sync (0.1–0.3 ms on an SSD)
//! off each ACK's path.
use std::{
    collections::BTreeMap,
    fs::File,
    io::Read as _,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
};

use serde::{Deserialize, Serialize};

use super::{Lease, LeaseStore, StoreError};
use crate::resource::MacAddr;

const FILE_NAME: &str = "leases.journal";
/// Compaction waits until the dead entries outnumber the live leases by this much, so that a
/// busy server rewrites the file rarely.
const COMPACTION_SLACK: usize = 100_000;
/// With background sync, syncs start at most this often: a power loss can take what was
/// ACKed in the last interval and one sync's time.
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);
/// The file grows by whole steps of this many zero bytes.
const GROWTH_STEP: u64 = 1 << 20;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Entry {
    Lease(Lease),
    Released(MacAddr),
}

pub struct LeaseJournal {
    shared: Arc<Shared>,
    /// The thread that syncs in the background, if this journal has one.
    syncer: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<Journal>,
    /// Notified when there is something to sync, or the journal closes.
    appended: Condvar,
}

struct Journal {
    path: PathBuf,
    /// Shared with the syncer, which syncs it without holding the lock.
    file: Arc<File>,
    /// Where the next entry goes: the end of the last complete one.
    end: u64,
    /// The file's length, zero bytes from `end` on.
    capacity: u64,
    live: BTreeMap<MacAddr, Lease>,
    /// Entries in the file, live or not.
    entries: usize,
    /// Set when a write may have reached the file only in part, or a rename may not be
    /// durable: from then on nothing more is written, because what follows could be lost or
    /// replayed wrongly. A restart replays the file and starts clean (as PostgreSQL does after
    /// a failed fsync).
    failed: Option<String>,
    /// Whether appends are synced by the syncer rather than before they return.
    background_sync: bool,
    /// Written entries the syncer has not synced yet.
    unsynced: bool,
    /// Whether the syncer waits for an append: only then does an append wake it, not while it
    /// rests between syncs (a wakeup per group commit, for nothing).
    syncer_idle: bool,
    closing: bool,
}

fn journal_error(message: String) -> StoreError {
    StoreError::Backend {
        store: "lease journal",
        source: message.into(),
    }
}

fn io_error<'a>(path: &'a Path, doing: &'a str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |err| journal_error(format!("cannot {doing} {}: {err}", path.display()))
}

impl LeaseJournal {
    /// Opens (or creates) the journal in `data_dir` and replays it. Each append is synced
    /// before it returns.
    pub fn open(data_dir: &Path) -> Result<LeaseJournal, StoreError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(Journal::open(data_dir, false)?),
            appended: Condvar::new(),
        });
        Ok(LeaseJournal {
            shared,
            syncer: None,
        })
    }

    /// Opens the journal like [`LeaseJournal::open`], but appends return once written and a
    /// thread syncs them as soon as it can.
    pub fn open_syncing_in_background(data_dir: &Path) -> Result<LeaseJournal, StoreError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(Journal::open(data_dir, true)?),
            appended: Condvar::new(),
        });
        let syncer = std::thread::Builder::new()
            .name("lease journal sync".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.sync_until_closed()
            })
            .map_err(|err| journal_error(format!("cannot start the journal's syncer: {err}")))?;
        Ok(LeaseJournal {
            shared,
            syncer: Some(syncer),
        })
    }
}

impl Drop for LeaseJournal {
    /// A journal closed in order has everything synced.
    fn drop(&mut self) {
        self.shared.journal().closing = true;
        self.shared.appended.notify_one();
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
    }
}

impl Shared {
    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Syncs what was appended since the last sync, at most once per [`SYNC_INTERVAL`], so
    /// that the appends of that interval share one sync. A failed sync stops the journal's
    /// writes.
    fn sync_until_closed(&self) {
        let mut journal = self.journal();
        loop {
            // A rest between syncs: syncing back to back took a fifth of a core from the DHCP
            // server at its top rate (docs/benchmarks/findings.md). Closing does not wait for it.
            let rest_until = std::time::Instant::now() + SYNC_INTERVAL;
            while !journal.closing {
                let rest = rest_until.saturating_duration_since(std::time::Instant::now());
                if rest.is_zero() {
                    break;
                }
                journal = self
                    .appended
                    .wait_timeout(journal, rest)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            while !journal.unsynced && !journal.closing {
                journal.syncer_idle = true;
                journal = self
                    .appended
                    .wait(journal)
                    .unwrap_or_else(|p| p.into_inner());
            }
            journal.syncer_idle = false;
            if !journal.unsynced {
                return;
            }
            journal.unsynced = false;
            let (file, path) = (Arc::clone(&journal.file), journal.path.clone());
            drop(journal);
            let synced = file.sync_data();
            journal = self.journal();
            if let Err(err) = synced {
                let err = io_error(&path, "sync")(err);
                tracing::error!("{err}: leases ACKed since the last sync could be lost in a power loss; the journal takes no more writes");
                journal.failed = Some(err.to_string());
            }
        }
    }
}

impl Journal {
    fn open(data_dir: &Path, background_sync: bool) -> Result<Journal, StoreError> {
        super::private::create_dir(data_dir).map_err(io_error(data_dir, "create"))?;
        let path = data_dir.join(FILE_NAME);
        let mut file = super::private::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path, "open"))?;
        super::private::restrict(&path, 0o600).map_err(io_error(&path, "restrict"))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .map_err(io_error(&path, "read"))?;
        let replayed = replay(&text);
        for line in &replayed.corrupt_lines {
            tracing::warn!(journal = %path.display(), line, "lease journal entry fails its checksum; skipped");
        }
        let end = replayed.complete_length;
        if let Some(last) = text[end..].iter().rposition(|&b| b != 0) {
            tracing::warn!(journal = %path.display(), bytes = last + 1, "lease journal ends in a torn entry (a crash mid-write); cut off");
            file.write_all_at(&vec![0; last + 1], end as u64)
                .and_then(|()| file.sync_data())
                .map_err(io_error(&path, "cut the torn entry off"))?;
        }
        let mut journal = Journal {
            path,
            file: Arc::new(file),
            end: end as u64,
            capacity: text.len() as u64,
            live: replayed.live,
            entries: replayed.entries,
            failed: None,
            background_sync,
            unsynced: false,
            syncer_idle: false,
            closing: false,
        };
        journal.compact_if_mostly_dead()?;
        sync_directory(data_dir)?;
        Ok(journal)
    }
}

struct Replayed {
    live: BTreeMap<MacAddr, Lease>,
    entries: usize,
    /// Bytes up to the end of the last complete line.
    complete_length: usize,
    /// 1-based numbers of complete lines that failed their checksum or did not parse.
    corrupt_lines: Vec<usize>,
}

fn replay(text: &[u8]) -> Replayed {
    let mut replayed = Replayed {
        live: BTreeMap::new(),
        entries: 0,
        complete_length: 0,
        corrupt_lines: Vec::new(),
    };
    for (index, line) in text.split_inclusive(|&b| b == b'\n').enumerate() {
        // The entries end at the zeros the file was grown with, or at a line a crash tore.
        let Some(line) = line
            .strip_suffix(b"\n")
            .filter(|line| line.first() != Some(&0))
        else {
            break;
        };
        replayed.complete_length += line.len() + 1;
        replayed.entries += 1;
        match decode(line) {
            Some(Entry::Lease(lease)) => {
                replayed.live.insert(lease.mac, lease);
            }
            Some(Entry::Released(mac)) => {
                replayed.live.remove(&mac);
            }
            None => replayed.corrupt_lines.push(index + 1),
        }
    }
    replayed
}

fn encode(entry: &Entry, out: &mut Vec<u8>) {
    let json = serde_json::to_vec(entry).expect("a lease always serializes");
    out.extend_from_slice(format!("{:08x} ", crc32fast::hash(&json)).as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
}

fn decode(line: &[u8]) -> Option<Entry> {
    let (crc, json) = line.split_at_checked(9)?;
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?.trim_end(), 16).ok()?;
    (crc32fast::hash(json) == crc)
        .then(|| serde_json::from_slice(json).ok())
        .flatten()
}

fn sync_directory(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, "sync"))
}

impl Journal {
    /// Appends the entries in one write, and makes them durable with one fdatasync, or has the
    /// syncer do it. Returns whether the syncer waits idle, to be woken.
    fn append(&mut self, entries: &[Entry]) -> Result<bool, StoreError> {
        if let Some(failure) = &self.failed {
            return Err(journal_error(format!(
                "the lease journal {} takes no more writes after an earlier failure ({failure}); restart Wisp",
                self.path.display()
            )));
        }
        let mut bytes = Vec::with_capacity(entries.len() * 128);
        for entry in entries {
            encode(entry, &mut bytes);
        }
        let end = self.end + bytes.len() as u64;
        if end > self.capacity {
            self.capacity =
                grow(&self.file, self.capacity, end).map_err(io_error(&self.path, "grow"))?;
        }
        let written = self.file.write_all_at(&bytes, self.end);
        if let Err(err) = written.and_then(|()| match self.background_sync {
            true => Ok(()),
            false => self.file.sync_data(),
        }) {
            let err = io_error(&self.path, "append to")(err);
            self.failed = Some(err.to_string());
            return Err(err);
        }
        self.end = end;
        self.entries += entries.len();
        self.unsynced = self.background_sync;
        Ok(self.syncer_idle)
    }

    fn compact_if_mostly_dead(&mut self) -> Result<(), StoreError> {
        if self.entries <= self.live.len() * 2 + COMPACTION_SLACK {
            return Ok(());
        }
        let fresh = self.path.with_extension("journal.new");
        let mut bytes = Vec::with_capacity(self.live.len() * 128);
        for lease in self.live.values() {
            encode(&Entry::Lease(lease.clone()), &mut bytes);
        }
        let file = super::private::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&fresh)
            .map_err(io_error(&fresh, "create"))?;
        let end = bytes.len() as u64;
        let written = file
            .write_all_at(&bytes, 0)
            .and_then(|()| grow(&file, end, end))
            .and_then(|capacity| std::fs::rename(&fresh, &self.path).map(|()| capacity));
        let capacity = match written {
            Ok(capacity) => capacity,
            // The old journal is untouched, and stays in use.
            Err(err) => {
                let _ = std::fs::remove_file(&fresh);
                return Err(io_error(&fresh, "write")(err));
            }
        };
        tracing::info!(journal = %self.path.display(), from = self.entries, to = self.live.len(), "lease journal compacted");
        // Appends go to the new file from now on, whatever happens below. It was synced whole,
        // so the old file's unsynced entries no longer matter.
        self.file = Arc::new(file);
        (self.end, self.capacity) = (end, capacity);
        self.entries = self.live.len();
        if let Some(dir) = self.path.parent() {
            if let Err(err) = sync_directory(dir) {
                self.failed = Some(err.to_string());
                return Err(err);
            }
        }
        Ok(())
    }
}

/// Extends the file with zeros, from `length` to a whole step past `needed`, and syncs it whole
/// (its size changed). Returns the new length.
fn grow(file: &File, length: u64, needed: u64) -> std::io::Result<u64> {
    let grown = (needed / GROWTH_STEP + 1) * GROWTH_STEP;
    file.write_all_at(&vec![0; (grown - length) as usize], length)?;
    file.sync_all()?;
    Ok(grown)
}

impl LeaseJournal {
    fn append_and_wake_syncer(
        &self,
        journal: &mut Journal,
        entries: &[Entry],
    ) -> Result<(), StoreError> {
        if journal.append(entries)? {
            self.shared.appended.notify_one();
        }
        Ok(())
    }
}

impl LeaseStore for LeaseJournal {
    fn record_leases(&self, leases: &[Lease]) -> Result<(), StoreError> {
        let mut journal = self.shared.journal();
        let entries: Vec<Entry> = leases.iter().cloned().map(Entry::Lease).collect();
        self.append_and_wake_syncer(&mut journal, &entries)?;
        for lease in leases {
            journal.live.insert(lease.mac, lease.clone());
        }
        // The leases are stored whatever compaction does.
        if let Err(err) = journal.compact_if_mostly_dead() {
            tracing::error!("cannot compact the lease journal: {err}");
        }
        Ok(())
    }

    fn remove_lease(&self, mac: &MacAddr) -> Result<Option<Lease>, StoreError> {
        let mut journal = self.shared.journal();
        if !journal.live.contains_key(mac) {
            return Ok(None);
        }
        self.append_and_wake_syncer(&mut journal, &[Entry::Released(*mac)])?;
        Ok(journal.live.remove(mac))
    }

    fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self.shared.journal().live.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(last: u8, expires_unix: u64) -> Lease {
        Lease {
            mac: format!("1c:69:7a:00:00:{last:02x}").parse().unwrap(),
            address: [10, 0, 0, last].into(),
            expires_unix,
            hostname: Some(format!("node-{last}")),
        }
    }

    #[test]
    fn leases_survive_reopening_with_renewals_and_releases_applied_in_order() {
        type Open = fn(&Path) -> Result<LeaseJournal, StoreError>;
        for open in [
            LeaseJournal::open as Open,
            LeaseJournal::open_syncing_in_background,
        ] {
            reopened_after_renewals_and_releases(open);
        }
    }

    fn reopened_after_renewals_and_releases(open: fn(&Path) -> Result<LeaseJournal, StoreError>) {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = open(dir.path()).unwrap();
            journal
                .record_leases(&[lease(1, 100), lease(2, 100)])
                .unwrap();
            journal.record_leases(&[lease(1, 200)]).unwrap();
            assert_eq!(
                journal.remove_lease(&lease(2, 0).mac).unwrap(),
                Some(lease(2, 100))
            );
            assert_eq!(journal.remove_lease(&lease(3, 0).mac).unwrap(), None);
        }
        let journal = open(dir.path()).unwrap();
        assert_eq!(journal.leases().unwrap(), [lease(1, 200)]);
    }

    #[test]
    fn the_syncer_syncs_what_was_appended_and_closing_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let journal = LeaseJournal::open_syncing_in_background(dir.path()).unwrap();
        journal.record_leases(&[lease(1, 100)]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while journal.shared.journal().unsynced {
            assert!(
                std::time::Instant::now() < deadline,
                "the append was never synced"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        journal.record_leases(&[lease(2, 100)]).unwrap();
        let shared = Arc::clone(&journal.shared);
        drop(journal);
        assert!(!shared.journal().unsynced, "closed with an unsynced append");
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_a_corrupt_line_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = LeaseJournal::open(dir.path()).unwrap();
            journal
                .record_leases(&[lease(1, 100), lease(2, 100), lease(3, 100)])
                .unwrap();
        }
        let path = dir.path().join(FILE_NAME);
        let mut text = std::fs::read(&path).unwrap();
        // Flip a digit of the second line's address, then tear a fourth line mid-write.
        let second = text.iter().position(|&b| b == b'\n').unwrap() + 1;
        let digit = second
            + text[second..]
                .windows(8)
                .position(|w| w == b"10.0.0.2")
                .unwrap()
            + 7;
        text[digit] = b'9';
        let end = text.iter().position(|&b| b == 0).unwrap();
        let torn = b"0badc0de {\"lease\":{\"mac\":";
        text[end..end + torn.len()].copy_from_slice(torn);
        std::fs::write(&path, &text).unwrap();

        let journal = LeaseJournal::open(dir.path()).unwrap();
        assert_eq!(journal.leases().unwrap(), [lease(1, 100), lease(3, 100)]);
        journal.record_leases(&[lease(4, 100)]).unwrap();
        drop(journal);
        // The torn bytes are gone, so the entry appended after them is read back.
        let journal = LeaseJournal::open(dir.path()).unwrap();
        assert_eq!(
            journal.leases().unwrap(),
            [lease(1, 100), lease(3, 100), lease(4, 100)]
        );
    }

    #[test]
    fn a_journal_of_mostly_dead_entries_is_rewritten_with_the_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let journal = LeaseJournal::open(dir.path()).unwrap();
        let last = COMPACTION_SLACK as u64 + 10;
        let renewals: Vec<Lease> = (0..=last).map(|t| lease(1, t)).collect();
        journal.record_leases(&renewals).unwrap();
        journal.record_leases(&[lease(2, 7)]).unwrap();
        let text = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        let lines = text.iter().filter(|&&b| b == b'\n').count();
        assert_eq!(lines, 2, "only the two live leases remain");
        assert_eq!(
            text.len() as u64,
            GROWTH_STEP,
            "the rewritten file is grown too"
        );
        drop(journal);
        let journal = LeaseJournal::open(dir.path()).unwrap();
        assert_eq!(journal.leases().unwrap(), [lease(1, last), lease(2, 7)]);
    }
}
