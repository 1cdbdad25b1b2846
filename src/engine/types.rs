//! The engine's public value types: configuration, file specs, states, events.

use std::path::PathBuf;
use std::time::Duration;

use super::WindowPolicy;
use crate::protocol::{ErrorCode, DEFAULT_CHUNK_SIZE, MAX_BODY_LEN};

/// How the server stores chunks; decides what is safe after a lost connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerStorage {
    /// The deployed ResourceServer: seq 1 truncates, every other chunk is
    /// appended. A chunk sent twice corrupts the file, so after a lost
    /// connection with unanswered chunks a file restarts from seq 1.
    #[default]
    Appending,
    /// This project's reference server: every chunk is written at
    /// `(seq-1)*chunk`, so re-sending one is harmless and a lost connection
    /// resumes from the first unacknowledged chunk.
    Positional,
}

/// Size probes of uploads to an appending server (a 1047 with seq 1 for the
/// upload's own name, which the deployed server answers with the stored
/// file's size; see `docs/deployed-server-facts.md` §7). Only for chat
/// uploads with a login token; without one nothing is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeConfig {
    /// After a lost connection (or from an inexact journal), continue from
    /// the stored size when it is exactly whole chunks, instead of seq 1.
    pub resume: bool,
    /// After the last chunk's ack, confirm the stored size equals the
    /// file's; a mismatch fails the upload.
    pub verify: bool,
    /// Wait this long after a lost connection before probing, and between
    /// probes until two agree: the deployed server writes chunks on file
    /// workers and answers 1047 on other threads, so chunks it read from the
    /// dead connection may not be written yet.
    pub settle: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            resume: true,
            verify: true,
            settle: Duration::from_millis(500),
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub window: WindowPolicy,
    /// Raw bytes per chunk unless a file says otherwise.
    pub chunk_size: u32,
    /// The server's frame body limit; a chunk size whose frames exceed it is refused.
    pub max_body_len: usize,
    /// Files sending at once; the rest wait in the queue by priority.
    pub max_active_files: usize,
    /// Least time between two progress events of one file (the final 100 % is always sent).
    pub progress_interval: Duration,
    /// A request unanswered this long means the server stopped answering.
    pub ack_timeout: Duration,
    /// A 1045 unanswered this long fails its download: the deployed server
    /// sends nothing for an unknown message id.
    pub info_timeout: Duration,
    pub server_storage: ServerStorage,
    /// A download the server announces as larger than this fails before a
    /// byte is written (a hostile server could otherwise fill the disk).
    pub max_download_size: u64,
    /// A transfer that makes no progress (no chunk acknowledged or received)
    /// for this long while it wants to send fails; `None` never gives up.
    /// Generous: a chat app may sit on a dead network for a while.
    pub give_up_after: Option<Duration>,
    /// An upload whose frames on the wire (base64 and JSON included, so a
    /// clean upload costs about 1.34 times its size) would pass this many
    /// times the file's size (or of one frame, for tiny files) without
    /// completing fails: a server that loses every upload cannot make the
    /// client send without bound. The default 3 allows one restart from
    /// the first chunk at any point.
    pub max_resend_factor: u64,
    /// Size probes against an appending server (used only when an upload
    /// has a token).
    pub probe: ProbeConfig,
    /// Cap on upload bytes per second on the wire (frames included);
    /// `None`: as fast as the path and the window allow. Downloads are not
    /// capped.
    pub rate_limit: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            window: WindowPolicy::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_body_len: MAX_BODY_LEN,
            max_active_files: 32,
            progress_interval: Duration::from_millis(100),
            ack_timeout: Duration::from_secs(30),
            info_timeout: Duration::from_secs(10),
            server_storage: ServerStorage::default(),
            max_download_size: 4 << 30,
            give_up_after: Some(Duration::from_secs(600)),
            max_resend_factor: 3,
            probe: ProbeConfig::default(),
            rate_limit: None,
        }
    }
}

/// An upload as `AddTransFile` registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Unique file name: the server's key and stored file name.
    pub name: String,
    /// Where the bytes come from (for messages; the engine reads through its source).
    pub path: PathBuf,
    /// The uploading user. The deployed server stores under `<out>/<uid>/`
    /// and its receiver notification expects `uid == sender`.
    pub uid: i64,
    pub sender: i64,
    pub receiver: i64,
    pub message_id: i64,
    /// Login token, sent on the first chunk (uploads never check it). With
    /// one, uploads to an appending server probe the stored size after a
    /// lost connection and at the end (see [`ProbeConfig`]).
    pub token: String,
    /// Hex md5 of the whole file; required by the engine (the runtime computes
    /// it streaming at the edge when the caller leaves it out).
    pub md5: Option<String>,
    /// Raw bytes per chunk; the engine's default when `None`.
    pub chunk_size: Option<u32>,
    /// Higher goes first from the queue and gets a larger share of the window.
    pub priority: u8,
    /// Register the upload paused: nothing is sent until `resume` (the Qt
    /// client's `BatchSend`, called once the ChatServer confirmed the message).
    pub hold: bool,
    /// An avatar (1031/1032): stop-and-wait as the server requires, sizes as
    /// ints, the token on seq 1, no chat message fields.
    pub avatar: bool,
}

impl FileSpec {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> FileSpec {
        FileSpec {
            name: name.into(),
            path: path.into(),
            uid: 0,
            sender: 0,
            receiver: 0,
            message_id: 0,
            token: String::new(),
            md5: None,
            chunk_size: None,
            priority: 0,
            hold: false,
            avatar: false,
        }
    }
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileState {
    /// Registered, waiting for a free sending slot or a connection.
    Queued,
    Sending,
    /// Sends nothing new; chunks already in flight still get their replies.
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl FileState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            FileState::Completed | FileState::Failed | FileState::Cancelled
        )
    }
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server answered a chunk with an error code.
    Server { code: ErrorCode, seq: u32 },
    /// The source could not be read or changed while uploading.
    Source { message: String },
    /// Every chunk was sent but the server never confirmed `seq`; against an
    /// appending server sending it again could corrupt the file, so the
    /// library stops and says so.
    Unconfirmed { seq: u32, waited: Duration },
    /// The server's reply was unusable (wrong seq, bad data, a hostile name,
    /// no data, no reply at all to 1045, md5 mismatch of a download), or the
    /// final size probe of an upload found a stored size other than the
    /// file's (or could not get one).
    BadReply { seq: u32, message: String },
    /// The local side failed (the download's file could not be written).
    Local { message: String },
    /// A give-up budget ran out: no progress for too long, or too many bytes
    /// re-sent for one upload. `last_error` is the last server error seen.
    GaveUp {
        reason: String,
        last_error: Option<ErrorCode>,
    },
    /// The library failed inside (a bug, e.g. a panic in the connection
    /// driver): the client stopped and nothing will move this transfer on.
    Internal { message: String },
}

/// Library failure codes, outside the server's range.
pub const CODE_SOURCE: i64 = 2001;
pub const CODE_UNCONFIRMED: i64 = 2002;
pub const CODE_BAD_REPLY: i64 = 2003;
pub const CODE_LOCAL: i64 = 2004;
pub const CODE_GAVE_UP: i64 = 2005;
pub const CODE_INTERNAL: i64 = 2006;

impl Failure {
    /// A numeric code: the server's, or one of the library's 2xxx codes.
    pub fn code(&self) -> i64 {
        match self {
            Failure::Server { code, .. } => code.code(),
            Failure::Source { .. } => CODE_SOURCE,
            Failure::Unconfirmed { .. } => CODE_UNCONFIRMED,
            Failure::BadReply { .. } => CODE_BAD_REPLY,
            Failure::Local { .. } => CODE_LOCAL,
            Failure::GaveUp { .. } => CODE_GAVE_UP,
            Failure::Internal { .. } => CODE_INTERNAL,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Server { code, seq } => write!(f, "server answered chunk {seq} with error {code}"),
            Failure::Source { message } => write!(f, "source: {message}"),
            Failure::Unconfirmed { seq, waited } => write!(
                f,
                "every chunk was sent, but the server did not confirm chunk {seq} within {waited:?}; \
                 not re-sent because the server appends"
            ),
            Failure::BadReply { seq: 0, message } => write!(f, "bad reply from the server: {message}"),
            Failure::BadReply { seq, message } => write!(f, "bad reply from the server (seq {seq}): {message}"),
            Failure::Local { message } => write!(f, "local: {message}"),
            Failure::GaveUp { reason, last_error } => match last_error {
                Some(code) => write!(f, "gave up: {reason}; last server error {code}"),
                None => write!(f, "gave up: {reason}"),
            },
            Failure::Internal { message } => write!(f, "internal error in the library: {message}"),
        }
    }
}

/// What the engine tells the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    StateChanged {
        name: String,
        state: FileState,
    },
    /// Acknowledged bytes; coalesced to one per `progress_interval` per file,
    /// the final one (`acked == total`) always delivered.
    Progress {
        name: String,
        acked: u64,
        total: u64,
        /// Recent acknowledged bytes per second.
        rate: f64,
    },
    Completed {
        name: String,
        md5: String,
        bytes: u64,
    },
    /// A download was renamed into place at `path` (just before `Completed`).
    /// An avatar's carries the request it answers, so the app can route the
    /// picture by `client_path` and `req_type` as the deployed client does.
    Saved {
        name: String,
        path: std::path::PathBuf,
        avatar: Option<super::download::AvatarRef>,
    },
    Failed {
        name: String,
        failure: Failure,
    },
    /// No reply for `waited`: the server or the path stopped answering.
    /// The connection should be recycled (drop it, call `connection_lost`).
    ConnectionStalled {
        waited: Duration,
    },
    /// The server sent a reply that cannot be attributed to any request; the
    /// one-reply-per-request accounting is lost, so the connection should be recycled.
    ProtocolViolation {
        reason: String,
    },
}

/// Counters for tests, logs and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests_sent: u64,
    pub bytes_sent: u64,
    /// Upload chunks acknowledged.
    pub acks: u64,
    /// Download replies that moved a download on: a 1046 with a name and
    /// size, or a chunk written.
    pub download_progress: u64,
    /// Success replies for a seq that was not in flight (duplicates, or after a reset).
    pub duplicate_acks: u64,
    /// Replies naming a file the engine does not know.
    pub unknown_replies: u64,
    /// Replies of one kind naming a transfer of the other (an upload reply
    /// naming a download, say): never applied; the named transfer fails.
    pub wrong_kind_replies: u64,
    pub malformed_replies: u64,
    /// Frames of message ids the upload engine does not consume.
    pub ignored_frames: u64,
    pub error_replies: u64,
    /// Replies to a download's requests that a restart abandoned: ignored.
    pub stale_replies: u64,
    /// Files that restarted from seq 1 (appending server after an uncertain cut, or a lost server record).
    pub restarts: u64,
    /// File bytes sent in upload chunks, resends included.
    pub upload_bytes_sent: u64,
    /// Size probes (1047 seq 1 for an upload's name) sent.
    pub probes: u64,
    /// Uploads that continued from a probed stored size instead of seq 1.
    pub probe_resumes: u64,
}

impl Stats {
    /// Replies that moved some transfer on; a connection that got none
    /// made no progress, whatever else it received.
    pub fn useful_replies(&self) -> u64 {
        self.acks + self.download_progress
    }
}

/// A frame `poll_transmit` appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub file: FileId,
    pub id: crate::protocol::MsgId,
    pub seq: u32,
    pub last: bool,
    /// Bytes appended to the buffer (header included).
    pub len: usize,
}

/// A transfer's handle inside one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u64);

/// Which chunks of a transfer the server acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckRecord {
    /// Every seq up to this one is acknowledged.
    pub acked_prefix: u32,
    /// Acknowledged seqs above the prefix (a positional server only).
    pub acked_beyond: Vec<u32>,
    /// Requests sent and unanswered when the record was taken: if not 0, an
    /// appending server may hold more than the record says.
    pub in_flight: usize,
}

/// A snapshot of one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    pub name: String,
    pub state: FileState,
    pub total: u64,
    pub acked: u64,
    pub max_seq: u32,
    /// Every seq up to this one is acknowledged.
    pub acked_prefix: u32,
    /// The next seq to send.
    pub next_seq: u32,
    pub in_flight: usize,
    pub md5: String,
}
