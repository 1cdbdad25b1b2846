//! Which transfer sends next: a queue by priority for the sending slots, and
//! round-robin among the sending transfers, weighted by priority, under one
//! shared window.
//!
//! Invariants:
//! * a transfer is in `queue` exactly while `Queued` (the engine's
//!   `set_state` takes it out when it leaves that state), and in `active`
//!   only while `Sending` (stale entries are dropped before each use);
//! * the cost of a send or a promotion does not grow with the number of
//!   queued transfers (a queue of thousands of files added at once used to
//!   be scanned for every frame sent);
//! * at most `max_active_files` transfers are `Sending`;
//! * at most `window.cwnd()` requests are unanswered when `poll_transmit`
//!   appends a frame, counted across all transfers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use super::transfer::Direction;
use super::types::{FileId, FileState, Transmit};
use super::Engine;

/// A place in the queue: higher priority first, then earlier arrival.
type Place = (Reverse<u8>, u64);

#[derive(Debug, Default)]
pub(super) struct Scheduler {
    /// Sending transfers in round-robin order.
    active: VecDeque<FileId>,
    /// Transfers waiting for a sending slot, best first.
    queue: BTreeMap<Place, FileId>,
    /// Each queued transfer's place in `queue`.
    places: HashMap<FileId, Place>,
    arrivals: u64,
}

impl Scheduler {
    /// Queues `id` behind the transfers already waiting with its priority
    /// or a higher one; a transfer already queued keeps its place.
    pub fn enqueue(&mut self, id: FileId, priority: u8) {
        if self.places.contains_key(&id) {
            return;
        }
        let place = (Reverse(priority), self.arrivals);
        self.arrivals += 1;
        self.queue.insert(place, id);
        self.places.insert(id, place);
    }

    /// Takes `id` out of the queue (it left `Queued`).
    pub fn dequeue(&mut self, id: FileId) {
        if let Some(place) = self.places.remove(&id) {
            self.queue.remove(&place);
        }
    }

    fn pop_best(&mut self) -> Option<FileId> {
        let (_, id) = self.queue.pop_first()?;
        self.places.remove(&id);
        Some(id)
    }

    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.len()
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
    }

    /// Fills free sending slots from the queue, highest priority first.
    pub(super) fn promote(&mut self, now: Instant) {
        self.retain_active();
        let max = self.config.max_active_files.max(1);
        while self.scheduler.active.len() < max {
            let Some(id) = self.scheduler.pop_best() else {
                break;
            };
            match self.transfers.get_mut(&id) {
                // The give-up budget counts from when it may send.
                Some(t) if t.common.state == FileState::Queued => t.common.last_progress = now,
                _ => continue, // cannot be (see the invariants); never sent
            }
            self.scheduler.active.push_back(id);
            self.set_state(id, FileState::Sending);
        }
    }
}
