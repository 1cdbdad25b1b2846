//! The transfer engine: a pure state machine for one ResourceServer
//! connection at a time — no IO, no clock, no threads.
//!
//! It replaces the chunk bookkeeping of the Qt client's `FileTcpMgr`:
//!
//! | Qt client | engine |
//! | --- | --- |
//! | `AddTransFile` | [`Engine::add_file`] |
//! | `BatchSend` | [`Engine::poll_transmit`] (one frame per call, while the window allows) |
//! | `OnUploadRsp` (every reply id) | [`Engine::handle_frame`] |
//! | pause / resume / cancel | [`Engine::pause`], [`Engine::resume`], [`Engine::cancel`] |
//! | chat file download (1045/1047) | [`Engine::add_download`] |
//! | avatar upload (1031) / download (1033) | [`FileSpec::avatar`], [`DownloadSpec::avatar`] |
//!
//! # Driving it
//! Its methods are of four kinds, in the manner of quinn-proto's `Connection`:
//! * `&self` getters: [`Engine::file_status`], [`Engine::statuses`], [`Engine::stats`], …;
//! * inputs: [`Engine::handle_frame`] (a reply), [`Engine::handle_timeout`],
//!   [`Engine::connected`], [`Engine::connection_lost`];
//! * application mutators: `add_*`, `pause`, `resume`, `cancel`, `set_draining`;
//! * `#[must_use]` outputs, polled after every input or mutation, in this
//!   order: [`Engine::poll_transmit`] until `None` (frames into the caller's
//!   buffer), [`Engine::poll_timeout`] (re-arm the one timer), then
//!   [`Engine::poll_event`] until `None` (what the application should know).
//!
//! Time comes in as `now`. Bytes of a file come through a [`ChunkSource`]
//! and go to a [`ChunkSink`], one chunk at a time; opening, hashing and
//! renaming files happen at the edge (the runtime).
//!
//! # Structure
//! One transfer table (`transfer`) holds uploads (`upload`) and downloads
//! (`download`), keyed by [`FileId`], with a name index; one in-flight table
//! (`inflight`) holds every unanswered request; `attribution` matches the
//! deployed server's anonymous error replies to requests; `scheduler` picks
//! who sends; `timers` derives the deadlines; `window` sizes the pipeline.
//!
//! # Invariants
//! * **Nothing here panics on input from the network**: every reply is
//!   decoded, matched to a transfer by name *and* kind, and to an unanswered
//!   request; anything else is counted and ignored, or fails the one transfer
//!   it concerns. (A property test feeds arbitrary reply sequences.)
//! * At most `window.cwnd()` requests are unanswered when a frame goes out,
//!   counted across all transfers on the connection.
//! * An upload's first chunk goes as 1041 and nothing else of that file goes
//!   out before its success reply; later chunks go as 1037, the first one after
//!   a resume as 1043 (never for files over `i32::MAX` bytes, never for the
//!   last chunk).
//! * On one connection no seq of a file is sent twice, except from seq 1
//!   after a restart, which waits until nothing of the file is in flight.
//!   Pause then resume continues after the highest chunk sent, so in-flight
//!   chunks are never duplicated (the deployed client re-sends them,
//!   corrupting the file on its appending server).
//! * An upload completes if and only if every seq `1..=max_seq` was
//!   acknowledged (or a size probe found exactly the whole file stored), and,
//!   when it verifies, a final probe found exactly the file's size stored; a
//!   download if and only if every chunk arrived in order with the announced
//!   length (and the md5 matched, when known).
//! * A size probe of an upload (1047 seq 1 for its name) and a download of
//!   the same server name never overlap in one engine: the probe resets the
//!   server's one download state per name.
//!
//! # After a lost connection
//! [`Engine::connection_lost`] forgets every unanswered request and plans each
//! unfinished upload from its acknowledged record:
//! * nothing acknowledged yet: from seq 1 (1041, which truncates on the server);
//! * [`ServerStorage::Positional`]: from the first unacknowledged seq (1043, or
//!   1037 for files of 2 GiB or more), skipping chunks acknowledged beyond it;
//! * [`ServerStorage::Appending`] (the deployed server): exactly from the next
//!   seq if the file had no unanswered chunk when the connection went (a paused
//!   and drained file, say); otherwise, with a token, from what a size probe
//!   shows the server holds (see `upload`), and without one (or when the probe
//!   shows nothing usable) from seq 1, because the server may already have
//!   appended chunks whose replies were lost. Resuming "from the first
//!   unacknowledged seq" there could silently duplicate bytes.
//!
//! Downloads continue after the last chunk received, probing first (see
//! `download`).

mod attribution;
mod download;
mod error;
mod inflight;
mod io;
mod pacer;
mod scheduler;
mod timers;
mod transfer;
mod types;
mod upload;
mod window;

#[cfg(any(test, feature = "sim"))]
#[doc(hidden)]
#[cfg(any(test, feature = "sim"))]
pub mod sim;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

pub use crate::protocol::DOWNLOAD_CHUNK;
pub use download::{AvatarRef, DownloadSpec, KnownFile};
pub use error::{Error, Result};
pub use io::{md5_hex, md5_of, ChunkSink, ChunkSource, MemorySink, MemorySource};
pub use types::*;
pub use upload::{check_message_id, check_new_message_id};
pub use window::{Window, WindowPolicy};

use crate::protocol::messages::UploadRsp;
use crate::protocol::MsgId;
use attribution::Attribution;
use inflight::{InFlight, ReqNo, Request, RequestKind};
use scheduler::Scheduler;
use transfer::{Common, Direction, Transfer};

/// The sans-IO transfer engine for one ResourceServer connection at a time.
pub struct Engine {
    config: EngineConfig,
    transfers: HashMap<FileId, Transfer>,
    names: HashMap<String, FileId>,
    /// Ended transfers whose name was given to a new one while requests of
    /// theirs were still unanswered: those replies are theirs (replies for a
    /// name come in order) and are consumed here, never taken for the new
    /// transfer's. Each leaves once its last request is answered or the
    /// connection is gone.
    retired: HashMap<String, FileId>,
    /// The upload rate cap (`EngineConfig::rate_limit`).
    pacer: pacer::Pacer,
    next_id: u64,
    scheduler: Scheduler,
    /// Transfers that have been sending and have not ended: the only ones a
    /// timer can concern (progress pending, a probe's delay, the give-up
    /// budget all start with sending; a queued probe waits for its slot).
    /// The timers scan these, not every file ever added: thousands queued
    /// or finished made each poll cost as much as the whole list.
    live: BTreeSet<FileId>,
    connected: bool,
    window: Window,
    in_flight: InFlight,
    attribution: Attribution,
    stall_reported: bool,
    /// Send nothing new (a graceful shutdown waits for in-flight replies).
    draining: bool,
    events: VecDeque<Event>,
    stats: Stats,
    scratch: Vec<u8>,
    /// The last thing that went wrong on the path (a protocol violation, a
    /// failed connect) for the message of a transfer that gives up.
    last_problem: Option<String>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            window: Window::new(config.window),
            pacer: pacer::Pacer::new(config.rate_limit),
            config,
            transfers: HashMap::new(),
            names: HashMap::new(),
            retired: HashMap::new(),
            next_id: 1,
            scheduler: Scheduler::default(),
            live: BTreeSet::new(),
            connected: false,
            in_flight: InFlight::default(),
            attribution: Attribution::default(),
            stall_reported: false,
            last_problem: None,
            draining: false,
            events: VecDeque::new(),
            stats: Stats::default(),
            scratch: Vec::new(),
        }
    }

    // ------------------------------------------------------------ getters

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Requests sent and not yet answered, across all transfers.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn window(&self) -> &Window {
        &self.window
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn file_status(&self, name: &str) -> Option<FileStatus> {
        let id = *self.names.get(name)?;
        Some(self.transfers.get(&id)?.status(self.in_flight.count(id)))
    }

    pub fn name_of(&self, id: FileId) -> Option<&str> {
        self.transfers.get(&id).map(|t| t.common.name.as_str())
    }

    /// Whether `name` is a download (`Some(true)`), an upload, or unknown.
    pub fn is_download(&self, name: &str) -> Option<bool> {
        let t = self.transfers.get(self.names.get(name)?)?;
        Some(matches!(t.dir, Direction::Download(_)))
    }

    /// Every registered transfer, in no particular order.
    pub fn statuses(&self) -> Vec<FileStatus> {
        self.transfers
            .values()
            .filter(|t| self.names.get(&t.common.name) == Some(&t.common.id))
            .map(|t| t.status(self.in_flight.count(t.common.id)))
            .collect()
    }

    /// True when no transfer is waiting, sending or paused.
    pub fn is_idle(&self) -> bool {
        self.transfers
            .values()
            .all(|t| t.common.state.is_terminal())
    }

    // ------------------------------------------------------------ app mutators

    /// Stops issuing new chunks of `name`; chunks in flight drain normally.
    pub fn pause(&mut self, name: &str, now: Instant) -> Result<()> {
        let id = self.lookup(name)?;
        match self.state(id) {
            FileState::Paused => return Ok(()),
            FileState::Queued | FileState::Sending => {}
            state => return Err(wrong_state(name, "pause", state)),
        }
        self.set_state(id, FileState::Paused);
        self.promote(now);
        Ok(())
    }

    /// Continues a paused (or held) transfer after the highest chunk already sent.
    pub fn resume(&mut self, name: &str, now: Instant) -> Result<()> {
        let id = self.lookup(name)?;
        match self.state(id) {
            FileState::Paused => {}
            FileState::Queued | FileState::Sending => return Ok(()),
            state => return Err(wrong_state(name, "resume", state)),
        }
        if let Some(u) = self.transfers.get(&id).and_then(|t| t.upload()) {
            upload::check_message_id(name, u.spec.avatar, u.spec.message_id)?;
        }
        if let Some(t) = self.transfers.get_mut(&id) {
            t.common.last_progress = now; // the budget counts from the user's resume
            if let Some(u) = t.upload_mut() {
                if u.next_seq > 1 && u.phase == upload::UploadPhase::Streaming {
                    u.phase = upload::UploadPhase::Resuming;
                }
            }
        }
        let priority = self.transfers.get(&id).map_or(0, |t| t.common.priority);
        self.scheduler.enqueue(id, priority);
        self.set_state(id, FileState::Queued);
        self.promote(now);
        Ok(())
    }

    /// Gives a chat upload registered at send time (held, `message_id` 0) the
    /// id of the ChatServer's 1036 reply; `resume` starts it then. Setting
    /// the id it already has is a no-op; another id is refused once a chunk
    /// has gone (the server files chunks under the id of the first).
    pub fn set_message_id(&mut self, name: &str, message_id: i64) -> Result<()> {
        let id = self.lookup(name)?;
        let state = self.state(id);
        let Some(u) = self.transfers.get_mut(&id).and_then(|t| t.upload_mut()) else {
            return Err(wrong_state(name, "set the message id of", state));
        };
        upload::check_new_message_id(name, u.spec.avatar, message_id)?;
        if u.spec.message_id == message_id {
            return Ok(());
        }
        if state.is_terminal() || u.next_seq > 1 {
            return Err(wrong_state(name, "set the message id of", state));
        }
        u.spec.message_id = message_id;
        Ok(())
    }

    /// Abandons a transfer; its queued chunks are dropped at once.
    pub fn cancel(&mut self, name: &str, now: Instant) -> Result<()> {
        let id = self.lookup(name)?;
        match self.state(id) {
            FileState::Cancelled => return Ok(()),
            state @ (FileState::Completed | FileState::Failed) => {
                return Err(wrong_state(name, "cancel", state))
            }
            _ => {}
        }
        if let Some(t) = self.transfers.get_mut(&id) {
            t.release();
            let (done, total) = t.done_total();
            tracing::info!(name, done, total, "transfer cancelled");
        }
        self.set_state(id, FileState::Cancelled);
        self.promote(now);
        Ok(())
    }

    /// The app took the connection down on purpose (a logout) and brings it
    /// back: that time does not count against any transfer's give-up budget.
    pub fn restart_budgets(&mut self, now: Instant) {
        for t in self.transfers.values_mut() {
            if !t.common.state.is_terminal() {
                t.common.last_progress = now;
            }
        }
    }

    /// Whether `add_file` would accept `spec` for a file of `size` bytes
    /// (its md5 aside, which may still be computed); nothing is registered.
    pub fn check_upload(&self, spec: &FileSpec, size: u64) -> Result<()> {
        let mut probe = spec.clone();
        probe.md5.get_or_insert_with(|| "0".repeat(32));
        upload::check_spec(&probe, size, &self.config)?;
        match self.names.get(&spec.name) {
            Some(id) if !self.is_terminal(*id) => Err(Error::DuplicateName {
                name: spec.name.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether `name` may be started over (a retry): only a failed or
    /// cancelled transfer may.
    pub fn check_retryable(&self, name: &str) -> Result<()> {
        let id = self.lookup(name)?;
        match self.state(id) {
            FileState::Failed | FileState::Cancelled => Ok(()),
            state => Err(wrong_state(name, "retry", state)),
        }
    }

    /// What upload `name` was registered with (to retry it).
    pub fn upload_spec(&self, name: &str) -> Option<FileSpec> {
        match &self.transfers.get(self.names.get(name)?)?.dir {
            Direction::Upload(u) => Some(u.spec.clone()),
            Direction::Download(_) => None,
        }
    }

    /// What download `name` was registered with (to retry it).
    pub fn download_spec(&self, name: &str) -> Option<DownloadSpec> {
        match &self.transfers.get(self.names.get(name)?)?.dir {
            Direction::Download(d) => Some(d.spec.clone()),
            Direction::Upload(_) => None,
        }
    }

    /// Ends every unfinished transfer with [`Failure::Internal`]: the host
    /// that drives this engine failed, and nothing will move them on.
    pub fn fail_all(&mut self, message: &str, now: Instant) {
        let unfinished: Vec<FileId> = self
            .transfers
            .values()
            .filter(|t| !t.common.state.is_terminal())
            .map(|t| t.common.id)
            .collect();
        for id in unfinished {
            let failure = Failure::Internal {
                message: message.to_string(),
            };
            self.fail(id, failure, now);
        }
    }

    /// Stops (or restarts) issuing new chunks for every transfer, without
    /// changing their states; in-flight chunks still get their replies. A
    /// graceful shutdown drains this way so that the acknowledged record is exact.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    // ------------------------------------------------------------ inputs

    /// A connection to the server is up: sending may start.
    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        self.stall_reported = false;
        self.window.reset();
        self.promote(now);
    }

    /// The host says why a connection failed or could not be made; a
    /// transfer that later gives up names the last such problem.
    pub fn note_problem(&mut self, problem: impl Into<String>) {
        self.last_problem = Some(problem.into());
    }

    /// What a give-up says besides its budget: the last problem seen.
    pub(crate) fn give_up_reason(&self, budget: String) -> String {
        match &self.last_problem {
            Some(p) => format!("{budget}; last problem: {p}"),
            None => budget,
        }
    }

    /// The connection is gone: every unanswered request is forgotten and each
    /// unfinished transfer is planned again from its record (see the module docs).
    pub fn connection_lost(&mut self, now: Instant) {
        self.connected = false;
        self.stall_reported = false;
        let uncertain: BTreeSet<FileId> = self
            .in_flight
            .clear()
            .into_iter()
            .map(|r| r.transfer)
            .collect();
        self.prune_retired();
        self.attribution.clear();
        let storage = self.config.server_storage;
        let settle_until = now + self.config.probe.settle;
        let mut restarted = 0;
        for t in self.transfers.values_mut() {
            t.common.burst = 0;
            if t.common.state.is_terminal() {
                continue;
            }
            let had_in_flight = uncertain.contains(&t.common.id);
            match &mut t.dir {
                Direction::Upload(u) => {
                    let probe = self.config.probe.resume && u.may_probe(&self.config);
                    restarted +=
                        u64::from(u.plan_after_cut(storage, had_in_flight, probe, settle_until))
                }
                Direction::Download(d) => d.plan_after_cut(),
            }
        }
        self.stats.restarts += restarted;
        self.window.reset();
    }

    /// `OnUploadRsp`: consumes one frame from the server, of any reply id:
    /// upload replies (1042/1038/1044/1032), download replies (1046, 1048,
    /// 1034). Other ids are counted and ignored.
    ///
    /// The deployed server's upload error replies carry no name and no seq;
    /// they are attributed by elimination (see `attribution`), never by
    /// guessing. Until then a file that may own one holds back its last chunk.
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
            self.on_upload_ack(now, id, name, seq);
        } else {
            self.stats.error_replies += 1;
            // The reference server names the request; the deployed one does not.
            if let (Some(name), Some(seq)) = (rsp.name.as_deref(), rsp.seq) {
                if self.take_retired(name, seq, RequestKind::UploadChunk) {
                    return self.resolve_errors(now);
                }
                let request = self
                    .find_kind(now, name, id, RequestKind::UploadChunk)
                    .and_then(|t| self.in_flight.find(t, seq))
                    .filter(|no| {
                        self.in_flight.get(*no).map(|r| r.kind) == Some(RequestKind::UploadChunk)
                    });
                match request {
                    Some(no) => {
                        let request = self.answered(no);
                        self.on_upload_error(request, rsp.error, now);
                    }
                    None => self.stats.unknown_replies += 1,
                }
            } else {
                self.attribution.push(rsp.error, self.in_flight.next_no());
            }
        }
        self.resolve_errors(now);
    }

    fn resolve_errors(&mut self, now: Instant) {
        let in_flight = &self.in_flight;
        let resolved = self
            .attribution
            .resolve(|bound| in_flight.of_kind_before(RequestKind::UploadChunk, bound));
        self.stats.unknown_replies += resolved.unknown;
        for (no, code) in resolved.attributed {
            if self.in_flight.get(no).is_some() {
                let request = self.answered(no);
                self.on_upload_error(request, code, now);
            }
        }
    }

    // ------------------------------------------------------------ outputs

    /// The next application event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ------------------------------------------------------------ internals

    /// Adds a checked transfer to the table (held ones paused) and queues it.
    fn register(
        &mut self,
        name: String,
        priority: u8,
        hold: bool,
        dir: Direction,
        now: Instant,
    ) -> FileId {
        let id = FileId(self.next_id);
        self.next_id += 1;
        let state = if hold {
            FileState::Paused
        } else {
            FileState::Queued
        };
        let common = Common::new(id, name.clone(), priority, state, now);
        self.transfers.insert(id, Transfer { common, dir });
        self.names.insert(name.clone(), id);
        if !hold {
            self.scheduler.enqueue(id, priority);
        }
        self.events.push_back(Event::StateChanged { name, state });
        self.promote(now);
        id
    }

    /// Records a request just appended to the output; returns its `Transmit`.
    fn sent(&mut self, request: Request, id: MsgId, len: usize) -> Transmit {
        let (transfer, seq, last) = (request.transfer, request.seq, request.last);
        if let Some(t) = self.transfers.get_mut(&transfer) {
            t.common.started_at.get_or_insert(request.sent_at);
        }
        self.in_flight.insert(request);
        self.window.on_send(self.in_flight.len() as u32);
        self.stats.requests_sent += 1;
        self.stats.bytes_sent += len as u64;
        Transmit {
            file: transfer,
            id,
            seq,
            last,
            len,
        }
    }

    /// A reply answered request `no`: it leaves the table, and its round
    /// trip feeds the window.
    fn replied(&mut self, no: ReqNo, now: Instant) -> Request {
        let sent = self.answered(no);
        let rtt = now.saturating_duration_since(sent.sent_at);
        self.window.on_ack(now, rtt, no, self.in_flight.next_no());
        sent
    }

    /// Takes an answered request out of the in-flight table.
    fn answered(&mut self, no: ReqNo) -> Request {
        self.attribution.answered(no);
        self.in_flight
            .remove(no)
            .expect("callers pass numbers found in the table")
    }

    /// The transfer called `name` if it takes replies of `kind`; replies for
    /// unknown names are counted. A reply of the wrong kind is counted and
    /// never acts on the transfer's data; as no request of ours can have
    /// caused it (names are unique across kinds, and the replies of a name's
    /// earlier transfer go to it, see `retired`), the server is confused or hostile, and the
    /// named transfer fails with that explanation instead of waiting on it.
    fn find_kind(
        &mut self,
        now: Instant,
        name: &str,
        id: MsgId,
        kind: RequestKind,
    ) -> Option<FileId> {
        let Some(&tid) = self.names.get(name) else {
            self.stats.unknown_replies += 1;
            return None;
        };
        let is_upload = matches!(self.transfers.get(&tid)?.dir, Direction::Upload(_));
        if is_upload != (kind == RequestKind::UploadChunk) {
            self.stats.wrong_kind_replies += 1;
            let (asked, got) = if is_upload {
                ("an upload", "a download reply")
            } else {
                ("a download", "an upload reply")
            };
            let message = format!(
                "the server sent {got} ({id}) naming {name:?}, which is {asked}; refusing a confused server"
            );
            self.fail(tid, Failure::BadReply { seq: 0, message }, now);
            return None;
        }
        Some(tid)
    }

    /// Consumes a reply to `seq` of `name` if it belongs to the retired
    /// transfer of that name (see `retired`).
    fn take_retired(&mut self, name: &str, seq: u32, kind: RequestKind) -> bool {
        let Some(&old) = self.retired.get(name) else {
            return false;
        };
        let Some(no) = self.in_flight.find(old, seq) else {
            return false;
        };
        if self.in_flight.get(no).map(|r| r.kind) != Some(kind) {
            return false;
        }
        self.answered(no);
        self.prune_retired();
        true
    }

    /// Forgets retired transfers with nothing left in flight.
    fn prune_retired(&mut self) {
        let done: Vec<(String, FileId)> = self
            .retired
            .iter()
            .filter(|(_, id)| self.in_flight.count(**id) == 0)
            .map(|(n, id)| (n.clone(), *id))
            .collect();
        for (name, id) in done {
            self.retired.remove(&name);
            self.transfers.remove(&id);
        }
    }

    fn lookup(&self, name: &str) -> Result<FileId> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownName { name: name.into() })
    }

    fn state(&self, id: FileId) -> FileState {
        self.transfers
            .get(&id)
            .map_or(FileState::Cancelled, |t| t.common.state)
    }

    fn is_terminal(&self, id: FileId) -> bool {
        self.state(id).is_terminal()
    }

    fn set_state(&mut self, id: FileId, state: FileState) {
        let Some(t) = self.transfers.get_mut(&id) else {
            return;
        };
        if t.common.state == state {
            return;
        }
        if t.common.state == FileState::Queued {
            self.scheduler.dequeue(id);
        }
        if state == FileState::Sending {
            self.live.insert(id);
        } else if state.is_terminal() {
            self.live.remove(&id);
        }
        t.common.state = state;
        let name = t.common.name.clone();
        self.events.push_back(Event::StateChanged { name, state });
    }

    /// Frees `name` for a new transfer: an error if one by that name is
    /// still going or has requests in flight; a finished one is forgotten.
    fn take_name(&mut self, name: &str) -> Result<()> {
        if let Some(&old) = self.names.get(name) {
            if !self.is_terminal(old) {
                return Err(Error::DuplicateName { name: name.into() });
            }
            let in_flight = self.in_flight.count(old);
            self.names.remove(name);
            if in_flight == 0 {
                self.transfers.remove(&old);
            } else if self.retired.contains_key(name) {
                // One retired transfer per name keeps "whose reply is it"
                // answerable; a third use waits for the replies.
                self.names.insert(name.into(), old);
                return Err(Error::NameInFlight {
                    name: name.into(),
                    in_flight,
                });
            } else {
                self.retired.insert(name.into(), old);
            }
        }
        Ok(())
    }

    fn emit_progress(&mut self, id: FileId, now: Instant) {
        let Some(t) = self.transfers.get_mut(&id) else {
            return;
        };
        let (done, total) = t.done_total();
        let rate = t.common.progress.emit(now, done);
        let name = t.common.name.clone();
        self.events.push_back(Event::Progress {
            name,
            acked: done,
            total,
            rate,
        });
    }

    fn fail(&mut self, id: FileId, failure: Failure, now: Instant) {
        let Some(t) = self.transfers.get_mut(&id) else {
            return;
        };
        if t.common.state.is_terminal() {
            return;
        }
        t.release();
        let (done, total) = t.done_total();
        let name = t.common.name.clone();
        tracing::info!(%name, done, total, %failure, "transfer failed");
        self.set_state(id, FileState::Failed);
        self.events.push_back(Event::Failed { name, failure });
        self.promote(now);
    }

    fn violation(&mut self, reason: String) {
        self.stats.malformed_replies += 1;
        tracing::warn!(%reason, "protocol violation from server");
        self.last_problem = Some(format!("protocol violation: {reason}"));
        self.events.push_back(Event::ProtocolViolation { reason });
    }
}

fn wrong_state(name: &str, action: &'static str, state: FileState) -> Error {
    Error::WrongState {
        name: name.into(),
        action,
        state,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hostile;

#[cfg(test)]
mod pair;
