//! [`Client`]: a networked client plus its event delivery, the object
//! behind both `chatxfer::Client` (C++) and `chatxfer_client` (C).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use super::{lock, Code, DownloadArgs, FfiError, FfiResult, UploadArgs};
use crate::engine::FileStatus;
use crate::runtime::{self, ClientEvent, Events};

/// The app's event handler, called on the `chatxfer-events` thread.
pub type EventSinkFn = Box<dyn FnMut(&ClientEvent) + Send>;

/// Idle until [`Client::connect`], then a [`runtime::Client`] with either a
/// pump thread feeding the sink or a queue for [`Client::poll_events`].
pub struct Client {
    state: Mutex<State>,
    /// Held while the sink runs, so [`Client::shutdown`] returns only once
    /// no callback is running and none will run again.
    sink: Arc<Mutex<Option<EventSinkFn>>>,
    /// Set by a shutdown from inside a callback: the pump drops the sink
    /// itself when the callback returns.
    closing: Arc<AtomicBool>,
    options: super::Options,
}

enum State {
    Idle,
    Connected {
        client: runtime::Client,
        /// `None` when events go to a sink through the pump thread.
        queue: Option<Events>,
        pump: Option<ThreadId>,
    },
    ShutDown,
}

impl Client {
    /// With `sink`, events are pushed to it; without, they queue for
    /// [`Client::poll_events`].
    pub fn new(sink: Option<EventSinkFn>) -> Client {
        Client::with_options(sink, super::Options::default())
    }

    /// As [`Client::new`], with settings (checked by `connect`, which
    /// refuses bad ones with [`Code::InvalidArgument`]).
    pub fn with_options(sink: Option<EventSinkFn>, options: super::Options) -> Client {
        Client {
            state: Mutex::new(State::Idle),
            sink: Arc::new(Mutex::new(sink)),
            closing: Arc::new(AtomicBool::new(false)),
            options,
        }
    }

    /// Starts the client; it connects (and reconnects) in the background,
    /// reporting `Connected`/`Disconnected` events.
    pub fn connect(&self, host: &str, port: u16) -> FfiResult {
        if host.is_empty() || port == 0 {
            return Err(FfiError::new(
                Code::InvalidArgument,
                "host must not be empty and port not 0",
            ));
        }
        let mut state = lock(&self.state);
        // An IPv6 literal needs brackets in "host:port".
        let server = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        match &*state {
            State::Idle => {}
            // After Disconnect (a logout): the same transfers, perhaps
            // another server (a re-login).
            State::Connected { client, .. } if !client.is_connecting() => {
                return Ok(client.connect_to(server)?);
            }
            State::Connected { .. } => {
                return Err(FfiError::new(
                    Code::AlreadyConnected,
                    "already connected (Disconnect first to change servers)",
                ))
            }
            State::ShutDown => return Err(shut_down()),
        }
        let (client, events) = runtime::Client::start(self.options.config(server)?)?;
        let has_sink = lock(&self.sink).is_some();
        let (queue, pump) = if has_sink {
            let sink = self.sink.clone();
            let closing = self.closing.clone();
            let handle = std::thread::Builder::new()
                .name("chatxfer-events".into())
                .spawn(move || pump(events, sink, closing))
                .map_err(|e| {
                    FfiError::new(Code::Runtime, format!("cannot start event thread: {e}"))
                })?;
            // Not joined: after shutdown it only waits for the client's
            // task to end, and the sink is already gone.
            (None, Some(handle.thread().id()))
        } else {
            (Some(events), None)
        };
        *state = State::Connected {
            client,
            queue,
            pump,
        };
        Ok(())
    }

    fn client(&self) -> FfiResult<runtime::Client> {
        match &*lock(&self.state) {
            State::Idle => Err(FfiError::new(
                Code::NotConnected,
                "call Connect before this",
            )),
            State::Connected { client, .. } => Ok(client.clone()),
            State::ShutDown => Err(shut_down()),
        }
    }

    /// `AddTransFile` (held when `args.hold`, until [`Client::resume`]).
    pub fn add_file(&self, args: &UploadArgs) -> FfiResult {
        let mut spec = args.spec()?;
        if spec.token.is_empty() {
            spec.token = self.options.token.clone();
        }
        // Without an md5 it returns at once; the md5 is computed on a
        // library thread.
        Ok(self.client()?.add_file(&args.path, spec)?)
    }

    /// `AddDownloadFile`: registered with the engine held (paused, nothing
    /// asked of the server) until [`Client::start_download`].
    pub fn add_download(&self, args: DownloadArgs) -> FfiResult {
        args.check()?;
        let client = self.client()?;
        let mut spec = args.spec();
        if spec.token.is_empty() {
            spec.token = self.options.token.clone();
        }
        Ok(client.add_download(spec, &args.dest_dir, None)?)
    }

    /// `StartDownload`: the same as [`Client::resume`]; starts a held
    /// download (or a held upload).
    pub fn start_download(&self, name: &str) -> FfiResult {
        self.resume(name)
    }

    pub fn pause(&self, name: &str) -> FfiResult {
        Ok(self.client()?.pause(name)?)
    }

    /// Also `BatchSend` and `StartDownload`: starts a held transfer or
    /// continues a paused one.
    pub fn resume(&self, name: &str) -> FfiResult {
        let client = self.client()?;
        // The chat bubble's retry click on a failed transfer.
        if client.status(name).map(|s| s.state) == Some(crate::engine::FileState::Failed) {
            return Ok(client.retry(name)?);
        }
        Ok(client.resume(name)?)
    }

    /// Transfers an earlier process left unfinished (found in the state
    /// directory when this client connected): uploads, then downloads.
    pub fn resumable(&self) -> FfiResult<Vec<super::Resumable>> {
        let client = self.client()?;
        let mut all: Vec<super::Resumable> = client
            .offered()
            .into_iter()
            .map(|e| super::Resumable {
                done: (e.acked_prefix as u64 * e.chunk_size as u64).min(e.size),
                total: e.size,
                path: e.path.display().to_string(),
                name: e.name,
                download: false,
            })
            .collect();
        all.extend(
            client
                .offered_downloads()
                .into_iter()
                .map(|d| super::Resumable {
                    done: 0,
                    total: d.known.as_ref().map_or(0, |k| k.1),
                    path: d.dest_dir.display().to_string(),
                    name: d.name,
                    download: true,
                }),
        );
        Ok(all)
    }

    /// Continues a transfer an earlier process left unfinished.
    pub fn resume_offered(&self, name: &str) -> FfiResult {
        Ok(self.client()?.resume_offered(name)?)
    }

    /// Forgets a transfer an earlier process left unfinished.
    pub fn discard_offered(&self, name: &str) -> FfiResult {
        Ok(self.client()?.discard_offered(name)?)
    }

    /// Starts a failed or cancelled transfer over (see `runtime::Client::retry`).
    pub fn retry(&self, name: &str) -> FfiResult {
        Ok(self.client()?.retry(name)?)
    }

    /// The 1036 reply's id for a chat upload registered held without one.
    pub fn set_message_id(&self, name: &str, message_id: i64) -> FfiResult {
        Ok(self.client()?.set_message_id(name, message_id)?)
    }

    pub fn cancel(&self, name: &str) -> FfiResult {
        Ok(self.client()?.cancel(name)?)
    }

    pub fn status(&self, name: &str) -> FfiResult<FileStatus> {
        self.client()?
            .status(name)
            .ok_or_else(|| FfiError::new(Code::UnknownName, format!("no transfer named {name:?}")))
    }

    /// Events queued so far (only when no sink was given).
    pub fn poll_events(&self) -> Vec<ClientEvent> {
        let mut state = lock(&self.state);
        let mut out = Vec::new();
        if let State::Connected { queue: Some(q), .. } = &mut *state {
            while let Some(e) = q.try_recv() {
                out.push(e);
            }
        }
        out
    }

    /// Takes the connection down (a logout, a kick) and keeps it down until
    /// the next [`Client::connect`], which may name another server; the
    /// transfers stay and continue then.
    pub fn disconnect(&self) -> FfiResult {
        Ok(self.client()?.disconnect()?)
    }

    /// Hashes the file at `path` on a library thread (after `connect`, as
    /// for uploads): `Md5Progress` events, then `Md5Ready`.
    pub fn compute_md5(&self, path: &str) -> FfiResult {
        Ok(self.client()?.compute_md5(std::path::Path::new(path))?)
    }

    /// Closes the connection and releases the sink. With `drain`, first
    /// stops sending and waits (at most that long) for the replies to
    /// chunks in flight, so the journals of unfinished uploads are exact;
    /// without, unfinished transfers are abandoned at once. When it returns,
    /// no callback runs any more — unless it is called from inside one, when
    /// the sink is released as that callback returns. A second call fails
    /// with [`Code::ShutDown`].
    pub fn shutdown(&self, drain: Option<std::time::Duration>) -> FfiResult {
        if let (Some(limit), Ok(client)) = (drain, self.client()) {
            // Outside the state lock: the drain takes up to `limit`, and the
            // event thread may call in meanwhile.
            // Not from inside an async context (a Rust host's task): that
            // thread must not block; it gets the immediate close.
            let in_async = tokio::runtime::Handle::try_current().is_ok();
            match runtime::handle() {
                Ok(rt) if !in_async => rt.block_on(client.shutdown(Some(limit))),
                _ => {}
            }
        }
        let old = std::mem::replace(&mut *lock(&self.state), State::ShutDown);
        if matches!(old, State::ShutDown) {
            return Err(shut_down());
        }
        self.closing.store(true, Ordering::SeqCst);
        let pump = match &old {
            State::Connected { pump, .. } => *pump,
            _ => None,
        };
        // Dropping the last clone of the client stops its task.
        drop(old);
        if pump != Some(std::thread::current().id()) {
            let sink = lock(&self.sink).take();
            drop(sink);
        }
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Dropped from C++ (`rust::Box`) or C (`chatxfer_client_free`): a
        // panic must not unwind out of here.
        let _ = catch_unwind(AssertUnwindSafe(|| self.shutdown(None)));
    }
}

fn shut_down() -> FfiError {
    FfiError::new(Code::ShutDown, "this client was shut down")
}

/// The `chatxfer-events` thread: delivers events in order until the client
/// is gone or shut down.
fn pump(mut events: Events, sink: Arc<Mutex<Option<EventSinkFn>>>, closing: Arc<AtomicBool>) {
    while let Some(e) = events.blocking_recv() {
        let mut slot = lock(&sink);
        let Some(f) = slot.as_mut() else { break };
        // A panicking sink loses this event, not the thread.
        let _ = catch_unwind(AssertUnwindSafe(|| f(&e)));
        if closing.load(Ordering::SeqCst) {
            *slot = None;
            break;
        }
    }
}
