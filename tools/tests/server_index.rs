//! The message index costs the same per upload however many messages it
//! holds: 6,000 message-indexed uploads, the last 1,000 within 1.5x the
//! time of the first 1,000 (a ratio measured in one run; no absolute time).

use std::time::Instant;

use chatxfer_tools::server::{start, MessageInfo, ServerConfig};

mod wire;
use wire::*;

const UPLOADS: usize = 6_000;
const BATCH: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_upload_index_cost_stays_flat_over_6000_messages() {
    let (_tmp, root) = store_dir();
    let srv = start("127.0.0.1:0", ServerConfig::new(&root))
        .await
        .unwrap();
    let mut c = Client::connect(&srv).await;
    let mut batches = Vec::new();
    let mut t = Instant::now();
    for i in 0..UPLOADS {
        // One-chunk files: each 1041 completes, publishes and indexes one.
        let mut up = Up::new(&format!("m{i}.bin"), bytes(64, i as u32), 64);
        up.message_id = i as i64 + 1;
        chunk_ok(&mut c, &up, 1041, 1).await;
        if (i + 1) % BATCH == 0 {
            batches.push(t.elapsed().as_secs_f64());
            t = Instant::now();
        }
    }
    let (first, last) = (batches[0], batches[batches.len() - 1]);
    eprintln!(
        "per 1,000 indexed uploads: {}; last/first = {:.2}",
        batches
            .iter()
            .map(|s| format!("{s:.2} s"))
            .collect::<Vec<_>>()
            .join(", "),
        last / first
    );
    assert!(
        last <= first * 1.5,
        "the last 1,000 uploads took {last:.2} s, the first {first:.2} s"
    );
    assert_eq!(
        srv.message(UPLOADS as i64),
        Some(MessageInfo::new(7, 2, format!("m{}.bin", UPLOADS - 1)))
    );
    assert_eq!(srv.stats().files_completed, UPLOADS as u64);
    drop(c);
    srv.shutdown().await;
}
