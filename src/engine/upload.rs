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
//! * an upload completes if and only if every seq `1..=max_seq` was
//!   acknowledged, or a size probe showed the server holds exactly the whole
//!   file (its last chunk's reply was lost in a cut); with a token against
//!   an appending server (and [`ProbeConfig::verify`]) a final probe must
//!   also find exactly the file's size stored;
//! * avatars are stop-and-wait (the deployed server handles 1031 one at a time).
//!
//! # Size probes (appending server, upload with a token)
//! The deployed server answers a 1047 with seq 1 for `<uid>/<name>` with the
//! stored file's size (`docs/deployed-server-facts.md` §7). After a lost
//! connection with chunks in flight an upload *probes* instead of restarting:
//! after [`ProbeConfig::settle`], then again until two probes agree (chunks
//! read from the dead connection may still be waiting for a file worker),
//! unless the first one already shows every chunk sent. A stored size of
//! exactly `k` whole chunks (or the whole file), with `k` at least the
//! acknowledged prefix and at most the highest seq sent, continues from
//! seq `k+1`; anything else — another size, an error, no data, a reply whose
//! first bytes are not the file's — restarts from seq 1 as without a token.
//! Nothing else of the file goes while a probe is pending. At the end one
//! more probe verifies the size; a mismatch fails the upload (not restarted:
//! the last chunk already made the server mark the message uploaded and
//! notify the receiver, who may be downloading it).

use std::time::Instant;

use base64::Engine as _;

use super::error::{Error, Result};
use super::inflight::{ReqNo, Request, RequestKind};
use super::io::ChunkSource;
use super::transfer::Direction;
use super::types::*;
use super::Engine;
use crate::protocol::messages::{DownChunkReq, DownChunkRsp, StrU64};
use crate::protocol::name::name_problem;
use crate::protocol::{
    frame, is_md5_hex, ChunkFrame, ErrorCode, MsgId, SeqRanges, DOWNLOAD_CHUNK, MAX_1043_SIZE,
};

/// How often one file may start again from seq 1 after the server answered
/// 1012 (no record); past that the 1012 fails it.
const MAX_LOST_RECORD_RESTARTS: u8 = 3;

/// Probes of one round (after one cut) before a size that keeps changing
/// sends the file from seq 1 instead.
const MAX_PROBES: u8 = 5;

/// Where an upload stands between its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UploadPhase {
    /// The next chunk continues the stream (1041 for seq 1, else 1037).
    Streaming,
    /// The next chunk after seq 1 goes as 1043 (after a pause or a reconnect).
    Resuming,
    /// Start again from seq 1 (a 1041, which truncates) once nothing is in flight.
    RestartWhenDrained,
    /// Ask the appending server what it holds before sending anything more.
    Probing(Probe),
    /// Every chunk acknowledged: one probe confirms the stored size first.
    Verifying(Probe),
}

/// A round of size probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Probe {
    /// The next probe waits until then (the settle delay); `None`: it may go
    /// now. Cleared by `handle_timeout`, so a past instant is never reported.
    pub due: Option<Instant>,
    /// What the previous probe of this round found.
    pub last_size: Option<u64>,
    /// Probes sent in this round.
    pub sent: u8,
    /// The highest seq sent since the last seq 1: the server cannot hold more.
    pub sent_max: u32,
}

impl Probe {
    fn new(due: Option<Instant>, sent_max: u32) -> Probe {
        Probe {
            due,
            last_size: None,
            sent: 0,
            sent_max,
        }
    }
}

/// What a probe's answer decides while probing.
#[derive(Debug, PartialEq, Eq)]
enum ProbeStep {
    /// Probe again after the settle delay.
    Again(Probe),
    /// The server holds exactly seqs `1..=k`.
    Resume(u32),
    /// Nothing usable: from seq 1, for this reason.
    Restart(String),
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
    /// A connection was lost during this upload: the final probe waits the
    /// settle delay (late chunks of the dead connection show up in it).
    pub cut_seen: bool,
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
        // `cut_seen` stays: bytes of the dead connection can still land
        // after the 1041, and the final probe's settle delay gives them time
        // to show.
    }

    /// Whether this upload may ask the server its stored size: a chat
    /// upload with a token, to an appending server (a positional one
    /// resumes exactly anyway).
    pub fn may_probe(&self, config: &EngineConfig) -> bool {
        config.server_storage == ServerStorage::Appending
            && !self.spec.token.is_empty()
            && !self.spec.avatar
    }

    /// Whether the last ack is followed by a verifying probe.
    fn verifies(&self, config: &EngineConfig) -> bool {
        // A 0-byte file: the deployed server answers "missing" and "empty"
        // alike, so there is nothing to compare.
        config.probe.verify && self.size > 0 && self.may_probe(config)
    }

    /// A probe is pending (waiting, or in flight).
    pub fn probing(&self) -> bool {
        matches!(
            self.phase,
            UploadPhase::Probing(_) | UploadPhase::Verifying(_)
        )
    }

    /// Lets a probe whose settle delay ended go; the instant it waits for otherwise.
    pub fn probe_due(&mut self, now: Instant) -> Option<Instant> {
        let (UploadPhase::Probing(p) | UploadPhase::Verifying(p)) = &mut self.phase else {
            return None;
        };
        if p.due.is_some_and(|t| t <= now) {
            p.due = None;
        }
        p.due
    }

    /// The seqs `1..=k` a stored size of `size` bytes amounts to, if it is
    /// exactly whole chunks or the whole file.
    fn whole_chunks(&self, size: u64) -> Option<u32> {
        if size == 0 {
            return None;
        }
        if size == self.size {
            return Some(self.max_seq);
        }
        let k = size / self.chunk as u64;
        (size % self.chunk as u64 == 0 && k < self.max_seq as u64).then_some(k as u32)
    }

    /// Decides on a probe's answer (`held`: the stored size, or why there
    /// is none) while probing.
    fn probed(&self, p: Probe, held: std::result::Result<u64, String>, next: Instant) -> ProbeStep {
        let size = match held {
            Ok(size) => size,
            Err(why) => return ProbeStep::Restart(why),
        };
        let Some(k) = self.whole_chunks(size) else {
            return ProbeStep::Restart(format!(
                "the server holds {size} bytes, not whole {}-byte chunks of this {}-byte file",
                self.chunk, self.size
            ));
        };
        if k > p.sent_max {
            return ProbeStep::Restart(format!(
                "the server holds {k} chunks, more than the {} sent",
                p.sent_max
            ));
        }
        if k < self.acked_prefix() {
            return ProbeStep::Restart(format!(
                "the server holds {k} chunks, fewer than the {} acknowledged",
                self.acked_prefix()
            ));
        }
        // Every chunk sent is stored: nothing more of ours can arrive late.
        if k == p.sent_max || p.last_size == Some(size) {
            return ProbeStep::Resume(k);
        }
        if p.sent >= MAX_PROBES {
            return ProbeStep::Restart(format!(
                "the stored size still changed after {} probes",
                p.sent
            ));
        }
        ProbeStep::Again(Probe {
            due: Some(next),
            last_size: Some(size),
            ..p
        })
    }

    /// The server holds exactly seqs `1..=k`: continue with `k+1`.
    fn resume_at(&mut self, k: u32) {
        self.acked.clear();
        self.acked_bytes = 0;
        for seq in 1..=k {
            self.record_ack(seq);
        }
        self.next_seq = k + 1;
        self.phase = UploadPhase::Resuming;
    }

    /// The record a journal keeps.
    pub fn ack_record(&self, in_flight: usize) -> AckRecord {
        AckRecord {
            acked_prefix: self.acked_prefix(),
            acked_beyond: self.acked.beyond_prefix().collect(),
            in_flight,
        }
    }

    /// Plans the next connection: resume exactly, probe what an appending
    /// server holds (`probe`: the upload may, and the first probe waits
    /// until `settle_until`), or restart from seq 1 when what the server
    /// holds is uncertain. Returns whether it restarts a file that had progress.
    pub fn plan_after_cut(
        &mut self,
        storage: ServerStorage,
        had_in_flight: bool,
        probe: bool,
        settle_until: Instant,
    ) -> bool {
        if self.next_seq == 1 {
            return false;
        }
        self.cut_seen = true;
        if let UploadPhase::Probing(p) | UploadPhase::Verifying(p) = &mut self.phase {
            // The probe or its answer may be lost: a new round.
            *p = Probe::new(Some(settle_until), p.sent_max);
            return false;
        }
        let restart = !self.first_acked() || (storage == ServerStorage::Appending && had_in_flight);
        if restart && probe && self.first_acked() && self.phase != UploadPhase::RestartWhenDrained {
            let sent_max = self.next_seq - 1;
            self.phase = UploadPhase::Probing(Probe::new(Some(settle_until), sent_max));
            return false;
        }
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

/// The one rule for message ids: a chat upload may only be sent with the id
/// of its ChatServer message (above 0; with 0 the deployed server marks
/// message 0 and, with the receiver online, crashes); an avatar has none.
pub fn check_message_id(name: &str, avatar: bool, message_id: i64) -> Result<()> {
    if avatar || message_id > 0 {
        return Ok(());
    }
    Err(Error::InvalidMessageId {
        name: name.into(),
        message_id,
    })
}

/// Whether upload `name` may be given `message_id` later
/// (`Engine::set_message_id`): an avatar has no message id to be given.
pub fn check_new_message_id(name: &str, avatar: bool, message_id: i64) -> Result<()> {
    if avatar {
        return Err(Error::InvalidMessageId {
            name: name.into(),
            message_id,
        });
    }
    check_message_id(name, false, message_id)
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
    // A held upload may wait for its id (0: the 1036 reply has not come);
    // `Engine::set_message_id` gives it before `resume` may start it.
    if !(spec.hold && spec.message_id == 0) {
        check_message_id(&spec.name, spec.avatar, spec.message_id)?;
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
    /// more), or from seq 1 if seq 1 was never acknowledged. A record taken
    /// with requests in flight (`in_flight > 0`) is not trusted against an
    /// appending server: with a token the upload probes the stored size
    /// first (see the module docs), without one it starts from seq 1.
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
            cut_seen: false,
            spec,
        };
        if let Some(rec) = resume.filter(|r| r.acked_prefix >= 1) {
            // A record taken with requests in flight may be short of what an
            // appending server holds: probe it (with a token), else seq 1.
            let exact =
                rec.in_flight == 0 || self.config.server_storage == ServerStorage::Positional;
            if exact {
                let beyond = rec.acked_beyond.iter().copied();
                for seq in (1..=rec.acked_prefix.min(max_seq)).chain(beyond) {
                    upload.record_ack(seq);
                }
                upload.next_seq = upload.acked_prefix() + 1;
                upload.phase = UploadPhase::Resuming;
            } else if self.config.probe.resume && upload.may_probe(&self.config) {
                // An earlier process may have sent any seq; the first probe
                // waits the settle delay too (it may have just died).
                let due = now + self.config.probe.settle;
                upload.next_seq = 2; // not 1: nothing goes before the probe's answer
                upload.cut_seen = true;
                upload.phase = UploadPhase::Probing(Probe::new(Some(due), max_seq));
            }
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
        if self.transfers.get(&id)?.upload()?.probing() {
            return self.probe_next(id, now, out);
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
        self.stats.upload_bytes_sent += len as u64;
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
        let Some(no) = self
            .in_flight
            .find(id, seq)
            .filter(|no| self.in_flight.get(*no).map(|r| r.kind) == Some(RequestKind::UploadChunk))
        else {
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
        if complete && u.verifies(&self.config) {
            // After a cut, late chunks of the dead connection may still be
            // written: the verifying probe waits the settle delay.
            let due = u.cut_seen.then(|| now + self.config.probe.settle);
            u.phase = UploadPhase::Verifying(Probe::new(due, u.max_seq));
            t.common.last_progress = now;
            self.emit_progress(id, now);
            return;
        }
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

    /// The size probe of upload `id`, if one may go now: nothing of the file
    /// in flight, the settle delay over, and no download of the same name
    /// in this engine (the probe resets the server's per-name download
    /// state, which that download relies on).
    fn probe_next(&mut self, id: FileId, now: Instant, out: &mut Vec<u8>) -> Option<Transmit> {
        let in_flight = self.in_flight.count(id);
        let u = self.transfers.get(&id)?.upload()?;
        let (UploadPhase::Probing(p) | UploadPhase::Verifying(p)) = u.phase else {
            return None;
        };
        if in_flight > 0 || p.due.is_some() {
            return None;
        }
        if self.downloading(&u.spec.name) {
            let name = u.spec.name.clone();
            let u = self.transfers.get_mut(&id)?.upload_mut()?;
            if let UploadPhase::Probing(_) = u.phase {
                tracing::info!(%name, "a download of the same name is going: restarting from seq 1 instead of probing");
                u.phase = UploadPhase::RestartWhenDrained;
                self.stats.restarts += 1;
                return self.upload_next(id, now, out);
            }
            return None; // the verifying probe waits for that download to end
        }
        let req = DownChunkReq {
            name: u.spec.name.clone(),
            seq: 1,
            trans_size: StrU64(0),
            total_size: StrU64(u.size),
            token: u.spec.token.clone(),
            // The server reads `<out>/<sender_id>/<name>`; uploads go to `<out>/<uid>/<name>`.
            sender_id: u.spec.uid,
            receiver_id: u.spec.receiver,
            message_id: u.spec.message_id,
            uid: u.spec.uid,
        };
        let body = serde_json::to_vec(&req).expect("plain struct serializes");
        let before = out.len();
        frame::encode(MsgId::IMG_CHAT_DOWN_REQ, &body, out);
        let u = self.transfers.get_mut(&id)?.upload_mut()?;
        if let UploadPhase::Probing(p) | UploadPhase::Verifying(p) = &mut u.phase {
            p.sent = p.sent.saturating_add(1);
        }
        self.stats.probes += 1;
        let request = Request {
            transfer: id,
            seq: 0,
            sent_at: now,
            last: false,
            kind: RequestKind::UploadProbe,
        };
        Some(self.sent(request, MsgId::IMG_CHAT_DOWN_REQ, out.len() - before))
    }

    /// Whether a download in this engine is using the server's download
    /// state of `name`.
    fn downloading(&self, name: &str) -> bool {
        self.transfers.values().any(|t| {
            !t.common.state.is_terminal()
                && t.download()
                    .and_then(|d| d.info())
                    .is_some_and(|i| i.server_name == name)
        })
    }

    /// The answer (1048) to a size probe of upload `request.transfer`.
    pub(super) fn on_probe_reply(&mut self, request: Request, rsp: &DownChunkRsp, now: Instant) {
        let id = request.transfer;
        if self.is_terminal(id) {
            return;
        }
        let held = self.read_probe(id, rsp);
        let next = now + self.config.probe.settle;
        let Some(t) = self.transfers.get_mut(&id) else {
            return;
        };
        let name = t.common.name.clone();
        let Direction::Upload(u) = &mut t.dir else {
            return;
        };
        match u.phase {
            UploadPhase::Probing(p) => match u.probed(p, held, next) {
                ProbeStep::Again(p) => u.phase = UploadPhase::Probing(p),
                ProbeStep::Resume(k) => {
                    u.resume_at(k);
                    t.common.last_progress = now;
                    self.stats.probe_resumes += 1;
                    tracing::info!(%name, stored_chunks = k, probes = p.sent, "the server holds exactly the first chunks: continuing after them");
                    if k == u.max_seq {
                        self.complete_upload(id, now);
                    } else {
                        self.emit_progress(id, now);
                    }
                }
                ProbeStep::Restart(why) => {
                    tracing::info!(%name, reason = %why, "size probe: restarting from seq 1");
                    u.phase = UploadPhase::RestartWhenDrained;
                    self.stats.restarts += 1;
                }
            },
            UploadPhase::Verifying(_) => match held {
                Ok(size) if size == u.size => self.complete_upload(id, now),
                Ok(size) => {
                    let message = format!(
                        "{name}: every chunk was acknowledged, but the server holds {size} bytes of this \
                         {}-byte file: its stored copy is corrupt (bytes of a dead connection appended late?); \
                         not sent again, as the server already took the last chunk",
                        u.size
                    );
                    self.fail(id, Failure::BadReply { seq: 0, message }, now);
                }
                Err(why) => {
                    let message = format!(
                        "{name}: every chunk was acknowledged, but the stored size could not be verified: {why}"
                    );
                    self.fail(id, Failure::BadReply { seq: 0, message }, now);
                }
            },
            // A probe from before a fallback or a cut: its answer says nothing now.
            _ => self.stats.stale_replies += 1,
        }
    }

    /// The stored size a probe's answer reports, or why it reports none. A
    /// hostile answer is refused, never trusted: the data must be the file's
    /// own first bytes, of the length its size implies.
    fn read_probe(&mut self, id: FileId, rsp: &DownChunkRsp) -> std::result::Result<u64, String> {
        if !rsp.error.is_success() {
            return Err(format!(
                "the server answered the probe with error {}",
                rsp.error
            ));
        }
        let (Some(data), Some(seq)) = (rsp.data.as_deref(), rsp.seq) else {
            return Err("the probe's answer has no data: the server holds no such file, or an \
                        empty one (or could not read it; the deployed server reports all of these as error 0)"
                .into());
        };
        if rsp.name.is_none() {
            return Err("the probe's answer names no file".into());
        }
        if seq != 1 {
            return Err(format!(
                "the probe asked seq 1, the answer is for seq {seq}"
            ));
        }
        let Some(total) = rsp.total_size.map(|t| t.0) else {
            return Err("the probe's answer has no total_size".into());
        };
        if data.len() > crate::protocol::chunk::base64_len(DOWNLOAD_CHUNK as usize) {
            return Err(format!(
                "the probe's answer has {} bytes of base64, more than a chunk",
                data.len()
            ));
        }
        let mut got = vec![0u8; data.len() / 4 * 3 + 3];
        let n = base64::engine::general_purpose::STANDARD
            .decode_slice(data, &mut got)
            .map_err(|e| format!("the probe's answer has invalid base64: {e}"))?;
        let expected = total.min(DOWNLOAD_CHUNK);
        if n as u64 != expected {
            return Err(format!(
                "the probe's answer has {n} bytes of data for a {total}-byte file"
            ));
        }
        let u = self
            .transfers
            .get_mut(&id)
            .and_then(|t| t.upload_mut())
            .ok_or("not an upload")?;
        let ours = (n as u64).min(u.size) as usize;
        let mut mine = vec![0u8; ours];
        if let Some(source) = u.source.as_mut() {
            source
                .read_at(0, &mut mine)
                .map_err(|e| format!("{}: {e}", u.spec.path.display()))?;
        }
        if got[..ours] != mine[..] {
            return Err("the stored file's first bytes are not this file's".into());
        }
        Ok(total)
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
