//! One connection: a reader that handles requests in arrival order (uploads,
//! avatars and downloads alike), and a writer task that batches the replies.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::index::MessageInfo;
use super::store::{name_problem, Chunk, Key};
use super::{download, shutdown_requested, Shared};
use crate::protocol::messages::{decode_as, IconUploadReq, UploadRsp};
use crate::protocol::{frame, ErrorCode, MsgId, HEADER_LEN, MAX_1043_SIZE};

/// Read buffer: a whole default-limit frame fits, so a chunk is one read.
const READ_BUF: usize = 64 * 1024;
/// Replies queued per connection before the reader waits for the writer.
const REPLY_QUEUE: usize = 256;
/// One write carries at most this much (more stays queued for the next).
const BATCH_MAX: usize = 64 * 1024;
/// After shutdown, how long a peer that does not read may hold up the end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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
        touched: HashSet::new(),
    };
    conn.read_loop(BufReader::with_capacity(READ_BUF, rd), stop, peer)
        .await;
    let Conn { tx, touched, .. } = conn;
    drop(tx); // the writer drains what is queued, then closes
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
    touched: HashSet<Key>,
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
                    if !self.handle_frame(id, &body).await {
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
        // No reply on purpose (counted by the handler).
        let Some((code, body)) = reply else {
            return true;
        };
        let counters = &self.shared.counters;
        if self.shared.silent.load(Ordering::Relaxed) {
            counters.replies_dropped.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        counters.replies_sent.fetch_add(1, Ordering::Relaxed);
        if !code.is_success() {
            counters.errors_sent.fetch_add(1, Ordering::Relaxed);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        frame::encode(id.reply(), &body, &mut out);
        self.tx.send(out).await.is_ok()
    }

    /// One chunk request: the reply's code and body.
    async fn upload(&mut self, id: MsgId, body: &[u8]) -> Option<(ErrorCode, Vec<u8>)> {
        use crate::protocol::messages::UploadChunkReq;
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
        let code = self.store(chunk, Some(message)).await;
        if !code.is_success() {
            tracing::debug!(name, seq, %code, "upload chunk refused");
            return Some(self.error(code, Some(name), Some(seq)));
        }
        let reply = UploadRsp::encode_success_for(id.reply(), &req);
        Some((ErrorCode::Success, reply))
    }

    /// Stores a chunk on the blocking pool; a completed chat upload is
    /// recorded in the message index under its message id.
    async fn store(&mut self, chunk: Chunk, message: Option<(i64, MessageInfo)>) -> ErrorCode {
        let shared = self.shared.clone();
        let key = shared.store.key(chunk.uid, &chunk.name);
        let user = self.touched.contains(&key);
        let stored = tokio::task::spawn_blocking(move || {
            let put = shared.store.put(&chunk, user);
            if let (true, Some((id, info))) = (put.completed, message) {
                if let Err(e) = shared.index.insert(id, info) {
                    tracing::warn!(message_id = id, error = %e, "cannot write the message index");
                }
            }
            put
        })
        .await;
        match stored {
            Ok(put) => {
                if put.user {
                    self.touched.insert(key);
                }
                put.result.err().unwrap_or(ErrorCode::Success)
            }
            Err(e) => {
                // A bug in storage; the connection and the server carry on.
                self.shared.count_join_error(&e);
                ErrorCode::FileWritePermissionFailed
            }
        }
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
        let code = self.store(chunk, None).await;
        if !code.is_success() {
            tracing::debug!(name, seq, %code, "avatar chunk refused");
            return Some(self.error(code, Some(name), Some(seq)));
        }
        let v = serde_json::json!({
            "error": 0, "total_size": req.total_size, "seq": seq, "name": name,
            "trans_size": req.trans_size, "last": req.last, "md5": req.md5,
            "uid": req.uid, "last_seq": req.last_seq,
        });
        let body = serde_json::to_vec(&v).expect("a JSON value always serializes");
        Some((ErrorCode::Success, body))
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
        let body = if self.shared.named_errors {
            UploadRsp::encode_error(code, name, seq)
        } else {
            UploadRsp::encode_error(code, None, None)
        };
        (code, body)
    }
}

/// `name` and `seq` of a body that did not decode as a request, if they are there.
pub(super) fn name_and_seq(body: &[u8]) -> (Option<String>, Option<u32>) {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) else {
        return (None, None);
    };
    let name = map.get("name").and_then(|v| v.as_str()).map(str::to_owned);
    let seq = map
        .get("seq")
        .and_then(|v| v.as_u64())
        .and_then(|s| u32::try_from(s).ok());
    (name, seq)
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
