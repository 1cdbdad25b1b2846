//! Group commit: work that must be durable before a reply (publishing a
//! completed upload, binding its message id) is handed to one thread per
//! [`GroupCommit`], which takes every job queued so far as one batch and
//! runs the batch function once for all of them. Jobs that arrive while a
//! batch is being synced wait and go together in the next one, so files
//! that complete close together share their syncs (one `fsync` of a
//! directory for many renames, one index commit for many inserts) instead
//! of each paying for its own; a lone job is a batch of one.
//!
//! Invariants: [`GroupCommit::submit`] returns only after the batch function
//! returned that job's result (for the users here: after the sync that makes
//! it durable), so a caller that replies after `submit` never replies ahead
//! of durability; one batch runs at a time, its jobs in submission order; a
//! batch function that panics fails its batch's jobs ([`Closed`]), never
//! answers them with success, and the thread goes on with the next batch.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::lock;

/// Most jobs in one batch (a bound on what one round of syncs holds up).
pub(crate) const MAX_BATCH: usize = 256;

/// The job got no result: the batch function panicked, or the group
/// commit's thread is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

type Waiting<J, R> = (J, mpsc::SyncSender<R>);

struct Queue<J, R> {
    jobs: VecDeque<Waiting<J, R>>,
    /// The owner is gone: the thread ends once `jobs` is empty.
    closed: bool,
}

struct Inner<J, R> {
    queue: Mutex<Queue<J, R>>,
    wake: Condvar,
}

/// A batching thread for jobs `J` with results `R` (see the module doc).
pub(crate) struct GroupCommit<J, R> {
    inner: Arc<Inner<J, R>>,
}

impl<J: Send + 'static, R: Send + 'static> GroupCommit<J, R> {
    /// Starts the thread `name`, which runs `batch` on each batch; `batch`
    /// returns one result per job, in the jobs' order.
    pub fn start(
        name: &str,
        mut batch: impl FnMut(Vec<J>) -> Vec<R> + Send + 'static,
    ) -> std::io::Result<GroupCommit<J, R>> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let worker = inner.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || worker.run(&mut batch))
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        Ok(GroupCommit { inner })
    }

    /// Queues `job` for the next batch and waits for its result (blocking:
    /// call it from a blocking-pool thread, as the lane workers are).
    pub fn submit(&self, job: J) -> Result<R, Closed> {
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut q = lock(&self.inner.queue);
            if q.closed {
                return Err(Closed);
            }
            q.jobs.push_back((job, tx));
        }
        self.inner.wake.notify_one();
        rx.recv().map_err(|_| Closed)
    }

    /// Jobs waiting for the next batch (not those of a batch running now).
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        lock(&self.inner.queue).jobs.len()
    }
}

impl<J, R> Drop for GroupCommit<J, R> {
    fn drop(&mut self) {
        lock(&self.inner.queue).closed = true;
        self.inner.wake.notify_all();
    }
}

impl<J, R> Inner<J, R> {
    fn run(&self, batch: &mut impl FnMut(Vec<J>) -> Vec<R>) {
        loop {
            let waiting: Vec<Waiting<J, R>> = {
                let mut q = lock(&self.queue);
                while q.jobs.is_empty() {
                    if q.closed {
                        return;
                    }
                    q = self.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
                let n = q.jobs.len().min(MAX_BATCH);
                q.jobs.drain(..n).collect()
            };
            let (jobs, replies): (Vec<J>, Vec<mpsc::SyncSender<R>>) = waiting.into_iter().unzip();
            let n = jobs.len();
            match catch_unwind(AssertUnwindSafe(|| batch(jobs))) {
                Ok(results) if results.len() == n => {
                    for (r, tx) in results.into_iter().zip(replies) {
                        let _ = tx.send(r); // the submitter may have gone (a panic)
                    }
                }
                // Dropping the senders fails every job of the batch.
                Ok(results) => tracing::error!(
                    jobs = n,
                    results = results.len(),
                    "group commit: batch returned the wrong number of results"
                ),
                Err(_) => tracing::error!(jobs = n, "group commit: batch panicked"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs submitted while a batch runs go together in the next batch,
    /// and each submitter gets its own job's result.
    #[test]
    fn jobs_queued_during_a_batch_share_the_next_one() {
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = batches.clone();
        let release_rx = Mutex::new(release_rx);
        let gc = Arc::new(
            GroupCommit::start("test-group", move |jobs: Vec<u32>| {
                lock(&seen).push(jobs.clone());
                if jobs == [0] {
                    // Hold the first batch until the others are queued.
                    started_tx.send(()).unwrap();
                    lock(&release_rx).recv().unwrap();
                }
                jobs.iter().map(|j| j * 10).collect()
            })
            .unwrap(),
        );
        let first = {
            let gc = gc.clone();
            std::thread::spawn(move || gc.submit(0))
        };
        started_rx.recv().unwrap();
        let rest: Vec<_> = (1..=5)
            .map(|j| {
                let gc = gc.clone();
                std::thread::spawn(move || (j, gc.submit(j)))
            })
            .collect();
        while gc.queued() < 5 {
            std::thread::yield_now();
        }
        release_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap(), Ok(0));
        for t in rest {
            let (j, r) = t.join().unwrap();
            assert_eq!(r, Ok(j * 10));
        }
        let batches = lock(&batches).clone();
        assert_eq!(batches.len(), 2, "{batches:?}");
        let mut second = batches[1].clone();
        second.sort_unstable();
        assert_eq!(second, [1, 2, 3, 4, 5]);
    }

    /// A panicking batch fails its jobs (no result, never a success) and
    /// the thread serves the next batch.
    #[test]
    fn a_panicking_batch_fails_its_jobs_only() {
        let gc = GroupCommit::start("test-panic", |jobs: Vec<u32>| {
            assert!(!jobs.contains(&13), "unlucky");
            jobs
        })
        .unwrap();
        assert_eq!(gc.submit(13), Err(Closed));
        assert_eq!(gc.submit(7), Ok(7));
    }
}
