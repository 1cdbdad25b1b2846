//! File IO at the edge: the real-file [`ChunkSource`] and [`ChunkSink`] the
//! runtime hands to the engine, and the one positional-IO helper they share.
//!
//! [`FileSource`] reads a file positionally from a handle kept open and
//! fails the read when the file's size or modification time changed since it
//! was opened, so a file edited during its upload fails instead of arriving as
//! a mix of two versions. [`FileSink`] writes `<dir>/<name>.part`
//! positionally and renames it into place when the download is complete; an
//! aborted download removes its `.part`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::engine::{ChunkSink, ChunkSource};
use crate::error::{Error, Result};
use crate::protocol::name::name_problem as unsafe_name;

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
