//! The message index costs the same per upload however many messages it
//! holds: 6,000 message-indexed uploads, the median upload of the last
//! 1,000 within 1.5x the median of the first 1,000 (a ratio measured in one
//! run; no absolute time). Medians, because on a disk shared with other
//! work single fsyncs stall for many milliseconds; the store is on tmpfs
//! (`/dev/shm`) where there is one, so that what is measured is the
//! server's own work per upload rather than the disk's queue.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chatxfer_tools::server::{start, MessageInfo, ServerConfig};

mod wire;
use wire::*;

const UPLOADS: usize = 6_000;
const BATCH: usize = 1_000;

/// A temporary store directory, on tmpfs if the machine has one.
fn fast_store_dir() -> (tempfile::TempDir, PathBuf, &'static str) {
    if let Ok(tmp) = tempfile::Builder::new().tempdir_in("/dev/shm") {
        let root = tmp.path().join("store");
        return (tmp, root, "tmpfs");
    }
    let (tmp, root) = store_dir();
    (tmp, root, "disk")
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_upload_index_cost_stays_flat_over_6000_messages() {
    let (_tmp, root, fs) = fast_store_dir();
    let srv = start("127.0.0.1:0", ServerConfig::new(&root))
        .await
        .unwrap();
    let mut c = Client::connect(&srv).await;
    let mut each = Vec::with_capacity(UPLOADS);
    for i in 0..UPLOADS {
        // One-chunk files: each 1041 completes, publishes and indexes one.
        let mut up = Up::new(&format!("m{i}.bin"), bytes(64, i as u32), 64);
        up.message_id = i as i64 + 1;
        let t = Instant::now();
        chunk_ok(&mut c, &up, 1041, 1).await;
        each.push(t.elapsed());
    }
    let medians: Vec<Duration> = each.chunks_mut(BATCH).map(median).collect();
    let (first, last) = (medians[0], medians[medians.len() - 1]);
    let ratio = last.as_secs_f64() / first.as_secs_f64();
    eprintln!(
        "median upload per 1,000 ({fs}): {}; last/first = {ratio:.2}",
        medians
            .iter()
            .map(|d| format!("{:.0} µs", d.as_secs_f64() * 1e6))
            .collect::<Vec<_>>()
            .join(", "),
    );
    assert!(
        ratio <= 1.5,
        "median upload: {last:?} in the last 1,000, {first:?} in the first"
    );
    assert_eq!(
        srv.message(UPLOADS as i64),
        Some(MessageInfo::new(7, 2, format!("m{}.bin", UPLOADS - 1)))
    );
    assert_eq!(srv.stats().files_completed, UPLOADS as u64);
    drop(c);
    srv.shutdown().await;
}
