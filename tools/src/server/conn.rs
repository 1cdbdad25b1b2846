//! One connection: a reader that decodes requests in arrival order, one
//! *lane* per upload key whose worker thread stores that key's chunks in
//! order (different keys in parallel), and a writer task that batches the
//! replies. Downloads are handled by the reader, in order.
//!
//! Memory and time a peer can hold (see [`super::Limits`]): the read buffer
//! holds the bytes received and not yet handled (no body buffer is sized by
//! the header before the bytes arrive, and a connection that goes quiet
//! gives back its spare capacity); queued replies are bounded in bytes, so
//! a peer that does not read stops being served; a frame must complete
//! within the frame timeout, an idle connection closes after the idle
//! timeout, and replies the peer does not take close it after the write
//! timeout.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::index::{BindError, MessageInfo};
use super::store::{Chunk, Key};
use super::{download, lock, shutdown_requested, ConnSlot, Shared, MESSAGE_ID_TAKEN};
use chatxfer::protocol::messages::{decode_as, name_and_seq, IconUploadReq, UploadRsp};
use chatxfer::protocol::name::name_problem;
use chatxfer::protocol::{frame, ErrorCode, MsgId, HEADER_LEN, MAX_1043_SIZE};

/// Read-ahead while bytes are waiting: a whole default-limit frame fits, so
/// a chunk is one read.
const READ_AHEAD: usize = 64 * 1024;
/// A connection whose socket stays empty this long gives back the read
/// buffer's spare capacity (a stream that pauses briefly keeps it).
const SETTLE: Duration = Duration::from_millis(10);
/// One write carries at most this much (more stays queued for the next).
const BATCH_MAX: usize = 64 * 1024;
/// After shutdown, how long a peer that does not read may hold up the end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Upload chunks a connection has decoded but not yet answered (queued in
/// lanes or being stored): the reader waits beyond this (backpressure, and
/// a bound on the memory one connection holds).
const IN_FLIGHT: u32 = 64;
/// How long an idle lane's worker waits for its next chunk before it ends
/// (a window of chunks keeps one thread busy instead of one hand-off each).
const LANE_LINGER: Duration = Duration::from_millis(20);
/// Lanes kept per connection before idle, unused ones are pruned.
const LANES_PRUNE_AT: usize = 1024;

enum ReadError {
    TooLong {
        id: MsgId,
        len: u32,
    },
    /// The frame or idle timeout ran out.
    TimedOut {
        in_frame: bool,
    },
    Io(io::Error),
}

/// Frames read from the socket into a buffer that holds only what was
/// received: spare capacity is reserved only while bytes are waiting in the
/// socket, and given back when it stays empty for [`SETTLE`].
struct FrameReader {
    buf: Vec<u8>,
    /// First byte not yet handed out.
    start: usize,
    /// Bytes of the last frame handed out, dropped at the next call.
    handed: usize,
}

/// Limits of [`FrameReader::next`].
struct Timeouts {
    limit: usize,
    idle: Duration,
    frame: Duration,
    /// The connection's chunk permits: while some are out, the peer waits
    /// for replies and the idle timeout does not apply.
    in_flight: Arc<Semaphore>,
}

impl Timeouts {
    fn busy(&self) -> bool {
        self.in_flight.available_permits() < IN_FLIGHT as usize
    }
}

impl FrameReader {
    fn new() -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            handed: 0,
        }
    }

    fn avail(&self) -> usize {
        self.buf.len() - self.start
    }

    fn body(&self, r: &Range<usize>) -> &[u8] {
        &self.buf[r.clone()]
    }

    /// Gives back what the buffer holds beyond the bytes received.
    fn release_spare(&mut self) {
        if self.avail() == 0 {
            self.buf = Vec::new();
            self.start = 0;
        } else if self.buf.capacity() > self.avail() {
            self.buf.drain(..self.start);
            self.start = 0;
            self.buf.shrink_to_fit();
        }
    }

    /// Waits until the socket is readable or `deadline` passes.
    async fn wait(&mut self, r: &OwnedReadHalf, deadline: Instant) -> Result<(), ReadError> {
        let settle = (Instant::now() + SETTLE).min(deadline);
        if let Ok(ready) = tokio::time::timeout_at(settle, r.readable()).await {
            return ready.map_err(ReadError::Io);
        }
        self.release_spare();
        match tokio::time::timeout_at(deadline, r.readable()).await {
            Ok(ready) => ready.map_err(ReadError::Io),
            Err(_) => Err(ReadError::TimedOut { in_frame: false }),
        }
    }

    /// Reads until `want` bytes are buffered; `Ok(false)` at EOF. Waiting
    /// ends at `at`, extended by the idle timeout while `idle` says the
    /// connection is busy (`None`: no extension).
    async fn fill(
        &mut self,
        r: &OwnedReadHalf,
        want: usize,
        mut at: Instant,
        idle: Option<&Timeouts>,
    ) -> Result<bool, ReadError> {
        while self.avail() < want {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let need = want - self.avail();
            self.buf.reserve_exact(need.max(READ_AHEAD));
            match r.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => loop {
                    match self.wait(r, at).await {
                        Ok(()) => break,
                        Err(ReadError::TimedOut { .. }) => match idle {
                            Some(t) if t.busy() => at = Instant::now() + t.idle,
                            _ => return Err(ReadError::TimedOut { in_frame: false }),
                        },
                        Err(e) => return Err(e),
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        Ok(true)
    }

    /// The next frame: its id and the range of its body in [`Self::body`].
    /// `Ok(None)`: the peer closed between frames.
    async fn next(
        &mut self,
        r: &OwnedReadHalf,
        t: &Timeouts,
    ) -> Result<Option<(MsgId, Range<usize>)>, ReadError> {
        self.start += std::mem::take(&mut self.handed);
        if self.avail() == 0 && !self.fill(r, 1, Instant::now() + t.idle, Some(t)).await? {
            return Ok(None);
        }
        // The frame's first byte is here: the rest has the frame timeout.
        let frame_end = Instant::now() + t.frame;
        let in_frame = |e| match e {
            ReadError::TimedOut { .. } => ReadError::TimedOut { in_frame: true },
            e => e,
        };
        if !self
            .fill(r, HEADER_LEN, frame_end, None)
            .await
            .map_err(in_frame)?
        {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let header: [u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
            .try_into()
            .map_err(|_| ReadError::Io(io::ErrorKind::InvalidData.into()))?;
        let (id, len) = frame::parse_header(&header);
        if len as u64 > t.limit as u64 {
            return Err(ReadError::TooLong { id, len });
        }
        let total = HEADER_LEN + len as usize;
        if !self
            .fill(r, total, frame_end, None)
            .await
            .map_err(in_frame)?
        {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        self.handed = total;
        Ok(Some((id, self.start + HEADER_LEN..self.start + total)))
    }
}

/// The connection's reply queue, bounded in bytes
/// ([`super::Limits::reply_queue_bytes`]): a sender waits for room, so a
/// peer that does not read holds up its own requests, not server memory.
#[derive(Clone)]
struct Replies {
    tx: mpsc::UnboundedSender<(Vec<u8>, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    max: usize,
}

impl Replies {
    fn new(
        max: usize,
    ) -> (
        Replies,
        mpsc::UnboundedReceiver<(Vec<u8>, OwnedSemaphorePermit)>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let max = max.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let replies = Replies {
            tx,
            budget: Arc::new(Semaphore::new(max)),
            max,
        };
        (replies, rx)
    }

    /// Queues a framed reply; false once the writer is gone.
    async fn send(&self, out: Vec<u8>) -> bool {
        // A reply larger than the whole budget waits for all of it.
        let n = out.len().clamp(1, self.max) as u32;
        let Ok(permit) = self.budget.clone().acquire_many_owned(n).await else {
            return false; // closed by the writer
        };
        self.tx.send((out, permit)).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

pub(crate) async fn serve(
    stream: TcpStream,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    place: ConnSlot,
) {
    shared
        .counters
        .open_connections
        .fetch_add(1, Ordering::Relaxed);
    let peer = stream.peer_addr().ok();
    // Replies are small and latency-bound (the client's window waits on them).
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = Replies::new(shared.limits.reply_queue_bytes);
    let writer = tokio::spawn(write_loop(
        wr,
        rx,
        tx.budget.clone(),
        shared.clone(),
        stop.clone(),
    ));
    let mut conn = Conn {
        shared: shared.clone(),
        tx,
        lanes: HashMap::new(),
        prune_at: LANES_PRUNE_AT,
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT as usize)),
        rt: tokio::runtime::Handle::current(),
    };
    conn.read_loop(&rd, stop, peer).await;
    let Conn {
        tx,
        lanes,
        in_flight,
        ..
    } = conn;
    // Every chunk read is stored and answered (or its reply failed) first.
    let _all = in_flight.acquire_many(IN_FLIGHT).await;
    let mut touched = Vec::new();
    for (key, lane) in lanes {
        let mut st = lock(&lane.state);
        st.closed = true; // a lingering worker ends now
        if st.user {
            touched.push(key);
        }
        drop(st);
        lane.wake.notify_all();
    }
    drop(tx); // the writer drains what is queued (workers too), then closes
    if let Err(e) = writer.await {
        shared.count_join_error(&e);
    }
    drop(rd);
    // The descriptor is closed: the connection's place is free.
    drop(place);
    // Uploads this connection used: save their state and free them if idle.
    let store = shared.store.clone();
    let released = tokio::task::spawn_blocking(move || {
        for key in &touched {
            store.release(key);
        }
    })
    .await;
    if let Err(e) = released {
        shared.count_join_error(&e);
    }
    shared
        .counters
        .open_connections
        .fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(?peer, "connection closed");
}

struct Conn {
    shared: Arc<Shared>,
    tx: Replies,
    /// Upload keys this connection sent chunks for.
    lanes: HashMap<Key, Arc<Lane>>,
    /// `lanes.len()` at which idle lanes without a record are pruned.
    prune_at: usize,
    /// Permits for [`IN_FLIGHT`] chunks; a [`Job`] holds one until answered.
    in_flight: Arc<Semaphore>,
    /// For the lane workers (blocking threads) to wait for reply room.
    rt: tokio::runtime::Handle,
}

/// A chunk decoded and checked by the reader, to be stored by its lane.
struct Job {
    id: MsgId,
    chunk: Chunk,
    /// A completed chat upload goes into the message index under this id.
    message: Option<(i64, MessageInfo)>,
    /// The reply body if the store accepts the chunk.
    ok_body: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

/// The chunks of one upload key on one connection, stored in arrival order
/// by one worker (a blocking-pool thread that runs while there is work and
/// lingers briefly after).
#[derive(Default)]
struct Lane {
    state: Mutex<LaneState>,
    wake: Condvar,
}

#[derive(Default)]
struct LaneState {
    jobs: VecDeque<Job>,
    /// A worker runs (or is about to) and will see `jobs`.
    running: bool,
    /// The connection is closing: the worker ends when `jobs` is empty.
    closed: bool,
    /// The connection counts as a user of the key's record (see
    /// [`super::store::Put::user`]); only the worker changes it.
    user: bool,
}

impl Conn {
    async fn read_loop(
        &mut self,
        rd: &OwnedReadHalf,
        mut stop: watch::Receiver<bool>,
        peer: Option<std::net::SocketAddr>,
    ) {
        let limits = &self.shared.limits;
        let timeouts = Timeouts {
            limit: self.shared.max_body_len,
            idle: limits.idle_timeout,
            frame: limits.frame_timeout,
            in_flight: self.in_flight.clone(),
        };
        let mut reader = FrameReader::new();
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown_requested(&mut stop) => return,
                r = reader.next(rd, &timeouts) => r,
            };
            match next {
                Ok(Some((id, body))) => {
                    if !self.handle_frame(id, reader.body(&body)).await || self.tx.is_closed() {
                        return; // the writer is gone: the peer stopped reading
                    }
                }
                Ok(None) => return,
                Err(ReadError::TooLong { id, len }) => {
                    self.shared
                        .counters
                        .closed_bad_input
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(?peer, %id, len, limit = self.shared.max_body_len,
                        "frame body over the limit; closing the connection");
                    return;
                }
                Err(ReadError::TimedOut { in_frame }) => {
                    self.shared
                        .counters
                        .timed_out
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?peer, in_frame, "read timeout; closing the connection");
                    return;
                }
                Err(ReadError::Io(e)) => {
                    // EOF inside a frame, or a reset: the peer is gone.
                    tracing::debug!(?peer, error = %e, "connection read ended");
                    return;
                }
            }
        }
    }

    /// Handles one frame; false if replies can no longer be sent.
    async fn handle_frame(&mut self, id: MsgId, body: &[u8]) -> bool {
        let reply = match id {
            MsgId::FILE_INFO_SYNC_REQ
            | MsgId::IMG_CHAT_UPLOAD_REQ
            | MsgId::IMG_CHAT_CONTINUE_UPLOAD_REQ => self.upload(id, body).await,
            MsgId::UPLOAD_HEAD_ICON_REQ => self.icon_upload(body).await,
            MsgId::IMG_CHAT_DOWN_INFO_SYNC_REQ
            | MsgId::IMG_CHAT_DOWN_REQ
            | MsgId::DOWN_LOAD_FILE_REQ => self.download(id, body).await,
            _ => {
                self.shared
                    .counters
                    .ignored_frames
                    .fetch_add(1, Ordering::Relaxed);
                return true;
            }
        };
        // No reply on purpose (counted by the handler), or a lane replies.
        let Some((code, body)) = reply else {
            return true;
        };
        match reply_frame(&self.shared, id, code, &body) {
            Some(out) => self.tx.send(out).await,
            None => true,
        }
    }

    /// One chunk request: the reply's code and body.
    async fn upload(&mut self, id: MsgId, body: &[u8]) -> Option<(ErrorCode, Vec<u8>)> {
        use chatxfer::protocol::messages::UploadChunkReq;
        self.shared
            .counters
            .chunks_received
            .fetch_add(1, Ordering::Relaxed);
        let req = match UploadChunkReq::decode(id, body) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%id, error = %e, "undecodable upload request");
                let (name, seq) = name_and_seq(body);
                return Some(self.error(ErrorCode::ErrorJson, name.as_deref(), seq));
            }
        };
        let (name, seq) = (req.name.as_ref(), req.seq);
        if let Some(code) = self.shared.injected(name) {
            return Some(self.error(code, Some(name), Some(seq)));
        }
        let chunk = match self.checked_chunk(ChunkReq {
            uid: req.uid,
            token: req.token.as_deref(),
            name,
            seq,
            md5: &req.md5,
            data: &req.data,
            trans_size: req.trans_size.0,
            total_size: req.total_size.0,
            last: req.last,
        }) {
            Ok(chunk) => chunk,
            Err(reply) => return Some(reply),
        };
        let message = (
            req.message_id,
            MessageInfo::new(req.uid, req.receiver, name),
        );
        let ok_body = UploadRsp::encode_success_for(id.reply(), &req);
        self.enqueue(id, chunk, Some(message), ok_body).await;
        None
    }

    /// Hands a checked chunk to its key's lane (starting the lane's worker
    /// if none runs); waits for a permit first if [`IN_FLIGHT`] chunks are
    /// unanswered. The lane sends the reply.
    async fn enqueue(
        &mut self,
        id: MsgId,
        chunk: Chunk,
        message: Option<(i64, MessageInfo)>,
        ok_body: Vec<u8>,
    ) {
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return; // never closed
        };
        if self.lanes.len() >= self.prune_at {
            // Lanes of keys with no record for this connection (refused
            // chunks of ever new names, say) cost memory only while busy.
            self.lanes.retain(|_, lane| {
                let st = lock(&lane.state);
                st.running || st.user
            });
            self.prune_at = (self.lanes.len() * 2).max(LANES_PRUNE_AT);
        }
        let key = self.shared.store.key(chunk.uid, &chunk.name);
        let lane = self.lanes.entry(key).or_default().clone();
        let job = Job {
            id,
            chunk,
            message,
            ok_body,
            _permit: permit,
        };
        let mut st = lock(&lane.state);
        st.jobs.push_back(job);
        if st.running {
            drop(st);
            lane.wake.notify_one();
            return;
        }
        st.running = true;
        drop(st);
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        let rt = self.rt.clone();
        // Not awaited: the worker catches panics per chunk, and the
        // connection waits for its permits, not for the thread.
        drop(tokio::task::spawn_blocking(move || {
            lane_worker(&shared, &lane, &tx, &rt)
        }));
    }

    /// 1031, one avatar chunk: stored like a chat upload chunk (the store
    /// checks it), the token checked on seq 1. Reply 1032.
    async fn icon_upload(&mut self, body: &[u8]) -> Option<(ErrorCode, Vec<u8>)> {
        self.shared
            .counters
            .chunks_received
            .fetch_add(1, Ordering::Relaxed);
        let req: IconUploadReq = match decode_as(MsgId::UPLOAD_HEAD_ICON_REQ, body) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "undecodable avatar chunk");
                let (name, seq) = name_and_seq(body);
                return Some(self.error(ErrorCode::ErrorJson, name.as_deref(), seq));
            }
        };
        let (name, seq) = (req.name.as_str(), req.seq);
        if let Some(code) = self.shared.injected(name) {
            return Some(self.error(code, Some(name), Some(seq)));
        }
        if req.trans_size > MAX_1043_SIZE || req.total_size > MAX_1043_SIZE {
            // Read with asInt on the deployed server: above i32::MAX it throws.
            return Some(self.error(ErrorCode::ErrorJson, Some(name), Some(seq)));
        }
        let chunk = match self.checked_chunk(ChunkReq {
            uid: req.uid,
            token: req.token.as_deref(),
            name,
            seq,
            md5: &req.md5,
            data: &req.data,
            trans_size: req.trans_size,
            total_size: req.total_size,
            last: req.last,
        }) {
            Ok(chunk) => chunk,
            Err(reply) => return Some(reply),
        };
        let v = serde_json::json!({
            "error": 0, "total_size": req.total_size, "seq": seq, "name": name,
            "trans_size": req.trans_size, "last": req.last, "md5": req.md5,
            "uid": req.uid, "last_seq": req.last_seq,
        });
        let ok_body = serde_json::to_vec(&v).expect("a JSON value always serializes");
        self.enqueue(MsgId::UPLOAD_HEAD_ICON_REQ, chunk, None, ok_body)
            .await;
        None
    }

    /// 1045, 1047 or 1033, on the blocking pool (file reads).
    async fn download(&mut self, id: MsgId, body: &[u8]) -> Option<(ErrorCode, Vec<u8>)> {
        let shared = self.shared.clone();
        let body = body.to_vec();
        match tokio::task::spawn_blocking(move || download::handle(&shared, id, &body)).await {
            Ok(reply) => reply,
            Err(e) => {
                // A bug; the request goes unanswered, the server carries on.
                self.shared.count_join_error(&e);
                None
            }
        }
    }

    /// The checks every upload chunk (chat file or avatar) passes before
    /// it is stored: the uid's token on seq 1, a plain file name, a uid,
    /// base64 data. With a token table (`serve --tokens`) only the uid's
    /// owner may start (or truncate) its upload; later chunks carry no token
    /// in the deployed client, and cannot publish foreign bytes (the md5
    /// check) nor truncate.
    fn checked_chunk(&self, r: ChunkReq<'_>) -> Result<Chunk, (ErrorCode, Vec<u8>)> {
        let refuse = |code| self.error(code, Some(r.name), Some(r.seq));
        if r.seq == 1 {
            if let Err(code) = self.shared.check_token(r.uid, r.token) {
                tracing::info!(uid = r.uid, name = r.name, %code, "upload refused: token");
                return Err(refuse(code));
            }
        }
        if let Some(problem) = name_problem(r.name) {
            tracing::debug!(name = r.name, problem, "refused file name");
            return Err(refuse(ErrorCode::CreateDirFailed));
        }
        if r.uid < 0 {
            return Err(refuse(ErrorCode::UidInvalid));
        }
        let Ok(data) = base64::engine::general_purpose::STANDARD.decode(r.data.as_bytes()) else {
            return Err(refuse(ErrorCode::ErrorJson));
        };
        Ok(Chunk {
            uid: r.uid,
            name: r.name.to_owned(),
            md5: r.md5.to_owned(),
            seq: r.seq,
            trans_size: r.trans_size,
            total_size: r.total_size,
            last: r.last,
            data,
        })
    }

    fn error(&self, code: ErrorCode, name: Option<&str>, seq: Option<u32>) -> (ErrorCode, Vec<u8>) {
        (code, error_body(&self.shared, code, name, seq))
    }
}

fn error_body(shared: &Shared, code: ErrorCode, name: Option<&str>, seq: Option<u32>) -> Vec<u8> {
    if shared.named_errors {
        UploadRsp::encode_error(code, name, seq)
    } else {
        UploadRsp::encode_error(code, None, None)
    }
}

/// The framed reply to request `id`, counted; `None` if the server is silent.
fn reply_frame(shared: &Shared, id: MsgId, code: ErrorCode, body: &[u8]) -> Option<Vec<u8>> {
    let counters = &shared.counters;
    if shared.silent.load(Ordering::Relaxed) {
        counters.replies_dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    counters.replies_sent.fetch_add(1, Ordering::Relaxed);
    if !code.is_success() {
        counters.errors_sent.fetch_add(1, Ordering::Relaxed);
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    frame::encode(id.reply(), body, &mut out);
    Some(out)
}

/// A lane's worker (on the blocking pool): stores its jobs in order and
/// sends each reply, until the lane stays idle for [`LANE_LINGER`] or the
/// connection closes.
fn lane_worker(shared: &Shared, lane: &Lane, tx: &Replies, rt: &tokio::runtime::Handle) {
    loop {
        let (job, user) = {
            let mut st = lock(&lane.state);
            loop {
                if let Some(job) = st.jobs.pop_front() {
                    break (job, st.user);
                }
                if st.closed {
                    st.running = false;
                    return;
                }
                let (guard, waited) = lane
                    .wake
                    .wait_timeout(st, LANE_LINGER)
                    .unwrap_or_else(PoisonError::into_inner);
                st = guard;
                if waited.timed_out() && st.jobs.is_empty() {
                    st.running = false;
                    return;
                }
            }
        };
        let stored = catch_unwind(AssertUnwindSafe(|| store_job(shared, &job, user)));
        let (code, now_user) = stored.unwrap_or_else(|_| {
            // A bug in storage; the connection and the server carry on.
            shared.counters.panics.fetch_add(1, Ordering::Relaxed);
            tracing::error!(name = %job.chunk.name, seq = job.chunk.seq, "chunk storage panicked");
            (ErrorCode::FileWritePermissionFailed, user)
        });
        if now_user && !user {
            lock(&lane.state).user = true;
        }
        let c = &job.chunk;
        let refused;
        let body = if code.is_success() {
            job.ok_body.as_slice()
        } else {
            tracing::debug!(name = %c.name, seq = c.seq, %code, "upload chunk refused");
            refused = error_body(shared, code, Some(&c.name), Some(c.seq));
            refused.as_slice()
        };
        if let Some(out) = reply_frame(shared, job.id, code, body) {
            // Waits for room in the reply queue (a blocking-pool thread, not
            // a runtime worker); fails only once the writer is gone.
            let _ = rt.block_on(tx.send(out));
        }
        // The job's permit goes here, after its reply was queued.
    }
}

/// Stores one job's chunk; a completed chat upload is recorded in the
/// message index under its message id. Returns the reply code and whether
/// the connection now counts as a user of the record.
fn store_job(shared: &Shared, job: &Job, user: bool) -> (ErrorCode, bool) {
    if let (1, Some((id, info))) = (job.chunk.seq, &job.message) {
        // Refused before any byte is stored: the id is another uid's.
        if let Some(owner) = shared.index.owner(*id).filter(|o| *o != info.sender_id) {
            tracing::info!(
                message_id = id,
                uid = info.sender_id,
                owner,
                "upload refused: message id bound to another uid"
            );
            return (MESSAGE_ID_TAKEN, user);
        }
    }
    let put = shared
        .store
        .put_with(&job.chunk, user, job.message.as_ref());
    let mut code = put.result.err().unwrap_or(ErrorCode::Success);
    if let (true, Some((id, info))) = (put.completed, &job.message) {
        // Bound with the publish (positional storage), else bound here.
        let bound = put.bound.unwrap_or_else(|| shared.index.bind(*id, info));
        match bound {
            Ok(()) => {}
            // Another uid completed an upload with this id since seq 1: the
            // file stays under its own uid, but the message keeps its owner.
            Err(BindError::Taken { owner }) => {
                tracing::info!(
                    message_id = id,
                    uid = info.sender_id,
                    owner,
                    "completed upload not indexed: message id bound to another uid"
                );
                code = MESSAGE_ID_TAKEN;
            }
            Err(e @ BindError::Db(_)) => {
                tracing::warn!(message_id = id, error = %e, "cannot write the message index");
            }
        }
    }
    (code, put.user)
}

/// Writes queued replies, as many per write as are waiting. A batch the
/// peer does not take within the write timeout ends the connection.
async fn write_loop(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<(Vec<u8>, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let timeout = shared.limits.write_timeout;
    let mut buf = Vec::new();
    let mut permits = Vec::new();
    while let Some((first, permit)) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        permits.push(permit);
        while buf.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok((more, permit)) => {
                    buf.extend_from_slice(&more);
                    permits.push(permit);
                }
                Err(_) => break,
            }
        }
        match tokio::time::timeout(timeout, write_or_give_up(&mut w, &buf, &mut stop)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reply write failed");
                break;
            }
            Err(_) => {
                shared.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("the peer takes no replies; closing the connection");
                break;
            }
        }
        permits.clear(); // room for more replies
        if buf.capacity() > BATCH_MAX * 2 {
            buf = Vec::new();
        }
    }
    // Senders waiting for room fail now; the reader sees the queue closed.
    budget.close();
    rx.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, w.shutdown()).await;
}

/// `write_all`, unless the server is shutting down and the peer has not
/// taken the bytes within the grace period.
async fn write_or_give_up(
    w: &mut OwnedWriteHalf,
    buf: &[u8],
    stop: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    let write = w.write_all(buf);
    tokio::pin!(write);
    tokio::select! {
        r = &mut write => r,
        _ = shutdown_requested(stop) => match tokio::time::timeout(SHUTDOWN_GRACE, &mut write).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        },
    }
}

/// The fields of an upload chunk request (1041/1037/1043 or 1031) that
/// [`Conn::checked_chunk`] checks.
struct ChunkReq<'a> {
    uid: i64,
    token: Option<&'a str>,
    name: &'a str,
    seq: u32,
    md5: &'a str,
    data: &'a str,
    trans_size: u64,
    total_size: u64,
    last: i64,
}
