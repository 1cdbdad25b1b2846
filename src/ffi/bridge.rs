//! The C++ API (`#include "chatxfer.hpp"`, namespace `chatxfer`), named as
//! the Qt client's `FileTcpMgr` names things. See the module docs of
//! [`crate::ffi`] for ownership, threading and panics; `include/chatxfer.hpp`
//! says the same for C++ readers.
//!
//! The shared enums here must mirror the table in `src/ffi/enums.rs`:
//! `ffi_enums!` asserts at compile time that every variant of the table is
//! here with the same number.

use std::time::Duration;

use cxx::UniquePtr;

use super::{
    boundary, Code, DownloadArgs, FfiError, FfiResult, FlatEvent, SansIo, UploadArgs, XferState,
};

#[cxx::bridge(namespace = "chatxfer")]
pub mod ffi {
    /// Outcome of a call; the numbers of the C `chatxfer_result` (whose
    /// header documents each value).
    #[repr(u32)]
    #[derive(Debug)]
    enum Status {
        Ok = 0,
        NullParameter = 1,
        InvalidUtf8 = 2,
        InvalidArgument = 3,
        InvalidName = 4,
        Io = 5,
        NotAFile = 6,
        DuplicateName = 7,
        UnknownName = 8,
        WrongState = 9,
        NotConnected = 10,
        AlreadyConnected = 11,
        ShutDown = 12,
        Runtime = 13,
        BadFrame = 14,
        Panic = 15,
        Broken = 16,
    }

    /// Where a transfer stands (`Queued` also for events that carry no state).
    #[repr(u32)]
    #[derive(Debug)]
    enum State {
        Queued = 0,
        Sending = 1,
        Paused = 2,
        Completed = 3,
        Failed = 4,
        Cancelled = 5,
    }

    #[repr(u32)]
    #[derive(Debug)]
    enum EventKind {
        Progress = 0,
        StateChanged = 1,
        Completed = 2,
        Failed = 3,
        Connected = 4,
        Disconnected = 5,
        Warning = 6,
        Saved = 7,
        Md5Progress = 8,
        Md5Ready = 9,
    }

    /// The level of a log line (and a log sink's filter).
    #[repr(u32)]
    #[derive(Debug)]
    enum LogLevel {
        Off = 0,
        Error = 1,
        Warn = 2,
        Info = 3,
        Debug = 4,
        Trace = 5,
    }

    /// The library's own codes in `Event::code` / `OnFailed(code)`; any
    /// other code is the server's.
    #[repr(u32)]
    #[derive(Debug)]
    enum Failure {
        /// The source file could not be read, or changed while uploading.
        Source = 2001,
        /// Every chunk was sent but the server never confirmed the last one;
        /// against an appending server a resend could corrupt the file, so
        /// the transfer stops.
        Unconfirmed = 2002,
        /// The server's reply was unusable: wrong seq, bad data, a hostile
        /// name, no data, no answer to 1045, a downloaded file whose md5
        /// does not match, or an upload whose stored size differs from the
        /// file's at the end.
        BadReply = 2003,
        /// The local side failed: the downloaded file could not be written
        /// or renamed.
        Local = 2004,
        /// A give-up budget ran out: no progress for too long, or too many
        /// bytes re-sent for one upload.
        GaveUp = 2005,
        /// The library failed inside (a bug); the client stopped.
        Internal = 2006,
    }

    /// One event, flat. Progress: `acked`, `total`, `rate` (bytes/s).
    /// StateChanged: `state`. Completed: `md5`, `total`. Failed: `code`
    /// (the server's error code or a `Failure`), `message`.
    /// Connected/Warning: `message`. Disconnected: `message`,
    /// `retry_in_ms`, `attempt`. Saved (downloads, just
    /// before Completed): `path`, and for an avatar `client_path` and
    /// `req_type`. Md5Progress: `path`, `acked` of `total`. Md5Ready:
    /// `path`, `md5`, or `code` 2001 and `message`. `name` is empty for
    /// connection and md5 events.
    #[derive(Debug)]
    struct Event {
        kind: EventKind,
        name: String,
        state: State,
        acked: u64,
        total: u64,
        rate: f64,
        md5: String,
        code: i64,
        message: String,
        path: String,
        /// Saved of an avatar: its request's `client_path` ("" otherwise).
        client_path: String,
        /// Saved of an avatar: its request's `req_type` ("" otherwise).
        req_type: String,
        /// Disconnected: milliseconds until the next attempt (-1: none, the
        /// client stopped; also -1 for other kinds).
        retry_in_ms: i64,
        /// Disconnected: the number of that attempt (1 after a connection
        /// that worked); 0 for other kinds.
        attempt: u32,
    }

    /// A transfer an earlier process left unfinished (`ListResumable`).
    #[derive(Debug, Clone)]
    struct Resumable {
        name: String,
        /// Upload: the source file. Download: the destination directory.
        path: String,
        /// Upload: bytes the server acknowledged. Download: 0 (it starts
        /// over; the partial file a killed process left is not trusted).
        done: u64,
        /// Upload: the file's size. Download: the size if known, else 0.
        total: u64,
        download: bool,
    }

    /// A snapshot of one transfer.
    #[derive(Debug)]
    struct FileInfo {
        name: String,
        state: State,
        acked: u64,
        total: u64,
        md5: String,
    }

    /// A client's settings (`NewClientWith`); the C API's
    /// `chatxfer_options`. Start from `DefaultOptions()`. A 0 means the
    /// library's default unless a field says otherwise.
    #[derive(Debug, Clone)]
    struct ClientOptions {
        /// The deployed ResourceServer appends chunks (true, the default);
        /// the reference server (`chatxfer serve`) writes them at their
        /// offset (false).
        server_appends: bool,
        /// A fixed window of this many chunks in flight; 0: adaptive.
        fixed_window: u32,
        /// The adaptive window's most chunks in flight (about 44 KB of
        /// memory each); 0: 512.
        max_window: u32,
        /// Raw bytes per upload chunk; 0: 32768 (the Qt client's).
        chunk_size: u32,
        /// 0: 10 s.
        connect_timeout_ms: u32,
        /// No reply to a chunk for this long renews the connection; 0: 30 s.
        ack_timeout_ms: u32,
        /// A transfer without progress this long fails with
        /// Failure::GaveUp; default 600000 (10 min); 0: never.
        give_up_after_ms: u64,
        /// An upload putting more than this many times its size on the
        /// wire fails with Failure::GaveUp; 0: 3.
        max_resend_factor: u32,
        /// Directory for the journals of unfinished uploads (resume after
        /// a restart); empty: none.
        state_dir: String,
        /// A download announced larger than this fails; 0: 4 GiB.
        max_download_size: u64,
        /// Upload bytes per second on the wire (a phone hotspot); 0: no cap.
        rate_limit: u64,
        /// The login token, for uploads and downloads whose spec has none.
        token: String,
        /// A download whose file name is taken fails, instead of being
        /// saved as "name (1).ext".
        existing_files_fail: bool,
    }

    /// An upload (`AddTransFile`); the C API's `chatxfer_upload_spec`.
    #[derive(Debug, Clone)]
    struct UploadSpec {
        /// The file to upload.
        path: String,
        /// Unique name: the server's key and stored file name.
        name: String,
        uid: i64,
        sender: i64,
        receiver: i64,
        message_id: i64,
        /// Hex md5 if known; empty: computed on a library thread (the
        /// sans-IO `TransferEngine` computes it in the call).
        md5: String,
        /// Higher goes first and gets a larger share of the window.
        priority: u8,
        /// Registered paused until `BatchSend` (the ChatServer's
        /// confirmation); false starts it at once.
        hold: bool,
        /// The login token, sent on the first chunk (checked for avatars).
        token: String,
        /// An avatar (1031, stop-and-wait) instead of a chat file; it has no
        /// message id. A chat file needs `message_id` > 0 (the id of the
        /// ChatServer's 1036 reply): 0 or less gives `InvalidArgument`.
        avatar: bool,
    }

    /// A download (`AddDownloadFile`); the C API's `chatxfer_download_spec`.
    /// Held until `StartDownload`.
    #[derive(Debug, Clone)]
    struct DownloadSpec {
        /// Unique name of the transfer (events use it), e.g. "msg-42".
        name: String,
        /// The chat message whose file to download (unused for an avatar).
        message_id: i64,
        /// The downloading user and their login token.
        uid: i64,
        token: String,
        /// Existing directory to save into, under the server's file name.
        dest_dir: String,
        /// Hex md5 if known (checked at the end); empty: no check.
        md5: String,
        priority: u8,
        /// Non-empty: download this avatar of `uid` (1033) instead of a
        /// chat file.
        avatar_name: String,
        /// The client path echoed back for an avatar.
        avatar_client_path: String,
        /// The avatar request type echoed back (empty: "1", the client's).
        avatar_req_type: String,
        /// Non-empty: the file's name on the server as the ChatServer's
        /// 1039 notify gives it, with `known_size` and `known_sender`; no
        /// 1045 is sent (the chunks are asked for at once).
        known_name: String,
        known_size: u64,
        known_sender: i64,
    }

    extern "Rust" {
        /// A connection to a ResourceServer with its uploads and downloads
        /// (the library's own threads do the IO). Destroying it shuts it down.
        type Client;
        /// The sans-IO engine for a host that keeps its own socket.
        type TransferEngine;

        /// `sink` may be null: events then queue for `PollEvents`.
        /// Throws `rust::Error` only on an internal error.
        #[cxx_name = "NewClient"]
        fn new_client(sink: UniquePtr<EventSink>) -> Result<Box<Client>>;
        /// `NewClient` with settings (start from `DefaultOptions()`); bad
        /// settings make `Connect` return `Status::InvalidArgument`.
        #[cxx_name = "NewClientWith"]
        fn new_client_with(
            sink: UniquePtr<EventSink>,
            options: &ClientOptions,
        ) -> Result<Box<Client>>;
        /// The library's defaults (documented on `ClientOptions`).
        #[cxx_name = "DefaultOptions"]
        fn default_options() -> ClientOptions;
        #[cxx_name = "Connect"]
        fn connect(self: &Client, host: &str, port: u16) -> Status;
        /// Registers an upload: held until `BatchSend` when `spec.hold`,
        /// else started at once. With an empty `md5` it returns at once and
        /// the md5 is computed on a library thread (`GetStatus` says md5 ""
        /// meanwhile; the upload starts when it is known).
        #[cxx_name = "AddTransFile"]
        fn add_trans_file(self: &Client, spec: &UploadSpec) -> Status;
        /// Registers a download, held (Paused, nothing asked of the server)
        /// until `StartDownload`; `GetStatus` says 0 of 0 bytes until the
        /// server tells the size, and `Cancel` cancels it as any transfer.
        #[cxx_name = "AddDownloadFile"]
        fn add_download_file(self: &Client, spec: &DownloadSpec) -> Status;
        /// Starts a held download; the same as `Resume`/`BatchSend`.
        /// Events: Progress..., Saved(path), Completed, or Failed.
        #[cxx_name = "StartDownload"]
        fn start_download(self: &Client, name: &str) -> Status;
        /// Starts a held upload, or continues a paused one (= `Resume`).
        #[cxx_name = "BatchSend"]
        fn batch_send(self: &Client, name: &str) -> Status;
        #[cxx_name = "Pause"]
        fn pause(self: &Client, name: &str) -> Status;
        #[cxx_name = "Resume"]
        fn resume(self: &Client, name: &str) -> Status;
        #[cxx_name = "Cancel"]
        fn cancel(self: &Client, name: &str) -> Status;
        /// Starts a failed or cancelled transfer over under the same name
        /// (an upload from its file, a download into the same directory).
        /// `Resume` on a failed transfer does the same.
        #[cxx_name = "Retry"]
        fn retry(self: &Client, name: &str) -> Status;
        /// Gives a chat upload registered held with `message_id` 0 (at
        /// send time, before the ChatServer's 1036 reply) that reply's id;
        /// `BatchSend` refuses it until then (`InvalidArgument`). An id <= 0
        /// or an avatar is refused the same way; another id once a chunk has
        /// gone gives `WrongState`. chatxfer::BatchSend(client, name, id) does
        /// both.
        #[cxx_name = "SetMessageId"]
        fn set_message_id(self: &Client, name: &str, message_id: i64) -> Status;
        /// With `ClientOptions::state_dir`: the transfers an earlier process
        /// left unfinished, found when this client connected (empty before
        /// `Connect`). Resume or discard each.
        #[cxx_name = "ListResumable"]
        fn list_resumable(self: &Client) -> Vec<Resumable>;
        /// Continues one of `ListResumable()`: an upload from what the
        /// server acknowledged (its source must be unchanged), a download
        /// from the start.
        #[cxx_name = "ResumeOffered"]
        fn resume_offered(self: &Client, name: &str) -> Status;
        /// Forgets one of `ListResumable()` (its journal, and a download's
        /// partial file).
        #[cxx_name = "DiscardOffered"]
        fn discard_offered(self: &Client, name: &str) -> Status;
        /// Writes `out` only on `Status::Ok`.
        #[cxx_name = "GetStatus"]
        fn get_status(self: &Client, name: &str, out: &mut FileInfo) -> Status;
        /// Events queued since the last call (always empty with a sink).
        #[cxx_name = "PollEvents"]
        fn poll_events(self: &Client) -> Vec<Event>;
        /// Stops sending, waits (up to 5 s) for the replies to chunks in
        /// flight so the journals of unfinished uploads are exact, then
        /// closes the connection and deletes the sink; no callback runs after
        /// it returns. A second call returns `Status::ShutDown`.
        #[cxx_name = "Shutdown"]
        fn shutdown(self: &Client) -> Status;
        /// `Shutdown` waiting at most `timeout_ms` for the replies.
        #[cxx_name = "ShutdownWithin"]
        fn shutdown_within(self: &Client, timeout_ms: u32) -> Status;
        /// Closes at once (unfinished transfers are abandoned); as
        /// `Shutdown` otherwise. Destroying the client does this.
        #[cxx_name = "Close"]
        fn close(self: &Client) -> Status;
        /// Takes the connection down (a logout, a kick) until the next
        /// `Connect`, which may name another server (a re-login); the
        /// transfers stay registered and continue then, and their give-up
        /// budgets do not run meanwhile.
        #[cxx_name = "Disconnect"]
        fn disconnect(self: &Client) -> Status;
        /// Computes the md5 of the file at `path` on a library thread and
        /// returns at once (for an app that needs it before it announces
        /// the message): Md5Progress events, then one Md5Ready with the md5
        /// or the read error. `Io` (or `NotAFile`) here if it cannot be opened.
        #[cxx_name = "ComputeMd5"]
        fn compute_md5(self: &Client, path: &str) -> Status;

        /// `server_appends`: true for the deployed ResourceServer.
        #[cxx_name = "NewTransferEngine"]
        fn new_transfer_engine(server_appends: bool) -> Result<Box<TransferEngine>>;
        /// As `Client::AddTransFile`.
        #[cxx_name = "AddTransFile"]
        fn add_trans_file(self: &mut TransferEngine, spec: &UploadSpec) -> Status;
        /// As `Client::AddDownloadFile`: held until `StartDownload`. The
        /// file is written on the calling thread, inside `HandleBytes` /
        /// `OnUploadRsp`, to `<name>.part` in `spec.dest_dir` (which must
        /// exist), then renamed to a free name; `Saved` carries the path.
        #[cxx_name = "AddDownloadFile"]
        fn add_download_file(self: &mut TransferEngine, spec: &DownloadSpec) -> Status;
        /// Starts a held download (= `Resume`).
        #[cxx_name = "StartDownload"]
        fn start_download(self: &mut TransferEngine, name: &str) -> Status;
        #[cxx_name = "BatchSend"]
        fn batch_send(self: &mut TransferEngine, name: &str) -> Status;
        #[cxx_name = "Pause"]
        fn pause(self: &mut TransferEngine, name: &str) -> Status;
        #[cxx_name = "Resume"]
        fn resume(self: &mut TransferEngine, name: &str) -> Status;
        #[cxx_name = "Cancel"]
        fn cancel(self: &mut TransferEngine, name: &str) -> Status;
        /// As `Client::Retry`: starts a failed or cancelled transfer over
        /// (`Resume` on a failed one does the same).
        #[cxx_name = "Retry"]
        fn retry(self: &mut TransferEngine, name: &str) -> Status;
        /// As `Client::SetMessageId`.
        #[cxx_name = "SetMessageId"]
        fn set_message_id(self: &mut TransferEngine, name: &str, message_id: i64) -> Status;
        #[cxx_name = "GetStatus"]
        fn get_status(self: &TransferEngine, name: &str, out: &mut FileInfo) -> Status;
        /// The host's socket connected / closed.
        #[cxx_name = "Connected"]
        fn connected(self: &mut TransferEngine) -> Status;
        #[cxx_name = "ConnectionLost"]
        fn connection_lost(self: &mut TransferEngine) -> Status;
        /// Frames to write now (about `max_bytes` at most); empty if none.
        #[cxx_name = "PollTransmit"]
        fn poll_transmit(self: &mut TransferEngine, max_bytes: usize) -> Vec<u8>;
        /// One reply frame (id 1038/1042/1044, or 1046/1048/1034 of a
        /// download, and its JSON body).
        #[cxx_name = "OnUploadRsp"]
        fn on_upload_rsp(self: &mut TransferEngine, id: u16, body: &[u8]) -> Status;
        /// Raw bytes read from the socket (split into frames here).
        #[cxx_name = "HandleBytes"]
        fn handle_bytes(self: &mut TransferEngine, data: &[u8]) -> Status;
        #[cxx_name = "HandleTimeout"]
        fn handle_timeout(self: &mut TransferEngine) -> Status;
        /// Milliseconds until `HandleTimeout` is due; -1 for none.
        #[cxx_name = "NextTimeoutMs"]
        fn next_timeout_ms(self: &TransferEngine) -> i64;
        #[cxx_name = "PollEvents"]
        fn poll_events(self: &mut TransferEngine) -> Vec<Event>;
        /// No transfer queued, sending or paused.
        #[cxx_name = "IsIdle"]
        fn is_idle(self: &TransferEngine) -> bool;

        /// Message of the last failed call on this thread.
        #[cxx_name = "LastError"]
        fn last_error() -> String;
        /// "OK", "NULL_PARAMETER", ...; "UNKNOWN" for a number not in the table.
        #[cxx_name = "StatusName"]
        fn status_name(status: Status) -> &'static str;
        /// What a status means (the C header's text); "" if unknown.
        #[cxx_name = "StatusDescription"]
        fn status_description(status: Status) -> &'static str;
        /// "ERROR", "WARN", "INFO", ...; "UNKNOWN" for a number not in the table.
        #[cxx_name = "LogLevelName"]
        fn log_level_name(level: LogLevel) -> &'static str;
        /// Stops the library's threads (before exit; optional).
        #[cxx_name = "ShutdownLibrary"]
        fn shutdown_library();
        /// Sends the library's log lines up to `max_level` to `sink`, from
        /// any thread (process-wide; replaces an earlier sink; null or
        /// `LogLevel::Off` stops them). Without one the library prints
        /// nothing. `Status::Runtime` if the process already has a Rust
        /// `tracing` subscriber (the lines go there).
        #[cxx_name = "SetLogSink"]
        fn set_log_sink(sink: UniquePtr<LogSink>, max_level: LogLevel) -> Status;
    }

    unsafe extern "C++" {
        include!("chatxfer_sink.h");
        /// The app's event handler (`include/chatxfer_sink.h`).
        type EventSink;
        /// Calls the sink's method for `event`; catches what it throws.
        fn deliver(sink: Pin<&mut EventSink>, event: &Event);
        /// The app's log handler (`include/chatxfer_sink.h`).
        type LogSink;
        /// Calls `sink.OnLog`; catches what it throws.
        fn deliver_log(sink: Pin<&mut LogSink>, level: LogLevel, target: &str, message: &str);
    }
}

use ffi::{DownloadSpec, Event, FileInfo, Status, UploadSpec};

// SAFETY: the header's contract: a sink is called from one library thread
// at a time (the client's event thread) and may be deleted there.
unsafe impl Send for ffi::EventSink {}
// SAFETY: the header's contract: a log sink may be called from any thread;
// the library calls it under a lock, one line at a time.
unsafe impl Send for ffi::LogSink {}

fn set_log_sink(sink: UniquePtr<ffi::LogSink>, max_level: ffi::LogLevel) -> Status {
    status(boundary(|| {
        let level = super::LogLevel::from_u32(max_level.repr)
            .ok_or_else(|| FfiError::new(Code::InvalidArgument, "unknown log level"))?;
        let callback = (!sink.is_null() && level != super::LogLevel::Off).then(|| {
            let sink = std::sync::Mutex::new(sink);
            Box::new(move |level: super::LogLevel, target: &str, message: &str| {
                let mut sink = super::lock(&sink);
                if let Some(sink) = sink.as_mut() {
                    ffi::deliver_log(sink, level.into(), target, message);
                }
            }) as super::ForeignLog
        });
        super::set_log_callback(level, callback)
    }))
}

pub struct Client(super::Client);

pub struct TransferEngine(SansIo);

fn status(r: FfiResult<()>) -> Status {
    match r {
        Ok(()) => Code::Ok.into(),
        Err(e) => e.code.into(),
    }
}

fn to_event(e: &crate::engine::Event) -> Event {
    flat_to_event(FlatEvent::from_event(e))
}

fn client_event(e: &crate::runtime::ClientEvent) -> Event {
    flat_to_event(FlatEvent::from_client_event(e))
}

fn flat_to_event(f: FlatEvent) -> Event {
    Event {
        kind: f.kind.into(),
        state: f.xfer_state().into(),
        name: f.name,
        acked: f.acked,
        total: f.total,
        rate: f.rate,
        md5: f.md5,
        code: f.code,
        message: f.message,
        path: f.path,
        client_path: f.client_path,
        req_type: f.req_type,
        retry_in_ms: f.retry_in_ms,
        attempt: f.attempt,
    }
}

fn to_info(s: crate::engine::FileStatus) -> FileInfo {
    FileInfo {
        name: s.name,
        state: XferState::from(s.state).into(),
        acked: s.acked,
        total: s.total,
        md5: s.md5,
    }
}

impl From<&UploadSpec> for UploadArgs {
    fn from(s: &UploadSpec) -> UploadArgs {
        UploadArgs {
            path: s.path.clone(),
            name: s.name.clone(),
            uid: s.uid,
            sender: s.sender,
            receiver: s.receiver,
            message_id: s.message_id,
            md5: s.md5.clone(),
            priority: s.priority,
            hold: s.hold,
            token: s.token.clone(),
            avatar: s.avatar,
        }
    }
}

impl From<&DownloadSpec> for DownloadArgs {
    fn from(s: &DownloadSpec) -> DownloadArgs {
        DownloadArgs {
            name: s.name.clone(),
            message_id: s.message_id,
            uid: s.uid,
            token: s.token.clone(),
            dest_dir: s.dest_dir.clone(),
            md5: s.md5.clone(),
            priority: s.priority,
            // C++ has no null string: an empty avatar name means a chat file.
            known: (!s.known_name.is_empty()).then(|| crate::engine::KnownFile {
                server_name: s.known_name.clone(),
                size: s.known_size,
                sender_id: s.known_sender,
                receiver_id: s.uid,
            }),
            avatar: (!s.avatar_name.is_empty()).then(|| {
                (
                    s.avatar_name.clone(),
                    s.avatar_client_path.clone(),
                    s.avatar_req_type.clone(),
                )
            }),
        }
    }
}

fn internal(e: FfiError) -> String {
    e.message
}

/// The app's sink as the library calls it (`None` for a null one).
fn sink_fn(sink: UniquePtr<ffi::EventSink>) -> Option<super::EventSinkFn> {
    if sink.is_null() {
        return None;
    }
    let mut sink = sink;
    Some(Box::new(move |e: &crate::runtime::ClientEvent| {
        ffi::deliver(sink.pin_mut(), &client_event(e));
    }))
}

fn new_client(sink: UniquePtr<ffi::EventSink>) -> Result<Box<Client>, String> {
    boundary(|| Ok(Box::new(Client(super::Client::new(sink_fn(sink)))))).map_err(internal)
}

fn new_client_with(
    sink: UniquePtr<ffi::EventSink>,
    options: &ffi::ClientOptions,
) -> Result<Box<Client>, String> {
    let options = super::Options::from(options);
    boundary(|| {
        Ok(Box::new(Client(super::Client::with_options(
            sink_fn(sink),
            options,
        ))))
    })
    .map_err(internal)
}

fn default_options() -> ffi::ClientOptions {
    let o = super::Options::default();
    ffi::ClientOptions {
        server_appends: o.server_appends,
        fixed_window: o.fixed_window,
        max_window: o.max_window,
        chunk_size: o.chunk_size,
        connect_timeout_ms: o.connect_timeout_ms,
        ack_timeout_ms: o.ack_timeout_ms,
        give_up_after_ms: o.give_up_after_ms,
        max_resend_factor: o.max_resend_factor,
        state_dir: o.state_dir,
        max_download_size: o.max_download_size,
        rate_limit: o.rate_limit,
        token: o.token,
        existing_files_fail: o.existing_files_fail,
    }
}

impl From<&ffi::ClientOptions> for super::Options {
    fn from(o: &ffi::ClientOptions) -> super::Options {
        super::Options {
            server_appends: o.server_appends,
            fixed_window: o.fixed_window,
            max_window: o.max_window,
            chunk_size: o.chunk_size,
            connect_timeout_ms: o.connect_timeout_ms,
            ack_timeout_ms: o.ack_timeout_ms,
            give_up_after_ms: o.give_up_after_ms,
            max_resend_factor: o.max_resend_factor,
            state_dir: o.state_dir.clone(),
            max_download_size: o.max_download_size,
            rate_limit: o.rate_limit,
            token: o.token.clone(),
            existing_files_fail: o.existing_files_fail,
        }
    }
}

impl Client {
    fn connect(&self, host: &str, port: u16) -> Status {
        status(boundary(|| self.0.connect(host, port)))
    }

    fn add_trans_file(&self, spec: &UploadSpec) -> Status {
        status(boundary(|| self.0.add_file(&spec.into())))
    }

    fn add_download_file(&self, spec: &DownloadSpec) -> Status {
        status(boundary(|| self.0.add_download(spec.into())))
    }

    fn start_download(&self, name: &str) -> Status {
        status(boundary(|| self.0.start_download(name)))
    }

    fn batch_send(&self, name: &str) -> Status {
        status(boundary(|| self.0.resume(name)))
    }

    fn pause(&self, name: &str) -> Status {
        status(boundary(|| self.0.pause(name)))
    }

    fn resume(&self, name: &str) -> Status {
        status(boundary(|| self.0.resume(name)))
    }

    fn cancel(&self, name: &str) -> Status {
        status(boundary(|| self.0.cancel(name)))
    }

    fn retry(&self, name: &str) -> Status {
        status(boundary(|| self.0.retry(name)))
    }

    fn set_message_id(&self, name: &str, message_id: i64) -> Status {
        status(boundary(|| self.0.set_message_id(name, message_id)))
    }

    fn list_resumable(&self) -> Vec<ffi::Resumable> {
        boundary(|| self.0.resumable())
            .unwrap_or_default()
            .into_iter()
            .map(|r| ffi::Resumable {
                name: r.name,
                path: r.path,
                done: r.done,
                total: r.total,
                download: r.download,
            })
            .collect()
    }

    fn resume_offered(&self, name: &str) -> Status {
        status(boundary(|| self.0.resume_offered(name)))
    }

    fn discard_offered(&self, name: &str) -> Status {
        status(boundary(|| self.0.discard_offered(name)))
    }

    fn get_status(&self, name: &str, out: &mut FileInfo) -> Status {
        status(boundary(|| {
            *out = to_info(self.0.status(name)?);
            Ok(())
        }))
    }

    fn poll_events(&self) -> Vec<Event> {
        boundary(|| Ok(self.0.poll_events().iter().map(client_event).collect())).unwrap_or_default()
    }

    fn shutdown(&self) -> Status {
        status(boundary(|| self.0.shutdown(Some(super::DEFAULT_DRAIN))))
    }

    fn shutdown_within(&self, timeout_ms: u32) -> Status {
        status(boundary(|| {
            self.0
                .shutdown(Some(Duration::from_millis(timeout_ms.into())))
        }))
    }

    fn close(&self) -> Status {
        status(boundary(|| self.0.shutdown(None)))
    }

    fn compute_md5(&self, path: &str) -> Status {
        status(boundary(|| self.0.compute_md5(path)))
    }

    fn disconnect(&self) -> Status {
        status(boundary(|| self.0.disconnect()))
    }
}

fn new_transfer_engine(server_appends: bool) -> Result<Box<TransferEngine>, String> {
    boundary(|| Ok(Box::new(TransferEngine(SansIo::new(server_appends))))).map_err(internal)
}

impl TransferEngine {
    fn add_trans_file(&mut self, spec: &UploadSpec) -> Status {
        status(boundary(|| self.0.add_file(&spec.into())))
    }

    fn add_download_file(&mut self, spec: &DownloadSpec) -> Status {
        status(boundary(|| self.0.add_download(&spec.into())))
    }

    fn start_download(&mut self, name: &str) -> Status {
        status(boundary(|| self.0.start_download(name)))
    }

    fn batch_send(&mut self, name: &str) -> Status {
        status(boundary(|| self.0.resume(name)))
    }

    fn pause(&mut self, name: &str) -> Status {
        status(boundary(|| self.0.pause(name)))
    }

    fn resume(&mut self, name: &str) -> Status {
        status(boundary(|| self.0.resume(name)))
    }

    fn cancel(&mut self, name: &str) -> Status {
        status(boundary(|| self.0.cancel(name)))
    }

    fn retry(&mut self, name: &str) -> Status {
        status(boundary(|| self.0.retry(name)))
    }

    fn set_message_id(&mut self, name: &str, message_id: i64) -> Status {
        status(boundary(|| self.0.set_message_id(name, message_id)))
    }

    fn get_status(&self, name: &str, out: &mut FileInfo) -> Status {
        status(boundary(|| {
            *out = to_info(self.0.status(name)?);
            Ok(())
        }))
    }

    fn connected(&mut self) -> Status {
        status(boundary(|| {
            self.0.connected();
            Ok(())
        }))
    }

    fn connection_lost(&mut self) -> Status {
        status(boundary(|| {
            self.0.connection_lost();
            Ok(())
        }))
    }

    fn poll_transmit(&mut self, max_bytes: usize) -> Vec<u8> {
        boundary(|| Ok(self.0.poll_transmit(max_bytes))).unwrap_or_default()
    }

    fn on_upload_rsp(&mut self, id: u16, body: &[u8]) -> Status {
        status(boundary(|| {
            self.0.handle_frame(id, body);
            Ok(())
        }))
    }

    fn handle_bytes(&mut self, data: &[u8]) -> Status {
        status(boundary(|| self.0.handle_bytes(data)))
    }

    fn handle_timeout(&mut self) -> Status {
        status(boundary(|| {
            self.0.handle_timeout();
            Ok(())
        }))
    }

    fn next_timeout_ms(&self) -> i64 {
        boundary(|| Ok(self.0.next_timeout_ms())).unwrap_or(-1)
    }

    fn poll_events(&mut self) -> Vec<Event> {
        boundary(|| Ok(self.0.poll_events().iter().map(to_event).collect())).unwrap_or_default()
    }

    fn is_idle(&self) -> bool {
        boundary(|| Ok(self.0.is_idle())).unwrap_or(false)
    }
}

fn last_error() -> String {
    std::panic::catch_unwind(super::last_error).unwrap_or_default()
}

fn status_name(s: Status) -> &'static str {
    Code::from_u32(s.repr).map_or("UNKNOWN", Code::name)
}

fn status_description(s: Status) -> &'static str {
    Code::from_u32(s.repr).map_or("", Code::description)
}

fn log_level_name(level: ffi::LogLevel) -> &'static str {
    super::LogLevel::from_u32(level.repr).map_or("UNKNOWN", super::LogLevel::name)
}

fn shutdown_library() {
    let _ = boundary(|| {
        super::library_shutdown();
        Ok(())
    });
}
