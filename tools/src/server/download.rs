//! Downloads: 1045 (message info), 1047 (chat file chunk) and 1033 (avatar
//! chunk), as the deployed server's download worker serves them, with the
//! test faults of [`DownloadFault`].
//!
//! Everything here is blocking (small file reads); the connection task runs
//! it on tokio's blocking pool, one request at a time, so the replies of a
//! connection leave in request order.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{json, Value};

use super::fsdir::{is_link_refusal, Dir, Root};
use super::{lock, Shared, LINK_REFUSED};
use chatxfer::protocol::messages::{
    decode_as, name_and_seq, AvatarDownReq, DownChunkReq, DownInfoReq,
};
use chatxfer::protocol::name::name_problem;
use chatxfer::protocol::{ErrorCode, MsgId};
use chatxfer::runtime::files::read_exact_at;

/// Download chunk size: `MAX_FILE_LEN` of the deployed server, fixed.
pub const DOWNLOAD_CHUNK: u64 = 32_768;

/// Test support: ways the server misbehaves on the downloads of one name
/// (set with [`super::ServerHandle::set_download_fault`]). The request is
/// processed as usual (the expected seq moves on); only the reply changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadFault {
    /// Chunk replies (1048/1034) carry `seq + 1` instead of the seq served.
    WrongSeq,
    /// Chunk replies carry `data` that is not base64.
    InvalidBase64,
    /// Chunk replies carry the chunk followed by 1,024 more bytes, so the
    /// decoded data of a full chunk is longer than 32 KiB (the frame still
    /// fits the 51,200-byte limit).
    OversizedData,
    /// Chunk replies carry only the first half of the chunk.
    TruncatedData,
    /// The 1046 for a message of this name reports this `name` instead
    /// (e.g. `"../../etc/passwd"` or `"/abs/path"`).
    HostileInfoName(String),
    /// No reply at all to 1045, 1047 or 1033 for this name.
    DropReplies,
    /// No reply to the chunk request for this seq, once (then the fault
    /// clears itself).
    DropReply { seq: u32 },
}

/// A chunk read for a reply.
struct Served {
    data: Vec<u8>,
    total: u64,
    /// Bytes up to the end of this chunk.
    current: u64,
    is_last: bool,
}

/// Per-name download state and faults.
pub(crate) struct Downloads {
    root: Arc<Root>,
    /// The next seq each name expects (absent: 1). One per name, shared by
    /// every downloader of it and by 1047 and 1033, as the deployed
    /// `file_download_<name>` key.
    expected: Mutex<HashMap<String, u32>>,
    faults: Mutex<HashMap<String, DownloadFault>>,
}

impl Downloads {
    pub fn new(root: Arc<Root>) -> Downloads {
        Downloads {
            root,
            expected: Mutex::new(HashMap::new()),
            faults: Mutex::new(HashMap::new()),
        }
    }

    pub fn set_fault(&self, name: &str, fault: Option<DownloadFault>) {
        let mut faults = lock(&self.faults);
        match fault {
            Some(f) => faults.insert(name.to_owned(), f),
            None => faults.remove(name),
        };
    }

    fn fault(&self, name: &str) -> Option<DownloadFault> {
        lock(&self.faults).get(name).cloned()
    }

    /// The fault for a chunk reply of `name`/`seq`; a one-shot
    /// [`DownloadFault::DropReply`] for this seq is used up.
    fn take_fault(&self, name: &str, seq: u32) -> Option<DownloadFault> {
        let mut faults = lock(&self.faults);
        let f = faults.get(name).cloned();
        if f == Some(DownloadFault::DropReply { seq }) {
            faults.remove(name);
        }
        f
    }

    /// The directory of `uid` if `uid` and `name` are safe (one component
    /// each, inside the root), opened without following a link.
    fn dir(&self, uid: i64, name: &str) -> Result<Dir, ErrorCode> {
        if uid < 0 || name_problem(name).is_some() {
            return Err(ErrorCode::FileNotExists);
        }
        self.root.uid_dir(uid, false).map_err(|e| read_error(&e))
    }

    /// Size of a stored file, for 1046.
    fn size(&self, uid: i64, name: &str) -> Result<u64, ErrorCode> {
        match self.dir(uid, name)?.size(name) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(ErrorCode::FileNotExists),
            Err(e) => Err(read_error(&e)),
        }
    }

    /// Reads chunk `seq` (1-based, 32 KiB each) of `<root>/<uid>/<name>`.
    fn read(&self, uid: i64, name: &str, seq: u32) -> Result<Served, ErrorCode> {
        let file = self
            .dir(uid, name)?
            .open_read(name)
            .map_err(|e| read_error(&e))?;
        let meta = file.metadata().map_err(|_| ErrorCode::FileReadFailed)?;
        let total = meta.len();
        let offset = u64::from(seq - 1) * DOWNLOAD_CHUNK;
        if offset >= total {
            return Err(ErrorCode::FileOffsetInvalid);
        }
        let len = (total - offset).min(DOWNLOAD_CHUNK);
        let mut data = vec![0u8; len as usize];
        read_exact_at(&file, &mut data, offset).map_err(|e| {
            tracing::warn!(uid, name, seq, error = %e, "download read failed");
            ErrorCode::FileReadFailed
        })?;
        Ok(Served {
            data,
            total,
            current: offset + len,
            is_last: offset + len == total,
        })
    }

    /// One chunk request: checks the seq against the name's expected seq
    /// (seq 1 always restarts), reads, and moves the expectation on.
    fn serve(&self, uid: i64, name: &str, seq: u32) -> Result<Served, ErrorCode> {
        if seq == 0 {
            return Err(ErrorCode::FileSeqInvalid);
        }
        let read = self.read(uid, name, seq);
        let mut expected = lock(&self.expected);
        if seq != 1 && expected.get(name).copied().unwrap_or(1) != seq {
            return Err(ErrorCode::FileSeqInvalid);
        }
        match &read {
            Ok(c) if !c.is_last => {
                expected.insert(name.to_owned(), seq + 1);
            }
            // Done, or seq 1 failed: the name starts from seq 1 again.
            Ok(_) => {
                expected.remove(name);
            }
            Err(_) if seq == 1 => {
                expected.remove(name);
            }
            Err(_) => {}
        }
        read
    }
}

/// The code for a failed open or stat of a stored file or its directory.
fn read_error(e: &io::Error) -> ErrorCode {
    if is_link_refusal(e) {
        tracing::warn!(error = %e, "download refused: a link or a non-file in the store");
        return LINK_REFUSED;
    }
    match e.kind() {
        io::ErrorKind::NotFound => ErrorCode::FileNotExists,
        io::ErrorKind::InvalidInput => ErrorCode::FileNotExists,
        _ => ErrorCode::FileReadPermissionFailed,
    }
}

fn to_body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value always serializes")
}

fn is_token_error(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::TokenInvalid | ErrorCode::UidInvalid)
}

/// The reply's `data` (base64) and `seq`, bent by a fault.
fn chunk_payload(c: &Served, seq: u32, fault: Option<&DownloadFault>) -> (String, u32) {
    let b64 = &base64::engine::general_purpose::STANDARD;
    match fault {
        Some(DownloadFault::WrongSeq) => (b64.encode(&c.data), seq.wrapping_add(1)),
        Some(DownloadFault::InvalidBase64) => ("@@ not base64 @@".to_owned(), seq),
        Some(DownloadFault::OversizedData) => {
            let mut d = c.data.clone();
            d.extend(std::iter::repeat_n(0xA5u8, 1024));
            (b64.encode(&d), seq)
        }
        Some(DownloadFault::TruncatedData) => (b64.encode(&c.data[..c.data.len() / 2]), seq),
        _ => (b64.encode(&c.data), seq),
    }
}

impl Shared {
    /// Seq 1 of a download or avatar upload: the token of `uid`, if the
    /// server has a token table (1011: no token for the uid, 1010: another).
    pub(crate) fn check_token(&self, uid: i64, token: Option<&str>) -> Result<(), ErrorCode> {
        let tokens = lock(&self.tokens);
        let Some(table) = tokens.as_ref() else {
            return Ok(());
        };
        match table.get(&uid) {
            None => Err(ErrorCode::UidInvalid),
            Some(t) if Some(t.as_str()) == token => Ok(()),
            Some(_) => Err(ErrorCode::TokenInvalid),
        }
    }

    fn count(&self, f: impl FnOnce(&super::Counters) -> &std::sync::atomic::AtomicU64) {
        f(&self.counters).fetch_add(1, Ordering::Relaxed);
    }

    fn count_served(&self, c: &Served) {
        self.counters
            .download_bytes
            .fetch_add(c.data.len() as u64, Ordering::Relaxed);
        if c.is_last {
            self.count(|c| &c.downloads_completed);
        }
    }
}

/// Handles a 1045, 1047 or 1033: the reply's code and body, or `None` for
/// no reply (counted here).
pub(crate) fn handle(shared: &Shared, id: MsgId, body: &[u8]) -> Option<(ErrorCode, Vec<u8>)> {
    shared.count(|c| &c.download_requests);
    match id {
        MsgId::IMG_CHAT_DOWN_INFO_SYNC_REQ => info(shared, body),
        MsgId::IMG_CHAT_DOWN_REQ => chat_chunk(shared, body),
        MsgId::DOWN_LOAD_FILE_REQ => avatar_chunk(shared, body),
        _ => None,
    }
}

/// 1045 -> 1046. Unknown or unreadable message ids get no reply, as deployed.
fn info(shared: &Shared, body: &[u8]) -> Option<(ErrorCode, Vec<u8>)> {
    shared.count(|c| &c.message_info_requests);
    let found = decode_as::<DownInfoReq>(MsgId::IMG_CHAT_DOWN_INFO_SYNC_REQ, body)
        .ok()
        .and_then(|req| Some((req.message_id, shared.index.get(req.message_id)?)));
    let Some((message_id, info)) = found else {
        shared.count(|c| &c.unknown_messages);
        tracing::debug!("1045 for an unknown message id: no reply");
        return None;
    };
    let fault = shared.downloads.fault(&info.name);
    if fault == Some(DownloadFault::DropReplies) {
        shared.count(|c| &c.replies_dropped);
        return None;
    }
    match shared.downloads.size(info.sender_id, &info.name) {
        Ok(size) => {
            let name = match fault {
                Some(DownloadFault::HostileInfoName(n)) => n,
                _ => info.name,
            };
            let v = json!({
                "error": 0, "message_id": message_id, "thread_id": info.thread_id,
                "sender_id": info.sender_id, "recv_id": info.recv_id, "name": name,
                "msg_type": info.msg_type, "status": info.status,
                "total_size": size.to_string(),
            });
            Some((ErrorCode::Success, to_body(&v)))
        }
        // The deployed server crashes here (file_size throws).
        Err(code) => {
            let mut v = json!({ "error": code.code() });
            if shared.named_errors {
                v["message_id"] = message_id.into();
                v["name"] = info.name.into();
            }
            Some((code, to_body(&v)))
        }
    }
}

/// 1047 -> 1048.
fn chat_chunk(shared: &Shared, body: &[u8]) -> Option<(ErrorCode, Vec<u8>)> {
    let req = match decode_as::<DownChunkReq>(MsgId::IMG_CHAT_DOWN_REQ, body) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable 1047");
            return undecodable(shared, body);
        }
    };
    let error = |code: ErrorCode| {
        let v = if is_token_error(code) {
            if shared.named_errors {
                json!({ "error": code.code(), "name": req.name, "seq": req.seq })
            } else {
                json!({ "error": code.code() })
            }
        } else if shared.named_errors {
            json!({ "error": code.code(), "name": req.name, "seq": req.seq,
                "sender_id": req.sender_id, "receiver_id": req.receiver_id })
        } else {
            // The deployed overwrite: error 0, no data, no seq.
            json!({ "error": 0, "name": req.name, "sender_id": req.sender_id,
                "receiver_id": req.receiver_id })
        };
        tracing::debug!(name = %req.name, seq = req.seq, %code, "download chunk refused");
        Some((code, to_body(&v)))
    };
    let (c, data, seq) = match serve(
        shared,
        req.uid,
        req.sender_id,
        &req.name,
        req.seq,
        &req.token,
    ) {
        Ok(Some(served)) => served,
        Ok(None) => return None,
        Err(code) => return error(code),
    };
    let v = json!({
        "error": 0, "data": data, "seq": seq, "total_size": c.total.to_string(),
        "current_size": c.current.to_string(), "is_last": c.is_last, "name": req.name,
        "sender_id": req.sender_id, "receiver_id": req.receiver_id,
    });
    Some((ErrorCode::Success, to_body(&v)))
}

/// A 1001 for a body that does not decode (named: with what could be read of
/// `name` and `seq`), so every request still gets one reply.
fn undecodable(shared: &Shared, body: &[u8]) -> Option<(ErrorCode, Vec<u8>)> {
    let (name, seq) = name_and_seq(body);
    let mut v = json!({ "error": ErrorCode::ErrorJson.code() });
    if shared.named_errors {
        if let Some(n) = name {
            v["name"] = n.into();
        }
        if let Some(s) = seq {
            v["seq"] = s.into();
        }
    }
    Some((ErrorCode::ErrorJson, to_body(&v)))
}

/// The step 1047 and 1033 share: injected errors, the token on seq 1, the
/// per-name expected seq and the read, test faults. `Ok(None)`: the reply is
/// dropped (a fault); `Ok(Some((chunk, base64, seq to report)))`: serve it.
fn serve(
    shared: &Shared,
    uid: i64,
    owner: i64,
    name: &str,
    seq: u32,
    token: &str,
) -> Result<Option<(Served, String, u32)>, ErrorCode> {
    if let Some(code) = shared.injected(name) {
        return Err(code);
    }
    if seq == 1 {
        shared.check_token(uid, Some(token))?;
    }
    let served = shared.downloads.serve(owner, name, seq);
    let fault = shared.downloads.take_fault(name, seq);
    if drops(&fault, seq) {
        shared.count(|c| &c.replies_dropped);
        return Ok(None);
    }
    let c = served?;
    shared.count_served(&c);
    let (data, seq) = chunk_payload(&c, seq, fault.as_ref());
    Ok(Some((c, data, seq)))
}

/// True if `fault` drops the reply to `seq`.
fn drops(fault: &Option<DownloadFault>, seq: u32) -> bool {
    match fault {
        Some(DownloadFault::DropReplies) => true,
        Some(DownloadFault::DropReply { seq: s }) => *s == seq,
        _ => false,
    }
}

/// 1033 -> 1034. Errors keep their codes, as deployed.
fn avatar_chunk(shared: &Shared, body: &[u8]) -> Option<(ErrorCode, Vec<u8>)> {
    let req = match decode_as::<AvatarDownReq>(MsgId::DOWN_LOAD_FILE_REQ, body) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable 1033");
            return undecodable(shared, body);
        }
    };
    let error = |code: ErrorCode| {
        let mut v = json!({ "error": code.code() });
        if !is_token_error(code) || shared.named_errors {
            v["name"] = req.name.as_str().into();
            v["client_path"] = req.client_path.as_str().into();
            v["req_type"] = req.req_type.as_str().into();
        }
        if shared.named_errors {
            v["seq"] = req.seq.into();
        }
        tracing::debug!(name = %req.name, seq = req.seq, %code, "avatar download refused");
        Some((code, to_body(&v)))
    };
    let (c, data, seq) = match serve(shared, req.uid, req.uid, &req.name, req.seq, &req.token) {
        Ok(Some(served)) => served,
        Ok(None) => return None,
        Err(code) => return error(code),
    };
    let v = json!({
        "error": 0, "data": data, "seq": seq, "total_size": c.total.to_string(),
        "current_size": c.current.to_string(), "is_last": c.is_last,
        "client_path": req.client_path, "name": req.name, "req_type": req.req_type,
    });
    Some((ErrorCode::Success, to_body(&v)))
}
