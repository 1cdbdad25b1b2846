//! The store's file system access, relative to directory handles and never
//! through a symbolic link.
//!
//! The root (`--dir`) is opened once, at start (following links there is
//! the operator's choice). Every other open goes through `openat` on a
//! directory handle with `O_NOFOLLOW`: a uid directory is opened from the
//! root handle (`O_DIRECTORY | O_NOFOLLOW`), a file from its uid
//! directory's handle. A link planted in place of a uid directory, a
//! `.part`, a `.state` or a published file therefore fails with `ELOOP`
//! (reported as [`Refused::Link`]) instead of redirecting a write or a read
//! outside `--dir`. Renames and unlinks act on the name itself (a link at
//! the target is replaced, not followed). Names reaching this module have
//! passed `name_problem` (one component, no `..`), uids are non-negative.
//!
//! Invariant: nothing here takes a path with more than one component below
//! the root handle, and no call follows a link.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// Why an open was refused beyond plain IO errors.
pub fn is_link_refusal(e: &io::Error) -> bool {
    // ELOOP: the last component is a symlink under O_NOFOLLOW. ENOTDIR: a
    // uid "directory" that is a file (or a link to one).
    matches!(Errno::from_io_error(e), Some(Errno::LOOP | Errno::NOTDIR))
}

fn to_io(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// A directory handle.
pub struct Dir {
    fd: OwnedFd,
}

/// The storage root.
pub struct Root {
    dir: Dir,
}

const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

impl Root {
    /// Creates `path` if missing and opens it.
    pub fn open(path: &Path) -> io::Result<Root> {
        std::fs::create_dir_all(path)?;
        let fd = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(to_io)?;
        Ok(Root { dir: Dir { fd } })
    }

    /// `<root>/<uid>`, created if `create` and missing. A link or a file in
    /// its place is an error ([`is_link_refusal`]).
    pub fn uid_dir(&self, uid: i64, create: bool) -> io::Result<Dir> {
        let name = uid.to_string();
        let open = || {
            rfs::openat(
                &self.dir.fd,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let fd = match open() {
            Err(Errno::NOENT) if create => {
                match rfs::mkdirat(&self.dir.fd, name.as_str(), Mode::from_raw_mode(DIR_MODE)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(to_io(e)),
                }
                open().map_err(to_io)?
            }
            r => r.map_err(to_io)?,
        };
        Ok(Dir { fd })
    }

    /// Free bytes for an unprivileged writer on the root's file system.
    pub fn available(&self) -> io::Result<u64> {
        let s = rfs::fstatvfs(&self.dir.fd).map_err(to_io)?;
        Ok(s.f_bavail.saturating_mul(s.f_frsize))
    }
}

impl Dir {
    fn open_with(&self, name: &str, flags: OFlags) -> io::Result<File> {
        let fd = rfs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(to_io)?;
        Ok(File::from(fd))
    }

    /// Opens `name` read-write, created and truncated.
    pub fn create_rw(&self, name: &str) -> io::Result<File> {
        self.open_with(name, OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC)
    }

    /// Opens an existing `name` read-write.
    pub fn open_rw(&self, name: &str) -> io::Result<File> {
        self.open_with(name, OFlags::RDWR)
    }

    /// Opens an existing regular file for reading. `O_NONBLOCK` so that a
    /// planted FIFO cannot hang the open; anything but a regular file is
    /// refused as `InvalidInput`.
    pub fn open_read(&self, name: &str) -> io::Result<File> {
        let f = self.open_with(name, OFlags::RDONLY | OFlags::NONBLOCK)?;
        if !f.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(f)
    }

    /// Opens `name` for appending, created if missing (AppendStrict).
    pub fn open_append(&self, name: &str) -> io::Result<File> {
        self.open_with(name, OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND)
    }

    /// Reads a whole (small) regular file.
    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut f = self.open_read(name)?;
        let mut v = Vec::new();
        f.read_to_end(&mut v)?;
        Ok(v)
    }

    /// Size of the regular file `name`, without following a link
    /// (`Ok(None)`: missing; a link or a non-file is refused).
    pub fn size(&self, name: &str) -> io::Result<Option<u64>> {
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let kind = rfs::FileType::from_raw_mode(st.st_mode);
                match kind {
                    rfs::FileType::RegularFile => Ok(Some(st.st_size as u64)),
                    rfs::FileType::Symlink => Err(to_io(Errno::LOOP)),
                    _ => Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not a regular file",
                    )),
                }
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    /// Removes `name` (a link is removed, not followed); missing is fine.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(to_io(e)),
        }
    }

    /// Renames `from` to `to` within this directory.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        rfs::renameat(&self.fd, from, &self.fd, to).map_err(to_io)
    }

    /// Makes renames and unlinks in this directory durable.
    pub fn sync(&self) -> io::Result<()> {
        rfs::fsync(self.fd.as_fd()).map_err(to_io)
    }
}
