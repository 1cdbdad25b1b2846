//! The message index: what the deployed server looks up in MySQL for a 1045
//! (`chat_message` by id), kept here as `message_id -> MessageInfo` in an
//! SQLite database, `<dir>/.messages.sqlite`.
//!
//! Why SQLite (through `rusqlite`, feature `bundled`): one indexed table is
//! all this needs, and SQLite's B-tree makes an insert cost O(log n) where
//! the JSON file it replaces was rewritten whole (O(n)) on every upload.
//! Its atomic commit (write-ahead log, `synchronous = FULL`: a commit is on
//! disk before the upload's last reply goes out; binds of uploads that
//! complete close together share one commit, made by the publish batch
//! that renamed their files, or by this module's own batching thread for
//! appending storage) is the most tested
//! crash-safety of any embedded store, the file can be inspected with the
//! `sqlite3` shell, and `bundled` compiles SQLite from source with the C
//! compiler the build already needs (no system library). `redb` (pure
//! Rust) was the alternative: younger, with a file format that changed
//! between major versions, for no gain here.
//!
//! Invariants: a message id, once bound to an uploader (`sender_id`) by a
//! completed upload, is never rebound to another uid by an upload
//! ([`MessageIndex::bind`] refuses it; the connection replies
//! [`super::MESSAGE_ID_TAKEN`]); the same uid may rebind it (a re-upload of
//! its own message). [`MessageIndex::replace`] (the handle's
//! `register_message`, an operator's act) replaces unconditionally. A
//! legacy `<dir>/.messages.json` is imported on first start and renamed to
//! `.messages.json.migrated`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::group::GroupCommit;
use super::lock;

/// File name of the index inside the storage directory (a leading `.`, so
/// it can never collide with a uid directory nor with an uploaded name).
/// SQLite keeps `-wal` and `-shm` files beside it.
pub const INDEX_FILE: &str = ".messages.sqlite";

/// The JSON index of earlier versions, imported on first start.
pub const LEGACY_INDEX_FILE: &str = ".messages.json";

const LEGACY_INDEX_VERSION: u32 = 1;

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

#[derive(Deserialize)]
struct LegacyIndexFile {
    version: u32,
    messages: Vec<(i64, MessageInfo)>,
}

/// Why [`MessageIndex::bind`] did not record a message.
#[derive(Debug)]
pub(crate) enum BindError {
    /// Bound to this other uploader already.
    Taken { owner: i64 },
    /// The database failed (the statement's or the commit's error).
    Db(String),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::Taken { owner } => write!(f, "message id bound to uid {owner}"),
            BindError::Db(e) => write!(f, "message index: {e}"),
        }
    }
}

pub(crate) struct MessageIndex {
    path: PathBuf,
    /// The writer: binds (a publish batch's, or this index's own batching
    /// thread's) and replaces.
    db: Arc<Mutex<Connection>>,
    /// Lookups (the seq-1 owner check, 1045) on a connection of their own:
    /// in WAL mode a reader does not wait for the writer, so a lookup is
    /// not held up by a commit's sync.
    reader: Mutex<Connection>,
    /// Binds of uploads that complete close together share one commit.
    binds: GroupCommit<(i64, MessageInfo), Result<(), BindError>>,
}

fn io_err(path: &Path, what: &str, e: rusqlite::Error) -> std::io::Error {
    std::io::Error::other(format!("{what} {}: {e}", path.display()))
}

impl MessageIndex {
    /// Opens (or creates) `<dir>/.messages.sqlite` and imports a legacy
    /// `.messages.json` if one is there. Blocking IO.
    pub fn open(dir: &Path) -> std::io::Result<MessageIndex> {
        let path = dir.join(INDEX_FILE);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let db = Connection::open_with_flags(&path, flags)
            .map_err(|e| io_err(&path, "cannot open the message index", e))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS messages (
                 message_id INTEGER PRIMARY KEY,
                 thread_id  INTEGER NOT NULL,
                 sender_id  INTEGER NOT NULL,
                 recv_id    INTEGER NOT NULL,
                 name       TEXT    NOT NULL,
                 msg_type   INTEGER NOT NULL,
                 status     INTEGER NOT NULL
             );",
        )
        .map_err(|e| io_err(&path, "cannot set up the message index", e))?;
        let reader = Connection::open_with_flags(&path, flags)
            .and_then(|r| r.execute_batch("PRAGMA query_only = ON;").map(|()| r))
            .map_err(|e| io_err(&path, "cannot open the message index for reading", e))?;
        let db = Arc::new(Mutex::new(db));
        let batch_db = db.clone();
        let binds = GroupCommit::start("chatxfer-index", move |jobs| {
            bind_batch(&mut lock(&batch_db), &jobs)
        })?;
        let index = MessageIndex {
            path,
            db,
            reader: Mutex::new(reader),
            binds,
        };
        index.import_legacy(dir);
        Ok(index)
    }

    /// Imports `<dir>/.messages.json` (entries already in the database
    /// win), then renames it so it is imported once.
    fn import_legacy(&self, dir: &Path) {
        let legacy = dir.join(LEGACY_INDEX_FILE);
        let bytes = match std::fs::read(&legacy) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %legacy.display(), error = %e, "cannot read the legacy message index");
                return;
            }
        };
        let file = match serde_json::from_slice::<LegacyIndexFile>(&bytes) {
            Ok(f) if f.version == LEGACY_INDEX_VERSION => f,
            _ => {
                tracing::warn!(path = %legacy.display(), "ignoring an invalid legacy message index");
                return;
            }
        };
        let n = file.messages.len();
        let mut db = lock(&self.db);
        let imported = (|| {
            let tx = db.transaction()?;
            {
                let mut ins = tx.prepare(
                    "INSERT OR IGNORE INTO messages VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for (id, m) in &file.messages {
                    ins.execute(params![
                        id,
                        m.thread_id,
                        m.sender_id,
                        m.recv_id,
                        m.name,
                        m.msg_type,
                        m.status
                    ])?;
                }
            }
            tx.commit()
        })();
        match imported {
            Ok(()) => {
                let done = dir.join(format!("{LEGACY_INDEX_FILE}.migrated"));
                if let Err(e) = std::fs::rename(&legacy, &done) {
                    tracing::warn!(path = %legacy.display(), error = %e, "cannot rename the imported legacy index");
                }
                tracing::info!(messages = n, path = %self.path.display(), "imported the legacy message index");
            }
            Err(e) => {
                tracing::warn!(path = %legacy.display(), error = %e, "cannot import the legacy message index")
            }
        }
    }

    pub fn get(&self, message_id: i64) -> Option<MessageInfo> {
        let db = lock(&self.reader);
        let found = db
            .prepare_cached(
                "SELECT thread_id, sender_id, recv_id, name, msg_type, status
                 FROM messages WHERE message_id = ?1",
            )
            .and_then(|mut q| {
                q.query_row([message_id], |r| {
                    Ok(MessageInfo {
                        thread_id: r.get(0)?,
                        sender_id: r.get(1)?,
                        recv_id: r.get(2)?,
                        name: r.get(3)?,
                        msg_type: r.get(4)?,
                        status: r.get(5)?,
                    })
                })
                .optional()
            });
        match found {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(message_id, error = %e, "message index lookup failed");
                None
            }
        }
    }

    /// The uploader a message id is bound to, if any.
    pub fn owner(&self, message_id: i64) -> Option<i64> {
        self.get(message_id).map(|m| m.sender_id)
    }

    /// A completed upload binds `message_id` to `info` (blocking IO),
    /// unless another uploader holds it. Returns once the bind is
    /// committed (with the binds of uploads that completed meanwhile).
    pub fn bind(&self, message_id: i64, info: &MessageInfo) -> Result<(), BindError> {
        self.binds
            .submit((message_id, info.clone()))
            .unwrap_or_else(|_| Err(BindError::Db("the index thread failed".into())))
    }

    /// Binds `jobs` in one transaction on the caller's thread (a publish
    /// batch's; see [`bind_batch`]), one result per job, in order.
    pub(crate) fn bind_now(&self, jobs: &[(i64, MessageInfo)]) -> Vec<Result<(), BindError>> {
        bind_batch(&mut lock(&self.db), jobs)
    }

    /// Records `message_id -> info`, replacing any earlier entry.
    pub fn replace(&self, message_id: i64, info: &MessageInfo) -> std::io::Result<()> {
        let db = lock(&self.db);
        Self::upsert(&db, message_id, info).map_err(|e| io_err(&self.path, "cannot write", e))
    }

    pub(crate) fn upsert(
        db: &Connection,
        message_id: i64,
        m: &MessageInfo,
    ) -> rusqlite::Result<()> {
        db.prepare_cached(
            "INSERT INTO messages VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(message_id) DO UPDATE SET thread_id = excluded.thread_id,
                 sender_id = excluded.sender_id, recv_id = excluded.recv_id,
                 name = excluded.name, msg_type = excluded.msg_type,
                 status = excluded.status",
        )?
        .execute(params![
            message_id,
            m.thread_id,
            m.sender_id,
            m.recv_id,
            m.name,
            m.msg_type,
            m.status
        ])?;
        Ok(())
    }
}

/// Binds a batch in one transaction (one commit, so one sync of the log),
/// in order, so a later job sees an earlier one's bind. A job refused
/// ([`BindError::Taken`]) or whose statement failed leaves the others be;
/// a failed commit fails every job that would have been bound.
fn bind_batch(db: &mut Connection, jobs: &[(i64, MessageInfo)]) -> Vec<Result<(), BindError>> {
    let db_err = |e: rusqlite::Error| BindError::Db(e.to_string());
    let tx = match db.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = format!("begin: {e}");
            return jobs.iter().map(|_| Err(BindError::Db(e.clone()))).collect();
        }
    };
    let mut results: Vec<Result<(), BindError>> = jobs
        .iter()
        .map(|(id, info)| {
            let owner: Option<i64> = tx
                .query_row(
                    "SELECT sender_id FROM messages WHERE message_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            if let Some(owner) = owner.filter(|o| *o != info.sender_id) {
                return Err(BindError::Taken { owner });
            }
            MessageIndex::upsert(&tx, *id, info).map_err(db_err)
        })
        .collect();
    if let Err(e) = tx.commit() {
        let e = e.to_string();
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = Err(BindError::Db(format!("commit: {e}")));
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One batch, one commit: a later job sees an earlier one's bind, so a
    /// second uid's upload of the same message id in the batch is refused.
    #[test]
    fn a_batch_binds_in_order_in_one_transaction() {
        let tmp = tempfile::tempdir().unwrap();
        let index = MessageIndex::open(tmp.path()).unwrap();
        let jobs = [
            (1, MessageInfo::new(10, 2, "a")),
            (1, MessageInfo::new(11, 2, "b")),
            (2, MessageInfo::new(11, 2, "c")),
            (1, MessageInfo::new(10, 2, "a2")),
        ];
        let results = bind_batch(&mut lock(&index.db), &jobs);
        assert!(results[0].is_ok(), "{results:?}");
        assert!(matches!(results[1], Err(BindError::Taken { owner: 10 })));
        assert!(results[2].is_ok() && results[3].is_ok(), "{results:?}");
        assert_eq!(index.get(1).unwrap().name, "a2");
        assert_eq!(index.owner(2), Some(11));
        assert!(index.bind(2, &MessageInfo::new(10, 2, "d")).is_err());
    }

    /// A lookup (the seq-1 owner check, a 1045) is answered while the
    /// writer is busy, as during a commit's sync: it used to wait for it.
    #[test]
    fn a_lookup_does_not_wait_for_the_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let index = Arc::new(MessageIndex::open(tmp.path()).unwrap());
        index.replace(5, &MessageInfo::new(10, 2, "a")).unwrap();
        let writer = lock(&index.db);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = index.clone();
        std::thread::spawn(move || {
            let _ = tx.send(reader.owner(5));
        });
        // A bound on a hang, not a wait for something: the answer needs no
        // other event than the lookup itself.
        let answer = rx.recv_timeout(std::time::Duration::from_secs(20));
        drop(writer);
        assert_eq!(answer, Ok(Some(10)));
    }
}
