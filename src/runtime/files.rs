//! File IO at the edge: the real-file [`ChunkSource`] and [`ChunkSink`] the
//! runtime hands to the engine, and the one positional-IO helper they share.
//!
//! [`FileSource`] reads a file positionally from a handle kept open and
//! fails the read when the file's size or modification time changed since it
//! was opened, so a file edited during its upload fails instead of arriving as
//! a mix of two versions. [`FileSink`] writes a partial file positionally and
//! puts it into place when the download is complete; an aborted download
//! removes it.
//!
//! A download folder is shared ground: whatever is in it may have been put
//! there to trick us. So the sink never opens a path that exists — the
//! partial file is created new (`O_CREAT|O_EXCL`, which does not follow a
//! symlink, even a dangling one) — and never replaces a file: the complete
//! file is hard-linked to its name, which fails if anything (a file, a
//! symlink) has that name, and then takes the next free name
//! (`photo (1).jpg`, as browsers and chat apps do) or fails, as configured.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::engine::{ChunkSink, ChunkSource};
use crate::error::{Error, Result};
use crate::protocol::name::name_problem;

/// A file on disk, opened once and read positionally.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileSource {
    /// Opens `path` for upload: it must exist, be a regular file and be readable.
    pub fn open(path: impl AsRef<Path>) -> Result<FileSource> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| Error::Source {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(&path).map_err(io_err)?;
        if !meta.is_file() {
            return Err(Error::NotAFile { path });
        }
        let file = File::open(&path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        Ok(FileSource {
            file,
            len: meta.len(),
            modified: meta.modified().ok(),
            path,
        })
    }

    /// Sets `spec.md5` from the file's bytes when the caller did not give it
    /// (read in blocks, never the whole file at once).
    pub fn fill_md5(&mut self, spec: &mut crate::engine::FileSpec) -> Result<()> {
        if spec.md5.is_none() {
            let md5 = crate::engine::md5_hex(self).map_err(|source| Error::Source {
                path: self.path.clone(),
                source,
            })?;
            spec.md5 = Some(md5);
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn modified(&self) -> Option<SystemTime> {
        self.modified
    }

    fn check_unchanged(&self) -> io::Result<()> {
        let meta = self.file.metadata()?;
        if meta.len() != self.len {
            return Err(io::Error::other(format!(
                "{} changed while uploading: size was {} bytes, now {}",
                self.path.display(),
                self.len,
                meta.len()
            )));
        }
        if meta.modified().ok() != self.modified {
            return Err(io::Error::other(format!(
                "{} changed while uploading: modification time changed",
                self.path.display()
            )));
        }
        Ok(())
    }
}

impl ChunkSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // One fstat per chunk is far cheaper than the base64 of 32 KiB and is
        // what lets a changed file fail instead of uploading a mix.
        self.check_unchanged()?;
        read_exact_at(&self.file, buf, offset).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: read of {} bytes at offset {offset}: {e}",
                    self.path.display(),
                    buf.len()
                ),
            )
        })
    }
}

/// What a download does when its name is taken in the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExistingFile {
    /// Save under the next free name: `photo (1).jpg`, `photo (2).jpg`, ...
    #[default]
    PickFreeName,
    /// Fail the download; the existing file is left as it is.
    Fail,
}

/// How many alternative names a download tries before it gives up.
const MAX_NAME_TRIES: u32 = 1000;

/// Writes a new partial file `<dir>/<name>.part` (or `<name>.<n>.part` if
/// that name is taken) positionally, and links it to `<dir>/<name>` when
/// complete, never replacing anything. `name` is the one given, or else the
/// server's (checked to be one plain, visible path component).
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    name: Option<String>,
    existing: ExistingFile,
    /// The open partial file, its path, and the file name wanted.
    open: Option<(File, PathBuf, String)>,
    /// Where to tell the partial file's path once created (a journal).
    report_part: Option<PartSlot>,
}

/// A download's partial file path, once its sink created it.
pub type PartSlot = std::sync::Arc<std::sync::Mutex<Option<PathBuf>>>;

impl FileSink {
    pub fn new(dir: impl Into<PathBuf>, name: Option<String>) -> FileSink {
        FileSink {
            dir: dir.into(),
            name,
            existing: ExistingFile::default(),
            open: None,
            report_part: None,
        }
    }

    /// Tells `slot` the partial file's path when it is created.
    pub fn report_part(mut self, slot: PartSlot) -> FileSink {
        self.report_part = Some(slot);
        self
    }

    /// What to do when the name is taken (default: pick a free name).
    pub fn existing(mut self, existing: ExistingFile) -> FileSink {
        self.existing = existing;
        self
    }
}

/// Creates a new partial file for `name` in `dir`: never an existing path.
fn create_part(dir: &Path, name: &str) -> io::Result<(File, PathBuf)> {
    for n in 0..MAX_NAME_TRIES {
        let part = match n {
            0 => dir.join(format!("{name}.part")),
            n => dir.join(format!("{name}.{n}.part")),
        };
        match File::options().write(true).create_new(true).open(&part) {
            Ok(f) => return Ok((f, part)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "no free partial-file name for {name:?} in {}",
            dir.display()
        ),
    ))
}

/// Refuses a download that cannot fit before a byte is written (the size
/// is the server's word; the limit on it is the engine's). A file system
/// that cannot say how much is free is not refused here: a full disk then
/// fails the write, and the partial file is removed.
fn check_free_space(dir: &Path, name: &str, size: u64) -> io::Result<()> {
    match fs4::available_space(dir) {
        Ok(free) if size > free => Err(io::Error::other(format!(
            "not enough free space in {} for {name:?}: {size} bytes needed, {free} available",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// `photo.jpg`, then `photo (1).jpg`, `photo (2).jpg`, ...
fn candidate(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem} ({n}).{ext}"),
        _ => format!("{name} ({n})"),
    }
}

/// Gives the complete `part` the name `name` in `dir` without replacing
/// anything; returns the path it got.
fn place(part: &Path, dir: &Path, name: &str, existing: ExistingFile) -> io::Result<PathBuf> {
    let tries = match existing {
        ExistingFile::PickFreeName => MAX_NAME_TRIES,
        ExistingFile::Fail => 1,
    };
    for n in 0..tries {
        let target = dir.join(candidate(name, n));
        // A hard link fails if the name exists, whatever it is, and follows
        // no symlink: an atomic "create if absent".
        match std::fs::hard_link(part, &target) {
            Ok(()) => {
                std::fs::remove_file(part)?;
                return Ok(target);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            // File systems without hard links: a checked rename (a small
            // window between the check and the rename remains there).
            Err(_) => match std::fs::symlink_metadata(&target) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::rename(part, &target)?;
                    return Ok(target);
                }
                Err(e) => return Err(e),
            },
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        match existing {
            ExistingFile::Fail => format!("{} exists; not replaced", dir.join(name).display()),
            ExistingFile::PickFreeName => {
                format!("no free name for {name:?} in {}", dir.display())
            }
        },
    ))
}

impl ChunkSink for FileSink {
    fn open(&mut self, server_name: &str, size: u64) -> io::Result<()> {
        let name = self.name.clone().unwrap_or_else(|| server_name.to_string());
        if let Some(why) = name_problem(&name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("refusing file name {name:?} from the server: {why}"),
            ));
        }
        std::fs::create_dir_all(&self.dir)?;
        check_free_space(&self.dir, &name, size)?;
        let (file, part) = create_part(&self.dir, &name)?;
        if let Err(e) = file.set_len(size) {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        if let Some(slot) = &self.report_part {
            *crate::sync::lock(slot) = Some(part.clone());
        }
        self.open = Some((file, part, name));
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
        let (file, part, name) = self
            .open
            .take()
            .ok_or_else(|| io::Error::other("sink not open"))?;
        let synced = file.sync_all();
        drop(file); // closed before it is linked or renamed (Windows)
        let placed = synced.and_then(|()| place(&part, &self.dir, &name, self.existing));
        if placed.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        placed
    }

    fn abort(&mut self) {
        if let Some((_, part, _)) = self.open.take() {
            let _ = std::fs::remove_file(part);
        }
    }
}

/// Positional reads and writes of whole buffers, on Unix and Windows: the
/// one helper of the crate and of the reference server.
mod positional {
    use std::fs::File;
    use std::io;

    #[cfg(unix)]
    pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }

    #[cfg(unix)]
    pub fn write_all_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(file, data, offset)
    }

    #[cfg(windows)]
    pub fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !buf.is_empty() {
            match file.seek_read(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    #[cfg(windows)]
    pub fn write_all_at(file: &File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !data.is_empty() {
            match file.seek_write(data, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    data = &data[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
pub use positional::{read_exact_at, write_all_at};

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn file_source_rejects_missing_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            FileSource::open(dir.path().join("nope")),
            Err(Error::Source { .. })
        ));
        assert!(matches!(
            FileSource::open(dir.path()),
            Err(Error::NotAFile { .. })
        ));
    }

    #[test]
    fn file_source_fails_reads_after_the_file_changes() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[1u8; 100]).unwrap();
        f.flush().unwrap();
        let mut src = FileSource::open(f.path()).unwrap();
        let mut buf = [0u8; 10];
        src.read_at(90, &mut buf).unwrap();
        assert_eq!(buf, [1u8; 10]);
        f.write_all(&[2u8; 5]).unwrap();
        f.flush().unwrap();
        let err = src.read_at(0, &mut buf).unwrap_err();
        assert!(err.to_string().contains("changed while uploading"), "{err}");
    }

    /// An attacker who can write in the download folder plants symlinks at
    /// the partial and final names, pointing at files outside, and a file
    /// of the same name: nothing outside is written, nothing is replaced.
    #[cfg(unix)]
    #[test]
    fn file_sink_follows_no_planted_symlink_and_replaces_nothing() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("x.bin.part")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("x.bin")).unwrap();
        std::fs::write(dir.path().join("x (1).bin"), b"mine").unwrap();
        let mut s = FileSink::new(dir.path(), None);
        s.open("x.bin", 4).unwrap();
        s.write_at(0, b"data").unwrap();
        let saved = s.finish().unwrap();
        assert_eq!(saved, dir.path().join("x (2).bin"));
        assert_eq!(std::fs::read(&saved).unwrap(), b"data");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(
            std::fs::read(dir.path().join("x (1).bin")).unwrap(),
            b"mine"
        );
        assert!(std::fs::symlink_metadata(dir.path().join("x.bin.part"))
            .unwrap()
            .file_type()
            .is_symlink());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".part") && n != "x.bin.part")
            .collect();
        assert!(left.is_empty(), "our partial file is gone: {left:?}");
        // Told to fail instead: the existing name is kept and the download fails.
        let mut s = FileSink::new(dir.path(), None).existing(ExistingFile::Fail);
        s.open("x.bin", 1).unwrap();
        s.write_at(0, b"z").unwrap();
        let err = s.finish().unwrap_err();
        assert!(err.to_string().contains("not replaced"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn file_sink_refuses_a_size_beyond_the_free_space_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(dir.path(), None);
        let e = sink.open("huge.mp4", u64::MAX / 2).unwrap_err();
        assert!(e.to_string().contains("not enough free space"), "{e}");
        assert!(e.to_string().contains("huge.mp4"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A size that fits is accepted.
        sink.open("small.jpg", 1000).unwrap();
        sink.abort();
    }

    #[test]
    fn free_names_keep_the_extension() {
        assert_eq!(candidate("photo.jpg", 0), "photo.jpg");
        assert_eq!(candidate("photo.jpg", 2), "photo (2).jpg");
        assert_eq!(candidate("a.tar.gz", 1), "a.tar (1).gz");
        assert_eq!(candidate("README", 3), "README (3)");
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
