//! Downloads of chat files (1045/1046, then 1047/1048) and avatars
//! (1033/1034), as transfers of the same engine: same queue, same window,
//! same events.
//!
//! A download first asks the file's name and size (1045, by message id); the
//! deployed server sends no reply at all for an unknown message id, so a 1045
//! unanswered for `info_timeout` fails the download with that explanation. A
//! 0-byte file completes from its 1046 alone. Then requests for consecutive
//! seqs are pipelined up to the window, strictly in order (the server keeps one
//! expected seq per name and rejects any other); each reply is checked (name,
//! seq, length, base64) and written at its offset through a [`ChunkSink`].
//! The md5 is computed as chunks arrive in order and checked at the end when
//! known. An avatar has no 1045: its size arrives with chunk 1, which goes alone.
//!
//! Invariants:
//! * a reply without `data` or `seq` is a failure whatever its `error` says
//!   (the deployed server overwrites most download errors with 0);
//! * bytes are written only at `(seq-1)*32 KiB` of a sink opened with the size
//!   the server announced, and only for the seq requested, so a hostile reply
//!   cannot write outside the file or past its size;
//! * the server's name never decides a path: it must pass
//!   [`name_problem`](crate::protocol::name::name_problem);
//! * after a reconnect a download first *probes* with one request from the
//!   first missing seq; the server's expected seq may be ahead (requests it
//!   answered with replies lost), so a failure of that probe restarts the
//!   download from seq 1 (which resets the server's expectation and re-sends
//!   the token), once per connection;
//! * the server's expected seq is one per *name*, shared by everyone who
//!   downloads that name (and reset by any seq 1): an upload's size probe is a
//!   1047 seq 1 for the upload's name, so a download of a name refuses to
//!   start (at its 1046) while an upload of that name that may probe is
//!   unfinished in this engine, and a probe never goes while a download of its
//!   name is going (the upload restarts from seq 1 instead, or its final
//!   probe waits). Other clients downloading the same name are beyond our
//!   reach: a reset by one of them makes this download restart from seq 1.

use std::time::Instant;

use md5::{Digest, Md5};

use super::error::{Error, Result};
use super::inflight::{Request, RequestKind};
use super::io::ChunkSink;
use super::transfer::Direction;
use super::types::*;
use super::Engine;
use crate::protocol::messages::{
    decode_as, DownChunkReq, DownChunkRsp, DownInfoReq, DownInfoRsp, StrU64,
};
use crate::protocol::name::name_problem;
use crate::protocol::{frame, is_md5_hex, MsgId, DOWNLOAD_CHUNK};

/// A download as the application asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadSpec {
    /// The transfer's unique name in this engine (events use it), e.g. "msg-42".
    pub name: String,
    pub message_id: i64,
    /// The downloading user and their login token (checked on seq 1).
    pub uid: i64,
    pub token: String,
    /// Hex md5 if known (from the chat message); checked at the end.
    pub md5: Option<String>,
    pub priority: u8,
    /// Register the download paused: nothing is asked until `resume`.
    pub hold: bool,
    /// An avatar download (1033/1034) instead of a chat file: no 1045; the
    /// size arrives with the first chunk. `message_id` is then unused.
    pub avatar: Option<AvatarRef>,
    /// What the ChatServer's 1039 notify already told (a picture received
    /// live): no 1045 is sent, the chunks are asked for at once. Checked
    /// as a 1046's would be.
    pub known: Option<KnownFile>,
}

/// A chat file's name on the server, size and sender, as the 1039 notify
/// gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFile {
    pub server_name: String,
    pub size: u64,
    pub sender_id: i64,
    pub receiver_id: i64,
}

impl DownloadSpec {
    /// A chat-file download of `message_id`, with everything else unset.
    pub fn new(name: impl Into<String>, message_id: i64) -> DownloadSpec {
        DownloadSpec {
            name: name.into(),
            message_id,
            uid: 0,
            token: String::new(),
            md5: None,
            priority: 0,
            hold: false,
            avatar: None,
            known: None,
        }
    }
}

/// Which avatar to download, and the fields the deployed client echoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvatarRef {
    /// The avatar's file name on the server (`<dir>/<uid>/<name>`).
    pub name: String,
    pub client_path: String,
    pub req_type: String,
}

/// What 1046 (or an avatar's first chunk) told.
#[derive(Debug, Clone)]
pub(super) struct Info {
    pub server_name: String,
    pub sender_id: i64,
    pub receiver_id: i64,
    pub total: u64,
    pub max_seq: u32,
}

/// Where a download stands.
#[derive(Debug, Clone)]
pub(super) enum DownloadPhase {
    /// Name and size unknown: a 1045 goes first (an avatar's chunk 1 alone).
    AwaitingInfo,
    /// Chunks pipelined in order.
    Receiving(Info),
    /// After a reconnect: one request first; if it fails, restart from seq 1.
    Probing(Info),
    /// A request failed mid-stream: the replies of the abandoned stream are
    /// drained (and ignored), then the download starts again from seq 1.
    Restarting(Info),
}

/// Restarts from seq 1 after a failed request mid-stream, besides the probe
/// after each reconnect. The server keeps one expected seq per name, shared
/// by every connection: requests of a dead connection that it reads late
/// move it under the new one's feet, so a few restarts are normal after a
/// cut; past this many, the failure is the server's and it is reported.
const MAX_RESTARTS: u8 = 3;

pub(super) struct Download {
    pub spec: DownloadSpec,
    pub sink: Option<Box<dyn ChunkSink>>,
    pub phase: DownloadPhase,
    pub next_seq: u32,
    /// Every seq up to this one was received and written.
    pub received: u32,
    hasher: Md5,
    pub bytes: u64,
    /// Restarts from seq 1 after a mid-stream failure (see [`MAX_RESTARTS`]).
    restarts: u8,
}

impl Download {
    fn new(spec: DownloadSpec, sink: Box<dyn ChunkSink>) -> Download {
        Download {
            spec,
            sink: Some(sink),
            phase: DownloadPhase::AwaitingInfo,
            next_seq: 1,
            received: 0,
            hasher: Md5::new(),
            bytes: 0,
            restarts: 0,
        }
    }

    pub fn info(&self) -> Option<&Info> {
        match &self.phase {
            DownloadPhase::AwaitingInfo => None,
            DownloadPhase::Receiving(i)
            | DownloadPhase::Probing(i)
            | DownloadPhase::Restarting(i) => Some(i),
        }
    }

    pub fn total(&self) -> u64 {
        self.info().map_or(0, |i| i.total)
    }

    /// The name replies of this download carry.
    fn reply_name(&self) -> Option<&str> {
        match (self.info(), &self.spec.avatar) {
            (Some(i), _) => Some(&i.server_name),
            (None, Some(a)) => Some(&a.name),
            (None, None) => None,
        }
    }

    fn chunk_len(&self, seq: u32) -> u64 {
        self.total()
            .saturating_sub((seq as u64 - 1) * DOWNLOAD_CHUNK)
            .min(DOWNLOAD_CHUNK)
    }

    fn restart(&mut self) {
        self.next_seq = 1;
        self.received = 0;
        self.hasher = Md5::new();
        self.bytes = 0;
        if let DownloadPhase::Probing(i) | DownloadPhase::Restarting(i) = &self.phase {
            self.phase = DownloadPhase::Receiving(i.clone());
        }
    }

    /// Plans the next connection: continue after the last chunk received,
    /// probing first if anything was received.
    pub fn plan_after_cut(&mut self) {
        if matches!(self.phase, DownloadPhase::Restarting(_)) {
            return self.restart(); // nothing of the old stream is in flight now
        }
        self.next_seq = self.received + 1;
        if let DownloadPhase::Receiving(i) = &self.phase {
            if self.received > 0 {
                self.phase = DownloadPhase::Probing(i.clone());
            }
        }
    }

    pub fn status(&self) -> FileStatus {
        FileStatus {
            name: String::new(),
            state: FileState::Queued,
            total: self.total(),
            acked: self.bytes,
            max_seq: self.info().map_or(0, |i| i.max_seq),
            acked_prefix: self.received,
            next_seq: self.next_seq,
            in_flight: 0,
            md5: self.spec.md5.clone().unwrap_or_default(),
        }
    }
}

impl Engine {
    /// Registers a download (1045, then pipelined 1047s; 1033s for an
    /// avatar). The sink receives the bytes once the server told the file's
    /// name and size. With `spec.hold` it waits, paused, for `resume`.
    pub fn add_download(
        &mut self,
        spec: DownloadSpec,
        sink: Box<dyn ChunkSink>,
        now: Instant,
    ) -> Result<FileId> {
        if let Some(reason) = name_problem(&spec.name) {
            return Err(Error::InvalidName {
                name: spec.name.clone(),
                reason,
            });
        }
        if let Some(m) = spec.md5.as_ref().filter(|m| !is_md5_hex(m)) {
            return Err(Error::InvalidMd5 {
                name: spec.name.clone(),
                md5: m.clone(),
            });
        }
        self.take_name(&spec.name)?;
        let (name, priority, hold) = (spec.name.clone(), spec.priority, spec.hold);
        let dir = Direction::Download(Download::new(spec, sink));
        Ok(self.register(name, priority, hold, dir, now))
    }

    /// The next request of download `id`, if it may send one now.
    pub(super) fn download_next(
        &mut self,
        id: FileId,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<Transmit> {
        let in_flight = self.in_flight.count(id);
        let t = self.transfers.get_mut(&id)?;
        if t.common.state != FileState::Sending {
            return None;
        }
        let d = t.download_mut()?;
        d.sink.as_ref()?;
        if let (DownloadPhase::AwaitingInfo, Some(k), None) =
            (&d.phase, &d.spec.known, &d.spec.avatar)
        {
            // Known from the 1039 notify: no 1045 (the request that crashes
            // the deployed server for a missing file), straight to chunks.
            let k = k.clone();
            self.accept_info(id, k.server_name, k.size, k.sender_id, k.receiver_id, now);
            return self.download_next(id, now, out);
        }
        if matches!(d.phase, DownloadPhase::Restarting(_)) {
            if in_flight > 0 {
                return None;
            }
            d.restart();
        }
        let before = out.len();
        let (msg_id, kind) = match (&d.phase, &d.spec.avatar) {
            (phase, Some(avatar)) => {
                let max_seq = d.info().map_or(1, |i| i.max_seq);
                // The size arrives with chunk 1: it goes alone; a probe too.
                let alone = !matches!(phase, DownloadPhase::Receiving(_));
                if d.next_seq > max_seq || (alone && in_flight > 0) {
                    return None;
                }
                let body = serde_json::json!({
                    "name": avatar.name, "seq": d.next_seq, "trans_size": 0, "total_size": 0,
                    "token": d.spec.token, "uid": d.spec.uid,
                    "client_path": avatar.client_path, "req_type": avatar.req_type,
                });
                let body = serde_json::to_vec(&body).expect("a JSON value serializes");
                frame::encode(MsgId::DOWN_LOAD_FILE_REQ, &body, out);
                (MsgId::DOWN_LOAD_FILE_REQ, RequestKind::DownloadChunk)
            }
            (DownloadPhase::AwaitingInfo, None) => {
                if in_flight > 0 {
                    return None;
                }
                let body = serde_json::to_vec(&DownInfoReq {
                    message_id: d.spec.message_id,
                })
                .expect("plain struct serializes");
                frame::encode(MsgId::IMG_CHAT_DOWN_INFO_SYNC_REQ, &body, out);
                (
                    MsgId::IMG_CHAT_DOWN_INFO_SYNC_REQ,
                    RequestKind::DownloadInfo,
                )
            }
            (
                DownloadPhase::Receiving(info)
                | DownloadPhase::Probing(info)
                | DownloadPhase::Restarting(info),
                None,
            ) => {
                let probing = matches!(d.phase, DownloadPhase::Probing(_));
                if d.next_seq > info.max_seq || (probing && in_flight > 0) {
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
                frame::encode(MsgId::IMG_CHAT_DOWN_REQ, &body, out);
                (MsgId::IMG_CHAT_DOWN_REQ, RequestKind::DownloadChunk)
            }
        };
        let seq = match kind {
            RequestKind::DownloadChunk => {
                d.next_seq += 1;
                d.next_seq - 1
            }
            _ => 0,
        };
        let request = Request {
            transfer: id,
            seq,
            sent_at: now,
            last: false,
            kind,
        };
        Some(self.sent(request, msg_id, out.len() - before))
    }

    /// A 1046: the name and size of a message's file.
    pub(super) fn on_down_info(&mut self, now: Instant, body: &[u8]) {
        let rsp: DownInfoRsp = match decode_as(MsgId::IMG_CHAT_DOWN_INFO_SYNC_RSP, body) {
            Ok(r) => r,
            Err(e) => return self.violation(format!("undecodable 1046: {e}")),
        };
        // By message id; without one, the oldest unanswered 1045.
        let found = self
            .in_flight
            .iter()
            .filter(|(_, r)| r.kind == RequestKind::DownloadInfo)
            .find(|(_, r)| {
                let message_id = self
                    .transfers
                    .get(&r.transfer)
                    .and_then(|t| t.download())
                    .map(|d| d.spec.message_id);
                rsp.message_id.is_none_or(|m| Some(m) == message_id)
            })
            .map(|(no, _)| no);
        let Some(no) = found else {
            self.stats.unknown_replies += 1;
            return;
        };
        let sent = self.replied(no, now);
        let id = sent.transfer;
        if self.is_terminal(id) {
            self.prune_retired();
            return;
        }
        let fail = |message: String| Failure::BadReply { seq: 0, message };
        if !rsp.error.is_success() {
            let failure = Failure::Server {
                code: rsp.error,
                seq: 0,
            };
            return self.fail(id, failure, now);
        }
        let (Some(name), Some(total)) = (rsp.name.clone(), rsp.total_size) else {
            return self.fail(id, fail("1046 without name or total_size".into()), now);
        };
        let sender = rsp.sender_id.unwrap_or(0);
        let receiver = rsp.recv_id.unwrap_or(0);
        self.accept_info(id, name, total.0, sender, receiver, now);
    }

    /// Takes a file's name and size (from a 1046, or known from the 1039
    /// notify) after the same checks, and opens the sink.
    fn accept_info(
        &mut self,
        id: FileId,
        name: String,
        total: u64,
        sender_id: i64,
        receiver_id: i64,
        now: Instant,
    ) {
        let fail = |message: String| Failure::BadReply { seq: 0, message };
        if let Some(why) = name_problem(&name) {
            let message = format!("server file name {name:?} {why}; refusing it");
            return self.fail(id, fail(message), now);
        }
        let busy = self.transfers.values().any(|o| {
            o.common.id != id
                && !o.common.state.is_terminal()
                && o.download()
                    .and_then(|d| d.info())
                    .is_some_and(|i| i.server_name == name)
        });
        if busy {
            // The server keeps one expected seq per name: two transfers of
            // one name would break each other.
            let message = format!("{name:?} is already being downloaded by another transfer");
            return self.fail(id, fail(message), now);
        }
        let config = &self.config;
        let probed = self.transfers.values().any(|o| {
            !o.common.state.is_terminal()
                && o.upload()
                    .is_some_and(|u| u.spec.name == name && u.may_probe(config))
        });
        if probed {
            // Its size probes (1047 seq 1 for the same name) would reset the
            // server's download state of this name under this download.
            let message = format!(
                "{name:?} is being uploaded by this client, whose size probes would reset the \
                 server's download state of that name; download it once the upload ended"
            );
            return self.fail(id, fail(message), now);
        }
        if let Some(message) = too_large(total, self.config.max_download_size) {
            return self.fail(id, fail(message), now);
        }
        let max_seq = total.div_ceil(DOWNLOAD_CHUNK);
        if max_seq > i32::MAX as u64 {
            let message = format!("total_size {total} is beyond what seqs can address");
            return self.fail(id, fail(message), now);
        }
        let info = Info {
            server_name: name,
            sender_id,
            receiver_id,
            total,
            max_seq: max_seq as u32,
        };
        if let Err(message) = self.open_sink(id, info) {
            return self.fail(id, Failure::Local { message }, now);
        }
        self.stats.download_progress += 1;
        if max_seq == 0 {
            // A 0-byte file needs no 1047 (the deployed server cannot serve one).
            self.finish_download(id, now);
        }
    }

    /// Opens the sink with what the server told and enters `Receiving`.
    fn open_sink(&mut self, id: FileId, info: Info) -> std::result::Result<(), String> {
        let Some(d) = self.transfers.get_mut(&id).and_then(|t| t.download_mut()) else {
            return Ok(());
        };
        let opened = d
            .sink
            .as_mut()
            .map(|s| s.open(&info.server_name, info.total));
        d.phase = DownloadPhase::Receiving(info);
        match opened {
            Some(Err(e)) => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    /// A 1048 (chat file) or 1034 (avatar; the same fields plus echoes).
    pub(super) fn on_down_chunk(&mut self, now: Instant, id: MsgId, body: &[u8]) {
        let rsp: DownChunkRsp = match decode_as(id, body) {
            Ok(r) => r,
            Err(e) => return self.violation(format!("undecodable {id}: {e}")),
        };
        // Replies for one name come in order: the oldest request of that
        // name (a download's chunk, or an upload's size probe for a 1048).
        // Without a name (token errors, sent for seq 1 only), the oldest
        // seq-1 request, else the oldest 1047.
        let probes = id == MsgId::IMG_CHAT_DOWN_RSP;
        let is_probe = |r: &Request| probes && r.kind == RequestKind::UploadProbe;
        let oldest_chunk_of = |transfer: FileId| {
            let no = self.in_flight.oldest_of(transfer)?;
            let r = self.in_flight.get(no)?;
            (r.kind == RequestKind::DownloadChunk || is_probe(r)).then_some(no)
        };
        let found = match rsp.name.as_deref() {
            // The oldest request across transfers of that file: a retired
            // download's (see `Engine::retired`) before its successor's.
            Some(n) => self
                .transfers
                .values()
                .filter(|t| match &t.dir {
                    Direction::Download(d) => d.reply_name() == Some(n),
                    Direction::Upload(u) => probes && u.spec.name == n,
                })
                .filter_map(|t| oldest_chunk_of(t.common.id))
                .min(),
            None => {
                let chunk = |r: &Request| r.kind == RequestKind::DownloadChunk;
                let seq_one = self
                    .in_flight
                    .iter()
                    .find(|(_, r)| (chunk(r) && r.seq == 1) || is_probe(r));
                seq_one
                    .or_else(|| self.in_flight.iter().find(|(_, r)| chunk(r)))
                    .map(|(no, _)| no)
            }
        };
        let Some(no) = found else {
            self.stats.unknown_replies += 1;
            return;
        };
        let sent = self.replied(no, now);
        if sent.kind == RequestKind::UploadProbe {
            return self.on_probe_reply(sent, &rsp, now);
        }
        let (tid, seq) = (sent.transfer, sent.seq);
        if self.is_terminal(tid) {
            self.prune_retired();
            return;
        }
        let Some(t) = self.transfers.get_mut(&tid) else {
            return;
        };
        let name = t.common.name.clone();
        let Some(d) = t.download_mut() else { return };
        if matches!(d.phase, DownloadPhase::Restarting(_)) {
            self.stats.stale_replies += 1;
            return; // a reply of the abandoned stream
        }
        if !rsp.is_chunk() {
            self.stats.error_replies += 1;
            if matches!(d.phase, DownloadPhase::Probing(_)) {
                // The server's expected seq was not ours after the reconnect.
                d.restart();
                self.stats.restarts += 1;
                return;
            }
            if d.restarts < MAX_RESTARTS {
                if let DownloadPhase::Receiving(i) = &d.phase {
                    d.restarts += 1;
                    d.phase = DownloadPhase::Restarting(i.clone());
                    self.stats.restarts += 1;
                    tracing::info!(%name, seq, restarts = d.restarts, "download chunk refused; restarting from seq 1");
                    return;
                }
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
            return self.fail(tid, failure, now);
        }
        let bad = |message: String| Failure::BadReply { seq, message };
        if rsp.seq != Some(seq) {
            return self.fail(
                tid,
                bad(match rsp.seq {
                    Some(got) => format!("asked for chunk {seq}, got chunk {got}"),
                    None => format!("asked for chunk {seq}, got a reply without seq"),
                }),
                now,
            );
        }
        let Some(d) = self.transfers.get_mut(&tid).and_then(|t| t.download_mut()) else {
            return;
        };
        if let DownloadPhase::Probing(i) = &d.phase {
            d.phase = DownloadPhase::Receiving(i.clone());
        }
        if d.info().is_none() {
            // An avatar's first chunk tells its size.
            let name = d
                .spec
                .avatar
                .as_ref()
                .map(|a| a.name.clone())
                .unwrap_or_default();
            let Some(total) = rsp.total_size else {
                return self.fail(
                    tid,
                    bad("first avatar chunk without total_size".into()),
                    now,
                );
            };
            if let Some(message) = too_large(total.0, self.config.max_download_size) {
                return self.fail(tid, bad(message), now);
            }
            let max_seq = total.0.div_ceil(DOWNLOAD_CHUNK).max(1);
            if max_seq > i32::MAX as u64 {
                let message = format!("total_size {} is beyond what seqs can address", total.0);
                return self.fail(tid, bad(message), now);
            }
            let info = Info {
                server_name: name,
                sender_id: d.spec.uid,
                receiver_id: 0,
                total: total.0,
                max_seq: max_seq as u32,
            };
            if let Err(message) = self.open_sink(tid, info) {
                return self.fail(tid, Failure::Local { message }, now);
            }
        }
        let Some(d) = self.transfers.get_mut(&tid).and_then(|t| t.download_mut()) else {
            return;
        };
        if seq != d.received + 1 {
            // Only in-order chunks are written (the md5 is streamed).
            let message = format!("chunk {seq} arrived, chunk {} was expected", d.received + 1);
            return self.fail(tid, bad(message), now);
        }
        let expected_len = d.chunk_len(seq) as usize;
        let data = rsp.data.as_deref().unwrap_or_default();
        if data.len() > crate::protocol::chunk::base64_len(DOWNLOAD_CHUNK as usize) {
            let message = format!(
                "chunk {seq}: {} bytes of base64, more than a chunk",
                data.len()
            );
            return self.fail(tid, bad(message), now);
        }
        self.scratch.resize(data.len() / 4 * 3 + 3, 0);
        let n = match base64::Engine::decode_slice(
            &base64::engine::general_purpose::STANDARD,
            data,
            &mut self.scratch,
        ) {
            Ok(n) => n,
            Err(e) => return self.fail(tid, bad(format!("chunk {seq}: invalid base64: {e}")), now),
        };
        if n != expected_len {
            let message = format!("chunk {seq}: {n} bytes, expected {expected_len}");
            return self.fail(tid, bad(message), now);
        }
        let offset = (seq as u64 - 1) * DOWNLOAD_CHUNK;
        let written = d
            .sink
            .as_mut()
            .map(|s| s.write_at(offset, &self.scratch[..n]));
        if let Some(Err(e)) = written {
            return self.fail(
                tid,
                Failure::Local {
                    message: e.to_string(),
                },
                now,
            );
        }
        d.hasher.update(&self.scratch[..n]);
        d.bytes += n as u64;
        d.received = seq;
        self.stats.download_progress += 1;
        let done = d.info().is_some_and(|i| seq == i.max_seq);
        let t = self.transfers.get_mut(&tid).expect("looked up above");
        t.common.progress.dirty = true;
        t.common.last_progress = now;
        if done {
            self.finish_download(tid, now);
        } else if t
            .common
            .progress
            .may_emit(now, self.config.progress_interval)
        {
            self.emit_progress(tid, now);
        }
    }

    fn finish_download(&mut self, id: FileId, now: Instant) {
        let Some(t) = self.transfers.get_mut(&id) else {
            return;
        };
        let (name, started_at) = (t.common.name.clone(), t.common.started_at);
        let Some(d) = t.download_mut() else { return };
        let md5 = format!("{:x}", d.hasher.finalize_reset());
        if let Some(want) = &d.spec.md5 {
            if !want.eq_ignore_ascii_case(&md5) {
                let message = format!(
                    "md5 of the downloaded bytes is {md5}, the message says {want}; removed"
                );
                return self.fail(id, Failure::BadReply { seq: 0, message }, now);
            }
        }
        let path = match d.sink.as_mut().map(|s| s.finish()) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                return self.fail(
                    id,
                    Failure::Local {
                        message: e.to_string(),
                    },
                    now,
                );
            }
            None => return,
        };
        d.sink = None;
        let bytes = d.bytes;
        let avatar = d.spec.avatar.clone();
        let secs = started_at.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        tracing::info!(%name, bytes, secs, %md5, path = %path.display(), "download complete");
        self.emit_progress(id, now);
        self.set_state(id, FileState::Completed);
        self.events.push_back(Event::Saved {
            name: name.clone(),
            path,
            avatar,
        });
        self.events.push_back(Event::Completed { name, md5, bytes });
        self.promote(now);
    }
}

/// Why a download the server announces as `total` bytes is refused.
fn too_large(total: u64, limit: u64) -> Option<String> {
    (total > limit).then(|| {
        format!("the server announces {total} bytes, more than the limit of {limit} (max_download_size)")
    })
}
