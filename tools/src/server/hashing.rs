//! The md5 of an upload's in-order prefix, computed while chunks arrive.
//! For a file of [`THREAD_MIN_CHUNKS`] chunks or more it runs on the file's
//! own hashing thread: the lane worker hands each in-order chunk over and
//! goes on writing the next one, so decoding (the connection's reader),
//! writing (the lane) and hashing (this thread) overlap instead of md5
//! sitting on the lane's path (it was 47 % of the server's CPU there).
//! Smaller files, and any file when [`HashThreads`] has no thread to spare,
//! are hashed inline: a thread start costs more than two chunks' md5.
//!
//! Invariants: the bytes hashed are exactly the chunks given to
//! [`PrefixHash::update`], in that order (one channel, one consumer);
//! [`PrefixHash::finish`] returns the state after all of them, or `None` if
//! the thread is lost (the caller then hashes the whole file from disk, so
//! the md5 check stays exact). At most [`HashThreads`]'s cap of threads
//! exist per server; a thread ends when its upload's record drops it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use md5::{Digest, Md5};

/// Files with at least this many chunks get a hashing thread.
pub(crate) const THREAD_MIN_CHUNKS: u32 = 8;
/// Chunks handed over but not yet hashed, per file: beyond, the lane waits
/// (a bound on the memory a slow hasher holds).
const QUEUED_CHUNKS: usize = 16;

/// The server's budget of hashing threads.
#[derive(Clone)]
pub(crate) struct HashThreads {
    running: Arc<AtomicUsize>,
    cap: usize,
}

impl HashThreads {
    pub fn new(cap: usize) -> HashThreads {
        HashThreads {
            running: Arc::new(AtomicUsize::new(0)),
            cap,
        }
    }

    /// Threads running now.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    fn take(&self) -> Option<Taken> {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .ok()?;
        Some(Taken(self.running.clone()))
    }
}

/// One thread's place in the budget, given back when the thread ends.
struct Taken(Arc<AtomicUsize>);

impl Drop for Taken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

enum State {
    Inline(Md5),
    Thread {
        tx: mpsc::SyncSender<Vec<u8>>,
        done: JoinHandle<Md5>,
    },
}

/// md5 of the first [`PrefixHash::hashed`] bytes of a file.
pub(crate) struct PrefixHash {
    state: State,
    hashed: u64,
}

impl PrefixHash {
    /// Inline hashing, from byte 0.
    pub fn inline() -> PrefixHash {
        PrefixHash {
            state: State::Inline(Md5::new()),
            hashed: 0,
        }
    }

    /// For a file of `chunks` chunks: a hashing thread if it is large
    /// enough and the budget allows, else inline.
    pub fn for_file(chunks: u32, threads: &HashThreads) -> PrefixHash {
        if chunks < THREAD_MIN_CHUNKS {
            return PrefixHash::inline();
        }
        let Some(place) = threads.take() else {
            return PrefixHash::inline();
        };
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUED_CHUNKS);
        let spawned = std::thread::Builder::new()
            .name("chatxfer-md5".into())
            .spawn(move || {
                let _place = place;
                let mut h = Md5::new();
                // Ends when the sender goes (finish, or the record dropped).
                for data in rx {
                    h.update(&data);
                }
                h
            });
        match spawned {
            Ok(done) => PrefixHash {
                state: State::Thread { tx, done },
                hashed: 0,
            },
            Err(e) => {
                tracing::debug!(error = %e, "cannot start a hashing thread; hashing inline");
                PrefixHash::inline()
            }
        }
    }

    /// Bytes of the prefix given so far.
    pub fn hashed(&self) -> u64 {
        self.hashed
    }

    /// Appends `data` (the bytes right after the prefix).
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Inline(h) => h.update(data),
            State::Thread { tx, .. } => {
                if tx.send(data.to_vec()).is_err() {
                    // The thread is gone (it cannot fail short of a bug):
                    // `finish` reports it and the file is hashed from disk.
                    tracing::warn!("hashing thread gone");
                }
            }
        }
        self.hashed += data.len() as u64;
    }

    /// The md5 state after every byte given, or `None` if it was lost.
    pub fn finish(self) -> Option<Md5> {
        match self.state {
            State::Inline(h) => Some(h),
            State::Thread { tx, done } => {
                drop(tx);
                done.join().ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(h: Md5) -> Vec<u8> {
        h.finalize().to_vec()
    }

    #[test]
    fn threaded_and_inline_hash_the_same_bytes() {
        let threads = HashThreads::new(1);
        let chunks: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1000 + i as usize]).collect();
        let mut threaded = PrefixHash::for_file(40, &threads);
        assert_eq!(threads.running(), 1, "a 40-chunk file gets a thread");
        // The budget is spent: the next large file hashes inline.
        let mut inline = PrefixHash::for_file(40, &threads);
        assert!(matches!(inline.state, State::Inline(_)));
        let mut whole = Md5::new();
        for c in &chunks {
            threaded.update(c);
            inline.update(c);
            whole.update(c);
        }
        assert_eq!(threaded.hashed(), inline.hashed());
        let expected = digest(whole);
        assert_eq!(digest(threaded.finish().unwrap()), expected);
        assert_eq!(digest(inline.finish().unwrap()), expected);
        assert_eq!(threads.running(), 0, "the thread gave its place back");
    }

    #[test]
    fn small_files_hash_inline() {
        let threads = HashThreads::new(4);
        let p = PrefixHash::for_file(THREAD_MIN_CHUNKS - 1, &threads);
        assert!(matches!(p.state, State::Inline(_)));
        assert_eq!(threads.running(), 0);
    }
}
