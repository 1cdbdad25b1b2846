//! The upload engine: a pure state machine, no IO, no clock, no threads.
//!
//! It replaces the chunk bookkeeping of the Qt client's `FileTcpMgr`:
//!
//! | Qt client | engine |
//! | --- | --- |
//! | `AddTransFile` | [`Engine::add_file`] |
//! | `BatchSend` | [`Engine::poll_transmit`] (one frame per call, while the window allows) |
//! | `OnUploadRsp` (1042/1038/1044) | [`Engine::handle_frame`] |
//! | pause / resume / cancel | [`Engine::pause`], [`Engine::resume`], [`Engine::cancel`] |
//!
//! Time comes in as `now`, replies come in as frames, frames go out into the
//! caller's buffer, and what the application should know comes out of
//! [`Engine::poll_event`]. [`Engine::poll_timeout`] says when to call
//! [`Engine::handle_timeout`]. File bytes are read through a [`ChunkSource`]
//! one chunk at a time, when that chunk is sent; opening and hashing files
//! stay at the edge (see [`FileSource`], [`md5_hex`]).
//!
//! # Invariants
//! * At most `window.cwnd()` chunk requests are unanswered at any time, counted
//!   across all files on the connection.
//! * A file's first chunk goes as 1041 and nothing else of that file goes out
//!   before its success reply; later chunks go as 1037, the first one after a
//!   resume as 1043 (never for files over `i32::MAX` bytes, which would crash
//!   the deployed server, and never for the last chunk, whose 1044 the deployed
//!   server holds back behind a call to the ChatServer).
//! * On one connection no seq of a file is sent twice. Pause then resume
//!   continues after the highest chunk sent, so in-flight chunks are never
//!   duplicated (the deployed client re-sends them, corrupting the file on its
//!   appending server).
//! * A file completes if and only if every seq `1..=max_seq` was acknowledged.
//! * Every upload request gets exactly one reply. The deployed server's error
//!   replies carry no name and no seq, and may overtake earlier success
//!   replies; they are attributed by elimination (see [`Engine::handle_frame`]),
//!   never by guessing. Replies for unknown names or seqs are counted and ignored.
//!
//! # After a lost connection
//! [`Engine::connection_lost`] forgets every unanswered request and plans each
//! unfinished file from its acknowledged record:
//! * nothing acknowledged yet: from seq 1 (1041, which truncates on the server);
//! * [`ServerStorage::Positional`]: from the first unacknowledged seq (1043, or
//!   1037 for files of 2 GiB or more), skipping chunks acknowledged beyond it;
//! * [`ServerStorage::Appending`] (the deployed server): exactly from the next
//!   seq if the file had no unanswered chunk when the connection went (a paused
//!   and drained file, say); otherwise from seq 1, because the server may
//!   already have appended chunks whose replies were lost, and there is no
//!   message to ask it how much it holds. Resuming "from the first
//!   unacknowledged seq" there could silently duplicate bytes; restarting costs
//!   time but keeps the stored file exact.

mod source;
mod types;
mod window;

#[doc(hidden)]
pub mod sim;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

pub use source::{md5_hex, md5_of, ChunkSource, FileSource, MemorySource};
pub use types::*;
pub use window::{Window, WindowPolicy};

use crate::error::{Error, Result};
use crate::protocol::messages::UploadRsp;
use crate::protocol::{ChunkFrame, ErrorCode, MsgId, MAX_1043_SIZE};

/// How often one file may start again from seq 1 after the server answered
/// 1012 (no record); past that the 1012 fails it.
const MAX_LOST_RECORD_RESTARTS: u8 = 3;

/// One request on the wire that has not been answered.
#[derive(Debug, Clone, Copy)]
struct Request {
    file: FileId,
    seq: u32,
    sent_at: Instant,
    last: bool,
}

/// An error reply not yet attributed to a request.
#[derive(Debug, Clone, Copy)]
struct PendingError {
    code: ErrorCode,
    /// The request it answers was numbered below this (sent before it arrived).
    bound: u64,
}

#[derive(Debug, Default)]
struct ProgressState {
    dirty: bool,
    last_emit_at: Option<Instant>,
    last_emit_bytes: u64,
    rate: f64,
}

struct Upload {
    id: FileId,
    spec: FileSpec,
    md5: String,
    /// `None` once the transfer ended: the file handle is closed at once.
    source: Option<Box<dyn ChunkSource>>,
    size: u64,
    chunk: u32,
    max_seq: u32,
    state: FileState,
    /// The next seq to send on this connection.
    next_seq: u32,
    acked_prefix: u32,
    /// Acknowledged seqs above `acked_prefix + 1`; bounded by the window.
    acked_beyond: BTreeSet<u32>,
    acked_bytes: u64,
    /// seq → request number, for this file's unanswered requests.
    in_flight: BTreeMap<u32, u64>,
    /// The next chunk (not seq 1) goes as 1043.
    resume_pending: bool,
    /// Start again from seq 1 once nothing is in flight.
    restart_pending: bool,
    /// Restarts from seq 1 because the server had lost its record (1012).
    lost_record_restarts: u8,
    burst: u32,
    progress: ProgressState,
    started_at: Option<Instant>,
}

impl Upload {
    fn chunk_len(&self, seq: u32) -> usize {
        let offset = (seq as u64 - 1) * self.chunk as u64;
        (self.size.saturating_sub(offset)).min(self.chunk as u64) as usize
    }

    fn first_acked(&self) -> bool {
        self.acked_prefix >= 1
    }

    fn weight(&self) -> u32 {
        1 + (self.spec.priority as u32).min(15)
    }

    fn is_acked(&self, seq: u32) -> bool {
        seq <= self.acked_prefix || self.acked_beyond.contains(&seq)
    }

    /// Records an acknowledgement; false if `seq` was already acknowledged.
    fn record_ack(&mut self, seq: u32) -> bool {
        if self.is_acked(seq) {
            return false;
        }
        self.acked_bytes += self.chunk_len(seq) as u64;
        if seq == self.acked_prefix + 1 {
            self.acked_prefix = seq;
            while self.acked_beyond.remove(&(self.acked_prefix + 1)) {
                self.acked_prefix += 1;
            }
        } else {
            self.acked_beyond.insert(seq);
        }
        true
    }

    /// The seq this file would send next, if it may send now.
    fn next_sendable(&mut self) -> Option<u32> {
        if self.state != FileState::Sending || self.source.is_none() {
            return None;
        }
        if self.restart_pending {
            if !self.in_flight.is_empty() {
                return None;
            }
            self.reset_to_start();
        }
        if self.next_seq == 1 {
            return Some(1);
        }
        if !self.first_acked() {
            return None; // nothing but seq 1 before its 1042
        }
        while self.next_seq <= self.max_seq && self.is_acked(self.next_seq) {
            self.next_seq += 1;
        }
        (self.next_seq <= self.max_seq).then_some(self.next_seq)
    }

    fn reset_to_start(&mut self) {
        self.restart_pending = false;
        self.next_seq = 1;
        self.acked_prefix = 0;
        self.acked_beyond.clear();
        self.acked_bytes = 0;
        self.resume_pending = false;
        self.progress.dirty = true;
    }

    fn status(&self) -> FileStatus {
        FileStatus {
            name: self.spec.name.clone(),
            state: self.state,
            total: self.size,
            acked: self.acked_bytes,
            max_seq: self.max_seq,
            acked_prefix: self.acked_prefix,
            next_seq: self.next_seq,
            in_flight: self.in_flight.len(),
            md5: self.md5.clone(),
        }
    }
}

/// The sans-IO upload engine for one ResourceServer connection.
pub struct Engine {
    config: EngineConfig,
    files: HashMap<FileId, Upload>,
    names: HashMap<String, FileId>,
    next_file: u64,
    /// Sending files in round-robin order.
    active: VecDeque<FileId>,
    /// Files waiting for a sending slot, in arrival order (picked by priority).
    queue: Vec<FileId>,
    connected: bool,
    window: Window,
    next_req: u64,
    unanswered: BTreeMap<u64, Request>,
    pending_errors: VecDeque<PendingError>,
    /// Unanswered requests whose error reply is known to have arrived
    /// (a later seq of the same name was acknowledged; replies per name are ordered).
    known_errored: BTreeSet<u64>,
    stall_reported: bool,
    /// Send nothing new (a graceful shutdown waits for in-flight replies).
    draining: bool,
    events: VecDeque<Event>,
    stats: Stats,
    scratch: Vec<u8>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            window: Window::new(config.window),
            config,
            files: HashMap::new(),
            names: HashMap::new(),
            next_file: 1,
            active: VecDeque::new(),
            queue: Vec::new(),
            connected: false,
            next_req: 0,
            unanswered: BTreeMap::new(),
            pending_errors: VecDeque::new(),
            known_errored: BTreeSet::new(),
            stall_reported: false,
            draining: false,
            events: VecDeque::new(),
            stats: Stats::default(),
            scratch: Vec::new(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    // ------------------------------------------------------------ getters

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Requests sent and not yet answered, across all files.
    pub fn in_flight(&self) -> usize {
        self.unanswered.len()
    }

    pub fn window(&self) -> &Window {
        &self.window
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn file_status(&self, name: &str) -> Option<FileStatus> {
        self.names.get(name).map(|id| self.files[id].status())
    }

    pub fn name_of(&self, file: FileId) -> Option<&str> {
        self.files.get(&file).map(|f| f.spec.name.as_str())
    }

    /// Every registered transfer, in no particular order.
    pub fn statuses(&self) -> Vec<FileStatus> {
        self.files.values().map(Upload::status).collect()
    }

    /// True when no transfer is waiting, sending or paused.
    pub fn is_idle(&self) -> bool {
        self.files.values().all(|f| f.state.is_terminal())
    }

    // ------------------------------------------------------------ app mutators

    /// `AddTransFile`: registers an upload. Nothing is queued on error.
    ///
    /// Without `spec.md5` the md5 is computed here by reading the source in
    /// blocks (call it off the UI thread for big files, or pass a known md5).
    pub fn add_file(
        &mut self,
        spec: FileSpec,
        source: Box<dyn ChunkSource>,
        now: Instant,
    ) -> Result<FileId> {
        self.add_inner(spec, source, None, now)
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
        self.add_inner(spec, source, Some(acked), now)
    }

    /// The acknowledged record of a transfer (for a journal).
    pub fn ack_record(&self, name: &str) -> Option<AckRecord> {
        let f = &self.files[self.names.get(name)?];
        Some(AckRecord {
            acked_prefix: f.acked_prefix,
            acked_beyond: f.acked_beyond.iter().copied().collect(),
            in_flight: f.in_flight.len(),
        })
    }

    fn add_inner(
        &mut self,
        spec: FileSpec,
        mut source: Box<dyn ChunkSource>,
        resume: Option<&AckRecord>,
        now: Instant,
    ) -> Result<FileId> {
        validate_name(&spec.name)?;
        if let Some(old) = self.names.get(&spec.name) {
            let old = &self.files[old];
            if !old.state.is_terminal() || !old.in_flight.is_empty() {
                return Err(Error::DuplicateName { name: spec.name });
            }
            let old = old.id;
            self.files.remove(&old);
        }
        let chunk = spec.chunk_size.unwrap_or(self.config.chunk_size);
        if chunk == 0 {
            return Err(Error::ZeroChunk { name: spec.name });
        }
        let size = source.len();
        // seq travels as an int the server reads with asInt.
        let max_seq = size.div_ceil(chunk as u64).max(1);
        if max_seq > i32::MAX as u64 {
            return Err(Error::TooManyChunks {
                name: spec.name,
                size,
                chunk,
                max: i32::MAX as u64,
            });
        }
        let max_seq = max_seq as u32;
        let md5 = match &spec.md5 {
            Some(m) if m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()) => {
                m.to_ascii_lowercase()
            }
            Some(m) => {
                return Err(Error::InvalidMd5 {
                    name: spec.name.clone(),
                    md5: m.clone(),
                })
            }
            None => md5_hex(source.as_mut()).map_err(|e| Error::Source {
                path: spec.path.clone(),
                source: e,
            })?,
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
        if worst > self.config.max_body_len {
            return Err(Error::ChunkTooLarge {
                name: spec.name,
                chunk,
                body_len: worst,
                limit: self.config.max_body_len,
            });
        }
        let id = FileId(self.next_file);
        self.next_file += 1;
        let name = spec.name.clone();
        self.files.insert(
            id,
            Upload {
                id,
                spec,
                md5,
                source: Some(source),
                size,
                chunk,
                max_seq,
                state: FileState::Queued,
                next_seq: 1,
                acked_prefix: 0,
                acked_beyond: BTreeSet::new(),
                acked_bytes: 0,
                in_flight: BTreeMap::new(),
                resume_pending: false,
                restart_pending: false,
                lost_record_restarts: 0,
                burst: 0,
                progress: ProgressState::default(),
                started_at: None,
            },
        );
        if let Some(rec) = resume.filter(|r| r.acked_prefix >= 1) {
            let f = self.files.get_mut(&id).expect("just inserted");
            for seq in (1..=rec.acked_prefix.min(max_seq)).chain(rec.acked_beyond.iter().copied()) {
                if seq <= max_seq {
                    f.record_ack(seq);
                }
            }
            f.next_seq = f.acked_prefix + 1;
            f.resume_pending = true;
        }
        let hold = self.files[&id].spec.hold;
        self.names.insert(name.clone(), id);
        if hold {
            self.files.get_mut(&id).expect("just inserted").state = FileState::Paused;
        } else {
            self.queue.push(id);
        }
        self.events.push_back(Event::StateChanged {
            name,
            state: if hold {
                FileState::Paused
            } else {
                FileState::Queued
            },
        });
        self.promote(now);
        Ok(id)
    }

    /// Stops issuing new chunks of `name`; chunks in flight drain normally.
    pub fn pause(&mut self, name: &str, now: Instant) -> Result<()> {
        let id = self.lookup(name)?;
        let f = self.files.get_mut(&id).expect("names and files agree");
        match f.state {
            FileState::Paused => return Ok(()),
            FileState::Queued | FileState::Sending => {}
            state => {
                return Err(Error::WrongState {
                    name: name.into(),
                    action: "pause",
                    state,
                })
            }
        }
        self.queue.retain(|q| *q != id);
        self.set_state(id, FileState::Paused);
        self.promote(now);
        Ok(())
    }

    /// Continues a paused transfer after the highest chunk already sent.
    pub fn resume(&mut self, name: &str, now: Instant) -> Result<()> {
        let id = self.lookup(name)?;
        let f = self.files.get_mut(&id).expect("names and files agree");
        match f.state {
            FileState::Paused => {}
            FileState::Queued | FileState::Sending => return Ok(()),
            state => {
                return Err(Error::WrongState {
                    name: name.into(),
                    action: "resume",
                    state,
                })
            }
        }
        if f.next_seq > 1 {
            f.resume_pending = true;
        }
        self.queue.push(id);
        self.set_state(id, FileState::Queued);
        self.promote(now);
        Ok(())
    }

    /// Abandons a transfer; its queued chunks are dropped at once.
    pub fn cancel(&mut self, name: &str, now: Instant) -> Result<()> {
        let id = self.lookup(name)?;
        match self.files[&id].state {
            FileState::Cancelled => return Ok(()),
            FileState::Completed | FileState::Failed => {
                return Err(Error::WrongState {
                    name: name.into(),
                    action: "cancel",
                    state: self.files[&id].state,
                })
            }
            _ => {}
        }
        let f = self.files.get_mut(&id).expect("names and files agree");
        f.source = None;
        tracing::info!(
            name,
            acked = f.acked_bytes,
            total = f.size,
            "upload cancelled"
        );
        self.queue.retain(|q| *q != id);
        self.set_state(id, FileState::Cancelled);
        self.promote(now);
        Ok(())
    }

    /// Stops (or restarts) issuing new chunks for every file, without
    /// changing their states; in-flight chunks still get their replies. A
    /// graceful shutdown drains this way so that the acknowledged record is exact.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    // ------------------------------------------------------------ connection

    /// A connection to the server is up: sending may start.
    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        self.stall_reported = false;
        self.window.reset();
        self.promote(now);
    }

    /// The connection is gone: every unanswered request is forgotten and each
    /// unfinished file is planned again from its acknowledged record (see the
    /// module docs).
    pub fn connection_lost(&mut self, _now: Instant) {
        self.connected = false;
        self.stall_reported = false;
        let mut uncertain = BTreeSet::new();
        for req in std::mem::take(&mut self.unanswered).into_values() {
            uncertain.insert(req.file);
        }
        self.pending_errors.clear();
        self.known_errored.clear();
        let storage = self.config.server_storage;
        let mut restarted = 0;
        for f in self.files.values_mut() {
            f.in_flight.clear();
            if f.state.is_terminal() || f.next_seq == 1 {
                continue;
            }
            f.burst = 0;
            let restart = !f.first_acked()
                || (storage == ServerStorage::Appending && uncertain.contains(&f.id));
            if restart {
                if f.first_acked() {
                    restarted += 1;
                }
                f.restart_pending = true;
            } else {
                f.next_seq = f.acked_prefix + 1;
                f.resume_pending = true;
            }
        }
        self.stats.restarts += restarted;
        self.window.reset();
    }

    // ------------------------------------------------------------ output

    /// `BatchSend`: appends the next frame to `out` if the window and the
    /// files allow; `None` when nothing may go now. Call it until `None`.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<Transmit> {
        if !self.connected || self.draining {
            return None;
        }
        let files = &self.files;
        self.active
            .retain(|id| files[id].state == FileState::Sending);
        let mut tries = self.active.len();
        while tries > 0 {
            if self.unanswered.len() >= self.window.cwnd() as usize {
                return None;
            }
            tries -= 1;
            let id = *self.active.front()?;
            let held_back_before = self.pending_errors.back().map(|e| e.bound);
            let f = self.files.get_mut(&id).expect("active files exist");
            let seq = match f.next_sendable() {
                Some(seq) => seq,
                None => {
                    f.burst = 0;
                    self.active.rotate_left(1);
                    continue;
                }
            };
            // While an error reply is unattributed, a file that may be its
            // owner does not send its last chunk (which would make the
            // deployed server mark the message uploaded).
            if seq == f.max_seq
                && held_back_before.is_some_and(|bound| f.in_flight.values().any(|r| *r < bound))
            {
                f.burst = 0;
                self.active.rotate_left(1);
                continue;
            }
            match self.send_chunk(id, seq, now, out) {
                Some(t) => {
                    let f = self.files.get_mut(&id).expect("active files exist");
                    f.burst += 1;
                    if f.burst >= f.weight() {
                        f.burst = 0;
                        self.active.rotate_left(1);
                    }
                    return Some(t);
                }
                None => continue, // the file failed reading; try the next
            }
        }
        None
    }

    fn send_chunk(
        &mut self,
        id: FileId,
        seq: u32,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<Transmit> {
        let f = self.files.get_mut(&id).expect("caller checked");
        let len = f.chunk_len(seq);
        let offset = (seq as u64 - 1) * f.chunk as u64;
        self.scratch.resize(len, 0);
        let source = f.source.as_mut().expect("sendable files have a source");
        if let Err(e) = source.read_at(offset, &mut self.scratch[..len]) {
            let message = format!("{}: {e}", f.spec.path.display());
            self.fail(id, Failure::Source { message }, now);
            return None;
        }
        let last = seq == f.max_seq;
        let msg_id = if seq == 1 {
            MsgId::FILE_INFO_SYNC_REQ
        } else if f.resume_pending && f.size <= MAX_1043_SIZE && !last {
            MsgId::IMG_CHAT_CONTINUE_UPLOAD_REQ
        } else {
            MsgId::IMG_CHAT_UPLOAD_REQ
        };
        if seq > 1 {
            f.resume_pending = false;
        }
        let frame = ChunkFrame {
            id: msg_id,
            name: &f.spec.name,
            md5: &f.md5,
            seq,
            trans_size: offset + len as u64,
            total_size: f.size,
            last,
            last_seq: f.max_seq,
            uid: f.spec.uid,
            sender: f.spec.sender,
            receiver: f.spec.receiver,
            message_id: f.spec.message_id,
            token: &f.spec.token,
        };
        let before = out.len();
        frame.encode(&self.scratch[..len], out);
        let req = self.next_req;
        self.next_req += 1;
        f.in_flight.insert(seq, req);
        f.next_seq = seq + 1;
        f.started_at.get_or_insert(now);
        self.unanswered.insert(
            req,
            Request {
                file: id,
                seq,
                sent_at: now,
                last,
            },
        );
        self.window.on_send(self.unanswered.len() as u32);
        let len = out.len() - before;
        self.stats.requests_sent += 1;
        self.stats.bytes_sent += len as u64;
        Some(Transmit {
            file: id,
            id: msg_id,
            seq,
            last,
            len,
        })
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ack = if self.stall_reported {
            None
        } else {
            self.unanswered
                .values()
                .map(|r| r.sent_at)
                .min()
                .map(|t| t + self.config.ack_timeout)
        };
        let progress = self
            .files
            .values()
            .filter(|f| f.progress.dirty)
            .filter_map(|f| f.progress.last_emit_at)
            .map(|t| t + self.config.progress_interval)
            .min();
        match (ack, progress) {
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        }
    }

    /// Fires due timers: coalesced progress, and the ack timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<FileId> = self
            .files
            .values()
            .filter(|f| {
                f.progress.dirty
                    && f.progress
                        .last_emit_at
                        .is_some_and(|t| now >= t + self.config.progress_interval)
            })
            .map(|f| f.id)
            .collect();
        for id in due {
            self.emit_progress(id, now);
        }
        if self.stall_reported {
            return;
        }
        let Some(oldest) = self.unanswered.values().min_by_key(|r| r.sent_at).copied() else {
            return;
        };
        let waited = now.saturating_duration_since(oldest.sent_at);
        if waited < self.config.ack_timeout {
            return;
        }
        self.stall_reported = true;
        self.events.push_back(Event::ConnectionStalled { waited });
        // Every chunk of these files was sent and only the last is unconfirmed:
        // re-sending to an appending server could duplicate it, so stop here.
        if self.config.server_storage == ServerStorage::Appending {
            let unconfirmed: Vec<(FileId, u32)> = self
                .unanswered
                .values()
                .filter(|r| {
                    r.last && now.saturating_duration_since(r.sent_at) >= self.config.ack_timeout
                })
                .map(|r| (r.file, r.seq))
                .collect();
            for (id, seq) in unconfirmed {
                let f = &self.files[&id];
                if !f.state.is_terminal() && f.acked_prefix + 1 == seq {
                    self.fail(id, Failure::Unconfirmed { seq, waited }, now);
                }
            }
        }
    }

    // ------------------------------------------------------------ input

    /// `OnUploadRsp`: consumes one frame from the server. Upload replies
    /// (1042/1038/1044) are handled; other ids are counted and ignored.
    ///
    /// Attribution of error replies without name and seq, by elimination:
    /// every request gets exactly one reply, error replies come in request
    /// order among themselves, and replies for one name come in order. An
    /// error is attributed when (a) only one unanswered request was sent before
    /// it arrived, or (b) the unanswered requests sent before the newest pending
    /// error are exactly as many as the pending errors (all of them are errors,
    /// matched in order), or (c) the oldest candidate is known to have errored
    /// because a later seq of its file was acknowledged. Until then a candidate
    /// file holds back its last chunk.
    pub fn handle_frame(&mut self, now: Instant, id: MsgId, body: &[u8]) {
        if !id.is_upload_reply() {
            self.stats.ignored_frames += 1;
            return;
        }
        let rsp = match UploadRsp::decode(id, body) {
            Ok(r) => r,
            Err(e) => return self.violation(format!("undecodable reply: {e}")),
        };
        if rsp.error.is_success() {
            let (Some(name), Some(seq)) = (rsp.name.as_deref(), rsp.seq) else {
                return self.violation(format!("success reply {id} without name or seq"));
            };
            self.on_success(now, name, seq);
        } else {
            self.stats.error_replies += 1;
            // The reference server names the request; the deployed one does not.
            if let (Some(name), Some(seq)) = (rsp.name.as_deref(), rsp.seq) {
                match self
                    .names
                    .get(name)
                    .and_then(|f| self.files[f].in_flight.get(&seq))
                {
                    Some(&req) => self.attribute(req, rsp.error, now),
                    None => self.stats.unknown_replies += 1,
                }
            } else {
                self.pending_errors.push_back(PendingError {
                    code: rsp.error,
                    bound: self.next_req,
                });
            }
        }
        self.resolve_errors(now);
    }

    fn on_success(&mut self, now: Instant, name: &str, seq: u32) {
        let Some(&id) = self.names.get(name) else {
            self.stats.unknown_replies += 1;
            return;
        };
        let f = self.files.get_mut(&id).expect("names and files agree");
        let Some(req) = f.in_flight.remove(&seq) else {
            self.stats.duplicate_acks += 1;
            return;
        };
        self.stats.acks += 1;
        let sent = self
            .unanswered
            .remove(&req)
            .expect("in-flight requests are unanswered");
        // Replies for one name are ordered: an earlier request of this file
        // still unanswered got an error reply that already arrived.
        for r in f.in_flight.values() {
            if *r < req {
                self.known_errored.insert(*r);
            }
        }
        self.window.on_ack(
            now,
            now.saturating_duration_since(sent.sent_at),
            req,
            self.next_req,
        );
        if f.state.is_terminal() {
            return;
        }
        if !f.record_ack(seq) {
            self.stats.duplicate_acks += 1;
            return;
        }
        f.progress.dirty = true;
        if f.acked_prefix == f.max_seq {
            self.complete(id, now);
        } else if f
            .progress
            .last_emit_at
            .is_none_or(|t| now >= t + self.config.progress_interval)
        {
            self.emit_progress(id, now);
        }
    }

    fn resolve_errors(&mut self, now: Instant) {
        while let Some(head) = self.pending_errors.front().copied() {
            let candidates: Vec<u64> = self
                .unanswered
                .range(..head.bound)
                .map(|(r, _)| *r)
                .collect();
            if candidates.is_empty() {
                // An error for nothing we have: a misbehaving server.
                self.pending_errors.pop_front();
                self.stats.unknown_replies += 1;
                continue;
            }
            if candidates.len() == 1 || self.known_errored.contains(&candidates[0]) {
                self.pending_errors.pop_front();
                self.attribute(candidates[0], head.code, now);
                continue;
            }
            let newest = self.pending_errors.back().expect("non-empty").bound;
            let all: Vec<u64> = self.unanswered.range(..newest).map(|(r, _)| *r).collect();
            if all.len() == self.pending_errors.len() {
                for (req, err) in all
                    .into_iter()
                    .zip(std::mem::take(&mut self.pending_errors))
                {
                    self.attribute(req, err.code, now);
                }
            }
            break;
        }
    }

    fn attribute(&mut self, req: u64, code: ErrorCode, now: Instant) {
        let Some(r) = self.unanswered.remove(&req) else {
            return;
        };
        self.known_errored.remove(&req);
        let f = self
            .files
            .get_mut(&r.file)
            .expect("requests name known files");
        f.in_flight.remove(&r.seq);
        if f.state.is_terminal() || f.restart_pending {
            return; // an old request of a file that ended or starts again
        }
        if code == ErrorCode::FileNotExists
            && r.seq != 1
            && f.lost_record_restarts < MAX_LOST_RECORD_RESTARTS
        {
            // The server has no record of this upload (expired, lost in a
            // restart, or never seen on this path): what it holds is orphaned,
            // and a 1041 (which truncates) starts it cleanly again.
            f.lost_record_restarts += 1;
            f.restart_pending = true;
            self.stats.restarts += 1;
            tracing::info!(name = %f.spec.name, seq = r.seq, "server has no record of the upload; restarting from seq 1");
            return;
        }
        self.fail(r.file, Failure::Server { code, seq: r.seq }, now);
    }

    fn violation(&mut self, reason: String) {
        self.stats.malformed_replies += 1;
        tracing::warn!(%reason, "protocol violation from server");
        self.events.push_back(Event::ProtocolViolation { reason });
    }

    // ------------------------------------------------------------ internals

    fn lookup(&self, name: &str) -> Result<FileId> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownName { name: name.into() })
    }

    fn set_state(&mut self, id: FileId, state: FileState) {
        let f = self.files.get_mut(&id).expect("caller checked");
        if f.state == state {
            return;
        }
        f.state = state;
        self.events.push_back(Event::StateChanged {
            name: f.spec.name.clone(),
            state,
        });
    }

    /// Fills free sending slots from the queue, highest priority first.
    fn promote(&mut self, _now: Instant) {
        let files = &self.files;
        self.active
            .retain(|id| files[id].state == FileState::Sending);
        while self.active.len() < self.config.max_active_files.max(1) && !self.queue.is_empty() {
            let best = (0..self.queue.len())
                .max_by_key(|&i| {
                    (
                        self.files[&self.queue[i]].spec.priority,
                        std::cmp::Reverse(i),
                    )
                })
                .expect("queue is not empty");
            let id = self.queue.remove(best);
            self.active.push_back(id);
            self.set_state(id, FileState::Sending);
        }
    }

    fn emit_progress(&mut self, id: FileId, now: Instant) {
        let f = self.files.get_mut(&id).expect("caller checked");
        let p = &mut f.progress;
        if let Some(t) = p.last_emit_at {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let inst = f.acked_bytes.saturating_sub(p.last_emit_bytes) as f64 / dt;
                p.rate = if p.rate == 0.0 {
                    inst
                } else {
                    0.5 * p.rate + 0.5 * inst
                };
            }
        }
        p.dirty = false;
        p.last_emit_at = Some(now);
        p.last_emit_bytes = f.acked_bytes;
        self.events.push_back(Event::Progress {
            name: f.spec.name.clone(),
            acked: f.acked_bytes,
            total: f.size,
            rate: p.rate,
        });
    }

    fn complete(&mut self, id: FileId, now: Instant) {
        self.emit_progress(id, now);
        let f = self.files.get_mut(&id).expect("caller checked");
        f.source = None;
        let secs = f
            .started_at
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        tracing::info!(
            name = %f.spec.name,
            bytes = f.size,
            secs,
            mb_s = if secs > 0.0 { f.size as f64 / secs / 1e6 } else { 0.0 },
            md5 = %f.md5,
            "upload complete"
        );
        let (name, md5, bytes) = (f.spec.name.clone(), f.md5.clone(), f.size);
        self.set_state(id, FileState::Completed);
        self.events.push_back(Event::Completed { name, md5, bytes });
        self.promote(now);
    }

    fn fail(&mut self, id: FileId, failure: Failure, now: Instant) {
        let f = self.files.get_mut(&id).expect("caller checked");
        if f.state.is_terminal() {
            return;
        }
        f.source = None;
        tracing::info!(name = %f.spec.name, acked = f.acked_bytes, total = f.size, %failure, "upload failed");
        let name = f.spec.name.clone();
        self.queue.retain(|q| *q != id);
        self.set_state(id, FileState::Failed);
        self.events.push_back(Event::Failed { name, failure });
        self.promote(now);
    }
}

/// Names become server-side file names: refuse what could escape a directory.
fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.contains('/') || name.contains('\\') {
        "contains a path separator"
    } else if name.contains("..") {
        "contains `..`"
    } else if name.contains('\0') {
        "contains NUL"
    } else if name.len() > 255 {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.into(),
        reason,
    })
}

#[cfg(test)]
mod tests;
