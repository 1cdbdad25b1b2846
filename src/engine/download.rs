//! Downloads of chat files (1045/1046, then 1047/1048), as transfers of the
//! same engine: same queue, same window, same events.
//!
//! A download first asks the file's name and size (1045, by message id); the
//! deployed server sends no reply at all for an unknown message id, so a 1045
//! unanswered for `info_timeout` fails the download with that explanation. A
//! 0-byte file completes from its 1046 alone. Then requests for consecutive
//! seqs are pipelined up to the window, strictly in order (the server keeps one
//! expected seq per name and rejects any other); each reply is checked (name,
//! seq, length, base64) and written at its offset through a [`ChunkSink`]
//! (a `<dest>.part` file renamed into place at the end). The md5 is computed as
//! chunks arrive in order and checked at the end when known.
//!
//! A reply without `data` or `seq` is a failure whatever its `error` says
//! (the deployed server overwrites most download errors with 0). After a
//! reconnect a download continues from the first missing seq; the server's
//! expected seq may be ahead of it (requests it answered with replies lost),
//! so a failure of that first request restarts the download from seq 1 (which
//! resets the server's expectation and re-sends the token), once.
//!
//! The name the server returns never decides a path outside the destination
//! directory: `/`, `\`, `..`, NUL, or an empty name fail the download.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use super::types::{FileId, FileState, FileStatus};
use super::ProgressState;

/// The server's download chunk size (`MAX_FILE_LEN`, fixed on the deployed server).
pub const DOWNLOAD_CHUNK: u64 = 32_768;

/// Where downloaded bytes go.
pub trait ChunkSink: Send {
    /// The server told the file's name and size: prepare storage.
    fn open(&mut self, server_name: &str, size: u64) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Every byte is written: make the file visible; returns where it is.
    fn finish(&mut self) -> io::Result<PathBuf>;
    /// The download failed or was cancelled: remove what was written.
    fn abort(&mut self);
}

/// Writes `<dir>/<name>.part` positionally and renames it to `<dir>/<name>`.
/// `name` is the one given, or else the server's (checked to be one plain
/// path component).
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    name: Option<String>,
    open: Option<(File, PathBuf, PathBuf)>,
}

impl FileSink {
    pub fn new(dir: impl Into<PathBuf>, name: Option<String>) -> FileSink {
        FileSink {
            dir: dir.into(),
            name,
            open: None,
        }
    }
}

/// Why a name cannot be a file name inside a directory, if it cannot.
pub fn unsafe_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.contains('/') || name.contains('\\') {
        Some("contains a path separator")
    } else if name == "." || name.contains("..") {
        Some("contains `..`")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else if Path::new(name).is_absolute() || name.contains(':') {
        Some("is absolute or has a drive")
    } else {
        None
    }
}

impl ChunkSink for FileSink {
    fn open(&mut self, server_name: &str, size: u64) -> io::Result<()> {
        let name = self.name.clone().unwrap_or_else(|| server_name.to_string());
        if let Some(why) = unsafe_name(&name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("refusing file name {name:?} from the server: {why}"),
            ));
        }
        std::fs::create_dir_all(&self.dir)?;
        let final_path = self.dir.join(&name);
        let part = self.dir.join(format!("{name}.part"));
        let file = File::options()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&part)?;
        file.set_len(size)?;
        self.open = Some((file, part, final_path));
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let (file, _, _) = self
            .open
            .as_ref()
            .ok_or_else(|| io::Error::other("sink not open"))?;
        write_all_at(file, data, offset)
    }

    fn finish(&mut self) -> io::Result<PathBuf> {
        let (file, part, final_path) = self
            .open
            .take()
            .ok_or_else(|| io::Error::other("sink not open"))?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&part, &final_path)?;
        Ok(final_path)
    }

    fn abort(&mut self) {
        if let Some((_, part, _)) = self.open.take() {
            let _ = std::fs::remove_file(part);
        }
    }
}

#[cfg(unix)]
fn write_all_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, data, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !data.is_empty() {
        let n = file.seek_write(data, offset)?;
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Bytes in memory (tests).
#[derive(Debug, Clone, Default)]
pub struct MemorySink(pub std::sync::Arc<std::sync::Mutex<(Vec<u8>, bool)>>);

impl ChunkSink for MemorySink {
    fn open(&mut self, server_name: &str, size: u64) -> io::Result<()> {
        if let Some(why) = unsafe_name(server_name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("name {server_name:?}: {why}"),
            ));
        }
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = vec![0; usize::try_from(size).map_err(io::Error::other)?];
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let start = offset as usize;
        g.0.get_mut(start..start + data.len())
            .ok_or_else(|| io::Error::other("write past the end"))?
            .copy_from_slice(data);
        Ok(())
    }
    fn finish(&mut self) -> io::Result<PathBuf> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        Ok(PathBuf::from("memory"))
    }
    fn abort(&mut self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0.clear();
    }
}

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
    /// An avatar download (1033/1034) instead of a chat file: no 1045; the
    /// size arrives with the first chunk. `message_id` is then unused.
    pub avatar: Option<AvatarRef>,
}

/// Which avatar to download, and the fields the deployed client echoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvatarRef {
    /// The avatar's file name on the server (`<dir>/<uid>/<name>`).
    pub name: String,
    pub client_path: String,
    pub req_type: String,
}

/// What 1046 told.
#[derive(Debug, Clone)]
pub(super) struct Info {
    pub server_name: String,
    pub sender_id: i64,
    pub receiver_id: i64,
    pub total: u64,
    pub max_seq: u32,
}

pub(super) struct Download {
    pub id: FileId,
    pub spec: DownloadSpec,
    pub sink: Option<Box<dyn ChunkSink>>,
    pub state: FileState,
    pub info: Option<Info>,
    /// The unanswered 1045, if any.
    pub info_req: Option<u64>,
    /// Next seq to request.
    pub next_seq: u32,
    /// Seqs `1..=received` arrived and were written.
    pub received: u32,
    /// Unanswered 1047s, in request order: (seq, request number).
    pub in_flight: VecDeque<(u32, u64)>,
    pub hasher: Md5,
    pub bytes: u64,
    /// Continuing past seq 1 after a reconnect: a failure restarts from seq 1.
    pub resumed: bool,
    pub restarts: u8,
    pub burst: u32,
    pub progress: ProgressState,
    pub started_at: Option<std::time::Instant>,
}

impl Download {
    pub fn new(id: FileId, spec: DownloadSpec, sink: Box<dyn ChunkSink>) -> Download {
        Download {
            id,
            spec,
            sink: Some(sink),
            state: FileState::Queued,
            info: None,
            info_req: None,
            next_seq: 1,
            received: 0,
            in_flight: VecDeque::new(),
            hasher: Md5::new(),
            bytes: 0,
            resumed: false,
            restarts: 0,
            burst: 0,
            progress: ProgressState::default(),
            started_at: None,
        }
    }

    pub fn chunk_len(&self, seq: u32) -> u64 {
        let total = self.info.as_ref().map_or(0, |i| i.total);
        total
            .saturating_sub((seq as u64 - 1) * DOWNLOAD_CHUNK)
            .min(DOWNLOAD_CHUNK)
    }

    /// Starts again from seq 1 (the server's expectation resets there).
    pub fn restart(&mut self) {
        self.next_seq = 1;
        self.received = 0;
        self.hasher = Md5::new();
        self.bytes = 0;
        self.resumed = false;
        self.progress.dirty = true;
    }

    pub fn status(&self) -> FileStatus {
        let max_seq = self.info.as_ref().map_or(0, |i| i.max_seq);
        FileStatus {
            name: self.spec.name.clone(),
            state: self.state,
            total: self.info.as_ref().map_or(0, |i| i.total),
            acked: self.bytes,
            max_seq,
            acked_prefix: self.received,
            next_seq: self.next_seq,
            in_flight: self.in_flight.len() + usize::from(self.info_req.is_some()),
            md5: self.spec.md5.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            "../x",
            "a/b",
            "a\\b",
            "..",
            "/etc/passwd",
            "a\0b",
            "C:x",
        ] {
            assert!(unsafe_name(bad).is_some(), "{bad:?}");
        }
        assert!(unsafe_name("photo 1.png").is_none());
    }

    #[test]
    fn file_sink_writes_part_then_renames_and_abort_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileSink::new(dir.path(), None);
        assert!(s.open("../escape", 10).is_err());
        s.open("a.bin", 6).unwrap();
        s.write_at(3, b"def").unwrap();
        s.write_at(0, b"abc").unwrap();
        assert!(dir.path().join("a.bin.part").exists());
        let p = s.finish().unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"abcdef");
        let mut s = FileSink::new(dir.path(), Some("b.bin".into()));
        s.open("ignored", 4).unwrap();
        s.abort();
        assert!(!dir.path().join("b.bin.part").exists());
        assert!(!dir.path().join("b.bin").exists());
    }
}
