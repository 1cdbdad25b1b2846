//! Journals of unfinished uploads, so an upload survives an app restart.
//!
//! One small JSON file per unfinished upload in the state directory
//! (`<name>.journal.json`; names cannot contain separators), written
//! atomically (temporary file, then rename) by the client's driver at most
//! a few times a second, never per chunk. A completed, cancelled or failed
//! upload's journal is removed.
//!
//! Exactness: while chunks are in flight the journal may lag behind what the
//! server holds, so it is written with `exact: false`. Only a graceful
//! shutdown, which first drains every in-flight chunk, writes `exact: true`.
//! On resume, a positional server (the reference server) continues from the
//! first unacknowledged seq whatever `exact` says; an appending server (the
//! deployed one) does so only for an exact journal; otherwise, with a token,
//! the engine first asks the server the stored size (a size probe, see
//! `engine::upload`) and continues after exactly the chunks it holds, and
//! without one the file goes again from seq 1, whose 1041 truncates
//! (re-sending to an appending server after lost acknowledgements would
//! duplicate bytes). A resumed upload's journal is rewritten as inexact
//! before its first chunk goes out.
//!
//! Downloads have journals too (`<name>.download.json`): what the download
//! was registered with, where it goes, and its partial file once known. A
//! resumed download starts over (a partial file left by a killed process
//! is not trusted: its bytes were never verified), after removing that
//! partial file if it is still a plain file in the destination.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Bumped when the format changes; other versions are reported and ignored.
pub const JOURNAL_VERSION: u32 = 1;
const SUFFIX: &str = ".journal.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub version: u32,
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// Source modification time, seconds and nanoseconds since the epoch.
    pub mtime: Option<(u64, u32)>,
    pub md5: String,
    pub chunk_size: u32,
    pub uid: i64,
    pub sender: i64,
    pub receiver: i64,
    pub message_id: i64,
    pub priority: u8,
    /// The login token the upload was registered with (avatars send it on
    /// seq 1). The journal is written readable by its owner only.
    #[serde(default)]
    pub token: String,
    /// An avatar upload (1031), which must resume as one.
    #[serde(default)]
    pub avatar: bool,
    pub acked_prefix: u32,
    pub acked_beyond: Vec<u32>,
    /// Written after every in-flight chunk was answered (graceful shutdown).
    pub exact: bool,
}

const DOWNLOAD_SUFFIX: &str = ".download.json";

/// An unfinished download, as a restart needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadJournal {
    pub version: u32,
    pub name: String,
    pub message_id: i64,
    pub uid: i64,
    /// The login token (the journal is readable by its owner only).
    pub token: String,
    pub md5: Option<String>,
    pub priority: u8,
    /// Avatar (name, client path, request type).
    pub avatar: Option<(String, String, String)>,
    /// From the 1039 notify: (server name, size, sender, receiver).
    pub known: Option<(String, u64, i64, i64)>,
    pub dest_dir: PathBuf,
    pub file_name: Option<String>,
    /// The partial file, once created.
    pub part: Option<PathBuf>,
}

fn download_path_for(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{DOWNLOAD_SUFFIX}"))
}

/// Writes `entry` atomically, readable by its owner only.
pub fn write_download(dir: &Path, entry: &DownloadJournal) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?;
    write_atomically(dir, &download_path_for(dir, &entry.name), &bytes)
}

pub fn remove_download(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(download_path_for(dir, name));
}

/// Every download journal in `dir`, and `(path, reason)` for bad ones.
pub fn scan_downloads(dir: &Path) -> (Vec<DownloadJournal>, Vec<(PathBuf, String)>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (path, name) in journal_files(dir, DOWNLOAD_SUFFIX) {
        let name = name.as_str();
        let loaded = std::fs::read(&path)
            .map_err(|e| format!("unreadable: {e}"))
            .and_then(|b| {
                serde_json::from_slice::<DownloadJournal>(&b).map_err(|e| format!("corrupt: {e}"))
            })
            .and_then(|e| {
                if e.version != JOURNAL_VERSION {
                    Err(format!(
                        "journal version {}, this library reads {JOURNAL_VERSION}",
                        e.version
                    ))
                } else if e.name != name {
                    Err(format!(
                        "names {:?}, but the file is named {name:?}",
                        e.name
                    ))
                } else {
                    Ok(e)
                }
            });
        match loaded {
            Ok(e) => ok.push(e),
            Err(reason) => bad.push((path, reason)),
        }
    }
    ok.sort_by(|a, b| a.name.cmp(&b.name));
    (ok, bad)
}

/// Removes a journaled partial file if it is still what a download left:
/// a plain file (no link followed) directly in the destination, named
/// `*.part`. Anything else is left alone.
pub fn remove_stale_part(entry: &DownloadJournal) {
    let Some(part) = &entry.part else { return };
    let in_dest = part.parent() == Some(entry.dest_dir.as_path());
    let is_part = part.extension().is_some_and(|e| e == "part");
    let plain = std::fs::symlink_metadata(part).is_ok_and(|m| m.file_type().is_file());
    if in_dest && is_part && plain {
        let _ = std::fs::remove_file(part);
    }
}

fn write_atomically(dir: &Path, final_path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let file = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("journal");
    let tmp = dir.join(format!(".{file}.tmp"));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, final_path)
}

pub fn mtime_of(t: Option<SystemTime>) -> Option<(u64, u32)> {
    let d = t?.duration_since(UNIX_EPOCH).ok()?;
    Some((d.as_secs(), d.subsec_nanos()))
}

pub fn mtime_to_system(m: (u64, u32)) -> SystemTime {
    UNIX_EPOCH + Duration::new(m.0, m.1)
}

fn path_for(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{SUFFIX}"))
}

/// Writes `entry` atomically.
pub fn write(dir: &Path, entry: &JournalEntry) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let final_path = path_for(dir, &entry.name);
    let tmp = dir.join(format!(".{}{SUFFIX}.tmp", entry.name));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, &final_path)
}

pub fn remove(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(path_for(dir, name));
}

/// Every journal in `dir`: the valid ones, and `(path, reason)` for each
/// that is corrupt or from another version.
pub fn scan(dir: &Path) -> (Vec<JournalEntry>, Vec<(PathBuf, String)>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (path, _) in journal_files(dir, SUFFIX) {
        match load(&path) {
            Ok(e) => ok.push(e),
            Err(reason) => bad.push((path, reason)),
        }
    }
    ok.sort_by(|a, b| a.name.cmp(&b.name));
    (ok, bad)
}

/// The journal files of one kind in `dir` (named `<name><suffix>`; hidden
/// ones are temporary), with the name each file's name gives.
fn journal_files(dir: &Path, suffix: &str) -> Vec<(PathBuf, String)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter_map(|item| {
            let path = item.path();
            let file = path.file_name()?.to_str()?;
            if file.starts_with('.') {
                return None;
            }
            let name = file.strip_suffix(suffix)?.to_string();
            Some((path, name))
        })
        .collect()
}

fn load(path: &Path) -> Result<JournalEntry, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("corrupt: {e}"))?;
    let version = value.get("version").and_then(|v| v.as_u64());
    if version != Some(JOURNAL_VERSION as u64) {
        return Err(format!(
            "journal version {version:?}, this library reads {JOURNAL_VERSION}"
        ));
    }
    let entry: JournalEntry = serde_json::from_value(value).map_err(|e| format!("corrupt: {e}"))?;
    let expected = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(SUFFIX));
    if expected != Some(entry.name.as_str()) {
        return Err(format!(
            "names {:?}, but the file is named {expected:?}",
            entry.name
        ));
    }
    if entry.chunk_size == 0
        || entry.acked_prefix as u64 > entry.size.div_ceil(entry.chunk_size as u64).max(1)
    {
        return Err("corrupt: acknowledged seqs beyond the file".into());
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> JournalEntry {
        JournalEntry {
            version: JOURNAL_VERSION,
            name: name.into(),
            path: "/tmp/x".into(),
            size: 100_000,
            mtime: Some((1, 2)),
            md5: "0".repeat(32),
            chunk_size: 32_768,
            uid: 1,
            sender: 1,
            receiver: 2,
            message_id: 3,
            priority: 0,
            token: String::new(),
            avatar: false,
            acked_prefix: 2,
            acked_beyond: vec![],
            exact: false,
        }
    }

    #[test]
    fn round_trip_and_bad_journals_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &entry("a.mp4")).unwrap();
        std::fs::write(dir.path().join("b.journal.json"), b"{not json").unwrap();
        let mut old = serde_json::to_value(entry("c")).unwrap();
        old["version"] = 0.into();
        std::fs::write(dir.path().join("c.journal.json"), old.to_string()).unwrap();
        let mut beyond = entry("d");
        beyond.acked_prefix = 99;
        write(dir.path(), &beyond).unwrap();
        let (ok, bad) = scan(dir.path());
        assert_eq!(ok, vec![entry("a.mp4")]);
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad.iter().any(|(_, r)| r.contains("version")));
        remove(dir.path(), "a.mp4");
        assert!(scan(dir.path()).0.is_empty());
    }

    #[test]
    fn an_avatar_keeps_its_kind_and_token_and_older_journals_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut avatar = entry("face.png");
        avatar.avatar = true;
        avatar.token = "login-token".into();
        write(dir.path(), &avatar).unwrap();
        // A journal written before these fields existed.
        let mut old = serde_json::to_value(entry("old.mp4")).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("token");
        fields.remove("avatar");
        std::fs::write(dir.path().join("old.mp4.journal.json"), old.to_string()).unwrap();
        let (mut ok, bad) = scan(dir.path());
        ok.sort_by(|a, b| a.name.cmp(&b.name));
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(ok, vec![avatar, entry("old.mp4")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path_for(dir.path(), "face.png")).unwrap();
            assert_eq!(
                meta.permissions().mode() & 0o077,
                0,
                "holds a token: owner only"
            );
        }
    }
}
