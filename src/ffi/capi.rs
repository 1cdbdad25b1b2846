//! The plain C ABI; `include/chatxfer.h` is generated from this file by
//! cbindgen (`build.rs`), together with the enums of `src/ffi/enums.rs`
//! (`chatxfer_result`, `chatxfer_state`, `chatxfer_event_kind`,
//! `chatxfer_failure`). Conventions, as in rustls-ffi:
//! * every function that can fail returns a [`chatxfer_result`] (stable
//!   numbers); the others (`chatxfer_client_free`,
//!   `chatxfer_library_shutdown`, `chatxfer_result_name`,
//!   `chatxfer_result_description`, `chatxfer_last_error`) cannot fail;
//! * every function that could panic runs inside a panic boundary: a panic
//!   becomes `CHATXFER_RESULT_PANIC` (or is swallowed where nothing is
//!   returned);
//! * NULL pointers give `CHATXFER_RESULT_NULL_PARAMETER`, strings that are not
//!   UTF-8 `CHATXFER_RESULT_INVALID_UTF8`, calls on a shut-down client
//!   `CHATXFER_RESULT_SHUT_DOWN` — never undefined behaviour;
//! * out-parameters are written only on success;
//! * `chatxfer_client_free(NULL)` does nothing;
//! * strings passed in are borrowed for the call; strings inside a
//!   `chatxfer_event` are valid only during the callback;
//! * `chatxfer_last_error` gives the text of the last failure on the
//!   calling thread.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::AssertUnwindSafe;

use super::{
    boundary, last_error, Client, Code, DownloadArgs, EventSinkFn, FfiError, FfiResult, FlatEvent,
    LogLevel, UploadArgs,
};
pub use super::{chatxfer_event_kind, chatxfer_log_level, chatxfer_result, chatxfer_state};

/// An event; every string is NUL-terminated and valid only during the
/// callback (`name` is "" for connection events, never NULL). From
/// `chatxfer_engine_poll_event`: until the next call of it.
#[repr(C)]
#[derive(Debug)]
pub struct chatxfer_event {
    pub kind: chatxfer_event_kind,
    pub name: *const c_char,
    pub state: chatxfer_state,
    pub acked: u64,
    pub total: u64,
    pub rate: f64,
    pub md5: *const c_char,
    pub code: i64,
    pub message: *const c_char,
    /// Saved: the downloaded file's path ("" for other kinds).
    pub path: *const c_char,
    /// Disconnected: milliseconds until the next connection attempt; -1 when
    /// none follows (the client stopped) and for every other kind.
    pub retry_in_ms: i64,
    /// Disconnected: the number of that attempt (1 after a connection that
    /// worked, growing while the server stays unreachable); 0 otherwise.
    pub attempt: u32,
    /// Saved of an avatar: the `avatar_client_path` its request carried ("" for
    /// other kinds and chat files); the app routes the picture by it.
    pub client_path: *const c_char,
    /// Saved of an avatar: the `avatar_req_type` its request carried ("" for
    /// other kinds and chat files).
    pub req_type: *const c_char,
}

/// A client's settings (`chatxfer_client_new_with`; C++
/// `chatxfer::ClientOptions`). Fill it with `chatxfer_options_init`, then
/// change fields. A 0 means the library's default unless a field says
/// otherwise; strings may be NULL ("").
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct chatxfer_options {
    /// `sizeof(chatxfer_options)` as the app was compiled (set by
    /// `chatxfer_options_init`): a struct from another version of this
    /// header is refused rather than misread.
    pub struct_size: u32,
    /// The deployed ResourceServer appends chunks (true, the default); the
    /// reference server (`chatxfer serve`) writes them at their offset.
    pub server_appends: bool,
    /// A fixed window of this many chunks in flight; 0: adaptive.
    pub fixed_window: u32,
    /// The adaptive window's most chunks in flight (about 44 KB each); 0: 512.
    pub max_window: u32,
    /// Raw bytes per upload chunk; 0: 32768 (the Qt client's).
    pub chunk_size: u32,
    /// 0: 10 s.
    pub connect_timeout_ms: u32,
    /// No reply to a chunk for this long renews the connection; 0: 30 s.
    pub ack_timeout_ms: u32,
    /// A transfer without progress this long fails with
    /// CHATXFER_FAILURE_GAVE_UP; default 600000 (10 min); 0: never.
    pub give_up_after_ms: u64,
    /// An upload putting more than this many times its size on the wire
    /// fails with CHATXFER_FAILURE_GAVE_UP; 0: 3.
    pub max_resend_factor: u32,
    /// Directory for the journals of unfinished uploads; NULL or "": none.
    pub state_dir: *const c_char,
    /// A download announced larger than this fails; 0: 4 GiB.
    pub max_download_size: u64,
    /// Upload bytes per second on the wire; 0: no cap.
    pub rate_limit: u64,
    /// The login token, for uploads and downloads whose spec has none.
    pub token: *const c_char,
    /// A download whose file name is taken fails, instead of being saved as
    /// "name (1).ext".
    pub existing_files_fail: bool,
}

/// Fills `*options` with the library's defaults (and its `struct_size`).
/// NULL is ignored.
///
/// # Safety
/// `options` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_options_init(options: *mut chatxfer_options) {
    let Some(out) = options.as_mut() else { return };
    let d = super::Options::default();
    *out = chatxfer_options {
        struct_size: std::mem::size_of::<chatxfer_options>() as u32,
        server_appends: d.server_appends,
        fixed_window: d.fixed_window,
        max_window: d.max_window,
        chunk_size: d.chunk_size,
        connect_timeout_ms: d.connect_timeout_ms,
        ack_timeout_ms: d.ack_timeout_ms,
        give_up_after_ms: d.give_up_after_ms,
        max_resend_factor: d.max_resend_factor,
        state_dir: std::ptr::null(),
        max_download_size: d.max_download_size,
        rate_limit: d.rate_limit,
        token: std::ptr::null(),
        existing_files_fail: d.existing_files_fail,
    };
}

impl super::Options {
    /// # Safety
    /// The strings of `o` are NULL or NUL-terminated.
    unsafe fn from_c(o: &chatxfer_options) -> FfiResult<super::Options> {
        if o.struct_size as usize != std::mem::size_of::<chatxfer_options>() {
            return Err(FfiError::new(
                Code::InvalidArgument,
                format!(
                    "options.struct_size is {}, this library's chatxfer_options has {} bytes: \
                     call chatxfer_options_init (and use the header of this library)",
                    o.struct_size,
                    std::mem::size_of::<chatxfer_options>()
                ),
            ));
        }
        Ok(super::Options {
            server_appends: o.server_appends,
            fixed_window: o.fixed_window,
            max_window: o.max_window,
            chunk_size: o.chunk_size,
            connect_timeout_ms: o.connect_timeout_ms,
            ack_timeout_ms: o.ack_timeout_ms,
            give_up_after_ms: o.give_up_after_ms,
            max_resend_factor: o.max_resend_factor,
            state_dir: opt_str_arg(o.state_dir, "state_dir")?.to_owned(),
            max_download_size: o.max_download_size,
            rate_limit: o.rate_limit,
            token: opt_str_arg(o.token, "token")?.to_owned(),
            existing_files_fail: o.existing_files_fail,
        })
    }
}

/// Receives events on a library thread (`chatxfer-events`), one at a time,
/// in order. It must not block for long; a GUI app posts the event to its
/// own thread. `user_data` is the pointer given to `chatxfer_client_new`.
pub type chatxfer_event_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const chatxfer_event)>;

/// An upload to register (`AddTransFile`; C++ `chatxfer::UploadSpec`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct chatxfer_upload_spec {
    /// The file to upload (UTF-8).
    pub path: *const c_char,
    /// Unique name: the server's key and stored file name.
    pub name: *const c_char,
    pub uid: i64,
    pub sender: i64,
    pub receiver: i64,
    pub message_id: i64,
    /// Hex md5 if known; NULL or "" to compute it (on a library thread: the
    /// call returns at once and the upload starts when it is known).
    pub md5: *const c_char,
    /// Higher goes first and gets a larger share of the window.
    pub priority: u8,
    /// Register paused until `chatxfer_client_batch_send` (the client's
    /// BatchSend once the ChatServer confirmed the message).
    pub hold: bool,
    /// The login token, sent on the first chunk (checked for avatars); NULL
    /// for "".
    pub token: *const c_char,
    /// An avatar (1031, stop-and-wait) instead of a chat file; it needs no
    /// message id. A chat file needs `message_id` > 0 (the id of the
    /// ChatServer's 1036 reply), else CHATXFER_RESULT_INVALID_ARGUMENT.
    pub avatar: bool,
}

/// A download to register (`AddDownloadFile`; C++ `chatxfer::DownloadSpec`);
/// it is held until `chatxfer_client_start_download`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct chatxfer_download_spec {
    /// Unique name of the transfer (events use it), e.g. "msg-42".
    pub name: *const c_char,
    /// The chat message whose file to download (ignored for an avatar).
    pub message_id: i64,
    /// The downloading user and their login token ("" for the one of the
    /// client's options).
    pub uid: i64,
    pub token: *const c_char,
    /// Existing directory to save into, under the server's file name.
    pub dest_dir: *const c_char,
    /// Hex md5 if known (checked at the end); NULL or "" for no check.
    pub md5: *const c_char,
    pub priority: u8,
    /// Non-NULL: download this avatar of `uid` instead of a chat file.
    pub avatar_name: *const c_char,
    /// The client path echoed back for an avatar; NULL for "".
    pub avatar_client_path: *const c_char,
    /// The avatar request type echoed back; NULL or "" for "1" (the client's).
    pub avatar_req_type: *const c_char,
    /// Non-NULL and not "": the file's name on the server as the
    /// ChatServer's 1039 notify gives it, with `known_size` and
    /// `known_sender`; no 1045 is sent (the chunks are asked for at once).
    pub known_name: *const c_char,
    pub known_size: u64,
    pub known_sender: i64,
}

/// A snapshot of one transfer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct chatxfer_file_status {
    pub state: chatxfer_state,
    pub acked: u64,
    pub total: u64,
    /// Hex md5, NUL-terminated.
    pub md5: [c_char; 33],
}

/// A connection to a ResourceServer with its uploads. Opaque; from
/// `chatxfer_client_new`, released by `chatxfer_client_free`. Its functions
/// may be called from any thread.
pub struct chatxfer_client {
    inner: Client,
}

/// The app's `user_data`, handed to the callback on the event thread.
struct UserData(*mut c_void);
// SAFETY: the header documents that the callback (and so `user_data`) is
// used from a library thread; the pointer is only passed back, never read.
unsafe impl Send for UserData {}

impl UserData {
    // A method, so that closures capture the whole `Send` wrapper rather
    // than its raw-pointer field.
    fn get(&self) -> *mut c_void {
        self.0
    }
}

fn result(r: FfiResult) -> chatxfer_result {
    match r {
        Ok(()) => Code::Ok,
        Err(e) => e.code,
    }
}

/// A borrowed C string argument, checked.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::new(
            Code::NullParameter,
            format!("{what} is NULL"),
        ));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| FfiError::new(Code::InvalidUtf8, format!("{what} is not valid UTF-8")))
}

/// # Safety
/// `c` is NULL or a live pointer from `chatxfer_client_new`.
unsafe fn client_arg<'a>(c: *const chatxfer_client) -> FfiResult<&'a chatxfer_client> {
    c.as_ref()
        .ok_or_else(|| FfiError::new(Code::NullParameter, "client is NULL"))
}

/// The strings a `chatxfer_event` points into, owned for as long as it is
/// handed out.
type EventStrings = [CString; 6];

fn event_strings(f: &FlatEvent) -> EventStrings {
    [
        &f.name,
        &f.md5,
        &f.message,
        &f.path,
        &f.client_path,
        &f.req_type,
    ]
    .map(|s| c_string(s))
}

/// `f` as C sees it; its strings point into `strings`.
fn c_event(f: &FlatEvent, strings: &EventStrings) -> chatxfer_event {
    chatxfer_event {
        kind: f.kind,
        name: strings[0].as_ptr(),
        state: f.xfer_state(),
        acked: f.acked,
        total: f.total,
        rate: f.rate,
        md5: strings[1].as_ptr(),
        code: f.code,
        message: strings[2].as_ptr(),
        path: strings[3].as_ptr(),
        retry_in_ms: f.retry_in_ms,
        attempt: f.attempt,
        client_path: strings[4].as_ptr(),
        req_type: strings[5].as_ptr(),
    }
}

fn c_string(s: &str) -> CString {
    // Server texts could hold a NUL; the C side would cut there anyway.
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

/// Creates a client (not yet connected). `callback` may be NULL: events are
/// then dropped. On success `*out` is the new client.
///
/// # Safety
/// `out` is NULL or valid for a write; `user_data` must stay usable from
/// the library's event thread until the client is shut down or freed.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_new(
    callback: chatxfer_event_callback,
    user_data: *mut c_void,
    out: *mut *mut chatxfer_client,
) -> chatxfer_result {
    result(boundary(|| {
        if out.is_null() {
            return Err(FfiError::new(Code::NullParameter, "out is NULL"));
        }
        *out = new_client(callback, user_data, super::Options::default());
        Ok(())
    }))
}

/// `chatxfer_client_new` with settings (`options` from
/// `chatxfer_options_init`, then changed; read during the call only).
/// `CHATXFER_RESULT_INVALID_ARGUMENT` for a `struct_size` of another
/// version; bad values make `chatxfer_client_connect` return it.
///
/// # Safety
/// As for `chatxfer_client_new`; `options` is NULL or valid for reads, its
/// strings NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_new_with(
    callback: chatxfer_event_callback,
    user_data: *mut c_void,
    options: *const chatxfer_options,
    out: *mut *mut chatxfer_client,
) -> chatxfer_result {
    result(boundary(|| {
        if out.is_null() {
            return Err(FfiError::new(Code::NullParameter, "out is NULL"));
        }
        let options = super::Options::from_c(spec_arg(options)?)?;
        *out = new_client(callback, user_data, options);
        Ok(())
    }))
}

/// # Safety
/// As for `chatxfer_client_new`.
unsafe fn new_client(
    callback: chatxfer_event_callback,
    user_data: *mut c_void,
    options: super::Options,
) -> *mut chatxfer_client {
    let user_data = UserData(user_data);
    let sink: EventSinkFn = match callback {
        Some(cb) => Box::new(move |e: &crate::runtime::ClientEvent| {
            let f = FlatEvent::from_client_event(e);
            let strings = event_strings(&f);
            let ev = c_event(&f, &strings);
            // SAFETY: the app gave a valid callback; `ev` and its
            // strings outlive the call.
            unsafe { cb(user_data.get(), &ev) };
        }),
        // No callback: drop events rather than queue them forever.
        None => Box::new(|_: &crate::runtime::ClientEvent| {}),
    };
    Box::into_raw(Box::new(chatxfer_client {
        inner: Client::with_options(Some(sink), options),
    }))
}

/// Connects to the ResourceServer at `host`:`port` in the background
/// (reconnecting on loss); `CHATXFER_EVENT_KIND_CONNECTED` follows.
///
/// # Safety
/// `client` is NULL or from `chatxfer_client_new` and not freed; `host` is
/// NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_connect(
    client: *const chatxfer_client,
    host: *const c_char,
    port: u16,
) -> chatxfer_result {
    result(boundary(|| {
        let c = client_arg(client)?;
        c.inner.connect(str_arg(host, "host")?, port)
    }))
}

/// Registers an upload (`AddTransFile`); with `spec->hold` it waits for
/// `chatxfer_client_batch_send`, otherwise it starts at once.
///
/// # Safety
/// `client` as for `chatxfer_client_connect`; `spec` is NULL or points to a
/// spec whose strings are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_add_upload(
    client: *const chatxfer_client,
    spec: *const chatxfer_upload_spec,
) -> chatxfer_result {
    result(boundary(|| {
        let c = client_arg(client)?;
        c.inner.add_file(&UploadArgs::from_c(spec_arg(spec)?)?)
    }))
}

/// A spec argument, checked for NULL.
///
/// # Safety
/// `p` is NULL or valid for reads during the call.
unsafe fn spec_arg<'a, T>(p: *const T) -> FfiResult<&'a T> {
    p.as_ref()
        .ok_or_else(|| FfiError::new(Code::NullParameter, "spec is NULL"))
}

impl UploadArgs {
    /// # Safety
    /// The strings of `s` are NULL or NUL-terminated.
    unsafe fn from_c(s: &chatxfer_upload_spec) -> FfiResult<UploadArgs> {
        Ok(UploadArgs {
            path: str_arg(s.path, "path")?.to_owned(),
            name: str_arg(s.name, "name")?.to_owned(),
            uid: s.uid,
            sender: s.sender,
            receiver: s.receiver,
            message_id: s.message_id,
            md5: opt_str_arg(s.md5, "md5")?.to_owned(),
            priority: s.priority,
            hold: s.hold,
            token: opt_str_arg(s.token, "token")?.to_owned(),
            avatar: s.avatar,
        })
    }
}

impl DownloadArgs {
    /// # Safety
    /// The strings of `s` are NULL or NUL-terminated.
    unsafe fn from_c(s: &chatxfer_download_spec) -> FfiResult<DownloadArgs> {
        let avatar = if s.avatar_name.is_null() {
            None
        } else {
            Some((
                str_arg(s.avatar_name, "avatar_name")?.to_owned(),
                opt_str_arg(s.avatar_client_path, "avatar_client_path")?.to_owned(),
                opt_str_arg(s.avatar_req_type, "avatar_req_type")?.to_owned(),
            ))
        };
        let known_name = opt_str_arg(s.known_name, "known_name")?;
        let known = (!known_name.is_empty()).then(|| crate::engine::KnownFile {
            server_name: known_name.to_owned(),
            size: s.known_size,
            sender_id: s.known_sender,
            receiver_id: s.uid,
        });
        Ok(DownloadArgs {
            known,
            name: str_arg(s.name, "name")?.to_owned(),
            message_id: s.message_id,
            uid: s.uid,
            token: str_arg(s.token, "token")?.to_owned(),
            dest_dir: str_arg(s.dest_dir, "dest_dir")?.to_owned(),
            md5: opt_str_arg(s.md5, "md5")?.to_owned(),
            priority: s.priority,
            avatar,
        })
    }
}

/// A NULL or checked string argument ("" for NULL).
///
/// # Safety
/// As for [`str_arg`].
unsafe fn opt_str_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        Ok("")
    } else {
        str_arg(p, what)
    }
}

/// Registers a download (`AddDownloadFile`, or an avatar when
/// `spec->avatar_name` is set). It is registered held: PAUSED, nothing is
/// asked of the server until `chatxfer_client_start_download`; its status
/// says 0 of 0 bytes until the server tells the size, and
/// `chatxfer_client_cancel` cancels it like any transfer.
///
/// # Safety
/// `client` as for `chatxfer_client_connect`; `spec` is NULL or points to a
/// spec whose strings are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_add_download(
    client: *const chatxfer_client,
    spec: *const chatxfer_download_spec,
) -> chatxfer_result {
    result(boundary(|| {
        let c = client_arg(client)?;
        c.inner.add_download(DownloadArgs::from_c(spec_arg(spec)?)?)
    }))
}

/// Runs `f` on the client and the checked name.
unsafe fn with_name(
    client: *const chatxfer_client,
    name: *const c_char,
    f: impl FnOnce(&Client, &str) -> FfiResult,
) -> chatxfer_result {
    result(boundary(|| {
        let c = client_arg(client)?;
        f(&c.inner, str_arg(name, "name")?)
    }))
}

/// `BatchSend`: starts a held upload, or continues a paused one.
///
/// # Safety
/// As for `chatxfer_client_connect`, `name` instead of `host`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_batch_send(
    client: *const chatxfer_client,
    name: *const c_char,
) -> chatxfer_result {
    with_name(client, name, |t, n| t.resume(n))
}

/// Starts a download held by `chatxfer_client_add_download` (the same as
/// `chatxfer_client_resume`). Events: PROGRESS..., SAVED (`path`),
/// COMPLETED, or FAILED.
///
/// # Safety
/// As for `chatxfer_client_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_start_download(
    client: *const chatxfer_client,
    name: *const c_char,
) -> chatxfer_result {
    with_name(client, name, |t, n| t.start_download(n))
}

/// Stops sending new chunks of `name`; chunks in flight still complete.
///
/// # Safety
/// As for `chatxfer_client_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_pause(
    client: *const chatxfer_client,
    name: *const c_char,
) -> chatxfer_result {
    with_name(client, name, |t, n| t.pause(n))
}

/// Continues a paused upload (the same as `chatxfer_client_batch_send`).
///
/// # Safety
/// As for `chatxfer_client_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_resume(
    client: *const chatxfer_client,
    name: *const c_char,
) -> chatxfer_result {
    with_name(client, name, |t, n| t.resume(n))
}

/// Starts a failed or cancelled transfer over under the same name (an
/// upload from its file, a download into the same directory);
/// `chatxfer_client_resume` on a failed transfer does the same.
///
/// # Safety
/// As for `chatxfer_client_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_retry(
    client: *const chatxfer_client,
    name: *const c_char,
) -> chatxfer_result {
    with_name(client, name, |t, n| t.retry(n))
}

/// Gives a chat upload registered held with `message_id` 0 (at send time,
/// before the ChatServer's 1036 reply) the id of that reply; the upload
/// starts with `chatxfer_client_batch_send`, which refuses it until then
/// (`CHATXFER_RESULT_INVALID_ARGUMENT`). An id <= 0 or an avatar is refused
/// the same way; another id once a chunk has gone gives
/// `CHATXFER_RESULT_WRONG_STATE`.
///
/// # Safety
/// As for `chatxfer_client_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_set_message_id(
    client: *const chatxfer_client,
    name: *const c_char,
    message_id: i64,
) -> chatxfer_result {
    with_name(client, name, |t, n| t.set_message_id(n, message_id))
}

/// A transfer an earlier process left unfinished (strings valid during
/// the callback only).
#[repr(C)]
#[derive(Debug)]
pub struct chatxfer_resumable {
    pub name: *const c_char,
    /// Upload: the source file. Download: the destination directory.
    pub path: *const c_char,
    /// Upload: bytes the server acknowledged. Download: 0 (it starts over).
    pub done: u64,
    /// Upload: the file's size. Download: the size if known, else 0.
    pub total: u64,
    pub download: bool,
}

/// Receives one entry of `chatxfer_client_list_resumable`, on the calling
/// thread.
pub type chatxfer_resumable_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, entry: *const chatxfer_resumable)>;

/// With `chatxfer_options.state_dir`: calls `callback` once per transfer an
/// earlier process left unfinished (found when this client connected), then
/// returns. Resume (`chatxfer_client_resume_offered`) or discard
/// (`chatxfer_client_discard_offered`) each.
///
/// # Safety
/// As for `chatxfer_client_connect`; `callback` is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_list_resumable(
    client: *const chatxfer_client,
    callback: chatxfer_resumable_callback,
    user_data: *mut c_void,
) -> chatxfer_result {
    result(boundary(|| {
        let c = client_arg(client)?;
        let cb = callback.ok_or_else(|| FfiError::new(Code::NullParameter, "callback is NULL"))?;
        for r in c.inner.resumable()? {
            let (name, path) = (c_string(&r.name), c_string(&r.path));
            let entry = chatxfer_resumable {
                name: name.as_ptr(),
                path: path.as_ptr(),
                done: r.done,
                total: r.total,
                download: r.download,
            };
            // SAFETY: the app gave a valid callback; `entry` outlives it.
            cb(user_data, &entry);
        }
        Ok(())
    }))
}

/// Continues a transfer `chatxfer_client_list_resumable` listed: an upload
/// from what the server acknowledged (its source must be unchanged), a
/// download from the start.
///
/// # Safety
/// As for `chatxfer_client_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_resume_offered(
    client: *const chatxfer_client,
    name: *const c_char,
) -> chatxfer_result {
    with_name(client, name, |t, n| t.resume_offered(n))
}

/// Forgets a transfer `chatxfer_client_list_resumable` listed (its journal,
/// and a download's partial file).
///
/// # Safety
/// As for `chatxfer_client_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_discard_offered(
    client: *const chatxfer_client,
    name: *const c_char,
) -> chatxfer_result {
    with_name(client, name, |t, n| t.discard_offered(n))
}

/// Abandons an upload.
///
/// # Safety
/// As for `chatxfer_client_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_cancel(
    client: *const chatxfer_client,
    name: *const c_char,
) -> chatxfer_result {
    with_name(client, name, |t, n| t.cancel(n))
}

/// As `chatxfer_client_set_message_id`, for the sans-IO engine.
///
/// # Safety
/// As for `chatxfer_engine_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_set_message_id(
    engine: *mut chatxfer_engine,
    name: *const c_char,
    message_id: i64,
) -> chatxfer_result {
    with_engine_name(engine, name, |e, n| e.set_message_id(n, message_id))
}

/// Writes a snapshot of `name` to `*out` (only on success).
///
/// # Safety
/// As for `chatxfer_client_batch_send`; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_status(
    client: *const chatxfer_client,
    name: *const c_char,
    out: *mut chatxfer_file_status,
) -> chatxfer_result {
    with_name(client, name, |t, n| {
        if out.is_null() {
            return Err(FfiError::new(Code::NullParameter, "out is NULL"));
        }
        let s = t.status(n)?;
        let mut md5 = [0 as c_char; 33];
        for (d, b) in md5.iter_mut().zip(s.md5.bytes().take(32)) {
            *d = b as c_char;
        }
        *out = chatxfer_file_status {
            state: s.state.into(),
            acked: s.acked,
            total: s.total,
            md5,
        };
        Ok(())
    })
}

/// Takes the connection down (a logout, a kick) until the next
/// `chatxfer_client_connect`, which may name another server (a re-login);
/// the transfers stay registered and continue then, and their give-up
/// budgets do not run meanwhile.
///
/// # Safety
/// As for `chatxfer_client_connect`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_disconnect(
    client: *const chatxfer_client,
) -> chatxfer_result {
    result(boundary(|| client_arg(client)?.inner.disconnect()))
}

/// Computes the md5 of the file at `path` on a library thread and returns at
/// once, for an app that needs it before it announces the message:
/// `CHATXFER_EVENT_KIND_MD5_PROGRESS` events (`path`, `acked` of `total`
/// bytes), then one `CHATXFER_EVENT_KIND_MD5_READY` (`path`, `md5`, or `code`
/// 2001 and `message`). After `chatxfer_client_connect`, as for uploads; a
/// file that cannot be opened is refused here.
///
/// # Safety
/// As for `chatxfer_client_connect`; `path` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_compute_md5(
    client: *const chatxfer_client,
    path: *const c_char,
) -> chatxfer_result {
    result(boundary(|| {
        let c = client_arg(client)?;
        c.inner.compute_md5(str_arg(path, "path")?)
    }))
}

/// Stops sending, waits at most `timeout_ms` for the replies to chunks in
/// flight (so the journals of unfinished uploads are exact), then closes as
/// `chatxfer_client_close`.
///
/// # Safety
/// As for `chatxfer_client_connect`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_shutdown_within(
    client: *const chatxfer_client,
    timeout_ms: u32,
) -> chatxfer_result {
    result(boundary(|| {
        client_arg(client)?
            .inner
            .shutdown(Some(std::time::Duration::from_millis(timeout_ms.into())))
    }))
}

/// Closes the connection at once (unfinished transfers are abandoned). When
/// it returns no callback runs any more, unless it is called from inside
/// the callback. Every later call on `client`, this one included, returns
/// `CHATXFER_RESULT_SHUT_DOWN`; `chatxfer_client_free` is still needed.
///
/// # Safety
/// As for `chatxfer_client_connect`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_close(client: *const chatxfer_client) -> chatxfer_result {
    result(boundary(|| client_arg(client)?.inner.shutdown(None)))
}

/// `chatxfer_client_shutdown_within` with 5 s: the graceful quit.
///
/// # Safety
/// As for `chatxfer_client_connect`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_shutdown(
    client: *const chatxfer_client,
) -> chatxfer_result {
    result(boundary(|| {
        client_arg(client)?
            .inner
            .shutdown(Some(super::DEFAULT_DRAIN))
    }))
}

/// Shuts the client down if needed and releases it. NULL is allowed.
///
/// # Safety
/// `client` is NULL or from `chatxfer_client_new` and not freed before; no
/// other thread uses it during or after this call.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_client_free(client: *mut chatxfer_client) {
    // Not through `boundary`: freeing leaves the thread's last error alone.
    if !client.is_null() {
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(client))));
    }
}

/// Stops the library's threads, for a clean exit. Clients
/// should be shut down first; afterwards nothing can connect again.
#[no_mangle]
pub extern "C" fn chatxfer_library_shutdown() {
    let _ = boundary(|| {
        super::library_shutdown();
        Ok(())
    });
}

/// Receives one log line of the library: `level`, `target` (the module,
/// e.g. "chatxfer::engine") and `message` ("text key=value ..."), strings
/// valid only during the call. Called from any thread (the library's, or
/// the app's during a call into the library), one line at a time.
pub type chatxfer_log_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        level: chatxfer_log_level,
        target: *const c_char,
        message: *const c_char,
    ),
>;

/// `user_data` of a log callback: shared by every thread that logs.
struct LogUserData(*mut c_void);
// SAFETY: the header documents that the log callback (and so `user_data`)
// is used from any thread, one call at a time; the pointer is only passed
// back, never read.
unsafe impl Send for LogUserData {}
// SAFETY: as above; calls are serialised by the library.
unsafe impl Sync for LogUserData {}

impl LogUserData {
    fn get(&self) -> *mut c_void {
        self.0
    }
}

/// Sends the library's log lines up to `max_level` (a `chatxfer_log_level`;
/// `CHATXFER_LOG_LEVEL_OFF` or a NULL `callback` stops them) to `callback`,
/// process-wide, replacing an earlier one. Without one the library prints
/// nothing. `CHATXFER_RESULT_INVALID_ARGUMENT` for an unknown level;
/// `CHATXFER_RESULT_RUNTIME` if the process already has a Rust `tracing`
/// subscriber (the lines go there).
///
/// # Safety
/// `callback`, if not NULL, may be called from any thread with `user_data`
/// until it is replaced or removed.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_set_log_callback(
    callback: chatxfer_log_callback,
    user_data: *mut c_void,
    max_level: u32,
) -> chatxfer_result {
    result(boundary(|| {
        let level = LogLevel::from_u32(max_level).ok_or_else(|| {
            FfiError::new(
                Code::InvalidArgument,
                format!("{max_level} is not a chatxfer_log_level"),
            )
        })?;
        let user_data = LogUserData(user_data);
        let callback = callback.map(|cb| {
            let lock = std::sync::Mutex::new(());
            Box::new(move |level: LogLevel, target: &str, message: &str| {
                let (target, message) = (c_string(target), c_string(message));
                let _one_at_a_time = super::lock(&lock);
                // SAFETY: the app gave a valid callback; the strings outlive it.
                unsafe { cb(user_data.get(), level, target.as_ptr(), message.as_ptr()) };
            }) as super::ForeignLog
        });
        super::set_log_callback(level, callback)
    }))
}

/// The name of a result ("OK", "NULL_PARAMETER", ...; "UNKNOWN" for a
/// number that is not a `chatxfer_result`); a static string.
#[no_mangle]
pub extern "C" fn chatxfer_result_name(result: u32) -> *const c_char {
    Code::from_u32(result)
        .map_or(c"UNKNOWN", Code::c_name)
        .as_ptr()
}

/// What a result means (the text documented above for its value; "" for a
/// number that is not a `chatxfer_result`); a static string.
#[no_mangle]
pub extern "C" fn chatxfer_result_description(result: u32) -> *const c_char {
    Code::from_u32(result)
        .map_or(c"", Code::c_description)
        .as_ptr()
}

/// Copies the message of the last failed call on this thread into `buf`
/// (NUL-terminated, cut to `len - 1` bytes) and returns its full length.
/// With `buf` NULL or `len` 0 it only returns the length.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_last_error(buf: *mut c_char, len: usize) -> usize {
    std::panic::catch_unwind(|| {
        let msg = last_error();
        if !buf.is_null() && len > 0 {
            let n = msg.len().min(len - 1);
            std::ptr::copy_nonoverlapping(msg.as_ptr().cast::<c_char>(), buf, n);
            *buf.add(n) = 0;
        }
        msg.len()
    })
    .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The sans-IO engine (`chatxfer_engine_*`): the host owns the socket and the
// timer, as today's `FileTcpMgr` does; the library owns no thread.

/// The sans-IO engine for a host that keeps its own socket and timer
/// (C++ `chatxfer::TransferEngine`). Opaque; from `chatxfer_engine_new`,
/// released by `chatxfer_engine_free`. Not thread-safe: one thread at a
/// time calls it (the GUI thread, typically). The host's loop: write what
/// `chatxfer_engine_poll_transmit` gives, pass every byte read to
/// `chatxfer_engine_handle_bytes`, arm one timer from
/// `chatxfer_engine_next_timeout_ms` and call
/// `chatxfer_engine_handle_timeout` when it fires, and drain
/// `chatxfer_engine_poll_event` after each call.
pub struct chatxfer_engine {
    inner: super::SansIo,
    /// Bytes produced by the engine that did not fit the caller's buffer:
    /// they go first on the next `poll_transmit`, so the stream written is
    /// whole frames in order. Dropped when the connection changes (a cut
    /// frame must not start the next connection).
    pending: Vec<u8>,
    pending_at: usize,
    /// Events taken from the engine, not yet handed out.
    events: std::collections::VecDeque<FlatEvent>,
    /// The strings of the event last handed out: valid until the next call
    /// of `chatxfer_engine_poll_event` (or `_free`).
    event_strings: Option<EventStrings>,
}

/// # Safety
/// `e` is NULL or a live pointer from `chatxfer_engine_new`, used by one
/// thread at a time.
unsafe fn engine_arg<'a>(e: *mut chatxfer_engine) -> FfiResult<&'a mut chatxfer_engine> {
    e.as_mut()
        .ok_or_else(|| FfiError::new(Code::NullParameter, "engine is NULL"))
}

/// Creates a sans-IO engine. `server_appends`: true for the deployed
/// ResourceServer (appends chunks), false for the reference server
/// (`chatxfer serve`, positional); it decides how a lost connection
/// resumes. On success `*out` is the new engine.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_new(
    server_appends: bool,
    out: *mut *mut chatxfer_engine,
) -> chatxfer_result {
    result(boundary(|| {
        if out.is_null() {
            return Err(FfiError::new(Code::NullParameter, "out is NULL"));
        }
        *out = Box::into_raw(Box::new(chatxfer_engine {
            inner: super::SansIo::new(server_appends),
            pending: Vec::new(),
            pending_at: 0,
            events: Default::default(),
            event_strings: None,
        }));
        Ok(())
    }))
}

/// Releases an engine (and the strings of its last event). NULL is allowed.
///
/// # Safety
/// `engine` is NULL or from `chatxfer_engine_new` and not freed before.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_free(engine: *mut chatxfer_engine) {
    if !engine.is_null() {
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(engine))));
    }
}

/// Registers an upload, as `chatxfer_client_add_upload` (an empty md5 is
/// computed here, on the calling thread).
///
/// # Safety
/// `engine` as for `chatxfer_engine_free`, not freed; `spec` is NULL or
/// points to a spec whose strings are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_add_upload(
    engine: *mut chatxfer_engine,
    spec: *const chatxfer_upload_spec,
) -> chatxfer_result {
    result(boundary(|| {
        let e = engine_arg(engine)?;
        e.inner.add_file(&UploadArgs::from_c(spec_arg(spec)?)?)
    }))
}

/// Registers a download, held (PAUSED) until
/// `chatxfer_engine_start_download`. `spec->dest_dir` must be an existing
/// directory (else CHATXFER_RESULT_INVALID_ARGUMENT); the file is written
/// there on the calling thread, inside `chatxfer_engine_handle_bytes`, to a
/// new `<name>.part` and renamed to a free name at the end (never
/// replacing a file); the SAVED event carries the path.
///
/// # Safety
/// As for `chatxfer_engine_add_upload`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_add_download(
    engine: *mut chatxfer_engine,
    spec: *const chatxfer_download_spec,
) -> chatxfer_result {
    result(boundary(|| {
        let e = engine_arg(engine)?;
        e.inner
            .add_download(&DownloadArgs::from_c(spec_arg(spec)?)?)
    }))
}

/// Runs `f` on the engine and the checked name.
unsafe fn with_engine_name(
    engine: *mut chatxfer_engine,
    name: *const c_char,
    f: impl FnOnce(&mut super::SansIo, &str) -> FfiResult,
) -> chatxfer_result {
    result(boundary(|| {
        let e = engine_arg(engine)?;
        f(&mut e.inner, str_arg(name, "name")?)
    }))
}

/// `BatchSend`: starts a held upload, or continues a paused transfer.
///
/// # Safety
/// `engine` as for `chatxfer_engine_add_upload`; `name` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_batch_send(
    engine: *mut chatxfer_engine,
    name: *const c_char,
) -> chatxfer_result {
    with_engine_name(engine, name, |e, n| e.resume(n))
}

/// Starts a held download (the same as `chatxfer_engine_resume`). Events:
/// PROGRESS..., SAVED (`path`), COMPLETED, or FAILED.
///
/// # Safety
/// As for `chatxfer_engine_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_start_download(
    engine: *mut chatxfer_engine,
    name: *const c_char,
) -> chatxfer_result {
    with_engine_name(engine, name, |e, n| e.start_download(n))
}

/// Stops sending new requests of `name`; those in flight still complete.
///
/// # Safety
/// As for `chatxfer_engine_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_pause(
    engine: *mut chatxfer_engine,
    name: *const c_char,
) -> chatxfer_result {
    with_engine_name(engine, name, |e, n| e.pause(n))
}

/// Continues a paused or held transfer; a failed one starts over, as
/// with `chatxfer_engine_retry`.
///
/// # Safety
/// As for `chatxfer_engine_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_resume(
    engine: *mut chatxfer_engine,
    name: *const c_char,
) -> chatxfer_result {
    with_engine_name(engine, name, |e, n| e.resume(n))
}

/// Abandons a transfer (a download's partial file is removed).
///
/// # Safety
/// As for `chatxfer_engine_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_cancel(
    engine: *mut chatxfer_engine,
    name: *const c_char,
) -> chatxfer_result {
    with_engine_name(engine, name, |e, n| e.cancel(n))
}

/// Starts a failed or cancelled transfer over under the same name (an
/// upload from its file, a download into the same directory);
/// `chatxfer_engine_resume` on a failed transfer does the same.
///
/// # Safety
/// As for `chatxfer_engine_batch_send`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_retry(
    engine: *mut chatxfer_engine,
    name: *const c_char,
) -> chatxfer_result {
    with_engine_name(engine, name, |e, n| e.retry(n))
}

/// Writes a snapshot of `name` to `*out` (only on success).
///
/// # Safety
/// As for `chatxfer_engine_batch_send`; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_status(
    engine: *mut chatxfer_engine,
    name: *const c_char,
    out: *mut chatxfer_file_status,
) -> chatxfer_result {
    with_engine_name(engine, name, |e, n| {
        if out.is_null() {
            return Err(FfiError::new(Code::NullParameter, "out is NULL"));
        }
        *out = file_status(e.status(n)?);
        Ok(())
    })
}

fn file_status(s: crate::engine::FileStatus) -> chatxfer_file_status {
    let mut md5 = [0 as c_char; 33];
    for (d, b) in md5.iter_mut().zip(s.md5.bytes().take(32)) {
        *d = b as c_char;
    }
    chatxfer_file_status {
        state: s.state.into(),
        acked: s.acked,
        total: s.total,
        md5,
    }
}

/// The host's socket is connected: transfers (re)start on it. Bytes of the
/// previous connection not yet taken by `chatxfer_engine_poll_transmit`
/// are dropped.
///
/// # Safety
/// `engine` as for `chatxfer_engine_add_upload`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_connected(
    engine: *mut chatxfer_engine,
) -> chatxfer_result {
    result(boundary(|| {
        let e = engine_arg(engine)?;
        e.drop_pending();
        e.inner.connected();
        Ok(())
    }))
}

/// The host's socket closed (or the host closed it, e.g. after
/// CHATXFER_RESULT_BAD_FRAME); requests in flight are re-sent after the
/// next `chatxfer_engine_connected`, as the server kind allows.
///
/// # Safety
/// `engine` as for `chatxfer_engine_add_upload`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_connection_lost(
    engine: *mut chatxfer_engine,
) -> chatxfer_result {
    result(boundary(|| {
        let e = engine_arg(engine)?;
        e.drop_pending();
        e.inner.connection_lost();
        Ok(())
    }))
}

impl chatxfer_engine {
    fn drop_pending(&mut self) {
        self.pending.clear();
        self.pending_at = 0;
    }
}

/// Copies up to `cap` bytes to write to the socket into `buf` and sets
/// `*out_len` to their number (0: nothing to send now). The bytes are a
/// stream of whole frames cut only by `cap`: the rest comes first on the
/// next call, so call again until 0 before waiting on the socket. Write
/// every byte given, in order.
///
/// # Safety
/// `engine` as for `chatxfer_engine_add_upload`; `buf` is NULL or valid for
/// `cap` bytes of writes; `out_len` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_poll_transmit(
    engine: *mut chatxfer_engine,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> chatxfer_result {
    result(boundary(|| {
        let e = engine_arg(engine)?;
        if buf.is_null() || out_len.is_null() {
            return Err(FfiError::new(Code::NullParameter, "buf or out_len is NULL"));
        }
        let out = std::slice::from_raw_parts_mut(buf, cap);
        let mut n = 0;
        while n < cap {
            if e.pending_at == e.pending.len() {
                // At least the room left, so one call fills the buffer.
                e.pending = e.inner.poll_transmit(cap - n);
                e.pending_at = 0;
                if e.pending.is_empty() {
                    break;
                }
            }
            let take = (cap - n).min(e.pending.len() - e.pending_at);
            out[n..n + take].copy_from_slice(&e.pending[e.pending_at..e.pending_at + take]);
            e.pending_at += take;
            n += take;
        }
        *out_len = n;
        Ok(())
    }))
}

/// Bytes read from the socket (`len` of them at `data`); frames are split
/// here and may straddle calls. CHATXFER_RESULT_BAD_FRAME for a malformed
/// header: the host should close the socket and call
/// `chatxfer_engine_connection_lost`.
///
/// # Safety
/// `engine` as for `chatxfer_engine_add_upload`; `data` is NULL or valid
/// for `len` bytes of reads.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_handle_bytes(
    engine: *mut chatxfer_engine,
    data: *const u8,
    len: usize,
) -> chatxfer_result {
    result(boundary(|| {
        let e = engine_arg(engine)?;
        if data.is_null() {
            return Err(FfiError::new(Code::NullParameter, "data is NULL"));
        }
        e.inner.handle_bytes(std::slice::from_raw_parts(data, len))
    }))
}

/// Sets `*out_ms` to the milliseconds until `chatxfer_engine_handle_timeout`
/// is due (0: now), or -1 when no timer is needed. Ask again after every
/// call that changes the engine.
///
/// # Safety
/// `engine` as for `chatxfer_engine_add_upload`; `out_ms` is NULL or valid
/// for a write.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_next_timeout_ms(
    engine: *mut chatxfer_engine,
    out_ms: *mut i64,
) -> chatxfer_result {
    result(boundary(|| {
        let e = engine_arg(engine)?;
        if out_ms.is_null() {
            return Err(FfiError::new(Code::NullParameter, "out_ms is NULL"));
        }
        *out_ms = e.inner.next_timeout_ms();
        Ok(())
    }))
}

/// The host's timer fired (early calls are harmless).
///
/// # Safety
/// `engine` as for `chatxfer_engine_add_upload`.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_handle_timeout(
    engine: *mut chatxfer_engine,
) -> chatxfer_result {
    result(boundary(|| {
        engine_arg(engine)?.inner.handle_timeout();
        Ok(())
    }))
}

/// Takes the next event: on success `*out_got` says whether there was one,
/// and if so `*out` is it. Its strings stay valid until the next call of
/// this function on the same engine (or `chatxfer_engine_free`); copy what
/// you keep. Disconnected/Connected events do not occur here (the host
/// owns the connection).
///
/// # Safety
/// `engine` as for `chatxfer_engine_add_upload`; `out` and `out_got` are
/// NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_poll_event(
    engine: *mut chatxfer_engine,
    out: *mut chatxfer_event,
    out_got: *mut bool,
) -> chatxfer_result {
    result(boundary(|| {
        let e = engine_arg(engine)?;
        if out.is_null() || out_got.is_null() {
            return Err(FfiError::new(Code::NullParameter, "out or out_got is NULL"));
        }
        // The previous event's strings end here, as documented.
        e.event_strings = None;
        if e.events.is_empty() {
            e.events
                .extend(e.inner.poll_events().iter().map(FlatEvent::from_event));
        }
        let Some(f) = e.events.pop_front() else {
            *out_got = false;
            return Ok(());
        };
        let strings = event_strings(&f);
        *out = c_event(&f, &strings);
        // Moving the CStrings moves their pointers' owners, not the heap
        // bytes the pointers point at.
        e.event_strings = Some(strings);
        *out_got = true;
        Ok(())
    }))
}

/// Sets `*out` to whether no transfer is queued, sending or paused.
///
/// # Safety
/// `engine` as for `chatxfer_engine_add_upload`; `out` is NULL or valid
/// for a write.
#[no_mangle]
pub unsafe extern "C" fn chatxfer_engine_is_idle(
    engine: *mut chatxfer_engine,
    out: *mut bool,
) -> chatxfer_result {
    result(boundary(|| {
        let e = engine_arg(engine)?;
        if out.is_null() {
            return Err(FfiError::new(Code::NullParameter, "out is NULL"));
        }
        *out = e.inner.is_idle();
        Ok(())
    }))
}
