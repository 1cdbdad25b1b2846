//! The engine's timers, all derived from its state (nothing is armed or
//! cancelled): coalesced progress events, the ack timeout (the server or the
//! path stopped answering), the 1045 timeout (the deployed server answers
//! nothing for an unknown message id), and the settle delay of size probes.
//!
//! Invariant: `poll_timeout` returns the earliest instant at which
//! `handle_timeout` would change anything, or `None`. Both look only at the
//! transfers that have been sending and have not ended (`Engine::live`),
//! so their cost follows the files in play, not the files added.

use std::time::Instant;

use super::inflight::{Request, RequestKind};
use super::types::{Event, Failure, FileId, FileState, ServerStorage};
use super::upload::UploadPhase;
use super::Engine;

impl Engine {
    fn live_transfers(&self) -> impl Iterator<Item = &super::transfer::Transfer> {
        self.live.iter().filter_map(|id| self.transfers.get(id))
    }

    /// When [`Engine::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let requests = || self.in_flight.iter().map(|(_, r)| r);
        let ack = requests()
            .filter(|r| !self.stall_reported && r.kind != RequestKind::DownloadInfo)
            .map(|r| r.sent_at + self.config.ack_timeout)
            .min();
        let info = requests()
            .filter(|r| r.kind == RequestKind::DownloadInfo)
            .map(|r| r.sent_at + self.config.info_timeout)
            .min();
        let progress = self
            .live_transfers()
            .filter_map(|t| t.common.progress.due_at(self.config.progress_interval))
            .min();
        let give_up = self.config.give_up_after.and_then(|budget| {
            self.live_transfers()
                .filter(|t| t.common.state == FileState::Sending)
                .map(|t| t.common.last_progress + budget)
                .min()
        });
        // Out of the rate cap's debt, if an upload waits on it.
        let paced = self.pacer.ready_at().filter(|_| {
            self.connected
                && self
                    .live_transfers()
                    .any(|t| t.common.state == FileState::Sending && t.upload().is_some())
        });
        let probe = self
            .live_transfers()
            .filter(|t| !t.common.state.is_terminal())
            .filter_map(|t| match t.upload()?.phase {
                UploadPhase::Probing(p) | UploadPhase::Verifying(p) => p.due,
                _ => None,
            })
            .min();
        [ack, info, progress, give_up, probe, paced]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires due timers: coalesced progress, the 1045 timeout, the ack timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let interval = self.config.progress_interval;
        let due: Vec<FileId> = self
            .live_transfers()
            .filter(|t| {
                t.common
                    .progress
                    .due_at(interval)
                    .is_some_and(|at| now >= at)
            })
            .map(|t| t.common.id)
            .collect();
        for id in due {
            self.emit_progress(id, now);
        }
        // Size probes whose settle delay ended may go (poll_transmit sends them).
        for id in &self.live {
            if let Some(u) = self.transfers.get_mut(id).and_then(|t| t.upload_mut()) {
                u.probe_due(now);
            }
        }
        self.expire_info_requests(now);
        self.check_stall(now);
        self.give_up_stalled(now);
    }

    /// Transfers that want to send and made no progress for `give_up_after`
    /// fail, naming the last server error they saw.
    fn give_up_stalled(&mut self, now: Instant) {
        let Some(budget) = self.config.give_up_after else {
            return;
        };
        let due: Vec<(FileId, Option<crate::protocol::ErrorCode>)> = self
            .live_transfers()
            .filter(|t| {
                t.common.state == FileState::Sending
                    && now.saturating_duration_since(t.common.last_progress) >= budget
            })
            .map(|t| (t.common.id, t.common.last_error))
            .collect();
        for (id, last_error) in due {
            let reason = self.give_up_reason(format!("no progress for {budget:?} (give_up_after)"));
            self.fail(id, Failure::GaveUp { reason, last_error }, now);
        }
    }

    /// A 1045 nobody answers: the deployed server sends nothing for an
    /// unknown message id, so this download fails alone.
    fn expire_info_requests(&mut self, now: Instant) {
        let timeout = self.config.info_timeout;
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, r)| {
                r.kind == RequestKind::DownloadInfo
                    && now.saturating_duration_since(r.sent_at) >= timeout
            })
            .map(|(no, _)| no)
            .collect();
        for no in expired {
            let request = self.answered(no);
            let message_id = self
                .transfers
                .get(&request.transfer)
                .and_then(|t| t.download())
                .map_or(0, |d| d.spec.message_id);
            let message = format!(
                "no reply to 1045 for message {message_id} within {timeout:?}: the server knows no file \
                 for this message (the deployed server answers nothing then)"
            );
            self.fail(request.transfer, Failure::BadReply { seq: 0, message }, now);
        }
    }

    /// The oldest request waited `ack_timeout`: report a stall once per
    /// connection; against an appending server, fail the files whose only
    /// unconfirmed chunk is their last (re-sending it could duplicate it).
    fn check_stall(&mut self, now: Instant) {
        if self.stall_reported {
            return;
        }
        let timeout = self.config.ack_timeout;
        let Some(oldest) = self
            .in_flight
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.kind != RequestKind::DownloadInfo)
            .map(|r| r.sent_at)
            .min()
        else {
            return;
        };
        let waited = now.saturating_duration_since(oldest);
        if waited < timeout {
            return;
        }
        self.stall_reported = true;
        self.events.push_back(Event::ConnectionStalled { waited });
        if self.config.server_storage != ServerStorage::Appending {
            return;
        }
        let unconfirmed: Vec<Request> = self
            .in_flight
            .iter()
            .map(|(_, r)| *r)
            .filter(|r| {
                r.kind == RequestKind::UploadChunk
                    && r.last
                    && now.saturating_duration_since(r.sent_at) >= timeout
            })
            .collect();
        for r in unconfirmed {
            let only_last_missing = self
                .transfers
                .get_mut(&r.transfer)
                .and_then(|t| t.upload_mut())
                .is_some_and(|u| u.acked_prefix() + 1 == r.seq);
            if only_last_missing && !self.is_terminal(r.transfer) {
                let failure = Failure::Unconfirmed { seq: r.seq, waited };
                self.fail(r.transfer, failure, now);
            }
        }
    }
}
