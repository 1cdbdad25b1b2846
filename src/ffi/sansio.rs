//! [`SansIo`]: the engine for a host that keeps its own socket and timer,
//! as today's `FileTcpMgr` does. The host writes what
//! [`SansIo::poll_transmit`] returns, feeds every reply to
//! [`SansIo::handle_frame`] (or raw bytes to [`SansIo::handle_bytes`]),
//! arms one timer from [`SansIo::next_timeout_ms`], and drains
//! [`SansIo::poll_events`] after each call. No threads, no runtime.
//!
//! Downloads write through the runtime's [`FileSink`]: bytes go to a new
//! `<name>.part` (created exclusively, so a planted file or symlink is never
//! written through), renamed to a free name when complete; the `Saved`
//! event carries the final path. File IO happens on the caller's thread,
//! inside `handle_bytes`/`handle_frame`.

use std::time::Instant;

use super::{Code, DownloadArgs, FfiError, FfiResult, UploadArgs};
use crate::engine::{Engine, EngineConfig, Event, FileState, FileStatus, ServerStorage};
use crate::protocol::{FrameDecoder, MsgId};
use crate::runtime::files::{FileSink, FileSource};

pub struct SansIo {
    engine: Engine,
    decoder: FrameDecoder,
    /// Each download's directory, for a retry (the engine keeps the spec
    /// but not the sink's place).
    dest_dirs: std::collections::HashMap<String, std::path::PathBuf>,
}

impl SansIo {
    /// `appending`: the server appends chunks (the deployed ResourceServer);
    /// false for the positional reference server. Decides how a lost
    /// connection resumes (see the engine's docs).
    pub fn new(appending: bool) -> SansIo {
        let config = EngineConfig {
            server_storage: if appending {
                ServerStorage::Appending
            } else {
                ServerStorage::Positional
            },
            ..EngineConfig::default()
        };
        let limit = config.max_body_len;
        SansIo {
            engine: Engine::new(config),
            decoder: FrameDecoder::new(limit),
            dest_dirs: Default::default(),
        }
    }

    pub fn add_file(&mut self, args: &UploadArgs) -> FfiResult {
        let mut spec = args.spec()?;
        let mut source = FileSource::open(&args.path)?;
        // The engine never reads a whole file: an unknown md5 is computed
        // here, on the caller's thread (documented on AddTransFile).
        source.fill_md5(&mut spec)?;
        self.engine
            .add_file(spec, Box::new(source), Instant::now())?;
        Ok(())
    }

    /// `AddDownloadFile`: registered held (Paused, nothing asked of the
    /// server) until [`SansIo::start_download`]; saved into `dest_dir` under
    /// the server's file name, or a free variant of it.
    pub fn add_download(&mut self, args: &DownloadArgs) -> FfiResult {
        args.check()?;
        let dir = std::path::Path::new(&args.dest_dir);
        // Checked here so the mistake shows at the call, not as a Local
        // failure after the first reply.
        if !dir.is_dir() {
            return Err(FfiError::new(
                Code::InvalidArgument,
                format!("destination {:?} is not a directory", args.dest_dir),
            ));
        }
        self.add_download_spec(args.spec(), dir.to_path_buf())
    }

    fn add_download_spec(
        &mut self,
        spec: crate::engine::DownloadSpec,
        dir: std::path::PathBuf,
    ) -> FfiResult {
        let name = spec.name.clone();
        let sink = FileSink::new(&dir, None);
        self.engine
            .add_download(spec, Box::new(sink), Instant::now())?;
        self.dest_dirs.insert(name, dir);
        Ok(())
    }

    /// Starts a failed or cancelled transfer over under the same name, as
    /// `runtime::Client::retry` does: an upload reopens its file (from seq
    /// 1), a download asks the server again into the same directory.
    pub fn retry(&mut self, name: &str) -> FfiResult {
        self.engine.check_retryable(name)?;
        if let Some(mut spec) = self.engine.upload_spec(name) {
            spec.hold = false;
            let source = FileSource::open(&spec.path)?;
            self.engine
                .add_file(spec, Box::new(source), Instant::now())?;
            return Ok(());
        }
        let unknown = || FfiError::new(Code::UnknownName, format!("no transfer named {name:?}"));
        let mut spec = self.engine.download_spec(name).ok_or_else(unknown)?;
        spec.hold = false;
        let dir = self.dest_dirs.get(name).cloned().ok_or_else(unknown)?;
        self.add_download_spec(spec, dir)
    }

    /// `StartDownload`: the same as [`SansIo::resume`].
    pub fn start_download(&mut self, name: &str) -> FfiResult {
        self.resume(name)
    }

    pub fn pause(&mut self, name: &str) -> FfiResult {
        Ok(self.engine.pause(name, Instant::now())?)
    }

    /// The 1036 reply's id for a chat upload registered held without one.
    pub fn set_message_id(&mut self, name: &str, message_id: i64) -> FfiResult {
        Ok(self.engine.set_message_id(name, message_id)?)
    }

    /// Also `BatchSend`/`StartDownload`. On a failed transfer (the chat
    /// bubble's retry click) it is [`SansIo::retry`], as on the `Client`.
    pub fn resume(&mut self, name: &str) -> FfiResult {
        if self.engine.file_status(name).map(|s| s.state) == Some(FileState::Failed) {
            return self.retry(name);
        }
        Ok(self.engine.resume(name, Instant::now())?)
    }

    pub fn cancel(&mut self, name: &str) -> FfiResult {
        Ok(self.engine.cancel(name, Instant::now())?)
    }

    pub fn status(&self, name: &str) -> FfiResult<FileStatus> {
        self.engine
            .file_status(name)
            .ok_or_else(|| FfiError::new(Code::UnknownName, format!("no transfer named {name:?}")))
    }

    pub fn connected(&mut self) {
        self.decoder = FrameDecoder::new(self.engine.config().max_body_len);
        self.engine.connected(Instant::now());
    }

    pub fn connection_lost(&mut self) {
        // A partial frame of the dead connection (or the malformed header
        // that made the host close it) must not be read as the next one's.
        self.decoder = FrameDecoder::new(self.engine.config().max_body_len);
        self.engine.connection_lost(Instant::now());
    }

    /// Frames to write now, up to about `max_bytes` (at least one frame if
    /// any may go); empty when the window or the files allow nothing.
    pub fn poll_transmit(&mut self, max_bytes: usize) -> Vec<u8> {
        let now = Instant::now();
        let mut out = Vec::new();
        while out.len() < max_bytes.max(1) && self.engine.poll_transmit(now, &mut out).is_some() {}
        out
    }

    /// `OnUploadRsp`: one reply frame, already split by the host.
    pub fn handle_frame(&mut self, id: u16, body: &[u8]) {
        self.engine.handle_frame(Instant::now(), MsgId(id), body);
    }

    /// Raw bytes from the socket; frames are split here. A malformed header
    /// returns [`Code::BadFrame`]: the host should drop the connection and
    /// call [`SansIo::connection_lost`].
    pub fn handle_bytes(&mut self, data: &[u8]) -> FfiResult {
        self.decoder.extend(data);
        let now = Instant::now();
        loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => self.engine.handle_frame(now, f.id, &f.body),
                Ok(None) => return Ok(()),
                Err(e) => return Err(FfiError::new(Code::BadFrame, e.to_string())),
            }
        }
    }

    pub fn handle_timeout(&mut self) {
        self.engine.handle_timeout(Instant::now());
    }

    /// Milliseconds until [`SansIo::handle_timeout`] is due (0 = now), or -1
    /// for no timer.
    pub fn next_timeout_ms(&self) -> i64 {
        match self.engine.poll_timeout() {
            None => -1,
            Some(t) => {
                let ms = t.saturating_duration_since(Instant::now()).as_millis();
                // Round up so that a timer armed for this long finds it due.
                let ms = if t > Instant::now() { ms + 1 } else { ms };
                i64::try_from(ms).unwrap_or(i64::MAX)
            }
        }
    }

    pub fn poll_events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.engine.poll_event()).collect()
    }

    /// True when no transfer is queued, sending or paused.
    pub fn is_idle(&self) -> bool {
        self.engine.is_idle()
    }
}
