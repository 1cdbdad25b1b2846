// The one table of the numbered enums both foreign interfaces use. It is
// read twice: by `src/ffi/mod.rs`, whose `ffi_enums!` turns it into the
// Rust enums (with `from_u32`, names, descriptions and compile-time checks
// against the cxx shared enums), and by `build.rs`, whose `ffi_enums!`
// writes the same enums as plain Rust for cbindgen (which cannot expand
// macros) under their C names. Numbers are part of the ABI: never reuse or
// renumber one. Each entry: `Rust name as C name for cxx enum`.
ffi_enums! {
    /// Outcome of a call (C `chatxfer_result`, C++ `chatxfer::Status`).
    enum Code as chatxfer_result for crate::ffi::bridge::ffi::Status {
        /// Success.
        Ok = 0 => c"OK",
        /// A pointer argument was NULL.
        NullParameter = 1 => c"NULL_PARAMETER",
        /// A string argument was not UTF-8.
        InvalidUtf8 = 2 => c"INVALID_UTF8",
        /// An argument is out of range (empty path, name or host, port 0, a bad md5 ...).
        InvalidArgument = 3 => c"INVALID_ARGUMENT",
        /// The file name cannot be used on the server (path separators, "..", ...).
        InvalidName = 4 => c"INVALID_NAME",
        /// The file (or the server's directory) cannot be read or created.
        Io = 5 => c"IO",
        /// The path names a directory or something else that is not a regular file.
        NotAFile = 6 => c"NOT_A_FILE",
        /// A transfer of that name is already registered.
        DuplicateName = 7 => c"DUPLICATE_NAME",
        /// No transfer (or server) of that name.
        UnknownName = 8 => c"UNKNOWN_NAME",
        /// The transfer's state does not allow this (e.g. pausing a completed one).
        WrongState = 9 => c"WRONG_STATE",
        /// Connect was not called yet.
        NotConnected = 10 => c"NOT_CONNECTED",
        /// Connect was already called on this client.
        AlreadyConnected = 11 => c"ALREADY_CONNECTED",
        /// The client (or the library) was shut down.
        ShutDown = 12 => c"SHUT_DOWN",
        /// The library's threads could not be started.
        Runtime = 13 => c"RUNTIME",
        /// Bytes from the server do not form a valid frame (sans-IO engine).
        BadFrame = 14 => c"BAD_FRAME",
        /// An internal error (a bug) in this call; the library stays usable.
        Panic = 15 => c"PANIC",
        /// The client stopped after an internal error (a bug) in its driver: its
        /// transfers failed with FAILURE_INTERNAL; create a new client.
        Broken = 16 => c"BROKEN",
    }

    /// Where a transfer stands (C `chatxfer_state`, C++ `chatxfer::State`).
    enum XferState as chatxfer_state for crate::ffi::bridge::ffi::State {
        /// Registered, waiting for its turn (also the value of events that carry no
        /// state).
        Queued = 0 => c"QUEUED",
        /// Chunks are moving.
        Sending = 1 => c"SENDING",
        /// Held until BatchSend/StartDownload, or paused by the app.
        Paused = 2 => c"PAUSED",
        /// Stored and verified.
        Completed = 3 => c"COMPLETED",
        /// Ended by a failure; the Failed event has the code.
        Failed = 4 => c"FAILED",
        /// Abandoned by the app.
        Cancelled = 5 => c"CANCELLED",
    }

    /// What an event reports (C `chatxfer_event_kind`, C++ `chatxfer::EventKind`).
    enum EventKind as chatxfer_event_kind for crate::ffi::bridge::ffi::EventKind {
        /// `acked` of `total` bytes acknowledged, at `rate` bytes/s.
        Progress = 0 => c"PROGRESS",
        /// `state` is the new state.
        StateChanged = 1 => c"STATE_CHANGED",
        /// Stored (upload) or saved (download) and verified: `md5`, `total` bytes.
        Completed = 2 => c"COMPLETED",
        /// `code` (the server's error code, or a failure code 2001..2006) and `message`.
        Failed = 3 => c"FAILED",
        /// The connection is up; `message` names the server.
        Connected = 4 => c"CONNECTED",
        /// The connection is down: `message` says why; `retry_in_ms` is when the
        /// next attempt starts (-1: none, the client stopped), `attempt` its number
        /// (1 for the first retry after a working connection).
        Disconnected = 5 => c"DISCONNECTED",
        /// Something to log (`message`): a stalled server, a protocol violation, a
        /// journal ignored or offered.
        Warning = 6 => c"WARNING",
        /// A download was verified and renamed into place at `path`; Completed follows.
        /// An avatar's also carries its request's `client_path` and `req_type`.
        Saved = 7 => c"SAVED",
        /// `ComputeMd5(path)` has hashed `acked` of `total` bytes of `path`.
        Md5Progress = 8 => c"MD5_PROGRESS",
        /// `ComputeMd5(path)` ended: `md5` of `path`, or `code` 2001 (Source) and
        /// `message` when the file could not be read.
        Md5Ready = 9 => c"MD5_READY",
    }

    /// The library's own codes in a Failed event's `code`, beside the
    /// server's error codes (C `chatxfer_failure`, C++ `chatxfer::Failure`).
    enum FailureCode as chatxfer_failure for crate::ffi::bridge::ffi::Failure {
        /// The source file could not be read, or changed while uploading.
        Source = 2001 => c"SOURCE",
        /// Every chunk was sent but the server never confirmed the last one; against an
        /// appending server a resend could corrupt the file, so the transfer stops.
        Unconfirmed = 2002 => c"UNCONFIRMED",
        /// The server's reply was unusable: wrong seq, bad data, a hostile name, no
        /// data, no answer to 1045, a downloaded file whose md5 does not match, or an
        /// upload whose stored size differs from the file's at the end (a token's probe).
        BadReply = 2003 => c"BAD_REPLY",
        /// The local side failed: the downloaded file could not be written or renamed.
        Local = 2004 => c"LOCAL",
        /// A give-up budget ran out: no progress for too long, or too many bytes re-sent
        /// for one upload; the message names the cause and the last server error.
        GaveUp = 2005 => c"GAVE_UP",
        /// The library failed inside (a bug, e.g. a panic in its connection driver): the
        /// client stopped and every unfinished transfer fails with this code.
        Internal = 2006 => c"INTERNAL",
    }

    /// The level of a log line, and the most verbose one a log callback gets
    /// (C `chatxfer_log_level`, C++ `chatxfer::LogLevel`).
    enum LogLevel as chatxfer_log_level for crate::ffi::bridge::ffi::LogLevel {
        /// As a filter: no lines at all.
        Off = 0 => c"OFF",
        /// A transfer or the client failed for a reason worth a look.
        Error = 1 => c"ERROR",
        /// Something went wrong and was handled (a protocol violation, a stalled server).
        Warn = 2 => c"WARN",
        /// One line per transfer (started, finished, failed) and per connection change.
        Info = 3 => c"INFO",
        /// Connection and engine detail.
        Debug = 4 => c"DEBUG",
        /// Everything.
        Trace = 5 => c"TRACE",
    }
}
