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
//! | chat file download (1045/1047) | [`Engine::add_download`] (see `download.rs`) |
//! | avatar upload (1031) / download (1033) | [`FileSpec::avatar`], [`DownloadSpec::avatar`] |
//!
//! Uploads and downloads are transfers of one kind: one queue, one window
//! (round-robin, weighted by priority), one stream of events.
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

mod download;
mod source;
mod types;
mod window;

#[doc(hidden)]
#[cfg(any(test, feature = "sim"))]
pub mod sim;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

pub use download::{
    unsafe_name, AvatarRef, ChunkSink, DownloadSpec, FileSink, MemorySink, DOWNLOAD_CHUNK,
};
pub use source::{md5_hex, md5_of, ChunkSource, FileSource, MemorySource};
pub use types::*;
pub use window::{Window, WindowPolicy};

use crate::error::{Error, Result};
use crate::protocol::messages::{
    DownChunkReq, DownChunkRsp, DownInfoReq, DownInfoRsp, StrU64, UploadRsp,
};
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
    kind: Kind,
}

/// What a request was; replies of each kind are attributed separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Upload,
    DownInfo,
    DownChunk,
}

/// What the engine's generic bookkeeping (queue, states, progress) needs of
/// an upload or a download.
trait Transfer {
    fn name(&self) -> &str;
    fn state(&self) -> FileState;
    fn state_mut(&mut self) -> &mut FileState;
    fn priority(&self) -> u8;
    fn progress(&self) -> &ProgressState;
    fn progress_mut(&mut self) -> &mut ProgressState;
    /// Bytes done (acknowledged or received) and the total.
    fn done_total(&self) -> (u64, u64);
    fn status(&self) -> FileStatus;
    fn unanswered(&self) -> usize;
    /// Closes the file handle; a download also removes its partial file.
    fn release(&mut self);
}

impl Transfer for Upload {
    fn name(&self) -> &str {
        &self.spec.name
    }
    fn state(&self) -> FileState {
        self.state
    }
    fn state_mut(&mut self) -> &mut FileState {
        &mut self.state
    }
    fn priority(&self) -> u8 {
        self.spec.priority
    }
    fn progress(&self) -> &ProgressState {
        &self.progress
    }
    fn progress_mut(&mut self) -> &mut ProgressState {
        &mut self.progress
    }
    fn done_total(&self) -> (u64, u64) {
        (self.acked_bytes, self.size)
    }
    fn status(&self) -> FileStatus {
        Upload::status(self)
    }
    fn unanswered(&self) -> usize {
        self.in_flight.len()
    }
    fn release(&mut self) {
        self.source = None;
    }
}

impl Transfer for download::Download {
    fn name(&self) -> &str {
        &self.spec.name
    }
    fn state(&self) -> FileState {
        self.state
    }
    fn state_mut(&mut self) -> &mut FileState {
        &mut self.state
    }
    fn priority(&self) -> u8 {
        self.spec.priority
    }
    fn progress(&self) -> &ProgressState {
        &self.progress
    }
    fn progress_mut(&mut self) -> &mut ProgressState {
        &mut self.progress
    }
    fn done_total(&self) -> (u64, u64) {
        (self.bytes, self.info.as_ref().map_or(0, |i| i.total))
    }
    fn status(&self) -> FileStatus {
        download::Download::status(self)
    }
    fn unanswered(&self) -> usize {
        self.in_flight.len() + usize::from(self.info_req.is_some())
    }
    fn release(&mut self) {
        if let Some(mut sink) = self.sink.take() {
            sink.abort();
        }
    }
}

/// An error reply not yet attributed to a request.
#[derive(Debug, Clone, Copy)]
struct PendingError {
    code: ErrorCode,
    /// The request it answers was numbered below this (sent before it arrived).
    bound: u64,
}

#[derive(Debug, Default)]
pub(crate) struct ProgressState {
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
        weight(self.spec.priority)
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
        if self.spec.avatar && !self.in_flight.is_empty() {
            return None; // avatars are stop-and-wait on the deployed server
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
    downloads: HashMap<FileId, download::Download>,
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
            downloads: HashMap::new(),
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
        self.names.get(name).map(|id| self.t(*id).status())
    }

    pub fn name_of(&self, file: FileId) -> Option<&str> {
        (self.files.contains_key(&file) || self.downloads.contains_key(&file))
            .then(|| self.t(file).name())
    }

    /// Every registered transfer, in no particular order.
    pub fn statuses(&self) -> Vec<FileStatus> {
        self.all().map(|t| t.status()).collect()
    }

    /// True when no transfer is waiting, sending or paused.
    pub fn is_idle(&self) -> bool {
        self.all().all(|t| t.state().is_terminal())
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
        self.take_name(&spec.name)?;
        let chunk = spec.chunk_size.unwrap_or(self.config.chunk_size);
        if chunk == 0 {
            return Err(Error::ZeroChunk { name: spec.name });
        }
        let size = source.len();
        if spec.avatar && size > MAX_1043_SIZE {
            // 1031 sizes are ints the deployed server reads with asInt.
            return Err(Error::TooManyChunks {
                name: spec.name,
                size,
                chunk,
                max: MAX_1043_SIZE / chunk as u64,
            });
        }
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
        match self.t(id).state() {
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
        match self.t(id).state() {
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
        if let Some(f) = self.files.get_mut(&id) {
            if f.next_seq > 1 {
                f.resume_pending = true;
            }
        }
        self.queue.push(id);
        self.set_state(id, FileState::Queued);
        self.promote(now);
        Ok(())
    }

    /// Abandons a transfer; its queued chunks are dropped at once.
    pub fn cancel(&mut self, name: &str, now: Instant) -> Result<()> {
        let id = self.lookup(name)?;
        match self.t(id).state() {
            FileState::Cancelled => return Ok(()),
            state @ (FileState::Completed | FileState::Failed) => {
                return Err(Error::WrongState {
                    name: name.into(),
                    action: "cancel",
                    state,
                })
            }
            _ => {}
        }
        let t = self.t_mut(id);
        t.release();
        let (done, total) = t.done_total();
        tracing::info!(name, done, total, "transfer cancelled");
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
        for d in self.downloads.values_mut() {
            d.in_flight.clear();
            d.info_req = None;
            d.burst = 0;
            if !d.state.is_terminal() && d.info.is_some() {
                d.next_seq = d.received + 1;
                d.resumed = d.received > 0;
                // One restart from seq 1 per connection, if resuming fails.
                d.restarts = 0;
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
        self.retain_active();
        let mut tries = self.active.len();
        while tries > 0 {
            if self.unanswered.len() >= self.window.cwnd() as usize {
                return None;
            }
            tries -= 1;
            let id = *self.active.front()?;
            if self.downloads.contains_key(&id) {
                match self.download_next(id, now, out) {
                    Some(t) => {
                        let d = self.downloads.get_mut(&id).expect("checked");
                        d.burst += 1;
                        if d.burst >= weight(d.spec.priority) {
                            d.burst = 0;
                            self.active.rotate_left(1);
                        }
                        return Some(t);
                    }
                    None => {
                        if let Some(d) = self.downloads.get_mut(&id) {
                            d.burst = 0;
                        }
                        self.active.rotate_left(1);
                        continue;
                    }
                }
            }
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
        let msg_id = if f.spec.avatar {
            MsgId::UPLOAD_HEAD_ICON_REQ
        } else if seq == 1 {
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
                kind: Kind::Upload,
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
                .filter(|r| r.kind != Kind::DownInfo)
                .map(|r| r.sent_at)
                .min()
                .map(|t| t + self.config.ack_timeout)
        };
        let info = self
            .unanswered
            .values()
            .filter(|r| r.kind == Kind::DownInfo)
            .map(|r| r.sent_at + self.config.info_timeout)
            .min();
        let ack = match (ack, info) {
            (Some(a), Some(i)) => Some(a.min(i)),
            (a, i) => a.or(i),
        };
        let progress = self
            .all()
            .filter(|f| f.progress().dirty)
            .filter_map(|f| f.progress().last_emit_at)
            .map(|t| t + self.config.progress_interval)
            .min();
        match (ack, progress) {
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        }
    }

    /// Fires due timers: coalesced progress, and the ack timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let interval = self.config.progress_interval;
        let due: Vec<FileId> = self
            .files
            .keys()
            .chain(self.downloads.keys())
            .copied()
            .filter(|id| {
                let p = self.t(*id).progress();
                p.dirty && p.last_emit_at.is_some_and(|t| now >= t + interval)
            })
            .collect();
        for id in due {
            self.emit_progress(id, now);
        }
        // A 1045 nobody answers: the deployed server sends nothing for an
        // unknown message id, so this download fails alone.
        let info_timeout = self.config.info_timeout;
        let expired: Vec<(u64, Request)> = self
            .unanswered
            .iter()
            .filter(|(_, r)| {
                r.kind == Kind::DownInfo && now.saturating_duration_since(r.sent_at) >= info_timeout
            })
            .map(|(k, r)| (*k, *r))
            .collect();
        for (req, r) in expired {
            self.unanswered.remove(&req);
            if let Some(d) = self.downloads.get_mut(&r.file) {
                d.info_req = None;
                let message = format!(
                    "no reply to 1045 for message {} within {:?}: the server knows no file for this message \
                     (the deployed server answers nothing then)",
                    d.spec.message_id, info_timeout
                );
                self.fail(r.file, Failure::BadReply { seq: 0, message }, now);
            }
        }
        if self.stall_reported {
            return;
        }
        let Some(oldest) = self
            .unanswered
            .values()
            .filter(|r| r.kind != Kind::DownInfo)
            .min_by_key(|r| r.sent_at)
            .copied()
        else {
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
                    r.kind == Kind::Upload
                        && r.last
                        && now.saturating_duration_since(r.sent_at) >= self.config.ack_timeout
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
        if id == MsgId::IMG_CHAT_DOWN_INFO_SYNC_RSP {
            return self.on_down_info(now, body);
        }
        if id == MsgId::IMG_CHAT_DOWN_RSP || id == MsgId::DOWN_LOAD_FILE_RSP {
            return self.on_down_chunk(now, id, body);
        }
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
            let candidates = self.upload_requests_before(head.bound);
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
            let all = self.upload_requests_before(newest);
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

    // ------------------------------------------------------------ downloads

    /// Registers a download (1045, then pipelined 1047s). The sink receives
    /// the bytes once the server told the file's name and size.
    pub fn add_download(
        &mut self,
        spec: DownloadSpec,
        sink: Box<dyn ChunkSink>,
        now: Instant,
    ) -> Result<FileId> {
        validate_name(&spec.name)?;
        if let Some(m) = &spec.md5 {
            if m.len() != 32 || !m.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::InvalidMd5 {
                    name: spec.name.clone(),
                    md5: m.clone(),
                });
            }
        }
        self.take_name(&spec.name)?;
        let id = FileId(self.next_file);
        self.next_file += 1;
        let name = spec.name.clone();
        self.downloads
            .insert(id, download::Download::new(id, spec, sink));
        self.names.insert(name.clone(), id);
        self.queue.push(id);
        self.events.push_back(Event::StateChanged {
            name,
            state: FileState::Queued,
        });
        self.promote(now);
        Ok(id)
    }

    fn download_next(&mut self, id: FileId, now: Instant, out: &mut Vec<u8>) -> Option<Transmit> {
        let d = self.downloads.get_mut(&id)?;
        if d.state != FileState::Sending || d.sink.is_none() {
            return None;
        }
        let (msg_id, seq) = match (&d.info, &d.spec.avatar) {
            (info, Some(avatar)) => {
                let max_seq = info.as_ref().map_or(1, |i| i.max_seq);
                // The size arrives with chunk 1: it goes alone.
                if d.next_seq > max_seq || (info.is_none() && !d.in_flight.is_empty()) {
                    return None;
                }
                if d.resumed && !d.in_flight.is_empty() {
                    return None;
                }
                let seq = d.next_seq;
                let body = serde_json::json!({
                    "name": avatar.name, "seq": seq, "trans_size": 0, "total_size": 0,
                    "token": d.spec.token, "uid": d.spec.uid,
                    "client_path": avatar.client_path, "req_type": avatar.req_type,
                });
                let body = serde_json::to_vec(&body).expect("a JSON value serializes");
                crate::protocol::frame::encode(MsgId::DOWN_LOAD_FILE_REQ, &body, out);
                (MsgId::DOWN_LOAD_FILE_REQ, seq)
            }
            (None, None) => {
                if d.info_req.is_some() {
                    return None;
                }
                let body = serde_json::to_vec(&DownInfoReq {
                    message_id: d.spec.message_id,
                })
                .expect("plain struct serializes");
                crate::protocol::frame::encode(MsgId::IMG_CHAT_DOWN_INFO_SYNC_REQ, &body, out);
                (MsgId::IMG_CHAT_DOWN_INFO_SYNC_REQ, 0)
            }
            (Some(info), None) => {
                // After a reconnect, one request first: if the server's
                // expected seq moved on, only that one fails before a restart.
                if d.next_seq > info.max_seq || (d.resumed && !d.in_flight.is_empty()) {
                    return None;
                }
                let seq = d.next_seq;
                let req = DownChunkReq {
                    name: info.server_name.clone(),
                    seq,
                    trans_size: StrU64((seq as u64 - 1) * DOWNLOAD_CHUNK),
                    total_size: StrU64(info.total),
                    token: d.spec.token.clone(),
                    sender_id: info.sender_id,
                    receiver_id: info.receiver_id,
                    message_id: d.spec.message_id,
                    uid: d.spec.uid,
                };
                let body = serde_json::to_vec(&req).expect("plain struct serializes");
                crate::protocol::frame::encode(MsgId::IMG_CHAT_DOWN_REQ, &body, out);
                (MsgId::IMG_CHAT_DOWN_REQ, seq)
            }
        };
        let req = self.next_req;
        self.next_req += 1;
        let kind = if seq == 0 {
            d.info_req = Some(req);
            Kind::DownInfo
        } else {
            d.in_flight.push_back((seq, req));
            d.next_seq += 1;
            Kind::DownChunk
        };
        d.started_at.get_or_insert(now);
        self.unanswered.insert(
            req,
            Request {
                file: id,
                seq,
                sent_at: now,
                last: false,
                kind,
            },
        );
        self.window.on_send(self.unanswered.len() as u32);
        self.stats.requests_sent += 1;
        Some(Transmit {
            file: id,
            id: msg_id,
            seq,
            last: false,
            len: 0,
        })
    }

    fn on_down_info(&mut self, now: Instant, body: &[u8]) {
        let rsp: DownInfoRsp =
            match crate::protocol::messages::decode_as(MsgId::IMG_CHAT_DOWN_INFO_SYNC_RSP, body) {
                Ok(r) => r,
                Err(e) => return self.violation(format!("undecodable 1046: {e}")),
            };
        // By message id; without one, the oldest unanswered 1045.
        let found = self
            .downloads
            .values()
            .filter(|d| {
                d.info_req.is_some() && rsp.message_id.is_none_or(|m| m == d.spec.message_id)
            })
            .min_by_key(|d| d.info_req)
            .map(|d| (d.id, d.info_req.expect("filtered")));
        let Some((id, req)) = found else {
            self.stats.unknown_replies += 1;
            return;
        };
        let sent = self
            .unanswered
            .remove(&req)
            .expect("info requests are unanswered");
        self.window.on_ack(
            now,
            now.saturating_duration_since(sent.sent_at),
            req,
            self.next_req,
        );
        let d = self.downloads.get_mut(&id).expect("found");
        d.info_req = None;
        if d.state.is_terminal() {
            return;
        }
        if !rsp.error.is_success() {
            return self.fail(
                id,
                Failure::Server {
                    code: rsp.error,
                    seq: 0,
                },
                now,
            );
        }
        let (Some(name), Some(total)) = (rsp.name.clone(), rsp.total_size) else {
            let message = "1046 without name or total_size".to_string();
            return self.fail(id, Failure::BadReply { seq: 0, message }, now);
        };
        if let Some(why) = unsafe_name(&name) {
            let message = format!("server file name {name:?} {why}; refusing it");
            return self.fail(id, Failure::BadReply { seq: 0, message }, now);
        }
        let busy = self.downloads.values().any(|o| {
            o.id != id
                && !o.state.is_terminal()
                && o.info.as_ref().is_some_and(|i| i.server_name == name)
        });
        if busy {
            // The server keeps one expected seq per name: two transfers of
            // one name would break each other.
            let message = format!("{name:?} is already being downloaded by another transfer");
            return self.fail(id, Failure::BadReply { seq: 0, message }, now);
        }
        let max_seq = total.0.div_ceil(DOWNLOAD_CHUNK);
        if max_seq > i32::MAX as u64 {
            let message = format!("total_size {} is beyond what seqs can address", total.0);
            return self.fail(id, Failure::BadReply { seq: 0, message }, now);
        }
        let d = self.downloads.get_mut(&id).expect("found");
        let opened = d.sink.as_mut().map(|s| s.open(&name, total.0));
        d.info = Some(download::Info {
            server_name: name,
            sender_id: rsp.sender_id.unwrap_or(0),
            receiver_id: rsp.recv_id.unwrap_or(0),
            total: total.0,
            max_seq: max_seq as u32,
        });
        if let Some(Err(e)) = opened {
            return self.fail(
                id,
                Failure::Local {
                    message: e.to_string(),
                },
                now,
            );
        }
        if max_seq == 0 {
            // A 0-byte file needs no 1047 (the deployed server cannot serve one).
            self.finish_download(id, now);
        }
    }

    fn on_down_chunk(&mut self, now: Instant, id: MsgId, body: &[u8]) {
        // 1034 (avatars) carries the same fields as 1048 plus echoes it keeps.
        let rsp: DownChunkRsp = match crate::protocol::messages::decode_as(id, body) {
            Ok(r) => r,
            Err(e) => return self.violation(format!("undecodable {id}: {e}")),
        };
        // Replies for one name come in order: the download of that name, its
        // oldest request. Without a name (token errors), the oldest 1047.
        let found = match rsp.name.as_deref() {
            Some(n) => self
                .downloads
                .values()
                .find(|d| {
                    !d.in_flight.is_empty()
                        && (d.info.as_ref().is_some_and(|i| i.server_name == n)
                            || d.spec.avatar.as_ref().is_some_and(|a| a.name == n))
                })
                .map(|d| d.id),
            None => self
                .unanswered
                .values()
                .find(|r| r.kind == Kind::DownChunk)
                .map(|r| r.file),
        };
        let Some(id) = found else {
            self.stats.unknown_replies += 1;
            return;
        };
        let d = self.downloads.get_mut(&id).expect("found");
        let (seq, req) = d
            .in_flight
            .pop_front()
            .expect("found with requests in flight");
        let sent = self
            .unanswered
            .remove(&req)
            .expect("in-flight requests are unanswered");
        self.window.on_ack(
            now,
            now.saturating_duration_since(sent.sent_at),
            req,
            self.next_req,
        );
        if d.state.is_terminal() {
            return;
        }
        if !rsp.is_chunk() {
            self.stats.error_replies += 1;
            if d.resumed && d.restarts == 0 {
                // The server's expected seq was not ours after the reconnect.
                d.restarts += 1;
                d.restart();
                self.stats.restarts += 1;
                return;
            }
            let failure = if rsp.error.is_success() {
                Failure::BadReply {
                    seq,
                    message: format!(
                        "chunk {seq}: reply without data (the deployed server reports most download errors as error 0)"
                    ),
                }
            } else {
                Failure::Server {
                    code: rsp.error,
                    seq,
                }
            };
            return self.fail(id, failure, now);
        }
        d.resumed = false;
        if d.info.is_none() {
            // An avatar's first chunk tells its size.
            let name = d
                .spec
                .avatar
                .as_ref()
                .map(|a| a.name.clone())
                .unwrap_or_default();
            let Some(total) = rsp.total_size else {
                let f = Failure::BadReply {
                    seq,
                    message: "first avatar chunk without total_size".into(),
                };
                return self.fail(id, f, now);
            };
            let max_seq = total.0.div_ceil(DOWNLOAD_CHUNK).max(1);
            if max_seq > i32::MAX as u64 {
                let f = Failure::BadReply {
                    seq,
                    message: format!("total_size {} is beyond what seqs can address", total.0),
                };
                return self.fail(id, f, now);
            }
            let opened = d.sink.as_mut().map(|s| s.open(&name, total.0));
            d.info = Some(download::Info {
                server_name: name,
                sender_id: d.spec.uid,
                receiver_id: 0,
                total: total.0,
                max_seq: max_seq as u32,
            });
            if let Some(Err(e)) = opened {
                return self.fail(
                    id,
                    Failure::Local {
                        message: e.to_string(),
                    },
                    now,
                );
            }
        }
        let expected_len = d.chunk_len(seq) as usize;
        let data = rsp.data.as_deref().unwrap_or_default();
        let bad = |message: String| Failure::BadReply { seq, message };
        if rsp.seq != Some(seq) {
            let f = bad(format!("asked for chunk {seq}, got {:?}", rsp.seq));
            return self.fail(id, f, now);
        }
        if data.len() > crate::protocol::chunk::base64_len(DOWNLOAD_CHUNK as usize) {
            let f = bad(format!(
                "chunk {seq}: {} bytes of base64, more than a chunk",
                data.len()
            ));
            return self.fail(id, f, now);
        }
        self.scratch.resize(data.len() / 4 * 3 + 3, 0);
        let n = match base64::Engine::decode_slice(
            &base64::engine::general_purpose::STANDARD,
            data,
            &mut self.scratch,
        ) {
            Ok(n) => n,
            Err(e) => {
                let f = bad(format!("chunk {seq}: invalid base64: {e}"));
                return self.fail(id, f, now);
            }
        };
        if n != expected_len {
            let f = bad(format!("chunk {seq}: {n} bytes, expected {expected_len}"));
            return self.fail(id, f, now);
        }
        let offset = (seq as u64 - 1) * DOWNLOAD_CHUNK;
        let d = self.downloads.get_mut(&id).expect("found");
        let written = d
            .sink
            .as_mut()
            .map(|s| s.write_at(offset, &self.scratch[..n]));
        if let Some(Err(e)) = written {
            return self.fail(
                id,
                Failure::Local {
                    message: e.to_string(),
                },
                now,
            );
        }
        md5::Digest::update(&mut d.hasher, &self.scratch[..n]);
        d.bytes += n as u64;
        d.received = seq;
        d.progress.dirty = true;
        let done = d.info.as_ref().is_some_and(|i| seq == i.max_seq);
        if done {
            self.finish_download(id, now);
        } else if d
            .progress
            .last_emit_at
            .is_none_or(|t| now >= t + self.config.progress_interval)
        {
            self.emit_progress(id, now);
        }
    }

    fn finish_download(&mut self, id: FileId, now: Instant) {
        let d = self.downloads.get_mut(&id).expect("caller checked");
        let md5 = format!("{:x}", md5::Digest::finalize_reset(&mut d.hasher));
        if let Some(want) = &d.spec.md5 {
            if !want.eq_ignore_ascii_case(&md5) {
                let message = format!(
                    "md5 of the downloaded bytes is {md5}, the message says {want}; removed"
                );
                return self.fail(id, Failure::BadReply { seq: 0, message }, now);
            }
        }
        let finished = d.sink.as_mut().map(|s| s.finish());
        let path = match finished {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                return self.fail(
                    id,
                    Failure::Local {
                        message: e.to_string(),
                    },
                    now,
                )
            }
            None => return,
        };
        d.sink = None;
        let (name, bytes) = (d.spec.name.clone(), d.bytes);
        let secs = d
            .started_at
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        tracing::info!(%name, bytes, secs, %md5, path = %path.display(), "download complete");
        self.emit_progress(id, now);
        self.set_state(id, FileState::Completed);
        self.events.push_back(Event::Saved {
            name: name.clone(),
            path,
        });
        self.events.push_back(Event::Completed { name, md5, bytes });
        self.promote(now);
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
        let t = self.t_mut(id);
        if t.state() == state {
            return;
        }
        *t.state_mut() = state;
        let name = t.name().to_string();
        self.events.push_back(Event::StateChanged { name, state });
    }

    fn t(&self, id: FileId) -> &dyn Transfer {
        match self.files.get(&id) {
            Some(f) => f,
            None => &self.downloads[&id],
        }
    }

    fn t_mut(&mut self, id: FileId) -> &mut dyn Transfer {
        match self.files.get_mut(&id) {
            Some(f) => f,
            None => self
                .downloads
                .get_mut(&id)
                .expect("ids name known transfers"),
        }
    }

    fn all(&self) -> impl Iterator<Item = &dyn Transfer> {
        self.files
            .values()
            .map(|f| f as &dyn Transfer)
            .chain(self.downloads.values().map(|d| d as &dyn Transfer))
    }

    /// Frees `name` for a new transfer: an error if one by that name is
    /// still going; a finished one is forgotten.
    fn take_name(&mut self, name: &str) -> Result<()> {
        if let Some(&old) = self.names.get(name) {
            let t = self.t(old);
            if !t.state().is_terminal() || t.unanswered() > 0 {
                return Err(Error::DuplicateName { name: name.into() });
            }
            self.files.remove(&old);
            self.downloads.remove(&old);
            self.names.remove(name);
        }
        Ok(())
    }

    fn retain_active(&mut self) {
        let (files, downloads) = (&self.files, &self.downloads);
        self.active.retain(|id| {
            let state = files
                .get(id)
                .map(|f| f.state)
                .or_else(|| downloads.get(id).map(|d| d.state));
            state == Some(FileState::Sending)
        });
    }

    fn upload_requests_before(&self, bound: u64) -> Vec<u64> {
        self.unanswered
            .range(..bound)
            .filter(|(_, r)| r.kind == Kind::Upload)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Fills free sending slots from the queue, highest priority first.
    fn promote(&mut self, _now: Instant) {
        self.retain_active();
        while self.active.len() < self.config.max_active_files.max(1) && !self.queue.is_empty() {
            let best = (0..self.queue.len())
                .max_by_key(|&i| (self.t(self.queue[i]).priority(), std::cmp::Reverse(i)))
                .expect("queue is not empty");
            let id = self.queue.remove(best);
            self.active.push_back(id);
            self.set_state(id, FileState::Sending);
        }
    }

    fn emit_progress(&mut self, id: FileId, now: Instant) {
        let t = self.t_mut(id);
        let (done, total) = t.done_total();
        let p = t.progress_mut();
        if let Some(at) = p.last_emit_at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            if dt > 0.0 {
                let inst = done.saturating_sub(p.last_emit_bytes) as f64 / dt;
                p.rate = if p.rate == 0.0 {
                    inst
                } else {
                    0.5 * p.rate + 0.5 * inst
                };
            }
        }
        p.dirty = false;
        p.last_emit_at = Some(now);
        p.last_emit_bytes = done;
        let rate = p.rate;
        let name = t.name().to_string();
        self.events.push_back(Event::Progress {
            name,
            acked: done,
            total,
            rate,
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
        let t = self.t_mut(id);
        if t.state().is_terminal() {
            return;
        }
        t.release();
        let (done, total) = t.done_total();
        let name = t.name().to_string();
        tracing::info!(%name, done, total, %failure, "transfer failed");
        self.queue.retain(|q| *q != id);
        self.set_state(id, FileState::Failed);
        self.events.push_back(Event::Failed { name, failure });
        self.promote(now);
    }
}

/// Chunks a transfer may send in a row on its round-robin turn.
fn weight(priority: u8) -> u32 {
    1 + (priority as u32).min(15)
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
