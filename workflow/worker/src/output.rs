//! What a running action prints and how far it is, gathered for Wisp's `ActionOutput` call:
//! the action's threads add lines and progress to an [`Output`], and the agent's shipper sends
//! what gathered about twice a second. Bounded: when Wisp cannot be reached, the oldest lines
//! make room (their indexes say to Wisp that some are missing).
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use wisp_proto::output::Progress;

/// Lines waiting to be sent, at most.
const PENDING_LINES: usize = 2_000;
/// The rate is measured over at least this long.
const RATE_WINDOW: Duration = Duration::from_secs(1);

#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Pending>>);

#[derive(Default)]
struct Pending {
    /// The index of `lines[0]` among all the action's lines.
    first: u64,
    lines: VecDeque<String>,
    progress: Option<Progress>,
    /// Whether `progress` changed since it was last sent.
    progress_changed: bool,
    /// Where the current rate window started: when, and at how many bytes.
    window: Option<(Instant, u64)>,
}

/// What to send: lines from index `first` on, and the progress if it changed.
#[derive(Debug, PartialEq)]
pub struct Batch {
    pub first: u64,
    pub lines: Vec<String>,
    pub progress: Option<Progress>,
}

impl Output {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn line(&self, line: String) {
        let mut pending = self.pending();
        if pending.lines.len() == PENDING_LINES {
            pending.lines.pop_front();
            pending.first += 1;
        }
        pending.lines.push_back(line);
    }

    /// `bytes` of `total` (when known) are written.
    pub fn progress(&self, bytes: u64, total: Option<u64>) {
        let now = Instant::now();
        let mut pending = self.pending();
        let mut rate = pending.progress.map_or(0, |p| p.bytes_per_second);
        match pending.window {
            Some((since, from)) if now.duration_since(since) >= RATE_WINDOW => {
                let seconds = now.duration_since(since).as_secs_f64();
                rate = (bytes.saturating_sub(from) as f64 / seconds) as u64;
                pending.window = Some((now, bytes));
            }
            Some(_) => {}
            None => pending.window = Some((now, bytes)),
        }
        pending.progress = Some(Progress {
            bytes,
            total: total.unwrap_or(0),
            bytes_per_second: rate,
        });
        pending.progress_changed = true;
    }

    /// What has gathered since the last [`Output::sent`], if anything.
    pub fn batch(&self) -> Option<Batch> {
        let pending = self.pending();
        if pending.lines.is_empty() && !pending.progress_changed {
            return None;
        }
        Some(Batch {
            first: pending.first,
            lines: pending.lines.iter().cloned().collect(),
            progress: pending.progress.filter(|_| pending.progress_changed),
        })
    }

    /// `batch` arrived: its lines are not sent again.
    pub fn sent(&self, batch: &Batch) {
        let mut pending = self.pending();
        let end = batch.first + batch.lines.len() as u64;
        while pending.first < end && !pending.lines.is_empty() {
            pending.lines.pop_front();
            pending.first += 1;
        }
        if batch.progress.is_some() && batch.progress == pending.progress {
            pending.progress_changed = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_once_each_in_order_and_a_failed_send_keeps_them() {
        let output = Output::default();
        assert_eq!(output.batch(), None);
        output.line("one".into());
        output.line("two".into());
        let first = output.batch().expect("two lines");
        assert_eq!((first.first, first.lines.len()), (0, 2));
        // Sending failed: the next batch has them again, and what came since.
        output.line("three".into());
        let again = output.batch().expect("three lines");
        assert_eq!(again.lines, ["one", "two", "three"]);
        output.line("four".into());
        output.sent(&again);
        let next = output.batch().expect("one line");
        assert_eq!(
            (next.first, next.lines.as_slice()),
            (3, &["four".to_string()][..])
        );
        output.sent(&next);
        assert_eq!(output.batch(), None);
        // When Wisp cannot be reached for long, the oldest make room.
        for n in 0..PENDING_LINES + 10 {
            output.line(format!("line {n}"));
        }
        let batch = output.batch().expect("lines");
        assert_eq!(batch.first, 4 + 10);
        assert_eq!(batch.lines.len(), PENDING_LINES);
    }

    #[test]
    fn progress_goes_when_it_changed_with_its_rate() {
        let output = Output::default();
        output.progress(0, Some(1000));
        let batch = output.batch().expect("progress");
        assert_eq!(batch.progress.map(|p| (p.bytes, p.total)), Some((0, 1000)));
        output.sent(&batch);
        assert_eq!(output.batch(), None);
        std::thread::sleep(RATE_WINDOW);
        output.progress(500, Some(1000));
        let progress = output.batch().and_then(|b| b.progress).expect("progress");
        assert_eq!(progress.bytes, 500);
        // 500 bytes over a little more than the window.
        assert!(
            (300..=500).contains(&progress.bytes_per_second),
            "{progress:?}"
        );
    }
}
