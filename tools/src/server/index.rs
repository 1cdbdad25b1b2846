//! The message index: what the deployed server looks up in MySQL for a 1045
//! (`chat_message` by id), kept here as `message_id -> MessageInfo`, in
//! memory and in `<dir>/.messages.json` (rewritten atomically on every
//! change: temporary file, fsync, rename, directory fsync), so a restarted
//! server still answers for every message it knew.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::lock;

/// File name of the index inside the storage directory (a leading `.`, so
/// it can never collide with a uid directory).
pub const INDEX_FILE: &str = ".messages.json";

const INDEX_VERSION: u32 = 1;

/// `chat_message.status` the deployed server sets when an upload's last
/// chunk arrives (2, "READED").
pub const STATUS_UPLOADED: i64 = 2;

/// What a 1046 tells about a chat message: whose file it is and its name.
/// The file is `<dir>/<sender_id>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageInfo {
    pub thread_id: i64,
    /// The uploader; the file lives under this uid's directory.
    pub sender_id: i64,
    pub recv_id: i64,
    /// The stored file's name (the message's `content` on the deployed server).
    pub name: String,
    pub msg_type: i64,
    pub status: i64,
}

impl MessageInfo {
    /// A message for the file `<dir>/<sender_id>/<name>`, thread 0, type 0,
    /// status [`STATUS_UPLOADED`].
    pub fn new(sender_id: i64, recv_id: i64, name: impl Into<String>) -> MessageInfo {
        MessageInfo {
            thread_id: 0,
            sender_id,
            recv_id,
            name: name.into(),
            msg_type: 0,
            status: STATUS_UPLOADED,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    messages: Vec<(i64, MessageInfo)>,
}

pub(crate) struct MessageIndex {
    path: PathBuf,
    map: Mutex<HashMap<i64, MessageInfo>>,
    /// Held while a snapshot is taken and written, so writes land in order.
    writing: Mutex<()>,
}

impl MessageIndex {
    /// Loads `<dir>/.messages.json`; a missing file is an empty index, an
    /// unreadable or invalid one is logged and replaced on the next change.
    pub fn open(dir: &Path) -> MessageIndex {
        let path = dir.join(INDEX_FILE);
        let map = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<IndexFile>(&bytes) {
                Ok(f) if f.version == INDEX_VERSION => f.messages.into_iter().collect(),
                _ => {
                    tracing::warn!(path = %path.display(), "ignoring an invalid message index");
                    HashMap::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the message index");
                HashMap::new()
            }
        };
        MessageIndex {
            path,
            map: Mutex::new(map),
            writing: Mutex::new(()),
        }
    }

    pub fn get(&self, message_id: i64) -> Option<MessageInfo> {
        lock(&self.map).get(&message_id).cloned()
    }

    /// Records (or replaces) a message and writes the index (blocking IO).
    /// The entry is kept in memory even if the write fails.
    pub fn insert(&self, message_id: i64, info: MessageInfo) -> io::Result<()> {
        let _writing = lock(&self.writing);
        let snapshot = {
            let mut map = lock(&self.map);
            if map.get(&message_id) == Some(&info) {
                return Ok(());
            }
            map.insert(message_id, info);
            let mut v: Vec<(i64, MessageInfo)> = map.iter().map(|(k, v)| (*k, v.clone())).collect();
            v.sort_by_key(|(k, _)| *k);
            v
        };
        self.write(snapshot)
    }

    fn write(&self, messages: Vec<(i64, MessageInfo)>) -> io::Result<()> {
        let json = serde_json::to_vec(&IndexFile {
            version: INDEX_VERSION,
            messages,
        })
        .map_err(io::Error::other)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!("{INDEX_FILE}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &self.path)?;
        #[cfg(unix)]
        File::open(dir)?.sync_all()?;
        Ok(())
    }
}
