//! Which transfer sends next: a queue by priority for the sending slots, and
//! round-robin among the sending transfers, weighted by priority, under one
//! shared window.
//!
//! Invariants:
//! * a transfer is in `queue` only while `Queued` and in `active` only while
//!   `Sending` (stale entries are dropped before each use);
//! * at most `max_active_files` transfers are `Sending`;
//! * at most `window.cwnd()` requests are unanswered when `poll_transmit`
//!   appends a frame, counted across all transfers.

use std::collections::VecDeque;
use std::time::Instant;

use super::transfer::Direction;
use super::types::{FileId, FileState, Transmit};
use super::Engine;

#[derive(Debug, Default)]
pub(super) struct Scheduler {
    /// Sending transfers in round-robin order.
    active: VecDeque<FileId>,
    /// Transfers waiting for a sending slot, in arrival order.
    queue: Vec<FileId>,
}

impl Scheduler {
    pub fn enqueue(&mut self, id: FileId) {
        if !self.queue.contains(&id) {
            self.queue.push(id);
        }
    }
}

/// Chunks a transfer may send in a row on its round-robin turn.
pub(super) fn weight(priority: u8) -> u32 {
    1 + (priority as u32).min(15)
}

impl Engine {
    /// `BatchSend`: appends the next frame to `out` if the window and the
    /// transfers allow; `None` when nothing may go now. Call it until `None`.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<Transmit> {
        if !self.connected || self.draining {
            return None;
        }
        self.retain_active();
        let mut tries = self.scheduler.active.len();
        while tries > 0 {
            if self.in_flight.len() >= self.window.cwnd() as usize {
                return None;
            }
            tries -= 1;
            let id = *self.scheduler.active.front()?;
            let upload = match self.transfers.get(&id).map(|t| &t.dir) {
                Some(Direction::Upload(_)) => true,
                Some(Direction::Download(_)) => false,
                None => {
                    self.scheduler.active.pop_front();
                    continue;
                }
            };
            let sent = if upload {
                // The rate cap holds back uploads only.
                if self.pacer.allows(now) {
                    let sent = self.upload_next(id, now, out);
                    if let Some(t) = &sent {
                        self.pacer.spent(t.len);
                    }
                    sent
                } else {
                    None
                }
            } else {
                self.download_next(id, now, out)
            };
            let Some(t) = self.transfers.get_mut(&id) else {
                continue;
            };
            match sent {
                Some(transmit) => {
                    t.common.burst += 1;
                    if t.common.burst >= weight(t.common.priority) {
                        t.common.burst = 0;
                        self.scheduler.active.rotate_left(1);
                    }
                    return Some(transmit);
                }
                None => {
                    t.common.burst = 0;
                    if self.scheduler.active.front() == Some(&id) {
                        self.scheduler.active.rotate_left(1);
                    }
                }
            }
        }
        None
    }

    pub(super) fn retain_active(&mut self) {
        let transfers = &self.transfers;
        let sending = |id: &FileId| {
            transfers
                .get(id)
                .is_some_and(|t| t.common.state == FileState::Sending)
        };
        self.scheduler.active.retain(sending);
        self.scheduler.queue.retain(|id| {
            transfers
                .get(id)
                .is_some_and(|t| t.common.state == FileState::Queued)
        });
    }

    /// Fills free sending slots from the queue, highest priority first.
    pub(super) fn promote(&mut self, now: Instant) {
        self.retain_active();
        let max = self.config.max_active_files.max(1);
        while self.scheduler.active.len() < max && !self.scheduler.queue.is_empty() {
            let queue = &self.scheduler.queue;
            let priority = |i: usize| {
                self.transfers
                    .get(&queue[i])
                    .map_or(0, |t| t.common.priority)
            };
            let Some(best) = (0..queue.len()).max_by_key(|&i| (priority(i), std::cmp::Reverse(i)))
            else {
                break;
            };
            let id = self.scheduler.queue.remove(best);
            self.scheduler.active.push_back(id);
            if let Some(t) = self.transfers.get_mut(&id) {
                // The give-up budget counts from when it may send.
                t.common.last_progress = now;
            }
            self.set_state(id, FileState::Sending);
        }
    }
}
