//! The transfer table's entries: one [`Transfer`] per upload or download,
//! a common part every transfer has, and the direction-specific part.
//!
//! Invariants:
//! * a transfer's kind never changes: every reply is matched to a transfer by
//!   name *and* kind, and a reply of the wrong kind for a name is counted and
//!   ignored (a hostile server cannot make an upload reply act on a download);
//! * a terminal transfer has released its source or sink (file handle closed,
//!   a download's partial file removed).

use std::time::{Duration, Instant};

use super::download::Download;
use super::types::{FileId, FileState, FileStatus};
use super::upload::Upload;

/// What every transfer has.
pub(super) struct Common {
    pub id: FileId,
    pub name: String,
    pub state: FileState,
    pub priority: u8,
    pub progress: Progress,
    /// Chunks sent in a row on this round-robin turn.
    pub burst: u32,
    pub started_at: Option<Instant>,
    /// When the transfer last moved on (registered, resumed, a chunk
    /// acknowledged or received); the give-up budget counts from here.
    pub last_progress: Instant,
    /// The last error code a server reply carried for it.
    pub last_error: Option<crate::protocol::ErrorCode>,
}

impl Common {
    pub fn new(id: FileId, name: String, priority: u8, state: FileState, now: Instant) -> Common {
        Common {
            id,
            name,
            state,
            priority,
            progress: Progress::default(),
            burst: 0,
            started_at: None,
            last_progress: now,
            last_error: None,
        }
    }
}

pub(super) enum Direction {
    Upload(Upload),
    Download(Download),
}

pub(super) struct Transfer {
    pub common: Common,
    pub dir: Direction,
}

impl Transfer {
    pub fn upload_mut(&mut self) -> Option<&mut Upload> {
        match &mut self.dir {
            Direction::Upload(u) => Some(u),
            Direction::Download(_) => None,
        }
    }

    pub fn download_mut(&mut self) -> Option<&mut Download> {
        match &mut self.dir {
            Direction::Download(d) => Some(d),
            Direction::Upload(_) => None,
        }
    }

    pub fn upload(&self) -> Option<&Upload> {
        match &self.dir {
            Direction::Upload(u) => Some(u),
            Direction::Download(_) => None,
        }
    }

    pub fn download(&self) -> Option<&Download> {
        match &self.dir {
            Direction::Download(d) => Some(d),
            Direction::Upload(_) => None,
        }
    }

    /// Bytes done (acknowledged or received) and the total.
    pub fn done_total(&self) -> (u64, u64) {
        match &self.dir {
            Direction::Upload(u) => (u.acked_bytes, u.size),
            Direction::Download(d) => (d.bytes, d.total()),
        }
    }

    pub fn status(&self, in_flight: usize) -> FileStatus {
        let c = &self.common;
        let mut s = match &self.dir {
            Direction::Upload(u) => u.status(),
            Direction::Download(d) => d.status(),
        };
        s.name = c.name.clone();
        s.state = c.state;
        s.in_flight = in_flight;
        s
    }

    /// Closes the file handle; a download also removes its partial file.
    pub fn release(&mut self) {
        match &mut self.dir {
            Direction::Upload(u) => u.source = None,
            Direction::Download(d) => {
                if let Some(mut sink) = d.sink.take() {
                    sink.abort();
                }
            }
        }
    }
}

/// Progress events of one transfer, coalesced to one per interval.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Bytes changed since the last event.
    pub dirty: bool,
    pub last_emit_at: Option<Instant>,
    last_emit_bytes: u64,
    rate: f64,
}

impl Progress {
    /// When the next coalesced event is due, if one is pending.
    pub fn due_at(&self, interval: Duration) -> Option<Instant> {
        self.last_emit_at
            .filter(|_| self.dirty)
            .map(|t| t + interval)
    }

    /// Whether an event may go now (none went within `interval`).
    pub fn may_emit(&self, now: Instant, interval: Duration) -> bool {
        self.last_emit_at.is_none_or(|t| now >= t + interval)
    }

    /// Records an event at `now` with `done` bytes; returns the smoothed rate.
    pub fn emit(&mut self, now: Instant, done: u64) -> f64 {
        if let Some(at) = self.last_emit_at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            if dt > 0.0 {
                let inst = done.saturating_sub(self.last_emit_bytes) as f64 / dt;
                self.rate = if self.rate == 0.0 {
                    inst
                } else {
                    0.5 * self.rate + 0.5 * inst
                };
            }
        }
        self.dirty = false;
        self.last_emit_at = Some(now);
        self.last_emit_bytes = done;
        self.rate
    }
}
