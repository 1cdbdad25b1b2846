//! A client connection to a ResourceServer: the engine driven over TCP.
//!
//! One driver task owns the connection. It connects (with a timeout), then
//! loops: feed frames from the reader task to the engine, fire the engine's
//! timer, and move whatever the engine will send into a buffer handed to the
//! writer task, which writes each batch with one `write_all` (few syscalls,
//! buffers recycled, so no per-chunk allocation). When the engine reports a
//! stalled server or a protocol violation, or the socket fails, the driver
//! drops the connection, tells the engine (which plans every unfinished file
//! again), and reconnects after an exponential backoff with jitter.
//!
//! API calls ([`Client::add_file`], [`Client::pause`], ...) lock the engine,
//! change it, and wake the driver.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use super::files::{ExistingFile, FileSink, FileSource};
use super::journal::{self, JournalEntry};
use crate::engine::{
    check_message_id, check_new_message_id, AckRecord, DownloadSpec, Engine, EngineConfig, Event,
    FileSpec, FileState, FileStatus,
};
use crate::error::Result;
use crate::protocol::{Frame, FrameDecoder};
use crate::sync::lock;

/// Reconnect delays: `initial`, doubling to `max`, each with ±`jitter` (0..1).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: 0.3,
        }
    }
}

/// What a [`Client`] tells the application: the engine's events about
/// transfers, and the runtime's own about the connection and the journals.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// A transfer's state, progress, completion or failure, or a connection
    /// problem the engine detected.
    Transfer(Event),
    /// A transfer an earlier process left unfinished was found in the state
    /// directory; [`Client::resume_offered`] continues it,
    /// [`Client::discard_offered`] forgets it. For an upload `path` is the
    /// source and `acked` what the server acknowledged; for a download
    /// (`download`) `path` is the destination directory and it starts over.
    ResumeOffered {
        name: String,
        path: PathBuf,
        acked: u64,
        total: u64,
        download: bool,
    },
    /// A journal in the state directory was corrupt or of another version;
    /// it is left alone and not resumed.
    JournalIgnored { path: PathBuf, reason: String },
    /// A connection to the server is up.
    Connected { server: String },
    /// The connection went down or could not be made; unfinished transfers
    /// continue after a reconnect in `retry_in` (`None`: the client stopped).
    /// `attempt` numbers that reconnect: 1 after a connection that moved a
    /// transfer on, growing while the server stays unreachable or useless.
    Disconnected {
        reason: String,
        retry_in: Option<Duration>,
        attempt: u32,
    },
    /// [`Client::compute_md5`] has hashed `hashed` of `total` bytes of `path`
    /// (at most about one event per percent).
    Md5Progress {
        path: PathBuf,
        hashed: u64,
        total: u64,
    },
    /// [`Client::compute_md5`] ended: the md5 (lowercase hex) of `path`, or
    /// why it could not be read.
    Md5Ready {
        path: PathBuf,
        md5: std::result::Result<String, String>,
    },
}

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of the ResourceServer.
    pub server: String,
    pub engine: EngineConfig,
    pub connect_timeout: Duration,
    pub backoff: Backoff,
    /// Bytes of frames handed to the writer at once.
    pub write_batch: usize,
    /// Where journals of unfinished uploads live (see [`super::journal`]);
    /// `None` keeps nothing across restarts.
    pub state_dir: Option<PathBuf>,
    /// Least time between two journal writes.
    pub journal_interval: Duration,
    /// A download whose name is taken in its destination is saved under the
    /// next free name (default) or fails; an existing file is never replaced.
    pub existing_files: ExistingFile,
    /// Against the deployed server ([`crate::engine::ServerStorage::Appending`]),
    /// on Linux: acknowledge its replies at once instead of after the
    /// delayed-ACK timer (`TCP_QUICKACK`; see `quick_ack`). Default on.
    pub quick_ack: bool,
}

impl ClientConfig {
    pub fn new(server: impl Into<String>) -> ClientConfig {
        ClientConfig {
            server: server.into(),
            engine: EngineConfig::default(),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            write_batch: 256 * 1024,
            state_dir: None,
            journal_interval: Duration::from_millis(250),
            existing_files: ExistingFile::default(),
            quick_ack: true,
        }
    }
}

/// The receiving end of a client's events.
pub struct Events(mpsc::UnboundedReceiver<ClientEvent>);

impl Events {
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.0.recv().await
    }

    pub fn try_recv(&mut self) -> Option<ClientEvent> {
        self.0.try_recv().ok()
    }

    /// Blocks the calling thread (not for use inside an async context).
    pub fn blocking_recv(&mut self) -> Option<ClientEvent> {
        self.0.blocking_recv()
    }
}

struct Shared {
    engine: Mutex<Engine>,
    wake: Notify,
    /// Wakes `wait_idle` callers.
    changed: Notify,
    shutdown: std::sync::atomic::AtomicBool,
    events: mpsc::UnboundedSender<ClientEvent>,
    journal: Mutex<JournalState>,
    existing_files: ExistingFile,
    /// Set when the driver failed (a panic): why. From then on every call
    /// returns [`crate::Error::Broken`] and every transfer has failed.
    broken: Mutex<Option<String>>,
    /// Where each download goes (directory, file name asked for): what a
    /// retry needs besides the engine's spec.
    destinations: Mutex<HashMap<String, (PathBuf, Option<String>)>>,
    /// The server to be connected to; `None` after [`Client::disconnect`].
    target: Mutex<Option<String>>,
    /// Uploads whose md5 is being computed on a blocking thread; they join
    /// the engine when it is known.
    hashing: Mutex<HashMap<String, Hashing>>,
    rt: tokio::runtime::Handle,
}

/// An upload waiting for its md5.
struct Hashing {
    size: u64,
    /// Paused by the app meanwhile (or registered held).
    hold: bool,
    /// The spec's, or one `set_message_id` gave meanwhile.
    message_id: i64,
    avatar: bool,
    cancel: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Default)]
struct JournalState {
    dir: Option<PathBuf>,
    interval: Duration,
    last_write: Option<Instant>,
    dirty: bool,
    /// What a journal says of each upload besides its acknowledged record.
    templates: HashMap<String, JournalEntry>,
    /// Journals found at start and not yet resumed.
    offers: HashMap<String, JournalEntry>,
    /// Unfinished downloads' journals, with their partial file once known.
    downloads: HashMap<String, (journal::DownloadJournal, super::files::PartSlot)>,
    /// Download journals found at start and not yet resumed.
    download_offers: HashMap<String, journal::DownloadJournal>,
}

impl Shared {
    fn broken(&self) -> Option<String> {
        lock(&self.broken).clone()
    }

    /// Contains a fault of the driver (or of a call): the client stops for
    /// good, every unfinished transfer fails saying so, and every waiter
    /// wakes. The engine may be half-way through a change, so failing its
    /// transfers is itself guarded; if even that fails, the app still gets
    /// the final `Disconnected`.
    fn contain(&self, what: &str) {
        let reason = format!("the client stopped after an internal error: {what}");
        {
            let mut broken = lock(&self.broken);
            if broken.is_some() {
                return;
            }
            *broken = Some(reason.clone());
        }
        tracing::error!(%reason, "chatxfer client broken");
        self.shutdown
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let failed = catch_unwind(AssertUnwindSafe(|| {
            let mut e = self.engine();
            e.fail_all(&reason, Instant::now());
            self.forward_events(&mut e);
        }));
        if failed.is_err() {
            tracing::error!("could not fail the transfers of a broken client");
        }
        let _ = self.events.send(ClientEvent::Disconnected {
            reason,
            retry_in: None,
            attempt: 0,
        });
        self.changed.notify_waiters();
        self.wake.notify_one();
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        // The engine never panics with the lock held in normal operation; a
        // poisoned lock still holds a consistent engine (every mutation is
        // a single call), so keep going rather than cascade the panic.
        lock(&self.engine)
    }

    /// Moves the engine's events to the application; returns a reason to
    /// recycle the connection if one of them asks for it.
    fn forward_events(&self, engine: &mut Engine) -> Option<String> {
        let mut recycle = None;
        let mut journal = lock(&self.journal);
        while let Some(e) = engine.poll_event() {
            match &e {
                Event::StateChanged { name, state } if state.is_terminal() => {
                    if let Some(dir) = &journal.dir {
                        journal::remove(dir, name);
                        if journal.downloads.contains_key(name) {
                            journal::remove_download(dir, name);
                        }
                    }
                    journal.templates.remove(name);
                    journal.downloads.remove(name);
                }
                Event::Progress { .. } => journal.dirty = true,
                Event::ConnectionStalled { waited } => {
                    recycle = Some(format!("server sent no reply for {waited:?}"));
                }
                Event::ProtocolViolation { reason } => {
                    recycle = Some(format!("protocol violation: {reason}"))
                }
                _ => {}
            }
            let _ = self.events.send(ClientEvent::Transfer(e));
        }
        // A download's partial file is journaled as soon as it exists, so a
        // killed process leaves nothing unaccounted for.
        journal.note_new_parts();
        let due = journal
            .last_write
            .is_none_or(|t| t.elapsed() >= journal.interval);
        if journal.dir.is_some() && journal.dirty && due {
            journal.write_all(engine, false);
        }
        drop(journal);
        self.changed.notify_waiters();
        recycle
    }
}

impl JournalState {
    fn note_new_parts(&mut self) {
        let Some(dir) = self.dir.clone() else { return };
        for (name, (entry, part)) in &mut self.downloads {
            let part = lock(part).clone();
            if part.is_none() || entry.part == part {
                continue;
            }
            entry.part = part;
            if let Err(e) = journal::write_download(&dir, entry) {
                tracing::warn!(name, dir = %dir.display(), "cannot write download journal: {e}");
            }
        }
    }

    /// Writes the journal of every unfinished upload; `exact` only when
    /// nothing is in flight (a drained, graceful shutdown).
    fn write_all(&mut self, engine: &Engine, exact: bool) {
        let Some(dir) = self.dir.clone() else { return };
        self.last_write = Some(Instant::now());
        self.dirty = false;
        for (name, template) in &self.templates {
            let (Some(status), Some(rec)) = (engine.file_status(name), engine.ack_record(name))
            else {
                continue;
            };
            if status.state.is_terminal() {
                continue;
            }
            let mut entry = template.clone();
            entry.acked_prefix = rec.acked_prefix;
            entry.acked_beyond = rec.acked_beyond;
            entry.exact = exact && rec.in_flight == 0;
            if let Err(e) = journal::write(&dir, &entry) {
                tracing::warn!(name, dir = %dir.display(), "cannot write upload journal: {e}");
            }
        }
        self.note_new_parts();
    }
}

/// A connection to one ResourceServer, with its transfers.
///
/// Cloning is cheap; the connection closes when [`Client::shutdown`] is called
/// or the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

struct DropGuard(Arc<Shared>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0
            .shutdown
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

impl Client {
    /// Starts the client on the library's runtime; it connects in the background.
    pub fn start(
        config: ClientConfig,
    ) -> std::result::Result<(Client, Events), super::RuntimeError> {
        let rt = super::handle()?;
        Ok(Client::start_on(&rt, config))
    }

    /// Starts the client on a given runtime (tests, or a host with its own).
    pub fn start_on(rt: &tokio::runtime::Handle, config: ClientConfig) -> (Client, Events) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut journal_state = JournalState {
            dir: config.state_dir.clone(),
            interval: config.journal_interval,
            ..JournalState::default()
        };
        if let Some(dir) = &config.state_dir {
            let (found, bad) = journal::scan(dir);
            for (path, reason) in bad {
                tracing::warn!(path = %path.display(), %reason, "ignoring upload journal");
                let _ = tx.send(ClientEvent::JournalIgnored { path, reason });
            }
            for entry in found {
                let acked = (entry.acked_prefix as u64 * entry.chunk_size as u64).min(entry.size);
                let _ = tx.send(ClientEvent::ResumeOffered {
                    name: entry.name.clone(),
                    path: entry.path.clone(),
                    acked,
                    total: entry.size,
                    download: false,
                });
                journal_state.offers.insert(entry.name.clone(), entry);
            }
            let (found, bad) = journal::scan_downloads(dir);
            for (path, reason) in bad {
                tracing::warn!(path = %path.display(), %reason, "ignoring download journal");
                let _ = tx.send(ClientEvent::JournalIgnored { path, reason });
            }
            for entry in found {
                let _ = tx.send(ClientEvent::ResumeOffered {
                    name: entry.name.clone(),
                    path: entry.dest_dir.clone(),
                    acked: 0,
                    total: entry.known.as_ref().map_or(0, |k| k.1),
                    download: true,
                });
                journal_state
                    .download_offers
                    .insert(entry.name.clone(), entry);
            }
        }
        let shared = Arc::new(Shared {
            journal: Mutex::new(journal_state),
            existing_files: config.existing_files,
            engine: Mutex::new(Engine::new(config.engine.clone())),
            wake: Notify::new(),
            changed: Notify::new(),
            shutdown: std::sync::atomic::AtomicBool::new(false),
            events: tx,
            broken: Mutex::new(None),
            destinations: Mutex::new(HashMap::new()),
            target: Mutex::new(Some(config.server.clone())),
            hashing: Mutex::new(HashMap::new()),
            rt: rt.clone(),
        });
        let driver = rt.spawn(drive(shared.clone(), config));
        // Whatever ends the driver abnormally (a panic: a bug) is contained
        // here rather than leaving every transfer waiting forever.
        let watched = shared.clone();
        rt.spawn(async move {
            if let Err(e) = driver.await {
                if e.is_panic() {
                    watched.contain(&panic_message(e.into_panic()));
                }
            }
        });
        let guard = Arc::new(DropGuard(shared.clone()));
        (
            Client {
                shared,
                _guard: guard,
            },
            Events(rx),
        )
    }

    /// `AddTransFile`: opens `path` and registers its upload. Without
    /// `spec.md5` it returns at once and the md5 is computed on a library
    /// thread (the status says `Queued`, md5 ""); the upload joins when it
    /// is known, or fails with a source error. Pause, resume and cancel
    /// work meanwhile.
    pub fn add_file(&self, path: impl AsRef<Path>, mut spec: FileSpec) -> Result<()> {
        self.refuse_hashing_name(&spec.name)?;
        let source = FileSource::open(path.as_ref())?;
        spec.path = path.as_ref().to_path_buf();
        if spec.md5.is_none() {
            return self.add_hashing(spec, source);
        }
        self.register_upload(spec, source)
    }

    fn register_upload(&self, spec: FileSpec, source: FileSource) -> Result<()> {
        let template = self.template(&spec, &source);
        self.with_engine(|e, now| e.add_file(spec, Box::new(source), now).map(|_| ()))?;
        self.remember(template);
        Ok(())
    }

    fn add_hashing(&self, spec: FileSpec, mut source: FileSource) -> Result<()> {
        self.check_broken()?;
        let size = crate::engine::ChunkSource::len(&source);
        self.shared.engine().check_upload(&spec, size)?;
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let mut hashing = lock(&self.shared.hashing);
            if hashing.contains_key(&spec.name) {
                return Err(crate::engine::Error::DuplicateName { name: spec.name }.into());
            }
            let entry = Hashing {
                size,
                hold: spec.hold,
                message_id: spec.message_id,
                avatar: spec.avatar,
                cancel: cancel.clone(),
            };
            hashing.insert(spec.name.clone(), entry);
        }
        tracing::debug!(name = %spec.name, size, "hashing before the upload");
        self.report_hashing_state(&spec.name, spec.hold);
        let client = self.clone();
        self.shared.rt.spawn_blocking(move || {
            let md5 = hash_unless_cancelled(&mut source, &cancel);
            client.hashed(spec, source, md5);
        });
        Ok(())
    }

    /// The md5 of a hashing upload is known (or not): it joins the engine,
    /// or ends cancelled or failed.
    fn hashed(&self, mut spec: FileSpec, source: FileSource, md5: std::io::Result<Option<String>>) {
        // Held until the engine has it: a pause, resume or add of this name
        // meanwhile must find it in one place or the other. (Lock order:
        // hashing, then engine.)
        let mut hashing = lock(&self.shared.hashing);
        let Some(entry) = hashing.remove(&spec.name) else {
            return;
        };
        let name = spec.name.clone();
        let ended = |e: Event| {
            let _ = self.shared.events.send(ClientEvent::Transfer(e));
            self.shared.changed.notify_waiters();
        };
        match md5 {
            Ok(Some(md5)) => {
                spec.md5 = Some(md5);
                spec.hold = entry.hold;
                spec.message_id = entry.message_id;
                let registered = self.register_upload(spec, source);
                drop(hashing);
                if let Err(e) = registered {
                    ended(Event::Failed {
                        name,
                        failure: crate::engine::Failure::Source {
                            message: e.to_string(),
                        },
                    });
                }
            }
            Ok(None) => {
                drop(hashing);
                ended(Event::StateChanged {
                    name,
                    state: FileState::Cancelled,
                })
            }
            Err(e) => {
                drop(hashing);
                ended(Event::Failed {
                    name,
                    failure: crate::engine::Failure::Source {
                        message: format!("{}: {e}", spec.path.display()),
                    },
                })
            }
        }
    }

    /// The status of an upload still being hashed.
    fn hashing_status(&self, name: &str) -> Option<FileStatus> {
        let hashing = lock(&self.shared.hashing);
        let h = hashing.get(name)?;
        Some(FileStatus {
            name: name.to_string(),
            state: if h.hold {
                FileState::Paused
            } else {
                FileState::Queued
            },
            total: h.size,
            acked: 0,
            max_seq: 0,
            acked_prefix: 0,
            next_seq: 1,
            in_flight: 0,
            md5: String::new(),
        })
    }

    /// Registers an upload read from any [`ChunkSource`] (a buffer, a
    /// generated stream, a file the app opened itself); `spec.md5` is
    /// required, since the source is not read ahead.
    pub fn add_source(
        &self,
        spec: FileSpec,
        source: Box<dyn crate::engine::ChunkSource + Send>,
    ) -> Result<()> {
        self.refuse_hashing_name(&spec.name)?;
        self.with_engine(|e, now| e.add_file(spec, source, now).map(|_| ()))
    }

    /// A name taken by an upload still being hashed is not free.
    fn refuse_hashing_name(&self, name: &str) -> Result<()> {
        if lock(&self.shared.hashing).contains_key(name) {
            return Err(crate::engine::Error::DuplicateName { name: name.into() }.into());
        }
        Ok(())
    }

    /// Downloads the file of chat message `spec.message_id` into `dest_dir`,
    /// as `file_name` or else under the name the server gives (refused if it
    /// is not one plain file name). Bytes go to `<name>.part` until complete.
    pub fn add_download(
        &self,
        spec: DownloadSpec,
        dest_dir: impl Into<PathBuf>,
        file_name: Option<String>,
    ) -> Result<()> {
        if let Some(why) = file_name
            .as_deref()
            .and_then(crate::protocol::name::name_problem)
        {
            return Err(crate::engine::Error::InvalidName {
                name: file_name.unwrap_or_default(),
                reason: why,
            }
            .into());
        }
        self.refuse_hashing_name(&spec.name)?;
        let dest_dir = dest_dir.into();
        let name = spec.name.clone();
        let part: super::files::PartSlot = Arc::default();
        let sink = FileSink::new(dest_dir.clone(), file_name.clone())
            .existing(self.shared.existing_files)
            .report_part(part.clone());
        let entry = journal::DownloadJournal {
            version: journal::JOURNAL_VERSION,
            name: spec.name.clone(),
            message_id: spec.message_id,
            uid: spec.uid,
            token: spec.token.clone(),
            md5: spec.md5.clone(),
            priority: spec.priority,
            avatar: spec
                .avatar
                .as_ref()
                .map(|a| (a.name.clone(), a.client_path.clone(), a.req_type.clone())),
            known: spec
                .known
                .as_ref()
                .map(|k| (k.server_name.clone(), k.size, k.sender_id, k.receiver_id)),
            dest_dir: std::path::absolute(&dest_dir).unwrap_or_else(|_| dest_dir.clone()),
            file_name: file_name.clone(),
            part: None,
        };
        self.with_engine(|e, now| e.add_download(spec, Box::new(sink), now).map(|_| ()))?;
        lock(&self.shared.destinations).insert(name.clone(), (dest_dir, file_name));
        let mut j = lock(&self.shared.journal);
        if let Some(dir) = j.dir.clone() {
            if let Err(e) = journal::write_download(&dir, &entry) {
                tracing::warn!(%name, dir = %dir.display(), "cannot write download journal: {e}");
            }
            j.downloads.insert(name, (entry, part));
        }
        Ok(())
    }

    /// Starts a failed or cancelled transfer over under the same name, with
    /// what it was registered with: an upload reopens its file (from seq 1;
    /// its md5 as given or computed then), a download asks the server again
    /// into the same directory (a partial file was removed when it ended).
    pub fn retry(&self, name: &str) -> Result<()> {
        let (upload, download) = {
            let e = self.shared.engine();
            e.check_retryable(name)?;
            (e.upload_spec(name), e.download_spec(name))
        };
        tracing::info!(name, "retrying transfer");
        if let Some(mut spec) = upload {
            spec.hold = false;
            let path = spec.path.clone();
            return self.add_file(path, spec);
        }
        let mut spec =
            download.ok_or_else(|| crate::engine::Error::UnknownName { name: name.into() })?;
        spec.hold = false;
        let (dir, file_name) = lock(&self.shared.destinations)
            .get(name)
            .cloned()
            .ok_or_else(|| crate::engine::Error::UnknownName { name: name.into() })?;
        self.add_download(spec, dir, file_name)
    }

    /// Downloads found unfinished in the state directory at start.
    pub fn offered_downloads(&self) -> Vec<journal::DownloadJournal> {
        let j = lock(&self.shared.journal);
        let mut v: Vec<_> = j.download_offers.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Forgets a transfer an earlier process left unfinished: its journal
    /// goes, and a download's partial file too.
    pub fn discard_offered(&self, name: &str) -> Result<()> {
        let mut j = lock(&self.shared.journal);
        let dir = j.dir.clone();
        let upload = j.offers.remove(name);
        let download = j.download_offers.remove(name);
        drop(j);
        let (Some(dir), true) = (dir, upload.is_some() || download.is_some()) else {
            return Err(crate::engine::Error::UnknownName { name: name.into() }.into());
        };
        if upload.is_some() {
            journal::remove(&dir, name);
        }
        if let Some(d) = download {
            journal::remove_stale_part(&d);
            journal::remove_download(&dir, name);
        }
        Ok(())
    }

    /// Uploads found unfinished in the state directory at start.
    pub fn offered(&self) -> Vec<JournalEntry> {
        let j = lock(&self.shared.journal);
        let mut v: Vec<_> = j.offers.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Continues an upload an earlier process left unfinished, after checking
    /// its source is unchanged (same size and modification time); if it
    /// changed, the upload fails with a clear error and its journal is removed.
    pub fn resume_offered(&self, name: &str) -> Result<()> {
        let download = lock(&self.shared.journal).download_offers.remove(name);
        if let Some(d) = download {
            return self.resume_offered_download(d);
        }
        let (entry, dir) = {
            let mut j = lock(&self.shared.journal);
            (j.offers.remove(name), j.dir.clone())
        };
        let entry = entry.ok_or_else(|| crate::engine::Error::UnknownName { name: name.into() })?;
        let fail = |e: crate::Error| {
            if let Some(dir) = &dir {
                journal::remove(dir, name);
            }
            let _ = self
                .shared
                .events
                .send(ClientEvent::Transfer(Event::Failed {
                    name: name.into(),
                    failure: crate::engine::Failure::Source {
                        message: e.to_string(),
                    },
                }));
            e
        };
        let source = FileSource::open(&entry.path).map_err(fail)?;
        let mtime = journal::mtime_of(source.modified());
        if crate::engine::ChunkSource::len(&source) != entry.size || mtime != entry.mtime {
            return Err(fail(crate::Error::SourceChanged {
                path: entry.path.clone(),
                detail: format!(
                    "was {} bytes, now {}; modification time {}",
                    entry.size,
                    crate::engine::ChunkSource::len(&source),
                    if mtime == entry.mtime {
                        "unchanged"
                    } else {
                        "changed"
                    }
                ),
            }));
        }
        // See the journal module: only a drained journal is exact enough for
        // an appending server; an inexact one is marked so (`in_flight`), and
        // the engine probes the stored size (with a token) or starts again
        // from seq 1.
        let record = AckRecord {
            acked_prefix: entry.acked_prefix,
            acked_beyond: entry.acked_beyond.clone(),
            in_flight: usize::from(!entry.exact),
        };
        let mut template = entry.clone();
        template.exact = false;
        if let Some(dir) = &dir {
            // From the first chunk on, the server may hold more than this says.
            let _ = journal::write(dir, &template);
        }
        let spec = FileSpec {
            name: entry.name.clone(),
            path: entry.path.clone(),
            uid: entry.uid,
            sender: entry.sender,
            receiver: entry.receiver,
            message_id: entry.message_id,
            token: entry.token.clone(),
            md5: Some(entry.md5.clone()),
            chunk_size: Some(entry.chunk_size),
            priority: entry.priority,
            hold: false,
            avatar: entry.avatar,
        };
        tracing::info!(
            name,
            acked_prefix = record.acked_prefix,
            exact = entry.exact,
            "resuming upload from journal"
        );
        self.with_engine(|e, now| {
            e.add_resumed(spec, Box::new(source), &record, now)
                .map(|_| ())
        })?;
        self.remember(template);
        Ok(())
    }

    /// A download an earlier process left unfinished starts over (its old
    /// partial file removed, see the journal module).
    fn resume_offered_download(&self, d: journal::DownloadJournal) -> Result<()> {
        journal::remove_stale_part(&d);
        tracing::info!(name = %d.name, "resuming download from journal (from the start)");
        let spec = DownloadSpec {
            name: d.name.clone(),
            message_id: d.message_id,
            uid: d.uid,
            token: d.token.clone(),
            md5: d.md5.clone(),
            priority: d.priority,
            hold: false,
            avatar: d.avatar.clone().map(|(name, client_path, req_type)| {
                crate::engine::AvatarRef {
                    name,
                    client_path,
                    req_type,
                }
            }),
            known: d
                .known
                .clone()
                .map(
                    |(server_name, size, sender_id, receiver_id)| crate::engine::KnownFile {
                        server_name,
                        size,
                        sender_id,
                        receiver_id,
                    },
                ),
        };
        self.add_download(spec, d.dest_dir.clone(), d.file_name.clone())
    }

    fn template(&self, spec: &FileSpec, source: &FileSource) -> JournalEntry {
        let chunk = spec
            .chunk_size
            .unwrap_or(self.shared.engine().config().chunk_size);
        JournalEntry {
            version: journal::JOURNAL_VERSION,
            name: spec.name.clone(),
            path: std::path::absolute(&spec.path).unwrap_or_else(|_| spec.path.clone()),
            size: crate::engine::ChunkSource::len(source),
            mtime: journal::mtime_of(source.modified()),
            md5: spec.md5.clone().unwrap_or_default(),
            chunk_size: chunk,
            uid: spec.uid,
            sender: spec.sender,
            receiver: spec.receiver,
            message_id: spec.message_id,
            priority: spec.priority,
            token: spec.token.clone(),
            avatar: spec.avatar,
            acked_prefix: 0,
            acked_beyond: Vec::new(),
            exact: false,
        }
    }

    fn remember(&self, template: JournalEntry) {
        let mut j = lock(&self.shared.journal);
        if j.dir.is_some() {
            j.templates.insert(template.name.clone(), template);
            j.dirty = true;
        }
    }

    pub fn pause(&self, name: &str) -> Result<()> {
        if self.set_hashing_hold(name, true)? {
            return Ok(());
        }
        self.with_engine(|e, now| e.pause(name, now))
    }

    pub fn resume(&self, name: &str) -> Result<()> {
        if self.set_hashing_hold(name, false)? {
            return Ok(());
        }
        self.with_engine(|e, now| e.resume(name, now))
    }

    pub fn cancel(&self, name: &str) -> Result<()> {
        if let Some(h) = lock(&self.shared.hashing).get(name) {
            h.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            return Ok(());
        }
        self.with_engine(|e, now| e.cancel(name, now))
    }

    /// Gives a chat upload registered at send time (held, message id 0) the
    /// id of the ChatServer's 1036 reply; `resume` starts it then. See
    /// [`Engine::set_message_id`](crate::engine::Engine::set_message_id).
    pub fn set_message_id(&self, name: &str, message_id: i64) -> Result<()> {
        {
            let mut hashing = lock(&self.shared.hashing);
            if let Some(h) = hashing.get_mut(name) {
                check_new_message_id(name, h.avatar, message_id)?;
                h.message_id = message_id;
                return Ok(());
            }
        }
        self.with_engine(|e, _| e.set_message_id(name, message_id))?;
        let mut j = lock(&self.shared.journal);
        if let Some(t) = j.templates.get_mut(name) {
            t.message_id = message_id;
            j.dirty = true;
        }
        Ok(())
    }

    /// Pauses or resumes an upload still being hashed: `Ok(true)` if `name`
    /// is one. A chat upload still without its message id is not released.
    fn set_hashing_hold(&self, name: &str, hold: bool) -> Result<bool> {
        let mut hashing = lock(&self.shared.hashing);
        let Some(h) = hashing.get_mut(name) else {
            return Ok(false);
        };
        if !hold {
            check_message_id(name, h.avatar, h.message_id)?;
        }
        if h.hold != hold {
            h.hold = hold;
            self.report_hashing_state(name, hold);
        }
        Ok(true)
    }

    /// Computes the md5 of the file at `path` on a library thread, for an
    /// app that needs it before it announces the message (the deployed
    /// client sends it in 1035); reports [`ClientEvent::Md5Progress`] and one
    /// [`ClientEvent::Md5Ready`]. Returns at once; a file that cannot be
    /// opened is an error here, a read error later is in `Md5Ready`.
    pub fn compute_md5(&self, path: &Path) -> Result<()> {
        self.check_broken()?;
        let mut source = FileSource::open(path)?;
        let client = self.clone();
        let path = path.to_path_buf();
        self.shared.rt.spawn_blocking(move || {
            let events = &client.shared.events;
            let total = crate::engine::ChunkSource::len(&source);
            let mut reported = 0u64;
            let md5 = hash_source(&mut source, &mut |hashed| {
                // About one event per percent: a GUI progress bar, not a flood.
                // (An empty file has no progress to show: Md5Ready says it.)
                if hashed > reported
                    && (hashed == total || hashed - reported >= (total / 100).max(1 << 20))
                {
                    reported = hashed;
                    let _ = events.send(ClientEvent::Md5Progress {
                        path: path.clone(),
                        hashed,
                        total,
                    });
                }
                !is_shutdown(&client.shared)
            });
            let md5 = match md5 {
                Ok(Some(md5)) => Ok(md5),
                Ok(None) => Err("the client was closed".to_owned()),
                Err(e) => Err(format!("reading {}: {e}", path.display())),
            };
            tracing::debug!(path = %path.display(), ?md5, "md5 computed");
            let _ = events.send(ClientEvent::Md5Ready { path, md5 });
        });
        Ok(())
    }

    /// An upload still being hashed is `Paused` (held) or `Queued`.
    fn report_hashing_state(&self, name: &str, hold: bool) {
        let state = if hold {
            FileState::Paused
        } else {
            FileState::Queued
        };
        let _ = self
            .shared
            .events
            .send(ClientEvent::Transfer(Event::StateChanged {
                name: name.into(),
                state,
            }));
    }

    pub fn status(&self, name: &str) -> Option<FileStatus> {
        self.hashing_status(name)
            .or_else(|| self.shared.engine().file_status(name))
    }

    pub fn statuses(&self) -> Vec<FileStatus> {
        let mut all = self.shared.engine().statuses();
        let hashing: Vec<String> = lock(&self.shared.hashing).keys().cloned().collect();
        all.retain(|s| !hashing.contains(&s.name));
        all.extend(hashing.iter().filter_map(|n| self.hashing_status(n)));
        all
    }

    /// Engine counters (requests sent, acks, duplicates, restarts ...).
    pub fn stats(&self) -> crate::engine::Stats {
        self.shared.engine().stats().clone()
    }

    /// Waits until no transfer is queued, sending or paused; an error if
    /// the client broke (its transfers then failed).
    pub async fn wait_idle(&self) -> Result<()> {
        loop {
            let notified = self.shared.changed.notified();
            self.check_broken()?;
            let hashing = lock(&self.shared.hashing).is_empty();
            let engine = self.shared.engine().is_idle();
            if hashing && engine {
                return Ok(());
            }
            notified.await;
        }
    }

    /// [`Client::wait_idle`] for at most `limit`: `Ok(false)` if transfers
    /// are still unfinished then.
    pub async fn wait_idle_for(&self, limit: Duration) -> Result<bool> {
        match tokio::time::timeout(limit, self.wait_idle()).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// Takes the connection down on purpose (a logout, a kick) and keeps it
    /// down until [`Client::connect_to`]; transfers stay registered and
    /// their give-up budgets do not run meanwhile.
    pub fn disconnect(&self) -> Result<()> {
        self.check_broken()?;
        *lock(&self.shared.target) = None;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Connects (again) to `server` (`host:port`), which may differ from the
    /// one before (a re-login); a connection to another server is closed
    /// first. Unfinished transfers continue there.
    pub fn connect_to(&self, server: impl Into<String>) -> Result<()> {
        self.check_broken()?;
        let server = server.into();
        let was = lock(&self.shared.target).replace(server.clone());
        if was.is_none() {
            self.shared.engine().restart_budgets(Instant::now());
        }
        tracing::info!(%server, "connecting to the resource server");
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Whether the client is meant to be connected (not after `disconnect`).
    pub fn is_connecting(&self) -> bool {
        lock(&self.shared.target).is_some()
    }

    /// Why the client stopped, if an internal error stopped it.
    pub fn broken(&self) -> Option<String> {
        self.shared.broken()
    }

    fn check_broken(&self) -> Result<()> {
        match self.shared.broken() {
            Some(reason) => Err(crate::Error::Broken { reason }),
            None => Ok(()),
        }
    }

    /// Closes the connection. With `drain`, first stops sending and waits (at
    /// most `drain` long) for the replies to chunks already sent, so the
    /// acknowledged record is exact.
    pub async fn shutdown(&self, drain: Option<Duration>) {
        for h in lock(&self.shared.hashing).values() {
            h.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if let Some(limit) = drain {
            self.shared.engine().set_draining(true);
            self.shared.wake.notify_one();
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                let notified = self.shared.changed.notified();
                if self.shared.engine().in_flight() == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
        }
        {
            let engine = self.shared.engine();
            let mut j = lock(&self.shared.journal);
            j.write_all(&engine, drain.is_some());
        }
        self.shared
            .shutdown
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    fn with_engine<T, E>(
        &self,
        f: impl FnOnce(&mut Engine, Instant) -> std::result::Result<T, E>,
    ) -> Result<T>
    where
        crate::Error: From<E>,
    {
        self.check_broken()?;
        // A panic here is a bug of the library; it breaks this client (the
        // engine may be half-changed) instead of unwinding into the app.
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut engine = self.shared.engine();
            let r = f(&mut engine, Instant::now()).map_err(crate::Error::from);
            self.shared.forward_events(&mut engine);
            r
        }));
        self.shared.wake.notify_one();
        match r {
            Ok(r) => r,
            Err(panic) => {
                self.shared.contain(&panic_message(panic));
                Err(crate::Error::Broken {
                    reason: self.shared.broken().unwrap_or_default(),
                })
            }
        }
    }
}

/// The md5 of `source`, read in blocks; `None` if `cancel` was set first.
fn hash_unless_cancelled(
    source: &mut FileSource,
    cancel: &std::sync::atomic::AtomicBool,
) -> std::io::Result<Option<String>> {
    hash_source(source, &mut |_| {
        !cancel.load(std::sync::atomic::Ordering::SeqCst)
    })
}

/// The md5 of `source`, 1 MiB at a time; `go_on(bytes hashed so far)` is
/// asked before each piece and after the last, and stops it (`None`) by
/// returning false.
fn hash_source(
    source: &mut FileSource,
    go_on: &mut dyn FnMut(u64) -> bool,
) -> std::io::Result<Option<String>> {
    use crate::engine::ChunkSource;
    use md5::Digest;
    let len = source.len();
    let mut hasher = md5::Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < len {
        if !go_on(offset) {
            return Ok(None);
        }
        let n = (len - offset).min(buf.len() as u64) as usize;
        source.read_at(offset, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    if !go_on(len) {
        return Ok(None);
    }
    Ok(Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    ))
}

/// The text of a panic's payload, for the failure it becomes.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    format!("panic: {text}")
}

fn is_shutdown(shared: &Shared) -> bool {
    shared.shutdown.load(std::sync::atomic::Ordering::SeqCst)
}

/// Acknowledges the server's bytes at once instead of after the delayed-ACK
/// timer (Linux `TCP_QUICKACK`; the kernel leaves quick-ack mode on its own,
/// so it is set again after every read) when `on`: against the deployed
/// server ([`crate::engine::ServerStorage::Appending`]) unless the
/// configuration turned it off.
///
/// Why: the deployed server sets no `TCP_NODELAY`, so Nagle holds each of
/// its small replies until the previous one is acknowledged. While the
/// client sends chunks, their segments carry that acknowledgement; when the
/// window is full and the client waits, nothing does until the delayed-ACK
/// timer (40 ms) runs out, and the server runs dry meanwhile: at the end
/// of every upload (its last replies), and whenever the adaptive window
/// shrinks. Measured (issue 16): the real deployed server built here had
/// 1-2 stalls of 28-39 ms in each adaptive upload of 64 MiB; with this,
/// medians over 10 rounds in turns went from 57.2 to 62.3 MB/s (adaptive)
/// and from 57.9 to 61.2 MB/s (fixed:5). Twelve uploads of three chunks to
/// a Nagle-on fake took 526 ms without it and 11 ms with it
/// (`tests/nagle_server.rs`). The reference server sets `TCP_NODELAY`;
/// there this would only add ACK packets (loopback 5-7 % slower in two
/// rounds), so it is left off.
fn quick_ack(stream: &TcpStream, on: bool) {
    #[cfg(target_os = "linux")]
    if on {
        let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (stream, on);
}

fn talks_to_deployed_server(shared: &Shared) -> bool {
    shared.engine().config().server_storage == crate::engine::ServerStorage::Appending
}

/// The driver: connect, run, reconnect, until shut down.
async fn drive(shared: Arc<Shared>, config: ClientConfig) {
    let mut attempt: u32 = 0;
    let mut rng = seed();
    while !is_shutdown(&shared) {
        let Some(server) = lock(&shared.target).clone() else {
            // Down by the app's choice: nothing to do until it says so (an
            // API call or shutdown wakes this).
            shared.wake.notified().await;
            continue;
        };
        let connect =
            tokio::time::timeout(config.connect_timeout, TcpStream::connect(&server)).await;
        let reason = match connect {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                {
                    let mut e = shared.engine();
                    e.connected(Instant::now());
                    let _ = shared.events.send(ClientEvent::Connected {
                        server: server.clone(),
                    });
                    shared.forward_events(&mut e);
                }
                tracing::info!(%server, "connected to the resource server");
                let (reason, made_progress) =
                    run_connection(&shared, stream, &config, &server).await;
                {
                    let mut e = shared.engine();
                    e.connection_lost(Instant::now());
                    shared.forward_events(&mut e);
                }
                if made_progress {
                    attempt = 0;
                }
                reason
            }
            Ok(Err(e)) => format!("connect to {server}: {e}"),
            Err(_) => format!(
                "connect to {server}: timed out after {:?}",
                config.connect_timeout
            ),
        };
        if is_shutdown(&shared) {
            break;
        }
        if lock(&shared.target).as_deref() != Some(server.as_str()) {
            // The app disconnected or pointed us elsewhere: no backoff.
            attempt = 0;
            let _ = shared.events.send(ClientEvent::Disconnected {
                reason: format!("{reason} (the app asked for this)"),
                retry_in: None,
                attempt: 0,
            });
            shared.changed.notify_waiters();
            continue;
        }
        shared.engine().note_problem(reason.clone());
        let delay = backoff_delay(&config.backoff, attempt, &mut rng);
        attempt = attempt.saturating_add(1);
        tracing::info!(%reason, retry_in = ?delay, "resource server connection down");
        let _ = shared.events.send(ClientEvent::Disconnected {
            reason,
            retry_in: Some(delay),
            attempt,
        });
        shared.changed.notify_waiters();
        // An API call wakes the driver: the backoff keeps its deadline (a
        // busy app must not postpone the reconnect), shutdown ends it.
        // The engine's timers run while disconnected too: a transfer's
        // give-up budget ends it even if the server never comes back.
        let deadline = tokio::time::Instant::now() + delay;
        // Until the deadline, or the app points elsewhere (or disconnects).
        while !is_shutdown(&shared) && lock(&shared.target).as_deref() == Some(server.as_str()) {
            let timer = shared
                .engine()
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            let timer = async {
                match timer {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shared.wake.notified() => {}
                _ = timer => {
                    let mut e = shared.engine();
                    e.handle_timeout(Instant::now());
                    shared.forward_events(&mut e);
                }
            }
        }
    }
    let _ = shared.events.send(ClientEvent::Disconnected {
        reason: "client shut down".into(),
        retry_in: None,
        attempt: 0,
    });
    shared.changed.notify_waiters();
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ 0x9e37_79b9_7f4a_7c15
}

fn backoff_delay(b: &Backoff, attempt: u32, rng: &mut u64) -> Duration {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let base = b.initial.saturating_mul(1u32 << attempt.min(20)).min(b.max);
    let unit = (*rng % 10_000) as f64 / 10_000.0; // 0..1
    base.mul_f64(1.0 + b.jitter * (2.0 * unit - 1.0))
}

/// Runs one connection until it fails or the client shuts down. Returns the
/// reason, and whether any reply moved a transfer on (which resets the backoff).
async fn run_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    config: &ClientConfig,
    server: &str,
) -> (String, bool) {
    let quick = config.quick_ack && talks_to_deployed_server(shared);
    quick_ack(&stream, quick);
    let (mut rd, mut wr) = stream.into_split();
    let limit = shared.engine().config().max_body_len;

    // Reader task: bytes → frames, to the driver.
    let (frame_tx, mut frame_rx) = mpsc::channel::<std::result::Result<Frame, String>>(1024);
    let reader = tokio::spawn(async move {
        let mut decoder = FrameDecoder::new(limit);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) => {
                    let _ = frame_tx
                        .send(Err("server closed the connection".into()))
                        .await;
                    return;
                }
                Ok(n) => {
                    quick_ack(rd.as_ref(), quick);
                    n
                }
                Err(e) => {
                    let _ = frame_tx.send(Err(format!("read: {e}"))).await;
                    return;
                }
            };
            decoder.extend(&buf[..n]);
            loop {
                match decoder.next_frame() {
                    Ok(Some(f)) => {
                        if frame_tx.send(Ok(f)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = frame_tx
                            .send(Err(format!("bad frame from server: {e}")))
                            .await;
                        return;
                    }
                }
            }
        }
    });

    // Writer task: one write_all per batch; buffers come back for reuse.
    let (batch_tx, mut batch_rx) = mpsc::channel::<Vec<u8>>(2);
    let (spare_tx, mut spare_rx) = mpsc::channel::<Vec<u8>>(4);
    let (werr_tx, mut werr_rx) = mpsc::channel::<String>(1);
    let writer = tokio::spawn(async move {
        while let Some(mut batch) = batch_rx.recv().await {
            if let Err(e) = wr.write_all(&batch).await {
                let _ = werr_tx.send(format!("write: {e}")).await;
                return;
            }
            batch.clear();
            let _ = spare_tx.try_send(batch);
        }
        let _ = wr.shutdown().await;
    });

    let mut made_progress = false;
    let mut spares: VecDeque<Vec<u8>> = VecDeque::new();
    let reason = loop {
        if is_shutdown(shared) {
            break "client shut down".to_string();
        }
        if lock(&shared.target).as_deref() != Some(server) {
            break "disconnected".to_string();
        }
        // Move what the engine will send now into batches for the writer.
        let mut recycle = None;
        loop {
            while let Ok(b) = spare_rx.try_recv() {
                spares.push_back(b);
            }
            let Ok(permit) = batch_tx.try_reserve() else {
                break;
            };
            let mut buf = spares
                .pop_front()
                .unwrap_or_else(|| Vec::with_capacity(config.write_batch + 64 * 1024));
            {
                let mut e = shared.engine();
                let now = Instant::now();
                while buf.len() < config.write_batch && e.poll_transmit(now, &mut buf).is_some() {}
                recycle = shared.forward_events(&mut e);
            }
            if buf.is_empty() {
                spares.push_back(buf);
                drop(permit);
                break;
            }
            permit.send(buf);
            if recycle.is_some() {
                break;
            }
        }
        if let Some(r) = recycle {
            break r;
        }
        let timeout = shared
            .engine()
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = frame_rx.recv() => match frame {
                Some(Ok(f)) => {
                    let mut e = shared.engine();
                    let useful_before = e.stats().useful_replies();
                    let now = Instant::now();
                    e.handle_frame(now, f.id, &f.body);
                    // Take whatever else already arrived under the same lock.
                    let mut failed = None;
                    while let Ok(next) = frame_rx.try_recv() {
                        match next {
                            Ok(f) => e.handle_frame(now, f.id, &f.body),
                            Err(reason) => {
                                failed = Some(reason);
                                break;
                            }
                        }
                    }
                    // Only replies that moved a transfer on reset the
                    // backoff: garbage must not make the client hammer.
                    made_progress |= e.stats().useful_replies() > useful_before;
                    let recycle = shared.forward_events(&mut e);
                    if let Some(r) = failed.or(recycle) {
                        break r;
                    }
                }
                Some(Err(reason)) => break reason,
                None => break "reader stopped".to_string(),
            },
            _ = sleep => {
                let mut e = shared.engine();
                e.handle_timeout(Instant::now());
                if let Some(r) = shared.forward_events(&mut e) {
                    break r;
                }
            }
            _ = shared.wake.notified() => {}
            Some(b) = spare_rx.recv() => spares.push_back(b),
            Some(err) = werr_rx.recv() => break err,
        }
    };
    reader.abort();
    drop(batch_tx);
    writer.abort();
    (reason, made_progress)
}
