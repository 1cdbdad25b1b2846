//! Where file bytes come from: the engine asks a [`ChunkSource`] for the
//! bytes of one chunk when it is about to send it, so it never holds more
//! than one chunk of a file in memory.
//!
//! [`FileSource`] reads a file positionally from a handle kept open and
//! fails the read when the file's size or modification time changed since it
//! was opened, so a file edited during its upload fails instead of arriving as
//! a mix of two versions. [`MemorySource`] serves tests.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use md5::{Digest, Md5};

use crate::error::{Error, Result};

/// A positional reader of one file's bytes.
pub trait ChunkSource: Send {
    /// The size announced to the server.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset`; an error if they cannot all be
    /// read or the source changed.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

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

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// Bytes in memory (tests, and hosts that already hold a small file).
#[derive(Debug, Clone)]
pub struct MemorySource(pub std::sync::Arc<[u8]>);

impl MemorySource {
    pub fn new(bytes: impl Into<Vec<u8>>) -> MemorySource {
        MemorySource(bytes.into().into())
    }
}

impl ChunkSource for MemorySource {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Hex md5 of a whole source, read in 256 KiB blocks (never the whole file at once).
pub fn md5_hex(source: &mut dyn ChunkSource) -> io::Result<String> {
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 256 * 1024];
    let len = source.len();
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        source.read_at(offset, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hex(&hasher.finalize()))
}

/// Hex md5 of bytes in memory.
pub fn md5_of(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

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
    fn md5_streams_and_matches_known_values() {
        assert_eq!(md5_of(b""), "d41d8cd98f00b204e9800998ecf8427e");
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let mut src = MemorySource::new(data.clone());
        assert_eq!(md5_hex(&mut src).unwrap(), md5_of(&data));
    }
}
