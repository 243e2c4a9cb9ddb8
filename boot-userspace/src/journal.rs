//! A bounded journal of observations kept across restarts: per key (a machine, an action) the
//! last entries in a ring in memory, and every entry appended to a JSON-lines file in the data
//! directory. The machines' events and the actions' output are kept this way.
//!
//! Recording never waits on the disk: an entry goes into its ring and onto a bounded queue,
//! and one thread appends what the queue holds to the file (an entry that finds the queue full
//! is counted and kept in memory only). The thread takes the queue in batches, at most every
//! [`BATCH_INTERVAL`]: woken for each entry, as it was, it cost a DHCP server at its top rate
//! a fifth of its core in thread switches (a machine's events come with every reply).
//!
//! The file is not synced: an entry is an observation, not state, so a crash or a power loss
//! may cost the last moments of them, never a lease or a workflow's state, which the store
//! keeps. At start the file is read back and written again holding only
//! what the rings keep; while running it is compacted the same way once it has grown by
//! [`COMPACT_AFTER_LINES`].
use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    io::{BufRead, BufWriter, Write},
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use prometheus_client::metrics::counter::Counter;
use serde::{de::DeserializeOwned, Serialize};

/// Entries waiting for the file's thread, at most.
const QUEUE: usize = 1 << 16;
/// The file is compacted once it holds this many lines more than at its last compaction.
const COMPACT_AFTER_LINES: usize = 1 << 20;
/// How long the file's thread lets entries gather after the first that finds it idle: one
/// wakeup per batch, and room in [`QUEUE`] for a batch at 100,000 entries a second.
const BATCH_INTERVAL: Duration = Duration::from_millis(50);

/// What a journal keeps.
pub trait Entry: Clone + Serialize + DeserializeOwned + Send + 'static {
    type Key: Clone + Eq + Hash + Send + 'static;
    fn key(&self) -> Self::Key;
    /// When it was recorded, in milliseconds since the Unix epoch.
    fn at_ms(&self) -> u64;
    /// Whether it empties its key's ring instead of joining it: what the key names starts
    /// again.
    fn resets(&self) -> bool {
        false
    }
}

/// How much a journal keeps: `per_key` entries for each of at most `keys` keys (the key whose
/// last entry is oldest makes room for a new one).
#[derive(Clone, Copy)]
pub struct Bounds {
    pub per_key: usize,
    pub keys: usize,
}

pub type Rings<E> = HashMap<<E as Entry>::Key, VecDeque<E>>;

struct Kept<E: Entry> {
    rings: Mutex<Rings<E>>,
    bounds: Bounds,
}

pub struct Journal<E: Entry> {
    kept: Arc<Kept<E>>,
    queue: mpsc::SyncSender<E>,
    dropped: Counter,
}

impl<E: Entry> Journal<E> {
    /// Reads what `path` keeps and starts the thread that appends new entries to it.
    pub fn open(path: PathBuf, bounds: Bounds, dropped: Counter) -> anyhow::Result<Journal<E>> {
        let kept = Arc::new(Kept {
            rings: Mutex::new(HashMap::new()),
            bounds,
        });
        read(&path, &kept)?;
        compact(&path, &kept, None)?;
        let (queue, queued) = mpsc::sync_channel(QUEUE);
        let writing = Arc::clone(&kept);
        let name = path
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
        std::thread::Builder::new()
            .name(name)
            .spawn(move || append(&path, &writing, queued))
            .context("starting a journal's thread")?;
        Ok(Journal {
            kept,
            queue,
            dropped,
        })
    }

    pub fn record(&self, entry: E) {
        self.record_with(|_| vec![entry]);
    }

    /// Records the entries `make` decides on from the rings as they are, with no other record
    /// in between. Each is queued for the file under the rings' lock, so that a compaction's
    /// snapshot and the queue never both hold one.
    pub fn record_with(&self, make: impl FnOnce(&Rings<E>) -> Vec<E>) {
        let mut rings = self.rings();
        for entry in make(&rings) {
            self.kept.keep(&mut rings, entry.clone());
            if self.queue.try_send(entry).is_err() {
                self.dropped.inc();
            }
        }
    }

    /// The rings, to read.
    pub fn rings(&self) -> MutexGuard<'_, Rings<E>> {
        self.kept.rings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<E: Entry> Kept<E> {
    fn keep(&self, rings: &mut Rings<E>, entry: E) {
        let key = entry.key();
        if entry.resets() {
            rings.remove(&key);
            return;
        }
        if !rings.contains_key(&key) && rings.len() >= self.bounds.keys {
            let oldest = rings
                .iter()
                .min_by_key(|(_, ring)| ring.back().map_or(0, Entry::at_ms))
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                rings.remove(&oldest);
            }
        }
        let ring = rings.entry(key).or_default();
        if ring.len() == self.bounds.per_key {
            ring.pop_front();
        }
        ring.push_back(entry);
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Reads the file at `path` (if there is one) into the rings; a line that does not read as an
/// entry (a write cut short by a crash) is skipped and counted in a warning.
fn read<E: Entry>(path: &Path, kept: &Kept<E>) -> anyhow::Result<()> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let mut rings = kept.rings.lock().unwrap_or_else(|p| p.into_inner());
    let mut unreadable = 0usize;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        match serde_json::from_str(&line) {
            Ok(entry) => kept.keep(&mut rings, entry),
            Err(_) => unreadable += 1,
        }
    }
    if unreadable > 0 {
        tracing::warn!(
            file = %path.display(),
            lines = unreadable,
            "journal lines that do not read as entries were skipped"
        );
    }
    Ok(())
}

/// Writes the file again with what the rings keep, oldest first, through a file renamed over
/// it. What is still `queued` is in the rings already: it is dropped, not appended again.
fn compact<E: Entry>(
    path: &Path,
    kept: &Kept<E>,
    queued: Option<&mpsc::Receiver<E>>,
) -> anyhow::Result<()> {
    let mut entries: Vec<E> = {
        let rings = kept.rings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queued) = queued {
            while queued.try_recv().is_ok() {}
        }
        rings.values().flatten().cloned().collect()
    };
    entries.sort_by_key(Entry::at_ms);
    let fresh = path.with_extension("new");
    let mut file = BufWriter::new(
        std::fs::File::create(&fresh).with_context(|| format!("writing {}", fresh.display()))?,
    );
    for entry in entries {
        serde_json::to_writer(&mut file, &entry)?;
        file.write_all(b"\n")?;
    }
    file.into_inner()
        .map_err(|err| err.into_error())?
        .sync_all()?;
    std::fs::rename(&fresh, path).with_context(|| format!("replacing {}", path.display()))
}

/// The file's thread: appends queued entries in batches, flushing after each, and compacts
/// the file as it grows. Ends when the journal is dropped. It waits for an entry only when the
/// queue is empty, so that a sender wakes it once a batch, not once an entry.
fn append<E: Entry>(path: &PathBuf, kept: &Kept<E>, queued: mpsc::Receiver<E>) {
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
            tracing::error!(file = %path.display(), "not kept across restarts: {err}");
            return;
        }
    };
    let mut lines = 0usize;
    // Ends once the journal is dropped and its last entries are written.
    while let Ok(first) = queued.recv() {
        std::thread::sleep(BATCH_INTERVAL);
        // At most a queue's worth, so that a steady stream still gets flushed and compacted.
        for entry in std::iter::once(first).chain(queued.try_iter().take(QUEUE)) {
            let written = serde_json::to_writer(&mut file, &entry)
                .map_err(std::io::Error::other)
                .and_then(|()| file.write_all(b"\n"));
            if let Err(err) = written {
                tracing::warn!(file = %path.display(), "appending to a journal: {err}");
            }
            lines += 1;
        }
        let _ = file.flush();
        if lines >= COMPACT_AFTER_LINES {
            match compact(path, kept, Some(&queued)).and_then(|()| open().map_err(Into::into)) {
                Ok(reopened) => file = reopened,
                Err(err) => tracing::warn!(file = %path.display(), "compacting: {err:#}"),
            }
            lines = 0;
        }
    }
    let _ = file.flush();
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        at_ms: u64,
        key: u8,
        text: String,
    }

    impl Entry for Note {
        type Key = u8;
        fn key(&self) -> u8 {
            self.key
        }
        fn at_ms(&self) -> u64 {
            self.at_ms
        }
    }

    fn ring(journal: &Journal<Note>, key: u8) -> Vec<String> {
        journal.rings()[&key]
            .iter()
            .map(|note| note.text.clone())
            .collect()
    }

    #[test]
    fn each_key_keeps_its_last_entries_the_stalest_key_goes_and_they_outlive_a_restart() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("notes.jsonl");
        let bounds = Bounds {
            per_key: 3,
            keys: 2,
        };
        let journal = Journal::open(path.clone(), bounds, Counter::default()).expect("open");
        let note = |at_ms, key, text: &str| Note {
            at_ms,
            key,
            text: text.into(),
        };
        for n in 0..5 {
            journal.record(note(10 + n, 1, &format!("one {n}")));
        }
        journal.record(note(20, 2, "two"));
        assert_eq!(ring(&journal, 1), ["one 2", "one 3", "one 4"]);
        // A third key: key 1's last entry (14) is older than key 2's (20).
        journal.record(note(30, 3, "three"));
        assert!(!journal.rings().contains_key(&1));
        drop(journal);
        // The thread writes its last batch, and ends with the journal.
        std::thread::sleep(Duration::from_millis(300));
        // A line cut short by a crash is skipped.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("the file");
        file.write_all(b"{\"at_ms\":1,\"ke").expect("written");
        drop(file);
        let again: Journal<Note> = Journal::open(path, bounds, Counter::default()).expect("reopen");
        assert_eq!(ring(&again, 2), ["two"]);
        assert_eq!(ring(&again, 3), ["three"]);
        assert_eq!(again.rings().len(), 2);
    }
}
