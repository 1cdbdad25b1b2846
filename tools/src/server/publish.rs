//! Publishing verified uploads durably, a batch at a time (run by a
//! [`super::group::GroupCommit`] thread): every file's data is synced, then
//! each is renamed from its `.part` to its name, then each uid directory
//! that got a rename is synced once. Only then does a job succeed, and only
//! then does the lane reply 100 %.
//!
//! Why this order and this shape: a rename must not reach the disk before
//! the data it names (else a crash could leave a published name over
//! missing bytes), and the reply must not go before the rename is durable.
//! Writeback of every file in the batch is started before the first one is
//! waited for, so on a journalling file system the first file's sync
//! commits the others' metadata too and their syncs find little left to do;
//! the directory sync is paid once per uid and batch instead of per file.
//!
//! A chat upload's message id is bound in the message index in the same
//! batch, once its file is under its name: one commit for the batch, run
//! on a sync thread while the directories sync (both wait for the disk), so
//! a small file pays neither a commit of its own nor a second hand-off.
//!
//! Invariant: a job's result is `Ok` only if its file's data sync, its
//! rename and its directory's sync all succeeded, in that order. A failure
//! fails just the jobs it covers: a file's sync or rename error that file,
//! a directory's sync error every file renamed into it in the batch. A job
//! is bound only if its file was renamed; a bind can therefore outlive a
//! failed directory sync (the file is under its name, its durability
//! unknown, and the upload answered with an error: the client sends it
//! again and binds the same id to the same uid).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use super::fsdir::Dir;
use super::index::{BindError, MessageIndex, MessageInfo};
use super::lock;

/// Threads that sync one batch's files at once.
pub(crate) const SYNC_THREADS: usize = 16;

/// One verified upload to make durable under its name.
pub(crate) struct Publish {
    pub uid: i64,
    /// The uid directory holding both names.
    pub dir: Dir,
    /// The open `.part` (its writes are complete); shared with a sync thread.
    pub file: Arc<File>,
    pub part: String,
    pub name: String,
    /// The message id a chat upload binds once its file is under its name.
    pub bind: Option<(i64, MessageInfo)>,
}

/// What became of one [`Publish`].
#[derive(Debug)]
pub(crate) struct Published {
    pub result: Result<(), PublishError>,
    /// The bind's result, when the job had one, its file was renamed and
    /// the batch had an index; `None` otherwise.
    pub bind: Option<Result<(), BindError>>,
}

/// The step that failed, with its error.
#[derive(Debug)]
pub(crate) enum PublishError {
    SyncFile(io::Error),
    Rename(io::Error),
    SyncDir(io::Error),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::SyncFile(e) => write!(f, "cannot sync the file's data: {e}"),
            PublishError::Rename(e) => write!(f, "cannot rename the file into place: {e}"),
            PublishError::SyncDir(e) => write!(f, "cannot sync the directory: {e}"),
        }
    }
}

impl PublishError {
    /// True once the file is under its name (it may not be durable there).
    pub fn renamed(&self) -> bool {
        matches!(self, PublishError::SyncDir(_))
    }
}

/// The file system operations of a batch, apart so a test can record their
/// order and inject failures.
pub(crate) trait Disk {
    /// Starts writing `file`'s dirty data back without waiting (a hint).
    fn start_writeback(&self, file: &File);
    fn sync_file(&self, file: &File) -> io::Result<()>;
    fn rename(&self, dir: &Dir, from: &str, to: &str) -> io::Result<()>;
    fn sync_dir(&self, dir: &Dir) -> io::Result<()>;
}

/// The real file system.
pub(crate) struct RealDisk;

impl Disk for RealDisk {
    fn start_writeback(&self, file: &File) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open descriptor; SYNC_FILE_RANGE_WRITE only
            // queues writeback of the whole file (offset 0, length 0 = to
            // the end) and touches no memory of ours.
            let r = unsafe {
                libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
            };
            if r != 0 {
                // Only a hint: the sync that follows is what counts.
                tracing::debug!(error = %io::Error::last_os_error(), "sync_file_range failed");
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = file;
    }

    fn sync_file(&self, file: &File) -> io::Result<()> {
        // Data and the size (what reading the file back needs); the file's
        // name is made durable by the directory sync.
        file.sync_data()
    }

    fn rename(&self, dir: &Dir, from: &str, to: &str) -> io::Result<()> {
        dir.rename(from, to)
    }

    fn sync_dir(&self, dir: &Dir) -> io::Result<()> {
        dir.sync()
    }
}

type SyncTask = Box<dyn FnOnce() + Send>;

/// Threads kept for the store's life that sync files for
/// [`publish_batch`], and run its index commit beside the directory syncs.
/// The files of a batch are synced at once in the hope that the block
/// layer merges their device cache flushes; the evidence is weak: one
/// noisy set of bench rounds favoured it over syncing in turn (README),
/// and on this machine's disk a plain loop of parallel `fdatasync`s took
/// as long per file as the same syncs in turn (321 against 311 µs). Kept
/// rather than started per batch: with small files a batch is a few files,
/// and a thread started and ended per file cost more than its sync (about
/// 950 threads for 1,000 files of 50 KiB).
pub(crate) struct SyncThreads {
    tx: Option<mpsc::Sender<SyncTask>>,
    threads: Vec<JoinHandle<()>>,
}

impl SyncThreads {
    pub fn start(n: usize) -> io::Result<SyncThreads> {
        let (tx, rx) = mpsc::channel::<SyncTask>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for _ in 0..n.max(1) {
            let rx = rx.clone();
            let t = std::thread::Builder::new()
                .name("chatxfer-sync".into())
                .spawn(move || loop {
                    // The lock is held only to take a task, never while
                    // one runs; the senders' drop ends the thread.
                    let Ok(task) = lock(&rx).recv() else {
                        return;
                    };
                    // A panicking task drops its reply sender: its file
                    // counts as not synced (see `sync_files`).
                    let _ = catch_unwind(AssertUnwindSafe(task));
                })
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot start a sync thread: {e}"))
                })?;
            threads.push(t);
        }
        Ok(SyncThreads {
            tx: Some(tx),
            threads,
        })
    }

    /// Runs `task` on a sync thread, or here, in turn, if none is left.
    fn run(&self, task: SyncTask) {
        let unsent = match &self.tx {
            Some(tx) => tx.send(task).err().map(|e| e.0),
            None => Some(task),
        };
        if let Some(task) = unsent {
            task();
        }
    }
}

impl Drop for SyncThreads {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Syncs the jobs' files, each on a sync thread, all at once.
fn sync_files<D: Disk + Send + Sync + 'static>(
    disk: &Arc<D>,
    threads: &SyncThreads,
    jobs: &[Publish],
) -> Vec<Result<(), PublishError>> {
    let sync = |d: &D, f: &File| d.sync_file(f).map_err(PublishError::SyncFile);
    if jobs.len() < 2 {
        return jobs.iter().map(|j| sync(disk, &j.file)).collect();
    }
    let mut results: Vec<Option<Result<(), PublishError>>> = jobs.iter().map(|_| None).collect();
    let (tx, rx) = mpsc::channel();
    for (i, j) in jobs.iter().enumerate() {
        let (disk, file, tx) = (disk.clone(), j.file.clone(), tx.clone());
        let task: SyncTask = Box::new(move || {
            let _ = tx.send((i, sync(&disk, &file)));
        });
        threads.run(task);
    }
    drop(tx);
    for (i, r) in rx {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .map(|r| {
            // None: the sync panicked (a bug); the file is not durable.
            r.unwrap_or_else(|| Err(PublishError::SyncFile(io::Error::other("sync panicked"))))
        })
        .collect()
}

/// Publishes `jobs` and binds their message ids in `index` (see the module
/// doc); one result per job, in order.
pub(crate) fn publish_batch<D: Disk + Send + Sync + 'static>(
    disk: &Arc<D>,
    threads: &SyncThreads,
    index: Option<&Arc<MessageIndex>>,
    jobs: Vec<Publish>,
) -> Vec<Published> {
    for j in &jobs {
        disk.start_writeback(&j.file);
    }
    let mut results = sync_files(disk, threads, &jobs);
    for (j, r) in jobs.iter().zip(results.iter_mut()) {
        if r.is_ok() {
            *r = disk
                .rename(&j.dir, &j.part, &j.name)
                .map_err(PublishError::Rename);
        }
    }
    let binding = index.and_then(|index| start_binds(index, threads, &jobs, &results));
    // One sync per directory that got a rename, through the first of its
    // jobs' handles (all name the same directory).
    let mut dirs: HashMap<i64, usize> = HashMap::new();
    for (i, (j, r)) in jobs.iter().zip(&results).enumerate() {
        if r.is_ok() {
            dirs.entry(j.uid).or_insert(i);
        }
    }
    for (uid, first) in dirs {
        if let Err(e) = disk.sync_dir(&jobs[first].dir) {
            for (j, r) in jobs.iter().zip(results.iter_mut()) {
                if j.uid == uid && r.is_ok() {
                    *r = Err(PublishError::SyncDir(io::Error::new(
                        e.kind(),
                        format!("directory of uid {uid}: {e}"),
                    )));
                }
            }
        }
    }
    let mut bound: Vec<Option<Result<(), BindError>>> = jobs.iter().map(|_| None).collect();
    if let Some((which, rx)) = binding {
        // No answer: the commit panicked (a bug); those ids are not bound.
        let answers = rx.recv().unwrap_or_default();
        let mut answers = answers.into_iter();
        for i in which {
            bound[i] = Some(
                answers
                    .next()
                    .unwrap_or_else(|| Err(BindError::Db("the index commit failed".into()))),
            );
        }
    }
    results
        .into_iter()
        .zip(bound)
        .map(|(result, bind)| Published { result, bind })
        .collect()
}

type BindAnswers = mpsc::Receiver<Vec<Result<(), BindError>>>;

/// Starts one index commit for the binds of the renamed jobs, on a sync
/// thread (here, if none is left); returns which jobs it covers and where
/// its results come.
fn start_binds(
    index: &Arc<MessageIndex>,
    threads: &SyncThreads,
    jobs: &[Publish],
    results: &[Result<(), PublishError>],
) -> Option<(Vec<usize>, BindAnswers)> {
    let (which, binds): (Vec<usize>, Vec<(i64, MessageInfo)>) = jobs
        .iter()
        .zip(results)
        .enumerate()
        .filter_map(|(i, (j, r))| Some((i, j.bind.clone().filter(|_| r.is_ok())?)))
        .unzip();
    if binds.is_empty() {
        return None;
    }
    let (tx, rx) = mpsc::channel();
    let index = index.clone();
    let task: SyncTask = Box::new(move || {
        let _ = tx.send(index.bind_now(&binds));
    });
    threads.run(task);
    Some((which, rx))
}

/// A [`Disk`] that records each operation (files by name) into a shared
/// log and fails the ones it is told to, for the tests here and the
/// store's.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    pub(crate) struct Recorder {
        pub log: Arc<Mutex<Vec<String>>>,
        pub fail_sync_of: Option<String>,
        pub fail_dir_sync: bool,
    }

    impl Recorder {
        pub fn push(&self, s: impl Into<String>) {
            self.log.lock().unwrap().push(s.into());
        }

        pub fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    /// The file name an open descriptor refers to (Linux: /proc/self/fd).
    pub(crate) fn name_of(file: &File) -> String {
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        link.file_name().unwrap().to_string_lossy().into_owned()
    }

    impl Disk for Recorder {
        fn start_writeback(&self, file: &File) {
            self.push(format!("writeback {}", name_of(file)));
        }
        fn sync_file(&self, file: &File) -> io::Result<()> {
            let name = name_of(file);
            self.push(format!("sync {name}"));
            if self.fail_sync_of.as_deref() == Some(name.as_str()) {
                return Err(io::Error::other("injected EIO"));
            }
            RealDisk.sync_file(file)
        }
        fn rename(&self, dir: &Dir, from: &str, to: &str) -> io::Result<()> {
            self.push(format!("rename {from} {to}"));
            RealDisk.rename(dir, from, to)
        }
        fn sync_dir(&self, dir: &Dir) -> io::Result<()> {
            self.push("sync dir");
            if self.fail_dir_sync {
                return Err(io::Error::other("injected EIO"));
            }
            RealDisk.sync_dir(dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fsdir::Root;
    use super::testing::Recorder;
    use super::*;
    use std::io::Write;

    fn outcomes(published: Vec<Published>) -> Vec<Result<(), PublishError>> {
        published.into_iter().map(|p| p.result).collect()
    }

    fn jobs(root: &Root, names: &[&str]) -> Vec<Publish> {
        names
            .iter()
            .map(|n| {
                let dir = root.uid_dir(7, true).unwrap();
                let part = format!(".{n}.part");
                let mut file = dir.create_rw(&part).unwrap();
                file.write_all(n.as_bytes()).unwrap();
                Publish {
                    uid: 7,
                    dir,
                    file: Arc::new(file),
                    part,
                    name: (*n).to_owned(),
                    bind: None,
                }
            })
            .collect()
    }

    #[test]
    fn data_is_synced_before_any_rename_and_the_directory_once_after() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let rec = Arc::new(Recorder::default());
        let results = outcomes(publish_batch(
            &rec,
            &SyncThreads::start(2).unwrap(),
            None,
            jobs(&root, &["a", "b", "c"]),
        ));
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let mut log = rec.log();
        // The files are synced in parallel: in any order, but all before
        // the first rename.
        log[3..6].sort();
        assert_eq!(
            log,
            [
                "writeback .a.part",
                "writeback .b.part",
                "writeback .c.part",
                "sync .a.part",
                "sync .b.part",
                "sync .c.part",
                "rename .a.part a",
                "rename .b.part b",
                "rename .c.part c",
                "sync dir",
            ]
        );
        for n in ["a", "b", "c"] {
            assert_eq!(
                std::fs::read(tmp.path().join("7").join(n)).unwrap(),
                n.as_bytes()
            );
        }
    }

    #[test]
    fn a_failed_file_sync_fails_that_file_and_it_is_not_renamed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let rec = Arc::new(Recorder {
            fail_sync_of: Some(".b.part".into()),
            ..Recorder::default()
        });
        let results = outcomes(publish_batch(
            &rec,
            &SyncThreads::start(2).unwrap(),
            None,
            jobs(&root, &["a", "b", "c"]),
        ));
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(matches!(results[1], Err(PublishError::SyncFile(_))));
        let log = rec.log();
        assert!(
            !log.iter().any(|l| l.starts_with("rename .b.part")),
            "{log:?}"
        );
        assert!(!tmp.path().join("7").join("b").exists());
        assert_eq!(log.last().map(String::as_str), Some("sync dir"));
    }

    /// A [`Disk`] whose syncs note their thread and panic on one file.
    #[derive(Default)]
    struct Threads {
        seen: Mutex<std::collections::HashSet<std::thread::ThreadId>>,
        panic_on: Option<String>,
    }

    impl Disk for Threads {
        fn start_writeback(&self, _: &File) {}
        fn sync_file(&self, file: &File) -> io::Result<()> {
            lock(&self.seen).insert(std::thread::current().id());
            if self.panic_on.as_deref() == Some(testing::name_of(file).as_str()) {
                panic!("a bug in a sync");
            }
            Ok(())
        }
        fn rename(&self, dir: &Dir, from: &str, to: &str) -> io::Result<()> {
            dir.rename(from, to)
        }
        fn sync_dir(&self, _: &Dir) -> io::Result<()> {
            Ok(())
        }
    }

    /// Batch after batch runs on the same few sync threads (none started per
    /// batch), and a sync that panics fails only its own file, not the
    /// thread: the next batches are still synced in parallel.
    #[test]
    fn sync_threads_are_kept_and_survive_a_panicking_sync() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let disk = Arc::new(Threads {
            panic_on: Some(".p0.part".into()),
            ..Threads::default()
        });
        let threads = SyncThreads::start(2).unwrap();
        for b in 0..20 {
            let names = [format!("p{b}"), format!("q{b}")];
            let results = outcomes(publish_batch(
                &disk,
                &threads,
                None,
                jobs(&root, &[&names[0], &names[1]]),
            ));
            if b == 0 {
                assert!(matches!(results[0], Err(PublishError::SyncFile(_))));
                assert!(results[1].is_ok(), "{results:?}");
                assert!(!tmp.path().join("7").join("p0").exists());
            } else {
                assert!(results.iter().all(Result::is_ok), "batch {b}: {results:?}");
            }
        }
        let seen = lock(&disk.seen).len();
        assert!(seen <= 2, "{seen} threads synced");
        assert_eq!(threads.threads.len(), 2);
        assert!(threads.threads.iter().all(|t| !t.is_finished()));
    }

    /// Message ids are bound in the same batch, after the renames: a file
    /// whose sync failed binds nothing, and a second uid's bind of an id
    /// bound earlier in the batch is refused.
    #[test]
    fn a_batch_binds_the_message_ids_of_the_files_it_renamed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let index = Arc::new(MessageIndex::open(tmp.path()).unwrap());
        let rec = Arc::new(Recorder {
            fail_sync_of: Some(".b.part".into()),
            ..Recorder::default()
        });
        let mut batch = jobs(&root, &["a", "b", "c"]);
        batch[0].bind = Some((1, MessageInfo::new(7, 2, "a")));
        batch[1].bind = Some((2, MessageInfo::new(7, 2, "b")));
        batch[2].bind = Some((1, MessageInfo::new(8, 2, "c")));
        let done = publish_batch(&rec, &SyncThreads::start(2).unwrap(), Some(&index), batch);
        assert!(done[0].result.is_ok() && done[2].result.is_ok(), "{done:?}");
        assert!(matches!(done[0].bind, Some(Ok(()))), "{done:?}");
        assert!(
            done[1].result.is_err() && done[1].bind.is_none(),
            "{done:?}"
        );
        assert!(
            matches!(done[2].bind, Some(Err(BindError::Taken { owner: 7 }))),
            "{done:?}"
        );
        assert_eq!(index.get(1).map(|m| m.name), Some("a".to_owned()));
        assert_eq!(index.get(2), None);
    }

    #[test]
    fn a_failed_directory_sync_fails_every_file_of_the_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let rec = Arc::new(Recorder {
            fail_dir_sync: true,
            ..Recorder::default()
        });
        let results = outcomes(publish_batch(
            &rec,
            &SyncThreads::start(2).unwrap(),
            None,
            jobs(&root, &["a", "b"]),
        ));
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(e @ PublishError::SyncDir(_)) if e.renamed())),
            "{results:?}"
        );
    }
}
