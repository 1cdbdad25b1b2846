//! Uploads: chunks read from a [`ChunkSource`], sent as 1041 (seq 1), 1037,
//! 1043 (the first chunk after a resume) or 1031 (avatars), acknowledged by
//! 1042/1038/1044/1032.
//!
//! Invariants:
//! * nothing but seq 1 goes before seq 1 is acknowledged (the 1041 creates the
//!   server's record);
//! * on one connection no seq is sent twice, except after a restart from
//!   seq 1, which waits until nothing of the file is in flight;
//! * a 1043 never goes for a file over `i32::MAX` bytes (the deployed server
//!   would crash) nor for the last chunk (the deployed server holds that reply
//!   behind a call to the ChatServer);
//! * an upload completes if and only if every seq `1..=max_seq` was acknowledged;
//! * avatars are stop-and-wait (the deployed server handles 1031 one at a time).

use std::time::Instant;

use super::error::{Error, Result};
use super::inflight::{ReqNo, Request, RequestKind};
use super::io::ChunkSource;
use super::transfer::Direction;
use super::types::*;
use super::Engine;
use crate::protocol::name::name_problem;
use crate::protocol::{is_md5_hex, ChunkFrame, ErrorCode, MsgId, SeqRanges, MAX_1043_SIZE};

/// How often one file may start again from seq 1 after the server answered
/// 1012 (no record); past that the 1012 fails it.
const MAX_LOST_RECORD_RESTARTS: u8 = 3;

/// Where an upload stands between its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UploadPhase {
    /// The next chunk continues the stream (1041 for seq 1, else 1037).
    Streaming,
    /// The next chunk after seq 1 goes as 1043 (after a pause or a reconnect).
    Resuming,
    /// Start again from seq 1 (a 1041, which truncates) once nothing is in flight.
    RestartWhenDrained,
}

pub(super) struct Upload {
    pub spec: FileSpec,
    pub md5: String,
    /// `None` once the transfer ended: the file handle is closed at once.
    pub source: Option<Box<dyn ChunkSource>>,
    pub size: u64,
    pub chunk: u32,
    pub max_seq: u32,
    /// The next seq to send on this connection.
    pub next_seq: u32,
    /// Acknowledged seqs; beyond the prefix it is bounded by the window.
    pub acked: SeqRanges,
    pub acked_bytes: u64,
    pub phase: UploadPhase,
    /// Restarts from seq 1 because the server had lost its record (1012).
    pub lost_record_restarts: u8,
    /// Bytes of this upload's frames put on the wire so far, resends
    /// included (bounded by `max_resend_factor` times the file's size).
    pub sent_wire_bytes: u64,
}

impl Upload {
    pub fn chunk_len(&self, seq: u32) -> usize {
        let offset = (seq as u64 - 1) * self.chunk as u64;
        (self.size.saturating_sub(offset)).min(self.chunk as u64) as usize
    }

    pub fn first_acked(&self) -> bool {
        self.acked.contains(1)
    }

    /// Every seq up to this one is acknowledged.
    pub fn acked_prefix(&self) -> u32 {
        self.acked.prefix()
    }

    /// Records an acknowledgement; false if `seq` was already acknowledged.
    pub fn record_ack(&mut self, seq: u32) -> bool {
        if seq == 0 || seq > self.max_seq || !self.acked.insert(seq) {
            return false;
        }
        self.acked_bytes += self.chunk_len(seq) as u64;
        true
    }

    pub fn is_complete(&self) -> bool {
        self.acked.covers(self.max_seq)
    }

    /// The seq this file would send next, if it may send now; `in_flight` is
    /// its number of unanswered requests.
    fn next_sendable(&mut self, in_flight: usize) -> Option<u32> {
        self.source.as_ref()?;
        if self.phase == UploadPhase::RestartWhenDrained {
            if in_flight > 0 {
                return None;
            }
            self.reset_to_start();
        }
        if self.spec.avatar && in_flight > 0 {
            return None; // avatars are stop-and-wait on the deployed server
        }
        if self.next_seq == 1 {
            return (in_flight == 0).then_some(1);
        }
        if !self.first_acked() {
            return None; // nothing but seq 1 before its 1042
        }
        while self.next_seq <= self.max_seq && self.acked.contains(self.next_seq) {
            self.next_seq += 1;
        }
        (self.next_seq <= self.max_seq).then_some(self.next_seq)
    }

    fn reset_to_start(&mut self) {
        self.phase = UploadPhase::Streaming;
        self.next_seq = 1;
        self.acked.clear();
        self.acked_bytes = 0;
    }

    /// The record a journal keeps.
    pub fn ack_record(&self, in_flight: usize) -> AckRecord {
        AckRecord {
            acked_prefix: self.acked_prefix(),
            acked_beyond: self.acked.beyond_prefix().collect(),
            in_flight,
        }
    }

    /// Plans the next connection: resume exactly, or restart from seq 1 when
    /// what the server holds is uncertain. Returns whether it restarts a file
    /// that had progress.
    pub fn plan_after_cut(&mut self, storage: ServerStorage, had_in_flight: bool) -> bool {
        if self.next_seq == 1 {
            return false;
        }
        let restart = !self.first_acked() || (storage == ServerStorage::Appending && had_in_flight);
        if restart {
            self.phase = UploadPhase::RestartWhenDrained;
            self.first_acked()
        } else {
            self.next_seq = self.acked_prefix() + 1;
            self.phase = UploadPhase::Resuming;
            false
        }
    }

    pub fn status(&self) -> FileStatus {
        FileStatus {
            name: String::new(),
            state: FileState::Queued,
            total: self.size,
            acked: self.acked_bytes,
            max_seq: self.max_seq,
            acked_prefix: self.acked_prefix(),
            next_seq: self.next_seq,
            in_flight: 0,
            md5: self.md5.clone(),
        }
    }
}

/// Checks an upload spec and computes its chunking; nothing is registered.
pub(super) fn check_spec(
    spec: &FileSpec,
    size: u64,
    config: &EngineConfig,
) -> Result<(u32, u32, String)> {
    if let Some(reason) = name_problem(&spec.name) {
        return Err(Error::InvalidName {
            name: spec.name.clone(),
            reason,
        });
    }
    if !spec.avatar && spec.message_id <= 0 {
        return Err(Error::InvalidMessageId {
            name: spec.name.clone(),
            message_id: spec.message_id,
        });
    }
    let chunk = spec.chunk_size.unwrap_or(config.chunk_size);
    if chunk == 0 {
        return Err(Error::ZeroChunk {
            name: spec.name.clone(),
        });
    }
    if spec.avatar && size > MAX_1043_SIZE {
        // 1031 sizes are ints the deployed server reads with asInt.
        return Err(Error::TooManyChunks {
            name: spec.name.clone(),
            size,
            chunk,
            max: MAX_1043_SIZE / chunk as u64,
        });
    }
    // seq travels as an int the server reads with asInt.
    let max_seq = size.div_ceil(chunk as u64).max(1);
    if max_seq > i32::MAX as u64 {
        return Err(Error::TooManyChunks {
            name: spec.name.clone(),
            size,
            chunk,
            max: i32::MAX as u64,
        });
    }
    let max_seq = max_seq as u32;
    let md5 = match &spec.md5 {
        Some(m) if is_md5_hex(m) => m.to_ascii_lowercase(),
        other => {
            return Err(Error::InvalidMd5 {
                name: spec.name.clone(),
                md5: other.clone().unwrap_or_default(),
            })
        }
    };
    let worst = [MsgId::FILE_INFO_SYNC_REQ, MsgId::IMG_CHAT_UPLOAD_REQ]
        .into_iter()
        .map(|id| {
            let frame = ChunkFrame {
                id,
                name: &spec.name,
                md5: &md5,
                seq: max_seq,
                trans_size: size,
                total_size: size,
                last: false,
                last_seq: max_seq,
                uid: spec.uid,
                sender: spec.sender,
                receiver: spec.receiver,
                message_id: spec.message_id,
                token: &spec.token,
            };
            frame.body_len_with(chunk.min(size.max(1).min(u32::MAX as u64) as u32) as usize)
        })
        .max()
        .unwrap_or(0);
    if worst > config.max_body_len {
        return Err(Error::ChunkTooLarge {
            name: spec.name.clone(),
            chunk,
            body_len: worst,
            limit: config.max_body_len,
        });
    }
    Ok((chunk, max_seq, md5))
}

impl Engine {
    /// `AddTransFile`: registers an upload. Nothing is queued on error.
    ///
    /// `spec.md5` is required: the engine never reads a whole file (compute
    /// it at the edge, e.g. with [`super::md5_hex`] off the UI thread).
    pub fn add_file(
        &mut self,
        spec: FileSpec,
        source: Box<dyn ChunkSource>,
        now: Instant,
    ) -> Result<FileId> {
        self.add_upload(spec, source, None, now)
    }

    /// Registers an upload that an earlier process left unfinished, with the
    /// chunks the server acknowledged then (from a journal). It continues
    /// with 1043 from the first unacknowledged seq (1037 for files of 2 GiB or
    /// more), or from seq 1 if seq 1 was never acknowledged. The caller
    /// decides whether the record is safe to trust (see the runtime's journal).
    pub fn add_resumed(
        &mut self,
        spec: FileSpec,
        source: Box<dyn ChunkSource>,
        acked: &AckRecord,
        now: Instant,
    ) -> Result<FileId> {
        self.add_upload(spec, source, Some(acked), now)
    }

    /// The acknowledged record of an upload (for a journal); `None` for an
    /// unknown name or a download.
    pub fn ack_record(&self, name: &str) -> Option<AckRecord> {
        let id = *self.names.get(name)?;
        match &self.transfers.get(&id)?.dir {
            Direction::Upload(u) => Some(u.ack_record(self.in_flight.count(id))),
            Direction::Download(_) => None,
        }
    }

    fn add_upload(
        &mut self,
        spec: FileSpec,
        source: Box<dyn ChunkSource>,
        resume: Option<&AckRecord>,
        now: Instant,
    ) -> Result<FileId> {
        let size = source.len();
        let (chunk, max_seq, md5) = check_spec(&spec, size, &self.config)?;
        self.take_name(&spec.name)?;
        let mut upload = Upload {
            md5,
            source: Some(source),
            size,
            chunk,
            max_seq,
            next_seq: 1,
            acked: SeqRanges::default(),
            acked_bytes: 0,
            phase: UploadPhase::Streaming,
            lost_record_restarts: 0,
            sent_wire_bytes: 0,
            spec,
        };
        if let Some(rec) = resume.filter(|r| r.acked_prefix >= 1) {
            let beyond = rec.acked_beyond.iter().copied();
            for seq in (1..=rec.acked_prefix.min(max_seq)).chain(beyond) {
                upload.record_ack(seq);
            }
            upload.next_seq = upload.acked_prefix() + 1;
            upload.phase = UploadPhase::Resuming;
        }
        let (name, priority, hold) = (
            upload.spec.name.clone(),
            upload.spec.priority,
            upload.spec.hold,
        );
        Ok(self.register(name, priority, hold, Direction::Upload(upload), now))
    }

    /// The next frame of upload `id`, if it may send one now.
    pub(super) fn upload_next(
        &mut self,
        id: FileId,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<Transmit> {
        if self.transfers.get(&id)?.common.state != FileState::Sending {
            return None;
        }
        let in_flight = self.in_flight.count(id);
        let hold_back = self.attribution.hold_back_bound();
        let owns_candidate =
            hold_back.is_some_and(|bound| self.in_flight.of(id).any(|(_, no)| no < bound));
        let u = self.transfers.get_mut(&id)?.upload_mut()?;
        let seq = u.next_sendable(in_flight)?;
        // While an error reply is unattributed, a file that may be its owner
        // does not send its last chunk (which would make the deployed server
        // mark the message uploaded).
        if seq == u.max_seq && owns_candidate {
            return None;
        }
        let len = u.chunk_len(seq);
        let offset = (seq as u64 - 1) * u.chunk as u64;
        let u = self.transfers.get_mut(&id)?.upload_mut()?;
        self.scratch.resize(len, 0);
        let read = match u.source.as_mut() {
            Some(source) => source.read_at(offset, &mut self.scratch[..len]),
            None => return None,
        };
        if let Err(e) = read {
            let message = format!("{}: {e}", u.spec.path.display());
            self.fail(id, Failure::Source { message }, now);
            return None;
        }
        let last = seq == u.max_seq;
        let msg_id = if u.spec.avatar {
            MsgId::UPLOAD_HEAD_ICON_REQ
        } else if seq == 1 {
            MsgId::FILE_INFO_SYNC_REQ
        } else if u.phase == UploadPhase::Resuming && u.size <= MAX_1043_SIZE && !last {
            MsgId::IMG_CHAT_CONTINUE_UPLOAD_REQ
        } else {
            MsgId::IMG_CHAT_UPLOAD_REQ
        };
        if seq > 1 {
            u.phase = UploadPhase::Streaming;
        }
        let frame = ChunkFrame {
            id: msg_id,
            name: &u.spec.name,
            md5: &u.md5,
            seq,
            trans_size: offset + len as u64,
            total_size: u.size,
            last,
            last_seq: u.max_seq,
            uid: u.spec.uid,
            sender: u.spec.sender,
            receiver: u.spec.receiver,
            message_id: u.spec.message_id,
            token: &u.spec.token,
        };
        let before = out.len();
        frame.encode(&self.scratch[..len], out);
        // Restarts and resends are bounded in what reaches the wire (base64
        // and JSON included): past the factor, give up rather than send.
        let wire = (out.len() - before) as u64;
        let bound = self
            .config
            .max_resend_factor
            .saturating_mul(u.size.max(wire));
        if u.sent_wire_bytes.saturating_add(wire) > bound {
            out.truncate(before);
            let budget = format!(
                "put {} bytes on the wire for a {}-byte file without completing \
                 (max_resend_factor {})",
                u.sent_wire_bytes, u.size, self.config.max_resend_factor
            );
            let reason = self.give_up_reason(budget);
            let last_error = self.transfers.get(&id).and_then(|t| t.common.last_error);
            self.fail(id, Failure::GaveUp { reason, last_error }, now);
            return None;
        }
        u.next_seq = seq + 1;
        u.sent_wire_bytes += wire;
        let request = Request {
            transfer: id,
            seq,
            sent_at: now,
            last,
            kind: RequestKind::UploadChunk,
        };
        Some(self.sent(request, msg_id, out.len() - before))
    }

    /// A success reply (1042/1038/1044/1032) for `name`'s `seq`.
    pub(super) fn on_upload_ack(&mut self, now: Instant, msg_id: MsgId, name: &str, seq: u32) {
        if self.take_retired(name, seq, RequestKind::UploadChunk) {
            return;
        }
        let Some(id) = self.find_kind(now, name, msg_id, RequestKind::UploadChunk) else {
            return;
        };
        let Some(no) = self.in_flight.find(id, seq) else {
            self.stats.duplicate_acks += 1;
            return;
        };
        self.stats.acks += 1;
        self.replied(no, now);
        // Replies for one name are ordered: an earlier request of this file
        // still unanswered got an error reply that already arrived.
        let earlier: Vec<ReqNo> = self
            .in_flight
            .of(id)
            .map(|(_, n)| n)
            .filter(|n| *n < no)
            .collect();
        self.attribution.known_errors(earlier);
        let Some(t) = self.transfers.get_mut(&id) else {
            return;
        };
        if t.common.state.is_terminal() {
            return;
        }
        let Some(u) = t.upload_mut() else { return };
        if u.phase == UploadPhase::RestartWhenDrained {
            return; // the record is cleared when the restart begins
        }
        if !u.record_ack(seq) {
            self.stats.duplicate_acks += 1;
            return;
        }
        let complete = u.is_complete();
        t.common.progress.dirty = true;
        t.common.last_progress = now;
        if complete {
            self.complete_upload(id, now);
        } else if t
            .common
            .progress
            .may_emit(now, self.config.progress_interval)
        {
            self.emit_progress(id, now);
        }
    }

    /// An error reply attributed to request `no` (already out of the table).
    pub(super) fn on_upload_error(&mut self, request: Request, code: ErrorCode, now: Instant) {
        let id = request.transfer;
        let Some(t) = self.transfers.get_mut(&id) else {
            return;
        };
        if t.common.state.is_terminal() {
            return;
        }
        t.common.last_error = Some(code);
        let name = t.common.name.clone();
        let Some(u) = t.upload_mut() else { return };
        if u.phase == UploadPhase::RestartWhenDrained {
            return; // an old request of a file that starts again
        }
        if code == ErrorCode::FileNotExists
            && request.seq != 1
            && u.lost_record_restarts < MAX_LOST_RECORD_RESTARTS
        {
            // The server has no record of this upload (expired, lost in a
            // restart, or never seen on this path): what it holds is orphaned,
            // and a 1041 (which truncates) starts it cleanly again.
            u.lost_record_restarts += 1;
            u.phase = UploadPhase::RestartWhenDrained;
            self.stats.restarts += 1;
            tracing::info!(%name, seq = request.seq, "server has no record of the upload; restarting from seq 1");
            return;
        }
        let seq = request.seq;
        self.fail(id, Failure::Server { code, seq }, now);
    }

    fn complete_upload(&mut self, id: FileId, now: Instant) {
        self.emit_progress(id, now);
        let Some(t) = self.transfers.get_mut(&id) else {
            return;
        };
        let started_at = t.common.started_at;
        let name = t.common.name.clone();
        let Some(u) = t.upload_mut() else { return };
        u.source = None;
        let secs = started_at.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        tracing::info!(
            %name,
            bytes = u.size,
            secs,
            mb_s = if secs > 0.0 { u.size as f64 / secs / 1e6 } else { 0.0 },
            md5 = %u.md5,
            "upload complete"
        );
        let (md5, bytes) = (u.md5.clone(), u.size);
        self.set_state(id, FileState::Completed);
        self.events.push_back(Event::Completed { name, md5, bytes });
        self.promote(now);
    }
}
