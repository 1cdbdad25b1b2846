//! The reference ResourceServer: the server half of `shared/PROTOCOL.md`
//! (chat uploads, avatars, downloads), wire-compatible with the deployed C++
//! server (replies carry the same fields with the same JSON types), with the
//! storage the design article proposes, done so that order, duplicates,
//! restarts and hostile input do no harm.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use chatxfer_tools::server::{start, ServerConfig};
//! let server = start("127.0.0.1:0", ServerConfig::new("/srv/chat-files")).await?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Connections
//! One task per connection reads frames into a buffer that holds the bytes
//! received and no more (a header announcing 51,200 bytes costs nothing
//! until they arrive; a connection that goes quiet gives back its spare
//! capacity). The header's length is checked against
//! [`ServerConfig::max_body_len`] first: a longer body closes the
//! connection without a reply, as deployed. The reader decodes and
//! checks requests in arrival order and keeps reading while chunks are
//! stored: an upload chunk (1041/1037/1043/1031) that passes the decode-time
//! checks goes to its key's *lane* (one per `(uid, name)`, the record's key,
//! per connection), whose worker on tokio's blocking pool stores that lane's
//! chunks one after the other in arrival order and sends their replies; the
//! lanes of different files run in parallel. At most 64 chunks per connection
//! are decoded but unanswered; beyond that the reader waits (backpressure).
//! So replies for one name come back in request order, while replies of
//! different names may interleave (as from the deployed server's workers;
//! the client matches them by name). Errors decided at decode time (bad JSON
//! or base64, a refused name or uid, an injected error, a bad token) are
//! replied at once by the reader, as the deployed logic worker does.
//! Downloads are handled by the reader itself, one at a time, so their
//! replies keep request order (pipelined downloads included). A closing
//! connection waits until every chunk it read is stored and answered before
//! it releases its records. Replies go through one writer task per
//! connection, which writes everything queued in one go; the queue is
//! bounded in bytes ([`Limits::reply_queue_bytes`]), so a peer that does not
//! read stops being served, and is dropped after [`Limits::write_timeout`].
//! Served: 1041/1037/1043 (chat upload), 1031 (avatar upload),
//! 1045/1047 (chat download), 1033 (avatar download); other ids are dropped
//! silently, like the deployed server.
//!
//! # Limits ([`Limits`], `chatxfer serve` flags)
//! * Connections: [`Limits::max_connections`] in total and
//!   [`Limits::max_connections_per_ip`] per address; one over a limit is
//!   accepted and closed at once, so the accept loop keeps draining the
//!   backlog and other peers still get in.
//! * Time: a started frame must complete within [`Limits::frame_timeout`];
//!   a connection with nothing received, no frame started and no chunk in
//!   progress closes after [`Limits::idle_timeout`].
//! * Descriptors: at most [`Limits::max_open_parts`] `.part` files stay
//!   open; the least recently used are closed and reopened on demand.
//! * Uploads: a uid holds at most [`Limits::max_unfinished_per_uid`]
//!   unfinished uploads, the server [`Limits::max_unfinished_total`]
//!   ([`TOO_MANY_UPLOADS`] beyond); one without a chunk
//!   for [`Limits::upload_expiry`] (3,600 s, as the deployed record) is
//!   forgotten and its `.part` and `.state` removed, also those found on
//!   disk at start (their clock starts at the file's last change).
//! * Disk: a new upload's declared size plus [`Limits::min_free_space`]
//!   must fit the file system's free space ([`NO_SPACE`]), less what the
//!   other unfinished uploads declared and have not written yet (their
//!   `.part` files are sparse until written), so several large uploads
//!   started together cannot fill the disk between them. Uploads found on
//!   disk at start promise nothing (their sizes are not re-read).
//!
//! # Storage ([`Storage::Positional`], the default)
//! * Seq 1 fixes the upload's geometry: chunk size = chunk 1's length (the
//!   whole size for a one-chunk file), `max_seq = ceil(total / chunk)`. It
//!   creates `<dir>/<uid>/.<name>.part`, truncated and preallocated to
//!   `total_size` (sparse where the file system allows).
//! * Chunk `seq` is written at `(seq-1)*chunk` with a positional write, so
//!   order and duplicates do no harm. One mutex per record: one writer per
//!   file (several connections' lanes may send chunks of the same file).
//! * A seq 1 with the same sizes and md5 as the known upload is a duplicate
//!   (or a client restarting the same file): chunk 1 is rewritten and the
//!   chunks already received are kept. Any other seq 1 starts afresh.
//! * When every seq `1..=max_seq` is in, the md5 of the file is compared with
//!   the announced one (the in-order prefix is hashed as it arrives, on the
//!   file's own hashing thread for files of 8 chunks or more, see
//!   `hashing`; only out-of-order parts are read back). A match is published
//!   durably before its chunk is answered: its data synced, renamed to
//!   `<dir>/<uid>/<name>`, the directory synced, and its message id
//!   committed to the index in the same batch (while the directory syncs);
//!   uploads that complete close together share these syncs and that
//!   commit (a group commit, see `publish` and `group`). A failed sync
//!   or rename answers [`ErrorCode::FileWritePermissionFailed`] (never
//!   100 %) and drops the upload, so its client sends it again from seq 1.
//!   A mismatch deletes the `.part` and publishes nothing.
//! * A late chunk of a published upload (same md5, consistent sizes) is
//!   acknowledged without a write while the record is in memory.
//! * A record stays in memory while any open connection that used it is
//!   open (each connection counts once as a user of each record it used),
//!   and goes when the last of them closes. So an old connection whose close
//!   the server sees late (a cut resets the client at once; the server may
//!   see the EOF much later) never takes the record away from the new
//!   connection that restarted the file: for a published record that would
//!   turn the new connection's next chunk into a 1012. A published record
//!   that did go (nobody used it any more) answers a late chunk with 1012,
//!   and the client's restart from seq 1 republishes the same bytes.
//!
//! Resume state, `<dir>/<uid>/.<name>.state` (JSON: sizes, chunk, md5,
//! received seq ranges), **exists only while it is exact**: it is written
//! (data fsynced first, then a temporary file renamed over it) when the last
//! connection using the upload closes and at [`ServerHandle::shutdown`], and
//! it is deleted (durably) before the next chunk of that upload is written.
//! The in-memory record is dropped only after that write succeeded.
//! So after a clean shutdown a restarted server continues the upload (1043
//! from the next seq works), and after a crash it never claims a chunk it did
//! not write, nor misses one it acknowledged: with no state it has no record,
//! answers 1012, and the client's engine restarts from seq 1.
//! Abandoned uploads (`.part` and `.state`) are removed after
//! [`Limits::upload_expiry`] without a chunk; a new seq 1 truncates them
//! before that.
//!
//! # Invariants
//! * A file appears under its final name only complete and md5-verified
//!   (Positional), by one rename.
//! * Nothing is written outside `<dir>/<uid>/` (besides the message index
//!   `<dir>/.messages.sqlite`), and nothing is read outside `<dir>/<uid>/`:
//!   names are one path component (see [`name_problem`]; it also keeps the
//!   server's hidden `.part`/`.state` files out of reach of downloads), uids
//!   are non-negative integers.
//! * No request panics the server or stops it serving other connections;
//!   every upload, avatar and chunk download request (1041/1037/1043/1031/
//!   1047/1033) gets exactly one reply (unless the server is
//!   [silent](ServerHandle::set_silent) or a [`DownloadFault`] drops it), or
//!   the connection closes. A 1045 gets one reply or none (unknown id).
//!
//! # Avatars (1031 -> 1032)
//! Stop-and-wait chunks with int sizes (above `i32::MAX`, or as strings:
//! 1001, they would crash the deployed server's `asInt`), stored exactly as
//! chat chunks (same store, same checks, `<dir>/<uid>/<name>`); seq 1 checks
//! the token ([`ServerConfig::tokens`]). 1032 echoes `total_size`/`trans_size`
//! (ints), `seq`, `name`, `last`, `md5`, `uid`, `last_seq`. Errors are sent
//! as for uploads (`{"error":N}`, plus `name`/`seq` if named).
//!
//! # Downloads (1045 -> 1046, 1047 -> 1048, 1033 -> 1034)
//! * Message index (what the deployed server finds in MySQL): a chat upload
//!   that completes records `message_id -> (sender_id = the upload's uid,
//!   recv_id = receiver, name)` (thread 0, msg_type 0, status 2) in the
//!   SQLite database `<dir>/.messages.sqlite` (one indexed insert per
//!   upload; a legacy `.messages.json` is imported on first start), so a
//!   restarted server still knows it. An id is bound to its first
//!   completing uploader: another uid's upload with it gets
//!   [`MESSAGE_ID_TAKEN`] (1022) at seq 1, or at completion if it started
//!   first (its file stays under its own uid, unindexed).
//!   [`ServerHandle::register_message`] adds or replaces entries. 1046 reports the size of `<dir>/<sender_id>/<name>` at the
//!   time of the request, as a string. An unknown `message_id` (or an
//!   undecodable 1045) gets **no reply at all**, as deployed.
//! * 1047 reads `<dir>/<sender_id>/<name>`, 1033 `<dir>/<uid>/<name>`, with
//!   positional reads of [`DOWNLOAD_CHUNK`] = 32,768 bytes (chunk `seq` at
//!   `(seq-1)*32768`); the file is opened per request.
//! * One expected next seq **per name**, shared by every downloader of the
//!   name and by 1047 *and* 1033 (as the deployed `file_download_<name>`):
//!   seq 1 always (re)starts it; any other seq must equal it, else 1017 (no
//!   state counts as "expecting 1"; the deployed server answers 1020 there).
//!   A served chunk moves it on by one; the last chunk (and a failed seq 1)
//!   clears it. A refused request does not move it.
//! * Seq 1 checks the token of the request's `uid` against
//!   [`ServerConfig::tokens`] (default: any token). With a token table,
//!   seq 1 of an upload (1041, or seq 1 sent as 1037/1043, which carries no
//!   token) needs the uid's token too, so nobody can start or truncate
//!   another uid's upload; later chunks carry no token in the deployed
//!   client and are not checked (a forged one can only make the upload
//!   fail its md5 check, never publish foreign bytes).
//! * 1048: `error`, `data` (base64), `seq`, `total_size`/`current_size`
//!   (strings), `is_last` (bool), `name`, `sender_id`, `receiver_id`. 1034:
//!   the same chunk fields plus `client_path`, `name`, `req_type` echoed.
//! * [`ServerHandle::set_download_fault`] makes the replies for one name
//!   misbehave (test support for the client: wrong seq, bad or oversized
//!   data, a hostile name in 1046, dropped replies).
//!
//! # [`Storage::AppendStrict`]
//! Test support for the deployed server's behaviour: `<dir>/<uid>/<name>`
//! is written directly, seq 1 truncates, every other chunk is appended with
//! no checks; a chunk whose seq is not the previous one plus one is counted in
//! [`ServerHandle::violations`] (each would corrupt the deployed server's file).
//! The record lives in memory only, across connections (like the deployed
//! Redis key). On `last = 1` the file counts as completed and its md5 is
//! computed for [`ServerHandle::completed`], not checked.
//!
//! # Error codes
//! Upload and avatar-upload error replies go under the request's reply id:
//! `{"error":N}`, plus `name` and `seq` (when known) if
//! [`ServerConfig::named_errors`]. [`ServerHandle::inject_error`] applies to
//! 1041/1037/1043/1031/1047/1033 and its code is sent as below.
//!
//! | case | reply |
//! | --- | --- |
//! | body not JSON, a required field (`name`, `seq`, `trans_size`, `total_size`, `data`) missing, a field of the wrong type, 1043 sizes as strings or above `i32::MAX` | 1001 (the deployed server sends nothing, or crashes; a reply keeps "one reply per request") |
//! | `data` not valid base64; seq 1 with an `md5` that is not 32 hex digits | 1001 |
//! | name empty, over 200 bytes, with `/`, `\`, NUL, `..`, or a leading `.` | 1014 (this path cannot be created) |
//! | `uid` negative | 1011 |
//! | seq 0, or above `max_seq` | 1017 |
//! | seq ≠ 1 and no record of `(uid, name)` (in memory, on disk, or finished within `upload_expiry`: a late duplicate of a published file is acknowledged), or the record has another md5 | 1012 (as deployed; makes the engine restart from seq 1) |
//! | `total_size` unlike the record's, `trans_size ≠ (seq-1)*chunk + len`, a chunk not exactly its expected length (longer than the chunk, say), `last` not 1 exactly on `max_seq`, seq 1 longer than `total_size` or empty with `total_size > 0`, more than `u32::MAX` chunks, `total_size` over [`ServerConfig::max_file_size`] | 1018 |
//! | the `.part` file or its directory cannot be created, written, synced or renamed | 1014 (directory), 1015 (file) |
//! | a symlink (or a file where the uid directory belongs) in the way | [`LINK_REFUSED`] = 1026, new |
//! | seq 1 of a new upload when the uid has [`Limits::max_unfinished_per_uid`] unfinished ones, or the server [`Limits::max_unfinished_total`] | [`TOO_MANY_UPLOADS`] = 1025, new |
//! | seq 1 of a new upload whose `total_size` + [`Limits::min_free_space`] exceeds the free disk space | [`NO_SPACE`] = 1024, new |
//! | seq 1 with a token table: no token for `uid` / another token | 1011 / 1010 |
//! | `message_id` bound to another uid (seq 1, or the completing chunk) | [`MESSAGE_ID_TAKEN`] = 1022 |
//! | the state file of a record cannot be removed | 1013 |
//! | the md5 check cannot read the file back | 1019 |
//! | md5 of the complete file differs from the announced one | [`MD5_MISMATCH`] = 1023, new: reported for the chunk that completed the file and for later chunks of it |
//! | header announces more than `max_body_len` bytes | connection closed, no reply (as deployed) |
//!
//! Deviation from the deployed server, on purpose: write failures are
//! reported (it overwrites them with success).
//!
//! Downloads. 1045: an unknown or undecodable one gets no reply; a known
//! one whose file is missing (or whose name is unsafe, or `sender_id` < 0)
//! gets a 1046 `{"error":1012}` (+ `message_id`, `name` if named) where the
//! deployed server crashes. 1047 and 1033:
//!
//! | case | 1048 (1047) | 1034 (1033) |
//! | --- | --- | --- |
//! | body undecodable (not JSON, field missing or mistyped) | 1001 | 1001 |
//! | seq 1: no token for `uid` / another token | 1011 / 1010 | 1011 / 1010 |
//! | seq 0, or not the name's expected seq | 1017 | 1017 |
//! | name unsafe (`/`, `\`, `..`, NUL, leading `.`, empty), uid/`sender_id` < 0, no such file | 1012 | 1012 |
//! | the file or its uid directory is a symlink | 1026 | 1026 |
//! | the file cannot be opened / read | 1016 / 1019 | 1016 / 1019 |
//! | chunk offset at or past the end (a 0-byte file's seq 1 included) | 1018 | 1018 |
//!
//! Their bodies: 1048 named: `{error, name, seq, sender_id, receiver_id}`;
//! deployed-style (`named_errors = false`): the deployed overwrite,
//! `{"error":0, name, sender_id, receiver_id}` with no `data` and no `seq`,
//! except 1001/1010/1011 which go as `{"error":N}`. 1034 errors keep their
//! codes in both modes, with `name`, `client_path`, `req_type` (plus `seq` if
//! named); 1010/1011 deployed-style are `{"error":N}` only.

mod conn;
mod download;
mod fsdir;
mod group;
mod hashing;
mod index;
mod publish;
mod store;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle, JoinSet};

use chatxfer::protocol::{ErrorCode, MAX_BODY_LEN};
use download::Downloads;
pub use download::{DownloadFault, DOWNLOAD_CHUNK};
use index::MessageIndex;
pub use index::{MessageInfo, INDEX_FILE, LEGACY_INDEX_FILE, STATUS_UPLOADED};
pub use store::{name_problem, MAX_NAME_LEN};
use store::{Store, StoreLimits};

/// The error code for an upload whose bytes do not match its announced md5.
/// Not in the deployed server's table: clients keep unknown codes as they are.
pub const MD5_MISMATCH: ErrorCode = ErrorCode::Md5Mismatch;

/// 1024, this server only: the declared `total_size` does not fit the free
/// disk space (minus [`Limits::min_free_space`]).
pub const NO_SPACE: ErrorCode = ErrorCode::Other(1024);

/// 1025, this server only: the uid already has
/// [`Limits::max_unfinished_per_uid`] unfinished uploads (or the server
/// [`Limits::max_unfinished_total`]).
pub const TOO_MANY_UPLOADS: ErrorCode = ErrorCode::Other(1025);

/// 1026, this server only: a symbolic link (or a non-directory, non-file)
/// was found where the store expected its own file or directory; nothing is
/// followed.
pub const LINK_REFUSED: ErrorCode = ErrorCode::Other(1026);

/// The deployed table's 1022 ("message id invalid"): a chat upload's
/// `message_id` is already bound to another uid's file.
pub const MESSAGE_ID_TAKEN: ErrorCode = ErrorCode::MsgIdInvalid;

/// How uploads are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// Preallocated hidden file, positional writes, md5-verified publish.
    #[default]
    Positional,
    /// The deployed server's truncate-then-append, with violations counted.
    AppendStrict,
}

/// Settings of a [`start`]ed server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Root storage directory; files go to `<dir>/<uid>/<name>`. Created if missing.
    pub dir: PathBuf,
    /// Largest accepted frame body (inclusive), default [`MAX_BODY_LEN`].
    pub max_body_len: usize,
    pub storage: Storage,
    /// Error replies add `name` and `seq` (default); false sends the
    /// deployed server's `{"error":N}` only.
    pub named_errors: bool,
    /// Largest accepted `total_size` (Positional), default 1 TiB: a file is
    /// preallocated at its announced size, so this bounds what one request
    /// can claim.
    pub max_file_size: u64,
    /// Login tokens by uid, checked on seq 1 of 1047, 1033 and 1031 (the
    /// deployed Redis `utoken_<uid>`): a uid without a token gets 1011, a
    /// different token 1010. `None` (the default) accepts any token.
    pub tokens: Option<HashMap<i64, String>>,
    /// Resource limits; see [`Limits`].
    pub limits: Limits,
}

impl ServerConfig {
    pub fn new(dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            dir: dir.into(),
            max_body_len: MAX_BODY_LEN,
            storage: Storage::default(),
            named_errors: true,
            max_file_size: 1 << 40,
            tokens: None,
            limits: Limits::default(),
        }
    }
}

/// What one peer, or all of them, may hold of the server. The defaults keep
/// one machine with the usual 20,000 descriptors and a few GiB of memory
/// serving: at most 2,048 connections (one descriptor and a few KiB each
/// when idle) plus 512 open `.part` files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once. Beyond it a new connection is accepted and
    /// closed at once (the accept loop keeps draining the backlog, so it is
    /// never starved). Default 2,048.
    pub max_connections: usize,
    /// Connections open at once from one IP address, same treatment.
    /// Default 256 (users behind one NAT share an address).
    pub max_connections_per_ip: usize,
    /// A frame whose first byte arrived must be complete within this time,
    /// else the connection closes. Default 30 s (51,200 bytes at 1.7 KB/s).
    pub frame_timeout: Duration,
    /// A connection with no frame in progress, no chunk being stored and
    /// nothing received for this long is closed (the deployed server has no
    /// such timeout; the library reconnects when it has work). Default 300 s.
    pub idle_timeout: Duration,
    /// Replies the peer has not taken for this long close the connection.
    /// Default 60 s.
    pub write_timeout: Duration,
    /// Reply bytes queued per connection. A peer that does not read stops
    /// getting requests served (the reader waits) instead of the server
    /// buffering replies. Default 256 KiB (about six 1048s).
    pub reply_queue_bytes: usize,
    /// Open `.part` descriptors; beyond it the least recently used are
    /// closed and reopened on demand. Default 512.
    pub max_open_parts: usize,
    /// Unfinished uploads per uid (in memory or on disk): a new seq 1
    /// beyond it gets [`TOO_MANY_UPLOADS`]. Default 64.
    pub max_unfinished_per_uid: usize,
    /// Unfinished uploads of all uids together, same reply (without
    /// tokens a uid costs nothing to invent). Default 16,384.
    pub max_unfinished_total: usize,
    /// An unfinished upload without a chunk for this long is forgotten and
    /// its `.part`/`.state` removed (the deployed server's record lives
    /// 3,600 s after its last chunk). Default 3,600 s.
    pub upload_expiry: Duration,
    /// A new upload must leave this much disk free after its declared size,
    /// else [`NO_SPACE`]. Default 64 MiB.
    pub min_free_space: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 2048,
            max_connections_per_ip: 256,
            frame_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(60),
            reply_queue_bytes: 256 * 1024,
            max_open_parts: 512,
            max_unfinished_per_uid: 64,
            max_unfinished_total: 16_384,
            upload_expiry: Duration::from_secs(3600),
            min_free_space: 64 << 20,
        }
    }
}

/// Parses a tokens file (`serve --tokens`): one `UID TOKEN` per line,
/// separated by spaces or tabs; blank lines and lines starting with `#` are
/// skipped. A uid that is not a non-negative integer, a missing token,
/// extra words or a uid given twice is an error naming the line.
pub fn parse_tokens(text: &str) -> Result<HashMap<i64, String>, String> {
    let mut tokens = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let mut words = line.split_whitespace();
        let (Some(uid), Some(token), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("line {n}: expected `UID TOKEN`"));
        };
        let uid: i64 = uid
            .parse()
            .ok()
            .filter(|u| *u >= 0)
            .ok_or_else(|| format!("line {n}: {uid:?} is not a uid"))?;
        if tokens.insert(uid, token.to_owned()).is_some() {
            return Err(format!("line {n}: uid {uid} given twice"));
        }
    }
    Ok(tokens)
}

/// Counters since [`start`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub open_connections: u64,
    /// Upload chunk requests (1041/1037/1043/1031) received, well-formed or not.
    pub chunks_received: u64,
    /// Chunk bytes written to files.
    pub bytes_written: u64,
    pub files_completed: u64,
    /// Complete uploads refused (md5 mismatch).
    pub files_failed: u64,
    /// Replies queued, errors included.
    pub replies_sent: u64,
    pub errors_sent: u64,
    /// Replies dropped while silent or by a [`DownloadFault`].
    pub replies_dropped: u64,
    /// Frames with ids the server does not serve.
    pub ignored_frames: u64,
    /// Download requests (1045/1047/1033) received, well-formed or not.
    pub download_requests: u64,
    /// 1045s received (message info asked by id), well-formed or not.
    pub message_info_requests: u64,
    /// 1045s left unanswered: unknown message id (or not decodable).
    pub unknown_messages: u64,
    /// Chunk bytes sent in download replies (1048/1034).
    pub download_bytes: u64,
    /// Download replies with `is_last` sent.
    pub downloads_completed: u64,
    /// Connections closed because of an over-long frame.
    pub closed_bad_input: u64,
    /// Connections accepted and closed at once: over
    /// [`Limits::max_connections`] or [`Limits::max_connections_per_ip`].
    pub refused_connections: u64,
    /// Connections closed by [`Limits::frame_timeout`],
    /// [`Limits::idle_timeout`] or [`Limits::write_timeout`].
    pub timed_out: u64,
    /// Abandoned uploads removed after [`Limits::upload_expiry`].
    pub expired_uploads: u64,
    /// AppendStrict order violations (as [`ServerHandle::violations`]).
    pub violations: u64,
    /// Tasks that panicked (a bug; tests assert 0).
    pub panics: u64,
}

/// A file the server completed (Positional: published after the md5
/// check; AppendStrict: `last = 1` seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedFile {
    pub uid: i64,
    pub name: String,
    pub size: u64,
    /// md5 of the stored bytes.
    pub md5: String,
    /// md5 the client announced.
    pub announced_md5: String,
    pub path: PathBuf,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    connections: AtomicU64,
    open_connections: AtomicU64,
    chunks_received: AtomicU64,
    bytes_written: AtomicU64,
    files_completed: AtomicU64,
    files_failed: AtomicU64,
    replies_sent: AtomicU64,
    errors_sent: AtomicU64,
    replies_dropped: AtomicU64,
    ignored_frames: AtomicU64,
    download_requests: AtomicU64,
    message_info_requests: AtomicU64,
    unknown_messages: AtomicU64,
    download_bytes: AtomicU64,
    downloads_completed: AtomicU64,
    closed_bad_input: AtomicU64,
    refused_connections: AtomicU64,
    timed_out: AtomicU64,
    expired_uploads: AtomicU64,
    violations: AtomicU64,
    panics: AtomicU64,
}

/// State shared by the handle and every task.
pub(crate) struct Shared {
    max_body_len: usize,
    named_errors: bool,
    limits: Limits,
    silent: AtomicBool,
    injected: Mutex<HashMap<String, ErrorCode>>,
    counters: Arc<Counters>,
    store: Arc<Store>,
    index: Arc<MessageIndex>,
    downloads: Downloads,
    tokens: Mutex<Option<HashMap<i64, String>>>,
}

impl Shared {
    fn injected(&self, name: &str) -> Option<ErrorCode> {
        lock(&self.injected).get(name).copied()
    }

    fn count_join_error(&self, e: &JoinError) {
        if e.is_panic() {
            self.counters.panics.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "server task panicked");
        }
    }
}

/// A mutex guard even if a holder panicked: every record stays usable (a
/// panic is a bug, counted in [`ServerStats::panics`], not a reason to stop).
pub(crate) use chatxfer::sync::lock;

/// Resolves once shutdown is requested (or the handle is gone).
pub(crate) async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// A running server. Dropping it asks the server to stop without waiting;
/// [`ServerHandle::shutdown`] waits until everything has stopped.
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop answering: requests are still processed, replies are dropped.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::Relaxed);
    }

    /// Every chunk request for `name` gets this error reply from now on,
    /// before any storage (as the deployed logic worker's errors).
    pub fn inject_error(&self, name: &str, code: ErrorCode) {
        lock(&self.shared.injected).insert(name.to_owned(), code);
    }

    pub fn clear_injected_error(&self, name: &str) {
        lock(&self.shared.injected).remove(name);
    }

    /// AppendStrict: chunks that arrived out of order or twice.
    pub fn violations(&self) -> u64 {
        self.shared.counters.violations.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            connections: get(&c.connections),
            open_connections: get(&c.open_connections),
            chunks_received: get(&c.chunks_received),
            bytes_written: get(&c.bytes_written),
            files_completed: get(&c.files_completed),
            files_failed: get(&c.files_failed),
            replies_sent: get(&c.replies_sent),
            errors_sent: get(&c.errors_sent),
            replies_dropped: get(&c.replies_dropped),
            ignored_frames: get(&c.ignored_frames),
            download_requests: get(&c.download_requests),
            message_info_requests: get(&c.message_info_requests),
            unknown_messages: get(&c.unknown_messages),
            download_bytes: get(&c.download_bytes),
            downloads_completed: get(&c.downloads_completed),
            closed_bad_input: get(&c.closed_bad_input),
            refused_connections: get(&c.refused_connections),
            timed_out: get(&c.timed_out),
            expired_uploads: get(&c.expired_uploads),
            violations: get(&c.violations),
            panics: get(&c.panics),
        }
    }

    /// Records a chat message for 1045 (and writes the message index), e.g.
    /// for a file put into `<dir>/<sender_id>/<name>` by other means.
    /// Replaces an earlier entry of the id. Blocking file IO.
    pub fn register_message(&self, message_id: i64, info: MessageInfo) -> std::io::Result<()> {
        self.shared.index.replace(message_id, &info)
    }

    /// The message index entry of `message_id`, if any.
    pub fn message(&self, message_id: i64) -> Option<MessageInfo> {
        self.shared.index.get(message_id)
    }

    /// From now on downloads of `name` (1045 for a message of that name,
    /// 1047, 1033) misbehave as `fault` says; see [`DownloadFault`].
    pub fn set_download_fault(&self, name: &str, fault: DownloadFault) {
        self.shared.downloads.set_fault(name, Some(fault));
    }

    pub fn clear_download_fault(&self, name: &str) {
        self.shared.downloads.set_fault(name, None);
    }

    /// Sets the login token of `uid`, turning token checks on if they were
    /// off (see [`ServerConfig::tokens`]).
    pub fn set_token(&self, uid: i64, token: &str) {
        lock(&self.shared.tokens)
            .get_or_insert_with(HashMap::new)
            .insert(uid, token.to_owned());
    }

    /// Replaces the token table (`None`: accept any token).
    pub fn set_tokens(&self, tokens: Option<HashMap<i64, String>>) {
        *lock(&self.shared.tokens) = tokens;
    }

    /// The last files completed (up to 1024), oldest first.
    pub fn completed(&self) -> Vec<CompletedFile> {
        self.shared.store.completed()
    }

    /// `.part` descriptors the store may hold open now (an upper bound,
    /// kept within [`Limits::max_open_parts`]).
    pub fn open_part_files(&self) -> usize {
        self.shared.store.open_parts()
    }

    /// Unfinished uploads known (in memory or on disk), which expire after
    /// [`Limits::upload_expiry`] without a chunk.
    pub fn unfinished_uploads(&self) -> usize {
        self.shared.store.unfinished()
    }

    /// Stops accepting, closes every connection (each finishes the request
    /// it is handling and flushes its replies, for at most a short grace
    /// period if the peer does not read), writes the resume state of every
    /// unfinished upload, and returns when no task of the server is left.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(accept) = self.accept.take() {
            if let Err(e) = accept.await {
                self.shared.count_join_error(&e);
            }
        }
        let store = self.shared.store.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || store.persist_all()).await {
            self.shared.count_join_error(&e);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Binds `listen` (e.g. `"127.0.0.1:0"`) and serves on the current tokio runtime.
pub async fn start(listen: &str, config: ServerConfig) -> std::io::Result<ServerHandle> {
    let root = Arc::new(fsdir::Root::open(&config.dir).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot open the storage directory {}: {e}",
                config.dir.display()
            ),
        )
    })?);
    let listener = bind(listen).await?;
    let addr = listener.local_addr()?;
    let counters = Arc::new(Counters::default());
    let limits = config.limits.clone();
    let store_limits = StoreLimits {
        max_file_size: config.max_file_size,
        max_open_parts: limits.max_open_parts,
        max_unfinished_per_uid: limits.max_unfinished_per_uid,
        max_unfinished_total: limits.max_unfinished_total,
        upload_expiry: limits.upload_expiry,
        min_free_space: limits.min_free_space,
    };
    let dir = config.dir.clone();
    let storage = config.storage;
    let store_root = root.clone();
    let store_counters = counters.clone();
    // Opening the index and scanning for unfinished uploads read the disk.
    let (index, store) = tokio::task::spawn_blocking(move || {
        let index = Arc::new(MessageIndex::open(&dir)?);
        let store = Store::new(
            dir,
            store_root,
            storage,
            store_limits,
            store_counters,
            Some(index.clone()),
        )?;
        Ok::<_, std::io::Error>((index, store))
    })
    .await
    .map_err(std::io::Error::other)??;
    let shared = Arc::new(Shared {
        max_body_len: config.max_body_len,
        named_errors: config.named_errors,
        limits,
        silent: AtomicBool::new(false),
        injected: Mutex::new(HashMap::new()),
        counters,
        index,
        downloads: Downloads::new(root),
        tokens: Mutex::new(config.tokens),
        store: Arc::new(store),
    });
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(expiry_loop(shared.clone(), stop_rx.clone()));
    let accept = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
    tracing::info!(%addr, storage = ?config.storage, "resource server listening");
    Ok(ServerHandle {
        addr,
        shared,
        stop,
        accept: Some(accept),
    })
}

/// Pending handshakes the kernel keeps for the accept loop (capped by
/// `net.core.somaxconn`). A burst of connects beyond the backlog is dropped
/// by the kernel and retried by the peers a second later; 4,096 absorbs the
/// connect bursts of the load test (tools/tests/server_load.rs), where the
/// default backlog overflowed and handshakes waited a second each.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the first address `listen` resolves to, with [`LISTEN_BACKLOG`].
async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{listen}: no address")))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do for listeners: a restart can bind at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Removes abandoned uploads every quarter of the expiry time (at most
/// every minute), until shutdown.
async fn expiry_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let period = (shared.limits.upload_expiry / 4)
        .min(Duration::from_secs(60))
        .max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = shutdown_requested(&mut stop) => return,
            _ = tokio::time::sleep(period) => {}
        }
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || store.expire(std::time::Instant::now())).await {
            Ok(n) => {
                shared
                    .counters
                    .expired_uploads
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => shared.count_join_error(&e),
        }
    }
}

/// Open connections, in total and by peer address.
#[derive(Default)]
struct ConnTable {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection's place in the [`ConnTable`]; freed on drop.
pub(crate) struct ConnSlot {
    table: Arc<Mutex<ConnTable>>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut t = lock(&self.table);
        t.total = t.total.saturating_sub(1);
        if let Some(n) = t.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.by_ip.remove(&self.ip);
            }
        }
    }
}

/// A place for a connection from `ip`, or `None` over a limit.
fn admit(table: &Arc<Mutex<ConnTable>>, limits: &Limits, ip: IpAddr) -> Option<ConnSlot> {
    let mut t = lock(table);
    let from_ip = t.by_ip.get(&ip).copied().unwrap_or(0);
    if t.total >= limits.max_connections || from_ip >= limits.max_connections_per_ip {
        return None;
    }
    t.total += 1;
    *t.by_ip.entry(ip).or_insert(0) += 1;
    Some(ConnSlot {
        table: table.clone(),
        ip,
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    let table = Arc::new(Mutex::new(ConnTable::default()));
    loop {
        tokio::select! {
            _ = shutdown_requested(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                    let Some(place) = admit(&table, &shared.limits, peer.ip()) else {
                        // Accept-and-close: the backlog keeps draining, so
                        // other peers' connections still get in.
                        shared.counters.refused_connections.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "connection over the limits; closed");
                        drop(stream);
                        continue;
                    };
                    tracing::debug!(%peer, "connection accepted");
                    conns.spawn(conn::serve(stream, shared.clone(), stop.clone(), place));
                }
                Err(e) => {
                    // Out of descriptors, say: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    shared.count_join_error(&e);
                }
            }
        }
    }
    drop(listener);
    while let Some(done) = conns.join_next().await {
        if let Err(e) = done {
            shared.count_join_error(&e);
        }
    }
}
