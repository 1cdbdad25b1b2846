//! [`Client`]: a networked client plus its event delivery, the object
//! behind both `chatxfer::Client` (C++) and `chatxfer_client` (C).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use super::{lock, Code, DownloadArgs, FfiError, FfiResult, UploadArgs};
use crate::engine::{Event, FileState, FileStatus};
use crate::runtime::{self, ClientConfig, Events};

/// The app's event handler, called on the `chatxfer-events` thread.
pub type EventSinkFn = Box<dyn FnMut(&Event) + Send>;

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
    /// Downloads added but not started: the engine has no held state for
    /// downloads, so they are registered only by [`Client::start_download`].
    held: Mutex<HashMap<String, DownloadArgs>>,
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
        Client {
            state: Mutex::new(State::Idle),
            sink: Arc::new(Mutex::new(sink)),
            closing: Arc::new(AtomicBool::new(false)),
            held: Mutex::new(HashMap::new()),
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
        match &*state {
            State::Idle => {}
            State::Connected { .. } => {
                return Err(FfiError::new(Code::AlreadyConnected, "already connected"))
            }
            State::ShutDown => return Err(shut_down()),
        }
        // An IPv6 literal needs brackets in "host:port".
        let server = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let (client, events) = runtime::Client::start(ClientConfig::new(server))?;
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
        let spec = args.spec()?;
        // Outside the state lock: without an md5 this reads the whole file.
        Ok(self.client()?.add_file(&args.path, spec)?)
    }

    /// `AddDownloadFile` / `AddAvatarDownload`: checked now, kept here (held)
    /// and registered with the engine only by [`Client::start_download`].
    pub fn add_download(&self, args: DownloadArgs) -> FfiResult {
        args.check()?;
        let client = self.client()?;
        let mut held = lock(&self.held);
        if held.contains_key(&args.name) || client.status(&args.name).is_some() {
            return Err(FfiError::new(
                Code::DuplicateName,
                format!("a transfer named {:?} is already registered", args.name),
            ));
        }
        held.insert(args.name.clone(), args);
        Ok(())
    }

    /// `StartDownload`: registers a held download, which starts at once.
    pub fn start_download(&self, name: &str) -> FfiResult {
        let client = self.client()?;
        let Some(args) = lock(&self.held).remove(name) else {
            return Err(match client.status(name) {
                Some(_) => FfiError::new(
                    Code::WrongState,
                    format!("{name:?} is not a held download (already started?)"),
                ),
                None => FfiError::new(Code::UnknownName, format!("no transfer named {name:?}")),
            });
        };
        let r = client.add_download(args.spec(), &args.dest_dir, None);
        if r.is_err() {
            // Still held: the app may fix the cause and start it again.
            lock(&self.held).insert(name.to_owned(), args);
        }
        Ok(r?)
    }

    fn is_held(&self, name: &str) -> bool {
        lock(&self.held).contains_key(name)
    }

    /// A held download stays held (it is not running yet).
    pub fn pause(&self, name: &str) -> FfiResult {
        let client = self.client()?;
        if self.is_held(name) {
            return Ok(());
        }
        Ok(client.pause(name)?)
    }

    /// Also `BatchSend`: starts a held upload (or held download) or continues
    /// a paused one.
    pub fn resume(&self, name: &str) -> FfiResult {
        let client = self.client()?;
        if self.is_held(name) {
            return self.start_download(name);
        }
        Ok(client.resume(name)?)
    }

    /// A held download is just forgotten (no event).
    pub fn cancel(&self, name: &str) -> FfiResult {
        let client = self.client()?;
        if lock(&self.held).remove(name).is_some() {
            return Ok(());
        }
        Ok(client.cancel(name)?)
    }

    /// A held download reports `Paused` with 0 of 0 bytes.
    pub fn status(&self, name: &str) -> FfiResult<FileStatus> {
        let client = self.client()?;
        if let Some(a) = lock(&self.held).get(name) {
            return Ok(FileStatus {
                name: a.name.clone(),
                state: FileState::Paused,
                total: 0,
                acked: 0,
                max_seq: 0,
                acked_prefix: 0,
                next_seq: 0,
                in_flight: 0,
                md5: a.md5.clone(),
            });
        }
        client
            .status(name)
            .ok_or_else(|| FfiError::new(Code::UnknownName, format!("no transfer named {name:?}")))
    }

    /// Events queued so far (only when no sink was given).
    pub fn poll_events(&self) -> Vec<Event> {
        let mut state = lock(&self.state);
        let mut out = Vec::new();
        if let State::Connected { queue: Some(q), .. } = &mut *state {
            while let Some(e) = q.try_recv() {
                out.push(e);
            }
        }
        out
    }

    /// Closes the connection (unfinished uploads are abandoned) and releases
    /// the sink. When it returns, no callback runs any more — unless it is
    /// called from inside one, when the sink is released as that callback
    /// returns. A second call fails with [`Code::ShutDown`].
    pub fn shutdown(&self) -> FfiResult {
        let old = std::mem::replace(&mut *lock(&self.state), State::ShutDown);
        if matches!(old, State::ShutDown) {
            return Err(shut_down());
        }
        self.closing.store(true, Ordering::SeqCst);
        lock(&self.held).clear();
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
        let _ = catch_unwind(AssertUnwindSafe(|| self.shutdown()));
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
