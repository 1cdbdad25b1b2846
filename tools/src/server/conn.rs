//! One connection: a reader that decodes requests in arrival order, one
//! *lane* per upload key whose worker thread stores that key's chunks in
//! order (different keys in parallel), and a writer task that batches the
//! replies. Downloads are handled by the reader, in order.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::index::MessageInfo;
use super::store::{Chunk, Key};
use super::{download, lock, shutdown_requested, Shared};
use chatxfer::protocol::messages::{decode_as, name_and_seq, IconUploadReq, UploadRsp};
use chatxfer::protocol::name::name_problem;
use chatxfer::protocol::{frame, ErrorCode, MsgId, HEADER_LEN, MAX_1043_SIZE};

/// Read buffer: a whole default-limit frame fits, so a chunk is one read.
const READ_BUF: usize = 64 * 1024;
/// Replies queued per connection before the reader waits for the writer.
const REPLY_QUEUE: usize = 256;
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
    TooLong { id: MsgId, len: u32 },
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Reads one frame into `body` (reused; it grows only after the length was
/// checked). `Ok(None)`: the peer closed between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    body: &mut Vec<u8>,
    limit: usize,
) -> Result<Option<MsgId>, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    let first = r.read(&mut header).await?;
    if first == 0 {
        return Ok(None);
    }
    r.read_exact(&mut header[first..]).await?;
    let (id, len) = frame::parse_header(&header);
    if len as u64 > limit as u64 {
        return Err(ReadError::TooLong { id, len });
    }
    body.clear();
    body.resize(len as usize, 0);
    r.read_exact(body).await?;
    Ok(Some(id))
}

pub(crate) async fn serve(stream: TcpStream, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    shared
        .counters
        .open_connections
        .fetch_add(1, Ordering::Relaxed);
    let peer = stream.peer_addr().ok();
    // Replies are small and latency-bound (the client's window waits on them).
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    let writer = tokio::spawn(write_loop(wr, rx, stop.clone()));
    let mut conn = Conn {
        shared: shared.clone(),
        tx,
        lanes: HashMap::new(),
        prune_at: LANES_PRUNE_AT,
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT as usize)),
    };
    conn.read_loop(BufReader::with_capacity(READ_BUF, rd), stop, peer)
        .await;
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
    tx: mpsc::Sender<Vec<u8>>,
    /// Upload keys this connection sent chunks for.
    lanes: HashMap<Key, Arc<Lane>>,
    /// `lanes.len()` at which idle lanes without a record are pruned.
    prune_at: usize,
    /// Permits for [`IN_FLIGHT`] chunks; a [`Job`] holds one until answered.
    in_flight: Arc<Semaphore>,
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
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
        mut stop: watch::Receiver<bool>,
        peer: Option<std::net::SocketAddr>,
    ) {
        let mut body = Vec::new();
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown_requested(&mut stop) => return,
                r = read_frame(&mut reader, &mut body, self.shared.max_body_len) => r,
            };
            match next {
                Ok(Some(id)) => {
                    if !self.handle_frame(id, &body).await || self.tx.is_closed() {
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
            Some(out) => self.tx.send(out).await.is_ok(),
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
        if let Some(problem) = name_problem(name) {
            tracing::debug!(name, problem, "refused file name");
            return Some(self.error(ErrorCode::CreateDirFailed, Some(name), Some(seq)));
        }
        if req.uid < 0 {
            return Some(self.error(ErrorCode::UidInvalid, Some(name), Some(seq)));
        }
        let Ok(data) = base64::engine::general_purpose::STANDARD.decode(req.data.as_bytes()) else {
            return Some(self.error(ErrorCode::ErrorJson, Some(name), Some(seq)));
        };
        let chunk = Chunk {
            uid: req.uid,
            name: name.to_owned(),
            md5: req.md5.to_string(),
            seq,
            trans_size: req.trans_size.0,
            total_size: req.total_size.0,
            last: req.last,
            data,
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
        // Not awaited: the worker catches panics per chunk, and the
        // connection waits for its permits, not for the thread.
        drop(tokio::task::spawn_blocking(move || {
            lane_worker(&shared, &lane, &tx)
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
        if seq == 1 {
            if let Err(code) = self.shared.check_token(req.uid, req.token.as_deref()) {
                return Some(self.error(code, Some(name), Some(seq)));
            }
        }
        if let Some(problem) = name_problem(name) {
            tracing::debug!(name, problem, "refused avatar name");
            return Some(self.error(ErrorCode::CreateDirFailed, Some(name), Some(seq)));
        }
        if req.uid < 0 {
            return Some(self.error(ErrorCode::UidInvalid, Some(name), Some(seq)));
        }
        let Ok(data) = base64::engine::general_purpose::STANDARD.decode(req.data.as_bytes()) else {
            return Some(self.error(ErrorCode::ErrorJson, Some(name), Some(seq)));
        };
        let chunk = Chunk {
            uid: req.uid,
            name: name.to_owned(),
            md5: req.md5.clone(),
            seq,
            trans_size: req.trans_size,
            total_size: req.total_size,
            last: req.last,
            data,
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
fn lane_worker(shared: &Shared, lane: &Lane, tx: &mpsc::Sender<Vec<u8>>) {
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
            // Fails only once the writer is gone (the reader stops then).
            let _ = tx.blocking_send(out);
        }
        // The job's permit goes here, after its reply was queued.
    }
}

/// Stores one job's chunk; a completed chat upload is recorded in the
/// message index under its message id. Returns the reply code and whether
/// the connection now counts as a user of the record.
fn store_job(shared: &Shared, job: &Job, user: bool) -> (ErrorCode, bool) {
    let put = shared.store.put(&job.chunk, user);
    if let (true, Some((id, info))) = (put.completed, &job.message) {
        if let Err(e) = shared.index.insert(*id, info.clone()) {
            tracing::warn!(message_id = id, error = %e, "cannot write the message index");
        }
    }
    (put.result.err().unwrap_or(ErrorCode::Success), put.user)
}

/// Writes queued replies, as many per write as are waiting.
async fn write_loop(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = Vec::with_capacity(BATCH_MAX);
    while let Some(first) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        while buf.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = write_or_give_up(&mut w, &buf, &mut stop).await {
            tracing::debug!(error = %e, "reply write failed");
            return; // dropping rx tells the reader to stop
        }
    }
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
