//! Upload storage: [`Storage::Positional`] (a preallocated hidden `.part`
//! file, positional writes, a resume state written only when exact, publish
//! after a verified md5) and [`Storage::AppendStrict`] (the deployed server's
//! truncate-then-append, with a count of the chunks that would corrupt it).
//!
//! Everything here is blocking file IO; the connections' lane workers call
//! it on tokio's blocking pool. One mutex per upload record makes its file
//! single-writer; the map lock is only held to find or drop a record.
//!
//! Every file is opened through [`super::fsdir`] (relative to the uid
//! directory's handle, never following a link). Resources an upload holds
//! are bounded: at most `max_open_parts` `.part` descriptors are open (an
//! LRU closes the others; [`Store::put`] reopens on demand), a uid holds at
//! most `max_unfinished_per_uid` unfinished uploads, and an unfinished
//! upload without a chunk for `upload_expiry` is forgotten and its files
//! removed ([`Store::expire`]). A finished upload's outcome outlives its
//! record for a while ([`Finished`]), so a late duplicate chunk is answered
//! as before the record left memory. Lock order: a record's slot, then the
//! descriptor LRU, the unfinished registry or the finished memory (all
//! leaves); a victim of the LRU is closed with no other lock held.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::fsdir::{is_link_refusal, Dir, Root};
use super::group::GroupCommit;
use super::hashing::{HashThreads, PrefixHash};
use super::index::{BindError, MessageIndex, MessageInfo};
use super::publish::{
    publish_batch, Disk, Publish, Published, RealDisk, SyncThreads, SYNC_THREADS,
};
use super::{
    lock, CompletedFile, Counters, Storage, LINK_REFUSED, MD5_MISMATCH, NO_SPACE, TOO_MANY_UPLOADS,
};
use chatxfer::protocol::{is_md5_hex, ErrorCode};
use chatxfer::runtime::files::{read_exact_at, write_all_at};

pub use chatxfer::protocol::name::{name_problem, MAX_NAME_LEN};

/// How many completed files [`super::ServerHandle::completed`] remembers.
const COMPLETED_KEPT: usize = 1024;

/// How many finished positional uploads [`Finished`] remembers after their
/// record left memory (a few hundred bytes each).
const FINISHED_KEPT: usize = 4096;

/// The reply when a verified upload could not be made durable under its
/// name (sync or rename failed): never a 100 %.
const PUBLISH_FAILED: ErrorCode = ErrorCode::FileWritePermissionFailed;

/// Hashing threads per server (see [`super::hashing`]): a few large uploads
/// at a time get one; on a machine of a few cores more would only compete.
const HASH_THREADS: usize = 4;

const STATE_VERSION: u32 = 1;

/// One upload chunk, validated for safety (name, uid, base64) by the caller.
#[derive(Debug)]
pub struct Chunk {
    pub uid: i64,
    pub name: String,
    pub md5: String,
    pub seq: u32,
    pub trans_size: u64,
    pub total_size: u64,
    pub last: i64,
    pub data: Vec<u8>,
}

/// What [`Store::put`] did with a chunk.
#[derive(Debug)]
pub struct Put {
    /// `Ok`: the bytes are in the file (or already were, for a published
    /// upload); `Err`: the code to reply.
    pub result: Result<(), ErrorCode>,
    /// The calling connection counts as a user of the record now (it calls
    /// [`Store::release`] for the key once, when it closes).
    pub user: bool,
    /// This chunk completed the file (Positional: published; AppendStrict:
    /// `last = 1` stored).
    pub completed: bool,
    /// The message id given to [`Store::put_with`], bound with the publish
    /// (positional storage with an index); `None`: not bound here, the
    /// caller binds it if the upload completed.
    pub bound: Option<Result<(), BindError>>,
}

/// A completed positional upload's bind result (see [`Put::bound`]).
type Bound = Option<Result<(), BindError>>;

/// What storing an accepted chunk did.
enum Stored {
    /// The bytes are in (or already were); the file is not complete now.
    Kept,
    /// This chunk completed the file, with the bind made as it was
    /// published, if any.
    Completed(Bound),
}

/// A record's key. Positional records are per `(uid, name)` because the
/// file lives under its uid; AppendStrict keys on the name alone, as the
/// deployed server's Redis key `file_upload_<name>` does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    uid: Option<i64>,
    name: String,
}

/// Sizes of an upload, fixed by its first chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    total: u64,
    /// Chunk 1's length; for a one-chunk file the whole size (0 for an empty file).
    chunk: u64,
    max_seq: u32,
}

impl Geometry {
    /// From the first chunk: its length is the chunk size unless it is the whole file.
    fn from_first(len: u64, total: u64) -> Option<Geometry> {
        if len > total {
            return None;
        }
        if len == total {
            return Some(Geometry {
                total,
                chunk: len,
                max_seq: 1,
            });
        }
        if len == 0 {
            return None;
        }
        let max_seq = u32::try_from(total.div_ceil(len)).ok()?;
        Some(Geometry {
            total,
            chunk: len,
            max_seq,
        })
    }

    /// True if the numbers are what `from_first` could have produced (for a loaded state).
    fn is_consistent(&self) -> bool {
        Geometry::from_first(self.chunk.min(self.total), self.total) == Some(*self)
    }

    fn offset(&self, seq: u32) -> u64 {
        u64::from(seq - 1) * self.chunk
    }

    fn len_of(&self, seq: u32) -> u64 {
        (self.total - self.offset(seq)).min(self.chunk)
    }

    /// Checks a chunk against the geometry: the same total, a seq in range,
    /// exactly the expected length, a `trans_size` that ends it, and `last`
    /// on the last seq only.
    fn check(&self, c: &Chunk) -> Result<(), ErrorCode> {
        if c.total_size != self.total {
            return Err(ErrorCode::FileOffsetInvalid);
        }
        if c.seq == 0 || c.seq > self.max_seq {
            return Err(ErrorCode::FileSeqInvalid);
        }
        let len = c.data.len() as u64;
        if len != self.len_of(c.seq) || c.trans_size != self.offset(c.seq) + len {
            return Err(ErrorCode::FileOffsetInvalid);
        }
        if c.last != i64::from(c.seq == self.max_seq) {
            return Err(ErrorCode::FileOffsetInvalid);
        }
        Ok(())
    }
}

/// Received seqs (shared with the client's acknowledged seqs).
type Ranges = chatxfer::protocol::SeqRanges;

/// The resume state on disk, `<dir>/<uid>/.<name>.state`. It exists only
/// while it is exact (see the module doc of `server`).
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    uid: i64,
    name: String,
    total_size: u64,
    chunk: u64,
    max_seq: u32,
    md5: String,
    received: Vec<(u32, u32)>,
}

/// A positional upload in progress.
struct Upload {
    uid: i64,
    name: String,
    geo: Geometry,
    md5: String,
    received: Ranges,
    /// The open `.part`, or `None` when the descriptor cap closed it (it is
    /// reopened on demand; see [`OpenParts`]).
    file: Option<File>,
    /// md5 of the file's in-order prefix, so an in-order upload is never
    /// read back.
    prefix: PrefixHash,
    /// A state file on disk describes this record exactly.
    persisted: bool,
    started: Instant,
    /// Bytes written since this process took the record (for the log line).
    written: u64,
}

/// Why [`Store::finalize`] did not publish, and what becomes of the record.
enum Failure {
    /// md5 mismatch: the record turns [`Rec::Failed`].
    Mismatch,
    /// The record goes (the client restarts from seq 1); the reply's code.
    Dropped(ErrorCode),
    /// The record stays, so a re-sent chunk retries; the reply's code.
    Kept(ErrorCode),
}

/// What remains of a finished positional upload, to answer late duplicates.
#[derive(Debug, Clone)]
struct Summary {
    geo: Geometry,
    md5: String,
}

/// An AppendStrict record: the deployed server's `file_upload_<name>`.
struct Appending {
    prev_seq: u32,
    hasher: Md5,
    bytes: u64,
    started: Instant,
}

#[derive(Default)]
enum Rec {
    #[default]
    None,
    Active(Box<Upload>),
    /// Published; chunks of the same upload are acknowledged without a write.
    Done(Summary),
    /// md5 mismatch; nothing published, later chunks of it get the same error.
    Failed(Summary),
    Append(Box<Appending>),
}

#[derive(Default)]
struct Slot {
    /// The disk was consulted for this key (positional records load lazily).
    loaded: bool,
    rec: Rec,
    /// Open connections that used this record (each counted once, until it
    /// closes and calls [`Store::release`]). A slot with users is never
    /// dropped from memory: a late close of an old connection must not take
    /// the record away from a new one (a dropped published record would
    /// answer 1012 to the new connection's next chunk).
    users: u32,
}

type SlotRef = Arc<Mutex<Slot>>;

/// Limits of the store (see [`super::Limits`]).
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    pub max_file_size: u64,
    pub max_open_parts: usize,
    pub max_unfinished_per_uid: usize,
    pub max_unfinished_total: usize,
    pub upload_expiry: Duration,
    pub min_free_space: u64,
}

/// Values by key in the order their keys were last put, the oldest going
/// first beyond a cap: the store's two bounded memories (open `.part`
/// descriptors, finished uploads) are this.
struct Recency<V> {
    tick: u64,
    by_key: HashMap<Key, (u64, V)>,
    order: BTreeMap<u64, Key>,
}

impl<V> Default for Recency<V> {
    fn default() -> Self {
        Recency {
            tick: 0,
            by_key: HashMap::new(),
            order: BTreeMap::new(),
        }
    }
}

impl<V> Recency<V> {
    /// Puts `value` under `key`, now the newest; returns the oldest entries
    /// dropped to get back under `cap` (at least 1).
    fn put(&mut self, key: &Key, value: V, cap: usize) -> Vec<(Key, V)> {
        self.tick += 1;
        if let Some((old, _)) = self.by_key.insert(key.clone(), (self.tick, value)) {
            self.order.remove(&old);
        }
        self.order.insert(self.tick, key.clone());
        let mut dropped = Vec::new();
        while self.by_key.len() > cap.max(1) {
            let Some((_, k)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, v)) = self.by_key.remove(&k) {
                dropped.push((k, v));
            }
        }
        dropped
    }

    fn remove(&mut self, key: &Key) -> Option<V> {
        let (tick, value) = self.by_key.remove(key)?;
        self.order.remove(&tick);
        Some(value)
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }
}

/// The open `.part` descriptors, least recently used first. It holds an
/// entry for every record whose file may be open (a superset: an entry is
/// added after a chunk used the file and dropped when the record ends), so
/// `len() <= cap` bounds the descriptors, give or take the records being
/// written at this instant. Victims are closed outside of any other lock.
#[derive(Default)]
struct OpenParts(Recency<Weak<Mutex<Slot>>>);

impl OpenParts {
    /// Marks `key` used now; returns the records to close to get back under `cap`.
    fn touch(&mut self, key: &Key, slot: &SlotRef, cap: usize) -> Vec<(Key, Weak<Mutex<Slot>>)> {
        self.0.put(key, Arc::downgrade(slot), cap)
    }

    fn forget(&mut self, key: &Key) {
        self.0.remove(key);
    }
}

/// Finished positional uploads (published or failed) whose record left
/// memory when their last connection closed, newest last. A connection cut
/// after the server stored a file's last chunk but before the client read
/// the replies leaves the client re-sending unacknowledged chunks on its
/// next connection: answered from here as the record would have answered
/// them (acknowledged, or 1023), not with 1012, which would make the client
/// send the whole file again (and, cut after cut, give up). Bounded by count
/// ([`FINISHED_KEPT`]) and by age ([`StoreLimits::upload_expiry`], the
/// deployed server's 3600 s Redis record).
struct Finished {
    cap: usize,
    kept: Recency<(Instant, Rec)>,
}

impl Finished {
    fn new(cap: usize) -> Finished {
        Finished {
            cap,
            kept: Recency::default(),
        }
    }

    /// Remembers `rec` (a [`Rec::Done`] or [`Rec::Failed`]) of `key`,
    /// forgetting the oldest beyond the cap.
    fn keep(&mut self, key: Key, rec: Rec, now: Instant) {
        debug_assert!(matches!(rec, Rec::Done(_) | Rec::Failed(_)));
        self.kept.put(&key, (now, rec), self.cap);
    }

    /// What is remembered of `key` and not older than `max_age`; it leaves
    /// this memory (the caller's record holds it from now on).
    fn take(&mut self, key: &Key, now: Instant, max_age: Duration) -> Rec {
        match self.kept.remove(key) {
            Some((at, rec)) if now.saturating_duration_since(at) <= max_age => rec,
            _ => Rec::None,
        }
    }
}

/// Unfinished positional uploads (in memory or only on disk), by uid, with
/// the instant each expires (no chunk for [`StoreLimits::upload_expiry`]).
/// Bounds how many one uid may hold ([`TOO_MANY_UPLOADS`]) and drives the
/// expiry of abandoned uploads.
#[derive(Default)]
struct Unfinished {
    by_uid: HashMap<i64, HashMap<String, Pending>>,
    /// Entries over all uids.
    total: usize,
    /// Sum of every entry's `outstanding`: disk space promised to uploads
    /// under way and not yet written.
    reserved: u64,
}

/// One unfinished upload.
#[derive(Clone, Copy)]
struct Pending {
    expires: Instant,
    /// Declared bytes not written yet (the `.part` is sparse until then).
    outstanding: u64,
}

impl Unfinished {
    fn contains(&self, uid: i64, name: &str) -> bool {
        self.by_uid.get(&uid).is_some_and(|m| m.contains_key(name))
    }

    fn count(&self, uid: i64) -> usize {
        self.by_uid.get(&uid).map_or(0, HashMap::len)
    }

    fn set(&mut self, uid: i64, name: &str, expires: Instant) {
        let m = self.by_uid.entry(uid).or_default();
        match m.get_mut(name) {
            Some(p) => p.expires = expires,
            None => {
                m.insert(
                    name.to_owned(),
                    Pending {
                        expires,
                        outstanding: 0,
                    },
                );
                self.total += 1;
            }
        }
    }

    fn pending_mut(&mut self, uid: i64, name: &str) -> Option<&mut Pending> {
        self.by_uid.get_mut(&uid)?.get_mut(name)
    }

    /// Promises `bytes` of disk to the entry (replacing its promise).
    fn reserve(&mut self, uid: i64, name: &str, bytes: u64) {
        if let Some(p) = self.pending_mut(uid, name) {
            let was = std::mem::replace(&mut p.outstanding, bytes);
            self.reserved = self.reserved - was + bytes;
        }
    }

    /// `len` bytes of the entry reached the disk: they leave its promise.
    fn wrote(&mut self, uid: i64, name: &str, len: u64) {
        if let Some(p) = self.pending_mut(uid, name) {
            let done = len.min(p.outstanding);
            p.outstanding -= done;
            self.reserved -= done;
        }
    }

    /// Disk promised to every upload but `uid`'s `name`.
    fn reserved_for_others(&self, uid: i64, name: &str) -> u64 {
        let own = self
            .by_uid
            .get(&uid)
            .and_then(|m| m.get(name))
            .map_or(0, |p| p.outstanding);
        self.reserved - own
    }

    fn remove(&mut self, uid: i64, name: &str) {
        if let Some(m) = self.by_uid.get_mut(&uid) {
            if let Some(p) = m.remove(name) {
                self.total -= 1;
                self.reserved -= p.outstanding;
            }
            if m.is_empty() {
                self.by_uid.remove(&uid);
            }
        }
    }

    fn expires(&self, uid: i64, name: &str) -> Option<Instant> {
        self.by_uid.get(&uid)?.get(name).map(|p| p.expires)
    }

    fn expired(&self, now: Instant) -> Vec<(i64, String)> {
        self.by_uid
            .iter()
            .flat_map(|(uid, m)| {
                m.iter()
                    .filter(|(_, p)| p.expires <= now)
                    .map(|(n, _)| (*uid, n.clone()))
            })
            .collect()
    }
}

pub struct Store {
    root_path: PathBuf,
    root: Arc<Root>,
    mode: Storage,
    limits: StoreLimits,
    counters: Arc<Counters>,
    slots: Mutex<HashMap<Key, SlotRef>>,
    completed: Mutex<VecDeque<CompletedFile>>,
    open_parts: Mutex<OpenParts>,
    unfinished: Mutex<Unfinished>,
    finished: Mutex<Finished>,
    /// Makes verified uploads durable under their names and binds their
    /// message ids, in batches.
    publisher: GroupCommit<Publish, Published>,
    hash_threads: HashThreads,
}

fn md5_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn part_name(name: &str) -> String {
    format!(".{name}.part")
}

fn state_name(name: &str) -> String {
    format!(".{name}.state")
}

fn state_tmp_name(name: &str) -> String {
    format!(".{name}.state.tmp")
}

/// The reply code for a failed open or create under the store.
fn open_error(e: &io::Error, otherwise: ErrorCode) -> ErrorCode {
    if is_link_refusal(e) {
        LINK_REFUSED
    } else {
        otherwise
    }
}

impl Store {
    pub fn new(
        root_path: PathBuf,
        root: Arc<Root>,
        mode: Storage,
        limits: StoreLimits,
        counters: Arc<Counters>,
        index: Option<Arc<MessageIndex>>,
    ) -> io::Result<Store> {
        Store::with_disk(root_path, root, mode, limits, counters, index, RealDisk)
    }

    /// [`Store::new`] publishing through `disk` (tests record its calls).
    fn with_disk(
        root_path: PathBuf,
        root: Arc<Root>,
        mode: Storage,
        limits: StoreLimits,
        counters: Arc<Counters>,
        index: Option<Arc<MessageIndex>>,
        disk: impl Disk + Send + Sync + 'static,
    ) -> io::Result<Store> {
        let disk = Arc::new(disk);
        let sync_threads = SyncThreads::start(SYNC_THREADS)?;
        let publisher = GroupCommit::start("chatxfer-publish", move |jobs| {
            publish_batch(&disk, &sync_threads, index.as_ref(), jobs)
        })?;
        let store = Store {
            root_path,
            root,
            mode,
            limits,
            counters,
            slots: Mutex::new(HashMap::new()),
            completed: Mutex::new(VecDeque::new()),
            open_parts: Mutex::new(OpenParts::default()),
            unfinished: Mutex::new(Unfinished::default()),
            finished: Mutex::new(Finished::new(FINISHED_KEPT)),
            publisher,
            hash_threads: HashThreads::new(HASH_THREADS),
        };
        if mode == Storage::Positional {
            store.scan_unfinished();
        }
        Ok(store)
    }

    pub fn key(&self, uid: i64, name: &str) -> Key {
        Key {
            uid: (self.mode == Storage::Positional).then_some(uid),
            name: name.to_owned(),
        }
    }

    pub fn completed(&self) -> Vec<CompletedFile> {
        lock(&self.completed).iter().cloned().collect()
    }

    /// Descriptors of `.part` files the store may hold open now (an upper bound).
    pub fn open_parts(&self) -> usize {
        lock(&self.open_parts).0.len()
    }

    /// Unfinished uploads the store knows (in memory or on disk).
    pub fn unfinished(&self) -> usize {
        lock(&self.unfinished)
            .by_uid
            .values()
            .map(HashMap::len)
            .sum()
    }

    /// `<dir>/<uid>` (`uid` is non-negative here: the caller answers 1011
    /// otherwise), opened without following a link.
    fn dir(&self, uid: i64, create: bool) -> io::Result<Dir> {
        self.root.uid_dir(uid, create)
    }

    fn slot(&self, key: &Key) -> SlotRef {
        lock(&self.slots).entry(key.clone()).or_default().clone()
    }

    /// Stores one chunk. `user`: the calling connection already counts as
    /// a user of the record (see [`Put::user`]).
    #[cfg(test)]
    pub fn put(&self, c: &Chunk, user: bool) -> Put {
        self.put_with(c, user, None)
    }

    /// [`Store::put`] for a chat upload: if this chunk completes the file,
    /// `bind` (its message id) is bound in the message index with the
    /// publish ([`Put::bound`]).
    pub fn put_with(&self, c: &Chunk, user: bool, bind: Option<&(i64, MessageInfo)>) -> Put {
        let key = self.key(c.uid, &c.name);
        let slot = self.slot(&key);
        let mut guard = lock(&slot);
        let result = match self.mode {
            Storage::Positional => self.put_positional(&mut guard, c, bind),
            Storage::AppendStrict => self.put_append(&mut guard, c).map(|done| {
                if done {
                    Stored::Completed(None)
                } else {
                    Stored::Kept
                }
            }),
        };
        let kept = !matches!(guard.rec, Rec::None);
        // A connection counts once per record, from its first kept chunk.
        let newly = kept && !user;
        if newly {
            guard.users += 1;
        }
        let user = user || newly;
        let file_open = matches!(&guard.rec, Rec::Active(u) if u.file.is_some());
        drop(guard);
        if self.mode == Storage::Positional {
            self.track_open(&key, &slot, file_open);
        }
        if !user {
            // No record and no user: forget the key at once, so requests for
            // ever new names cost no memory. Checked again under the map
            // lock: another connection may have created a record since.
            self.forget_if_unused(&key, &slot);
        }
        let (result, completed, bound) = match result {
            Ok(Stored::Completed(bound)) => (Ok(()), true, bound),
            Ok(Stored::Kept) => (Ok(()), false, None),
            Err(code) => (Err(code), false, None),
        };
        Put {
            result,
            user,
            completed,
            bound,
        }
    }

    /// Keeps [`OpenParts`] in step with `key`'s record after a chunk, and
    /// closes the least recently used `.part` files beyond the cap. Called
    /// with no lock held: a victim's slot lock is taken on its own.
    fn track_open(&self, key: &Key, slot: &SlotRef, file_open: bool) {
        let victims = {
            let mut open = lock(&self.open_parts);
            if !file_open {
                open.forget(key);
                return;
            }
            open.touch(key, slot, self.limits.max_open_parts)
        };
        for (_, weak) in victims {
            let Some(victim) = weak.upgrade() else {
                continue;
            };
            let mut g = lock(&victim);
            if let Rec::Active(u) = &mut g.rec {
                if u.file.take().is_some() {
                    tracing::debug!(uid = u.uid, name = %u.name, "closed an idle .part (descriptor cap)");
                }
            }
        }
    }

    /// Drops `slot` from the map if nobody but the map and the caller holds
    /// it, no connection uses it and it has no record.
    fn forget_if_unused(&self, key: &Key, slot: &SlotRef) {
        let mut slots = lock(&self.slots);
        if Arc::strong_count(slot) == 2 {
            let g = lock(slot);
            if g.users == 0 && matches!(g.rec, Rec::None) {
                drop(g);
                slots.remove(key);
            }
        }
    }

    // ------------------------------------------------------------ positional

    /// `Ok(Stored::Completed(_))`: this chunk completed (and published) the file.
    fn put_positional(
        &self,
        slot: &mut Slot,
        c: &Chunk,
        bind: Option<&(i64, MessageInfo)>,
    ) -> Result<Stored, ErrorCode> {
        if c.seq == 0 {
            return Err(ErrorCode::FileSeqInvalid);
        }
        // No state file on disk for this key (known from a load that found
        // none): a new seq 1 need not look for one to remove.
        let mut no_state = false;
        if !slot.loaded {
            slot.rec = self.load(c.uid, &c.name);
            slot.loaded = true;
            no_state = matches!(slot.rec, Rec::None);
            if no_state {
                let key = self.key(c.uid, &c.name);
                let expiry = self.limits.upload_expiry;
                slot.rec = lock(&self.finished).take(&key, Instant::now(), expiry);
            }
        }
        if c.seq == 1 {
            self.first_chunk(&mut slot.rec, c, no_state)?;
        } else {
            match &mut slot.rec {
                Rec::None | Rec::Append(_) => return Err(ErrorCode::FileNotExists),
                Rec::Failed(s) if md5_eq(&s.md5, &c.md5) => return Err(MD5_MISMATCH),
                Rec::Failed(_) => return Err(ErrorCode::FileNotExists),
                // A late duplicate of a published upload: its bytes are there.
                Rec::Done(s) if md5_eq(&s.md5, &c.md5) => {
                    return s.geo.check(c).map(|()| Stored::Kept)
                }
                Rec::Done(_) => return Err(ErrorCode::FileNotExists),
                // A different md5 is a different upload under the same name;
                // 1012 makes a resuming client start it again from seq 1.
                Rec::Active(u) if !md5_eq(&u.md5, &c.md5) => return Err(ErrorCode::FileNotExists),
                Rec::Active(u) => {
                    u.geo.check(c)?;
                    self.write_chunk(u, c)?;
                }
            }
        }
        let Rec::Active(u) = &mut slot.rec else {
            return Ok(Stored::Kept); // seq 1 of an already published identical file
        };
        if !u.received.covers(u.geo.max_seq) {
            return Ok(Stored::Kept);
        }
        let summary = Summary {
            geo: u.geo,
            md5: u.md5.clone(),
        };
        match self.finalize(u, bind.cloned()) {
            Ok(bound) => {
                lock(&self.unfinished).remove(c.uid, &c.name);
                slot.rec = Rec::Done(summary);
                Ok(Stored::Completed(bound))
            }
            Err(Failure::Mismatch) => {
                lock(&self.unfinished).remove(c.uid, &c.name);
                slot.rec = Rec::Failed(summary);
                Err(MD5_MISMATCH)
            }
            Err(Failure::Dropped(code)) => {
                lock(&self.unfinished).remove(c.uid, &c.name);
                slot.rec = Rec::None;
                Err(code)
            }
            // A re-sent chunk retries the publish.
            Err(Failure::Kept(code)) => Err(code),
        }
    }

    /// Seq 1 (as 1041, 1037 or 1043): fixes the geometry and starts the
    /// upload, unless the same upload (same sizes and md5) is already known.
    /// `no_state`: there is no state file to remove (checked just before).
    fn first_chunk(&self, rec: &mut Rec, c: &Chunk, no_state: bool) -> Result<(), ErrorCode> {
        if !is_md5_hex(&c.md5) {
            // It is checked at the end; refusing it now saves a useless upload.
            return Err(ErrorCode::ErrorJson);
        }
        let geo = Geometry::from_first(c.data.len() as u64, c.total_size)
            .filter(|g| g.total <= self.limits.max_file_size)
            .ok_or(ErrorCode::FileOffsetInvalid)?;
        geo.check(c)?;
        match rec {
            // A duplicate seq 1, or a client restarting the same file: keep
            // what was received, positional writes make it harmless.
            Rec::Active(u) if u.geo == geo && md5_eq(&u.md5, &c.md5) => {
                return self.write_chunk(u, c)
            }
            Rec::Done(s) if s.geo == geo && md5_eq(&s.md5, &c.md5) => return Ok(()),
            _ => {}
        }
        self.admit(c.uid, &c.name, geo.total)?;
        *rec = Rec::None; // closes an old upload's file before it is truncated
        let mut u = match self.fresh(c, geo, no_state) {
            Ok(u) => u,
            Err(code) => {
                // Nothing of this upload is left to expire (an older one
                // under the name, if any, was replaced).
                lock(&self.unfinished).remove(c.uid, &c.name);
                return Err(code);
            }
        };
        self.write_chunk(&mut u, c)?;
        *rec = Rec::Active(Box::new(u));
        Ok(())
    }

    /// A new upload of `(uid, name)`, `total` bytes: within the uid's cap
    /// of unfinished uploads (one that replaces an unfinished upload of the
    /// same name does not count twice) and within the free disk space.
    /// Registers it as unfinished.
    fn admit(&self, uid: i64, name: &str, total: u64) -> Result<(), ErrorCode> {
        {
            let mut unfinished = lock(&self.unfinished);
            if !unfinished.contains(uid, name) {
                if unfinished.count(uid) >= self.limits.max_unfinished_per_uid {
                    tracing::info!(
                        uid,
                        name,
                        cap = self.limits.max_unfinished_per_uid,
                        "refused upload: too many unfinished uploads for this uid"
                    );
                    return Err(TOO_MANY_UPLOADS);
                }
                // Without tokens uids cost nothing to invent: a bound on
                // all of them keeps memory and files finite.
                if unfinished.total >= self.limits.max_unfinished_total {
                    tracing::warn!(
                        uid,
                        name,
                        cap = self.limits.max_unfinished_total,
                        "refused upload: too many unfinished uploads on the server"
                    );
                    return Err(TOO_MANY_UPLOADS);
                }
            }
            unfinished.set(uid, name, Instant::now() + self.limits.upload_expiry);
        }
        if total > 0 {
            // The .part is sparse until written: what the other unfinished
            // uploads declared and have not written yet is promised too, so
            // many uploads that each fit cannot together fill the disk.
            let reserved = lock(&self.unfinished).reserved_for_others(uid, name);
            match self.root.available() {
                Ok(free)
                    if total
                        .saturating_add(reserved)
                        .saturating_add(self.limits.min_free_space)
                        > free =>
                {
                    lock(&self.unfinished).remove(uid, name);
                    tracing::warn!(
                        uid,
                        name,
                        total,
                        free,
                        reserved,
                        reserve = self.limits.min_free_space,
                        "refused upload: it does not fit the free disk space"
                    );
                    return Err(NO_SPACE);
                }
                Ok(_) => lock(&self.unfinished).reserve(uid, name, total),
                Err(e) => tracing::warn!(error = %e, "cannot read the free disk space"),
            }
        }
        Ok(())
    }

    fn fresh(&self, c: &Chunk, geo: Geometry, no_state: bool) -> Result<Upload, ErrorCode> {
        let dir = self.dir(c.uid, true).map_err(|e| {
            tracing::warn!(uid = c.uid, error = %e, "cannot open or create the upload directory");
            open_error(&e, ErrorCode::CreateDirFailed)
        })?;
        // An older upload's state must go before its .part is truncated, or
        // a crash in between would leave a state claiming zeroed chunks.
        if !no_state {
            dir.remove(&state_name(&c.name))
                .and_then(|()| dir.sync())
                .map_err(|e| {
                    tracing::warn!(uid = c.uid, name = %c.name, error = %e, "cannot remove old upload state");
                    ErrorCode::FileSaveError
                })?;
        }
        let file = dir
            .create_rw(&part_name(&c.name))
            .and_then(|f| f.set_len(geo.total).map(|()| f))
            .map_err(|e| {
                tracing::warn!(uid = c.uid, name = %c.name, error = %e, "cannot create upload file");
                open_error(&e, ErrorCode::FileWritePermissionFailed)
            })?;
        Ok(Upload {
            uid: c.uid,
            name: c.name.clone(),
            geo,
            md5: c.md5.to_ascii_lowercase(),
            received: Ranges::default(),
            file: Some(file),
            prefix: PrefixHash::for_file(geo.max_seq, &self.hash_threads),
            persisted: false,
            started: Instant::now(),
            written: 0,
        })
    }

    /// The upload's `.part`, reopened if the descriptor cap closed it.
    fn part<'a>(&self, u: &'a mut Upload) -> io::Result<&'a File> {
        if u.file.is_none() {
            let f = self.dir(u.uid, false)?.open_rw(&part_name(&u.name))?;
            u.file = Some(f);
        }
        u.file
            .as_ref()
            .ok_or_else(|| io::Error::other("part file vanished"))
    }

    fn write_chunk(&self, u: &mut Upload, c: &Chunk) -> Result<(), ErrorCode> {
        if u.persisted {
            // From now on the state would be stale: it goes first, so a
            // crash can never leave a state that misses an acknowledged chunk.
            self.dir(u.uid, false)
                .and_then(|dir| dir.remove(&state_name(&u.name)).and_then(|()| dir.sync()))
                .map_err(|e| {
                    tracing::warn!(name = %u.name, error = %e, "cannot remove upload state");
                    ErrorCode::FileSaveError
                })?;
            u.persisted = false;
        }
        let offset = u.geo.offset(c.seq);
        let uid = u.uid;
        let file = self.part(u).map_err(|e| {
            tracing::warn!(uid, name = %c.name, error = %e, "cannot reopen the upload file");
            open_error(&e, ErrorCode::FileWritePermissionFailed)
        })?;
        write_all_at(file, &c.data, offset).map_err(|e| {
            tracing::warn!(uid, name = %c.name, seq = c.seq, error = %e, "chunk write failed");
            ErrorCode::FileWritePermissionFailed
        })?;
        let len = c.data.len() as u64;
        if offset == u.prefix.hashed() {
            u.prefix.update(&c.data);
        } else if offset < u.prefix.hashed() {
            // Bytes already hashed were rewritten (and may differ): hash the
            // whole file again at the end.
            u.prefix = PrefixHash::inline();
        }
        u.received.insert(c.seq);
        u.written += len;
        {
            let mut unfinished = lock(&self.unfinished);
            unfinished.set(u.uid, &u.name, Instant::now() + self.limits.upload_expiry);
            unfinished.wrote(u.uid, &u.name, len);
        }
        self.counters
            .bytes_written
            .fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Every chunk is in: verify the md5, then make the file durable and
    /// visible under its name in one rename.
    fn finalize(&self, u: &mut Upload, bind: Option<(i64, MessageInfo)>) -> Result<Bound, Failure> {
        let secs = u.started.elapsed().as_secs_f64();
        let md5 = self.file_md5(u).map_err(|e| {
            tracing::warn!(name = %u.name, error = %e, "cannot read back the upload for its md5");
            Failure::Kept(ErrorCode::FileReadFailed)
        })?;
        let dir = self.dir(u.uid, false).map_err(|e| {
            tracing::warn!(uid = u.uid, error = %e, "cannot open the upload directory");
            Failure::Kept(open_error(&e, ErrorCode::CreateDirFailed))
        })?;
        let part = part_name(&u.name);
        if !md5_eq(&md5, &u.md5) {
            u.file = None;
            if let Err(e) = dir.remove(&part) {
                tracing::warn!(name = %u.name, error = %e, "cannot remove rejected upload");
            }
            self.counters.files_failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(uid = u.uid, name = %u.name, bytes = u.geo.total, secs, md5 = %md5,
                expected = %u.md5, "upload failed: md5 mismatch, not published");
            return Err(Failure::Mismatch);
        }
        let (uid, name) = (u.uid, u.name.clone());
        self.part(u).map_err(|e| {
            tracing::warn!(uid, name = %name, error = %e, "cannot reopen the upload file");
            Failure::Kept(open_error(&e, ErrorCode::FileWritePermissionFailed))
        })?;
        let file = u
            .file
            .take()
            .ok_or(Failure::Kept(ErrorCode::FileWritePermissionFailed))?;
        // Durable under its name (data, rename, directory) when this
        // returns Ok, together with the files that completed meanwhile.
        let published = self.publisher.submit(Publish {
            uid,
            dir,
            file: Arc::new(file),
            part,
            name,
            bind,
        });
        let bound = match published {
            Ok(Published {
                result: Ok(()),
                bind,
            }) => bind,
            failed => {
                let renamed =
                    matches!(&failed, Ok(Published { result: Err(e), .. }) if e.renamed());
                let error = match failed {
                    Ok(Published { result: Err(e), .. }) => e.to_string(),
                    _ => "the publishing thread failed".to_owned(),
                };
                tracing::warn!(uid, name = %u.name, error, "cannot publish upload");
                // A failed sync is not retried (after an fsync error the
                // kernel may report the next one clean without the data on
                // disk): the upload is dropped, and its client, answered
                // 1012 from now on, sends the file again from seq 1.
                if !renamed {
                    if let Err(e) = self
                        .dir(uid, false)
                        .and_then(|d| d.remove(&part_name(&u.name)))
                    {
                        tracing::warn!(uid, name = %u.name, error = %e, "cannot remove an unpublished upload");
                    }
                }
                return Err(Failure::Dropped(PUBLISH_FAILED));
            }
        };
        self.counters
            .files_completed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(uid = u.uid, name = %u.name, bytes = u.geo.total, written = u.written, secs,
            md5 = %md5, "upload complete");
        self.remember(CompletedFile {
            uid: u.uid,
            name: u.name.clone(),
            size: u.geo.total,
            md5: md5.clone(),
            announced_md5: u.md5.clone(),
            path: self.root_path.join(u.uid.to_string()).join(&u.name),
        });
        Ok(bound)
    }

    /// The md5 of the whole file: the in-order prefix from memory, the rest
    /// read back.
    fn file_md5(&self, u: &mut Upload) -> io::Result<String> {
        let prefix = std::mem::replace(&mut u.prefix, PrefixHash::inline());
        let mut hashed = prefix.hashed();
        let mut hasher = prefix.finish().unwrap_or_else(|| {
            tracing::warn!(name = %u.name, "md5 of the received prefix lost; hashing the file from disk");
            hashed = 0;
            Md5::new()
        });
        let total = u.geo.total;
        let file = self.part(u)?;
        let mut offset = hashed;
        let mut buf = vec![0u8; (256 * 1024).min((total - hashed) as usize)];
        while offset < total {
            let n = ((total - offset) as usize).min(buf.len());
            read_exact_at(file, &mut buf[..n], offset)?;
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(hex(&hasher.finalize()))
    }

    /// Writes the exact state of `u` (data synced first, then the state
    /// through a temporary file and a rename).
    fn persist(&self, u: &mut Upload) -> io::Result<()> {
        if u.persisted {
            return Ok(());
        }
        self.part(u)?.sync_data()?;
        let state = StateFile {
            version: STATE_VERSION,
            uid: u.uid,
            name: u.name.clone(),
            total_size: u.geo.total,
            chunk: u.geo.chunk,
            max_seq: u.geo.max_seq,
            md5: u.md5.clone(),
            received: u.received.to_vec(),
        };
        let json = serde_json::to_vec(&state).map_err(io::Error::other)?;
        let dir = self.dir(u.uid, false)?;
        let tmp = state_tmp_name(&u.name);
        let mut f = dir.create_rw(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        drop(f);
        dir.rename(&tmp, &state_name(&u.name))?;
        dir.sync()?;
        u.persisted = true;
        Ok(())
    }

    /// The record of `(uid, name)` from its state file, if there is a valid one.
    fn load(&self, uid: i64, name: &str) -> Rec {
        let bytes = match self.dir(uid, false).and_then(|d| d.read(&state_name(name))) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Rec::None,
            Err(e) => {
                tracing::warn!(uid, name, error = %e, "cannot read upload state");
                return Rec::None;
            }
        };
        match self.parse_state(uid, name, &bytes) {
            Some(u) => {
                tracing::debug!(uid, name, received = ?u.received.to_vec(), "resuming upload from its state");
                Rec::Active(Box::new(u))
            }
            None => {
                tracing::warn!(uid, name, "discarding an invalid upload state");
                if let Ok(d) = self.dir(uid, false) {
                    let _ = d.remove(&state_name(name));
                }
                Rec::None
            }
        }
    }

    fn parse_state(&self, uid: i64, name: &str, bytes: &[u8]) -> Option<Upload> {
        let s: StateFile = serde_json::from_slice(bytes).ok()?;
        let geo = Geometry {
            total: s.total_size,
            chunk: s.chunk,
            max_seq: s.max_seq,
        };
        if s.version != STATE_VERSION
            || s.uid != uid
            || s.name != name
            || !geo.is_consistent()
            || !is_md5_hex(&s.md5)
        {
            return None;
        }
        let received = Ranges::from_vec(&s.received, geo.max_seq)?;
        let file = self.dir(uid, false).ok()?.open_rw(&part_name(name)).ok()?;
        if file.metadata().ok()?.len() != geo.total {
            return None;
        }
        Some(Upload {
            uid,
            name: name.to_owned(),
            geo,
            md5: s.md5,
            received,
            file: Some(file),
            prefix: PrefixHash::inline(),
            persisted: true,
            started: Instant::now(),
            written: 0,
        })
    }

    /// A connection that used `key` (see [`Store::put`]) closed. If it was
    /// the last open connection using the record, the record is persisted
    /// (if in progress) and dropped from memory, closing its file.
    /// AppendStrict records stay: like the deployed Redis key, they outlive
    /// connections (and have no state to persist).
    pub fn release(&self, key: &Key) {
        let Some(slot) = lock(&self.slots).get(key).cloned() else {
            return;
        };
        {
            let mut g = lock(&slot);
            g.users = g.users.saturating_sub(1);
            if g.users > 0 {
                return; // another open connection still uses it
            }
            if let Rec::Active(u) = &mut g.rec {
                if let Err(e) = self.persist(u) {
                    tracing::warn!(name = %u.name, error = %e, "cannot save upload state");
                }
            }
        }
        let mut slots = lock(&self.slots);
        // Only the map and this function hold it: no request is using it,
        // and none can pick it up before it is gone. A connection that used
        // it since the persist above counts as a user (and releases it).
        if Arc::strong_count(&slot) == 2 {
            let mut g = lock(&slot);
            let removable = g.users == 0
                && match &g.rec {
                    Rec::Active(u) => u.persisted,
                    Rec::Append(_) => false,
                    _ => true,
                };
            if removable {
                // Kept before the map lock is given up: a chunk that comes
                // next finds the record in memory or here, never neither.
                if let Rec::Done(_) | Rec::Failed(_) = g.rec {
                    let rec = std::mem::take(&mut g.rec);
                    lock(&self.finished).keep(key.clone(), rec, Instant::now());
                }
                drop(g);
                slots.remove(key);
                drop(slots);
                lock(&self.open_parts).forget(key);
            }
        }
    }

    fn persist_slot(&self, slot: &SlotRef) {
        if let Rec::Active(u) = &mut lock(slot).rec {
            if let Err(e) = self.persist(u) {
                tracing::warn!(name = %u.name, error = %e, "cannot save upload state");
            }
        }
    }

    /// Shutdown: every upload in progress gets its exact state on disk.
    pub fn persist_all(&self) {
        let slots: Vec<SlotRef> = lock(&self.slots).drain().map(|(_, s)| s).collect();
        for slot in slots {
            self.persist_slot(&slot);
        }
        *lock(&self.open_parts) = OpenParts::default();
    }

    fn remember(&self, f: CompletedFile) {
        let mut done = lock(&self.completed);
        if done.len() == COMPLETED_KEPT {
            done.pop_front();
        }
        done.push_back(f);
    }

    // ---------------------------------------------------------------- expiry

    /// Start: every `.part`/`.state` left on disk is an unfinished upload
    /// whose clock started at the file's last change (a crash or a stop
    /// left it; the deployed server forgets a record an hour after its last
    /// chunk, and so does this one, files included).
    fn scan_unfinished(&self) {
        let Ok(top) = std::fs::read_dir(&self.root_path) else {
            return;
        };
        let now = Instant::now();
        let mut found = 0usize;
        let mut unfinished = lock(&self.unfinished);
        for entry in top.flatten() {
            let Some(uid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|u| *u >= 0)
            else {
                continue;
            };
            // DirEntry::file_type does not follow a link.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(entry.path()) else {
                continue;
            };
            for f in files.flatten() {
                let fname = f.file_name();
                let Some(fname) = fname.to_str() else {
                    continue;
                };
                let Some(name) = fname.strip_prefix('.').and_then(|n| {
                    n.strip_suffix(".part")
                        .or_else(|| n.strip_suffix(".state"))
                        .or_else(|| n.strip_suffix(".state.tmp"))
                }) else {
                    continue;
                };
                if name_problem(name).is_some() {
                    continue;
                }
                let age = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .unwrap_or_default();
                let expires = now + self.limits.upload_expiry.saturating_sub(age);
                let earlier = unfinished.expires(uid, name).unwrap_or(expires);
                // Several files of one upload: the newest one counts.
                unfinished.set(uid, name, earlier.max(expires));
                found += 1;
            }
        }
        if found > 0 {
            tracing::info!(
                files = found,
                "found unfinished uploads on disk; they expire unless continued"
            );
        }
    }

    /// Forgets every unfinished upload without a chunk for the expiry time
    /// and removes its `.part` and `.state`. Returns how many went.
    pub fn expire(&self, now: Instant) -> usize {
        let due = lock(&self.unfinished).expired(now);
        let mut gone = 0;
        for (uid, name) in due {
            let key = self.key(uid, &name);
            let slot = self.slot(&key);
            let mut g = lock(&slot);
            let still_due = {
                // A chunk may have arrived since the list was taken.
                let mut unfinished = lock(&self.unfinished);
                let due = unfinished.expires(uid, &name).is_some_and(|t| t <= now);
                if due {
                    unfinished.remove(uid, &name);
                }
                due
            };
            if !still_due {
                drop(g);
                self.forget_if_unused(&key, &slot);
                continue;
            }
            if matches!(g.rec, Rec::Active(_)) {
                g.rec = Rec::None; // closes the .part
            }
            // The disk now holds nothing of it: a later chunk gets 1012.
            g.loaded = true;
            drop(g);
            lock(&self.open_parts).forget(&key);
            match self.dir(uid, false) {
                Ok(dir) => {
                    for f in [part_name(&name), state_name(&name), state_tmp_name(&name)] {
                        if let Err(e) = dir.remove(&f) {
                            tracing::warn!(uid, file = %f, error = %e, "cannot remove an expired upload file");
                        }
                    }
                    let _ = dir.sync();
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(uid, error = %e, "cannot open an expired upload's directory")
                }
            }
            tracing::info!(uid, name, "abandoned upload expired; its files are removed");
            gone += 1;
            self.forget_if_unused(&key, &slot);
        }
        gone
    }

    // ----------------------------------------------------------- append-strict

    /// The deployed server's storage: seq 1 truncates, anything else is
    /// appended, unchecked. A seq other than the previous one plus one is
    /// counted: on the deployed server it corrupts the file.
    fn put_append(&self, slot: &mut Slot, c: &Chunk) -> Result<bool, ErrorCode> {
        let write_err = |e: io::Error| {
            tracing::warn!(uid = c.uid, name = %c.name, error = %e, "append-mode write failed");
            open_error(&e, ErrorCode::FileWritePermissionFailed)
        };
        if c.seq == 1 {
            let dir = self
                .dir(c.uid, true)
                .map_err(|e| open_error(&e, ErrorCode::CreateDirFailed))?;
            dir.create_rw(&c.name)
                .and_then(|mut f| f.write_all(&c.data))
                .map_err(write_err)?;
            let mut hasher = Md5::new();
            hasher.update(&c.data);
            slot.rec = Rec::Append(Box::new(Appending {
                prev_seq: 1,
                hasher,
                bytes: c.data.len() as u64,
                started: Instant::now(),
            }));
        } else {
            let Rec::Append(a) = &mut slot.rec else {
                return Err(ErrorCode::FileNotExists);
            };
            if Some(c.seq) != a.prev_seq.checked_add(1) {
                self.counters.violations.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(name = %c.name, seq = c.seq, prev = a.prev_seq, "append-mode order violation");
            }
            self.dir(c.uid, true)
                .and_then(|dir| dir.open_append(&c.name))
                .and_then(|mut f| f.write_all(&c.data))
                .map_err(write_err)?;
            a.prev_seq = c.seq;
            a.hasher.update(&c.data);
            a.bytes += c.data.len() as u64;
        }
        self.counters
            .bytes_written
            .fetch_add(c.data.len() as u64, Ordering::Relaxed);
        if c.last == 1 {
            if let Rec::Append(a) = &slot.rec {
                let md5 = hex(&a.hasher.clone().finalize());
                self.counters
                    .files_completed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(uid = c.uid, name = %c.name, bytes = a.bytes,
                    secs = a.started.elapsed().as_secs_f64(), md5 = %md5,
                    verified = md5_eq(&md5, &c.md5), "upload complete (append mode)");
                self.remember(CompletedFile {
                    uid: c.uid,
                    name: c.name.clone(),
                    size: a.bytes,
                    md5,
                    announced_md5: c.md5.clone(),
                    path: self.root_path.join(c.uid.to_string()).join(&c.name),
                });
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_from_first_chunk() {
        let g = Geometry::from_first(32_768, 32_769).unwrap();
        assert_eq!((g.chunk, g.max_seq, g.len_of(2)), (32_768, 2, 1));
        assert_eq!(Geometry::from_first(0, 0).unwrap().max_seq, 1);
        assert_eq!(Geometry::from_first(7, 7).unwrap().max_seq, 1);
        assert!(Geometry::from_first(0, 1).is_none());
        assert!(Geometry::from_first(8, 7).is_none());
        assert!(Geometry::from_first(1, u64::MAX).is_none());
        assert!(g.is_consistent());
    }

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in [
            "",
            "a/b",
            "a\\b",
            "..",
            "a..b",
            "x\0",
            ".hidden",
            &"n".repeat(201),
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
        for good in ["a.png", "3f2a-1.mp4", "名字.txt", &"n".repeat(200)] {
            assert!(name_problem(good).is_none(), "{good:?}");
        }
    }

    use super::super::publish::testing::Recorder;
    use std::path::Path;

    fn store_with(disk: Recorder, dir: &Path) -> Store {
        store_limited(disk, dir, 1 << 30)
    }

    fn store_limited(disk: Recorder, dir: &Path, max_file_size: u64) -> Store {
        let root = Arc::new(Root::open(dir).unwrap());
        let limits = StoreLimits {
            max_file_size,
            max_open_parts: 64,
            max_unfinished_per_uid: 64,
            max_unfinished_total: 1024,
            upload_expiry: Duration::from_secs(3600),
            min_free_space: 0,
        };
        let counters = Arc::new(Counters::default());
        Store::with_disk(
            dir.to_path_buf(),
            root,
            Storage::Positional,
            limits,
            counters,
            None,
            disk,
        )
        .unwrap()
    }

    /// The chunks of `data` uploaded as `name` by uid 7, declaring `md5`.
    fn chunks(name: &str, data: &[u8], chunk: usize, md5: &str) -> Vec<Chunk> {
        let n = data.len().div_ceil(chunk);
        data.chunks(chunk)
            .enumerate()
            .map(|(i, part)| Chunk {
                uid: 7,
                name: name.to_owned(),
                md5: md5.to_owned(),
                seq: i as u32 + 1,
                trans_size: (i * chunk + part.len()) as u64,
                total_size: data.len() as u64,
                last: i64::from(i + 1 == n),
                data: part.to_vec(),
            })
            .collect()
    }

    fn md5_hex(data: &[u8]) -> String {
        hex(&Md5::digest(data))
    }

    /// Uploads under way are promised the space they declared (their
    /// `.part` is sparse until written): two that each fit the free space
    /// but not together cannot both start, a small one still fits beside
    /// them, and once the first is given up the second fits.
    #[test]
    fn declared_sizes_of_concurrent_uploads_are_summed_against_free_space() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_limited(Recorder::default(), tmp.path(), u64::MAX);
        let free = store.root.available().unwrap();
        let first = |name: &str, total: u64| Chunk {
            uid: 7,
            name: name.to_owned(),
            md5: md5_hex(b"whatever"),
            seq: 1,
            trans_size: 4096,
            total_size: total,
            last: 0,
            data: vec![1; 4096],
        };
        let big = free / 10 * 6; // 60 %: fits alone, not twice
        assert_eq!(store.put(&first("a", big), false).result, Ok(()));
        assert_eq!(store.put(&first("b", big), false).result, Err(NO_SPACE));
        assert_eq!(store.put(&first("small", 8192), false).result, Ok(()));
        store.release(&store.key(7, "a"));
        assert_eq!(store.expire(Instant::now() + Duration::from_secs(7200)), 2);
        assert_eq!(store.put(&first("b", big), false).result, Ok(()));
    }

    /// The 100 % (the put that completes the file; the lane replies right
    /// after it) comes only after the data sync, the rename and the
    /// directory sync, in that order.
    #[test]
    fn completion_is_reported_only_after_sync_rename_and_directory_sync() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = Recorder::default();
        let store = store_with(rec.clone(), tmp.path());
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for c in chunks("f", &data, 4096, &md5_hex(&data)) {
            let put = store.put(&c, true);
            assert_eq!(put.result, Ok(()), "seq {}", c.seq);
            rec.push(format!("reply {} completed={}", c.seq, put.completed));
        }
        let log = rec.log();
        let at = |s: &str| {
            log.iter()
                .position(|l| l == s)
                .unwrap_or_else(|| panic!("{s} in {log:?}"))
        };
        assert!(
            at("reply 2 completed=false") < at("sync .f.part"),
            "{log:?}"
        );
        assert!(at("sync .f.part") < at("rename .f.part f"), "{log:?}");
        assert!(at("rename .f.part f") < at("sync dir"), "{log:?}");
        assert!(at("sync dir") < at("reply 3 completed=true"), "{log:?}");
        assert_eq!(std::fs::read(tmp.path().join("7").join("f")).unwrap(), data);
    }

    /// A sync that fails answers the completing chunk with an error, never
    /// 100 %, and drops the upload: a re-sent chunk gets 1012, so the
    /// client sends the file again from seq 1 (which then publishes it).
    #[test]
    fn a_failed_sync_answers_an_error_and_the_upload_starts_again() {
        for rec in [
            Recorder {
                fail_sync_of: Some(".f.part".into()),
                ..Recorder::default()
            },
            Recorder {
                fail_dir_sync: true,
                ..Recorder::default()
            },
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let store = store_with(rec.clone(), tmp.path());
            let data = vec![5u8; 9000];
            let cs = chunks("f", &data, 4096, &md5_hex(&data));
            assert_eq!(store.put(&cs[0], true).result, Ok(()));
            assert_eq!(store.put(&cs[1], true).result, Ok(()));
            let last = store.put(&cs[2], true);
            assert_eq!(last.result, Err(PUBLISH_FAILED), "{:?}", rec.log());
            assert!(!last.completed);
            assert_eq!(
                store.put(&cs[2], true).result,
                Err(ErrorCode::FileNotExists)
            );
            assert!(!tmp.path().join("7").join(".f.part").exists());
            assert_eq!(store.unfinished(), 0);
        }
    }

    /// md5 stays exact with the hashing thread, chunks out of order and
    /// rewritten included, and a wrong declared md5 is still caught.
    #[test]
    fn md5_is_exact_with_the_hashing_thread_and_out_of_order_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_with(Recorder::default(), tmp.path());
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 253) as u8).collect();
        assert!(data.len().div_ceil(4096) >= super::super::hashing::THREAD_MIN_CHUNKS as usize);
        let mut cs = chunks("g", &data, 4096, &md5_hex(&data));
        cs.swap(5, 6);
        let last = cs.len() - 1;
        for c in &cs[..last] {
            assert_eq!(store.put(c, true).result, Ok(()));
        }
        assert_eq!(store.put(&cs[3], true).result, Ok(()), "a rewrite");
        let put = store.put(&cs[last], true);
        assert_eq!(put.result, Ok(()));
        assert!(put.completed);
        assert_eq!(std::fs::read(tmp.path().join("7").join("g")).unwrap(), data);

        let wrong = chunks("h", &data, 4096, &md5_hex(b"something else"));
        for c in &wrong[..wrong.len() - 1] {
            assert_eq!(store.put(c, true).result, Ok(()));
        }
        assert_eq!(
            store.put(&wrong[wrong.len() - 1], true).result,
            Err(MD5_MISMATCH)
        );
    }

    /// A connection that delivered a whole file and closed before its
    /// replies were read: the client re-sends the unacknowledged chunks on
    /// its next connection. They are acknowledged (the file is published;
    /// a failed one keeps answering 1023), not answered 1012, which would
    /// make the client send the whole file again, cut after cut.
    #[test]
    fn late_duplicates_after_the_last_connection_closed_get_the_records_answer() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_with(Recorder::default(), tmp.path());
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 249) as u8).collect();
        let good = chunks("f", &data, 4096, &md5_hex(&data));
        let bad = chunks("g", &data, 4096, &md5_hex(b"not these bytes"));
        for cs in [&good, &bad] {
            let mut user = false;
            for c in cs.iter() {
                user = store.put(c, user).user;
            }
            store.release(&store.key(7, &cs[0].name));
        }
        assert_eq!(lock(&store.slots).len(), 0, "both records left memory");
        for seq in [2, 3, 1] {
            let put = store.put(&good[seq - 1], false);
            assert_eq!(put.result, Ok(()), "late seq {seq}");
            assert!(!put.completed, "published once, not again");
        }
        assert_eq!(store.put(&bad[1], false).result, Err(MD5_MISMATCH));
        assert_eq!(std::fs::read(tmp.path().join("7").join("f")).unwrap(), data);
        // Another upload under the name is not taken for the finished one.
        let other: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
        let next = chunks("f", &other, 4096, &md5_hex(&other));
        assert_eq!(
            store.put(&next[1], false).result,
            Err(ErrorCode::FileNotExists)
        );
    }

    /// The finished memory is bounded by count (oldest out first) and age.
    #[test]
    fn finished_memory_forgets_the_oldest_and_the_expired() {
        let summary = || {
            Rec::Done(Summary {
                geo: Geometry::from_first(4, 4).unwrap(),
                md5: md5_hex(b"abcd"),
            })
        };
        let key = |n: u32| Key {
            uid: Some(1),
            name: format!("n{n}"),
        };
        let hour = Duration::from_secs(3600);
        let t0 = Instant::now();
        let mut f = Finished::new(3);
        for n in 0..5 {
            f.keep(key(n), summary(), t0);
        }
        f.keep(key(3), summary(), t0); // kept again: newest now
        assert_eq!(f.kept.by_key.len(), 3);
        assert_eq!(f.kept.order.len(), 3);
        assert!(matches!(f.take(&key(0), t0, hour), Rec::None));
        assert!(matches!(f.take(&key(1), t0, hour), Rec::None));
        assert!(matches!(f.take(&key(2), t0, hour), Rec::Done(_)));
        assert!(matches!(f.take(&key(2), t0, hour), Rec::None), "taken once");
        assert!(matches!(f.take(&key(3), t0 + hour, hour), Rec::Done(_)));
        let late = t0 + hour + Duration::from_secs(1);
        assert!(matches!(f.take(&key(4), late, hour), Rec::None), "expired");
        assert!(f.kept.by_key.is_empty() && f.kept.order.is_empty());
    }
}
