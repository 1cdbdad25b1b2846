//! The engine's only contact with bytes: a [`ChunkSource`] for an upload and
//! a [`ChunkSink`] for a download. The engine reads one chunk at a time, when
//! that chunk is sent, and writes one chunk at a time, when it arrives, so it
//! never holds more than one chunk of a file. Real files live at the edge
//! (`runtime::files`); here are the in-memory ones for tests and hosts that
//! hold a small file, and the md5 helpers a caller uses before `add_file`.

use std::io;
use std::path::PathBuf;

use md5::{Digest, Md5};

use crate::protocol::name::name_problem;

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

/// Bytes in memory (tests).
#[derive(Debug, Clone, Default)]
pub struct MemorySink(pub std::sync::Arc<std::sync::Mutex<(Vec<u8>, bool)>>);

impl ChunkSink for MemorySink {
    fn open(&mut self, server_name: &str, size: u64) -> io::Result<()> {
        if let Some(why) = name_problem(server_name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("name {server_name:?}: {why}"),
            ));
        }
        let mut g = lock(&self.0);
        g.0 = vec![0; usize::try_from(size).map_err(io::Error::other)?];
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut g = lock(&self.0);
        let start = offset as usize;
        g.0.get_mut(start..start + data.len())
            .ok_or_else(|| io::Error::other("write past the end"))?
            .copy_from_slice(data);
        Ok(())
    }
    fn finish(&mut self) -> io::Result<PathBuf> {
        lock(&self.0).1 = true;
        Ok(PathBuf::from("memory"))
    }
    fn abort(&mut self) {
        lock(&self.0).0.clear();
    }
}

/// Locks a mutex, taking the data of a poisoned one (a panic elsewhere must
/// not make every later call panic too).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_streams_and_matches_known_values() {
        assert_eq!(md5_of(b""), "d41d8cd98f00b204e9800998ecf8427e");
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let mut src = MemorySource::new(data.clone());
        assert_eq!(md5_hex(&mut src).unwrap(), md5_of(&data));
    }
}
