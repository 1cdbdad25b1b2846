//! The client against a server that leaves Nagle on, as the deployed
//! ResourceServer does: its small replies must not wait for the client's
//! delayed ACK (issue 16).

mod common;
mod fake_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatxfer::engine::{ServerStorage, WindowPolicy};
use common::*;
use fake_server::{reply, FakeServer, Seen};

/// Files of three chunks, one after another: at the end of each, the
/// client has nothing more to send while the server's last replies come
/// back, so nothing carries its acknowledgement of the first of them and
/// Nagle holds the next one until the delayed-ACK timer (40 ms on Linux)
/// runs out. With `TCP_QUICKACK` (the default against the deployed server)
/// the client acknowledges at once. The same run with it off is the
/// reference: a generous 2x between the two (11 ms against 526 ms here).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_of_a_nagle_server_do_not_wait_for_delayed_acks() {
    let srv = FakeServer::start(
        vec![],
        Arc::new(|s: &Seen| {
            if s.is_upload_chunk() {
                vec![reply::upload_ack(s)]
            } else {
                vec![]
            }
        }),
    )
    .await;
    let files = Files::new();
    let (path, _) = files.make("three-chunks.bin", 3 * CHUNK - 100, 7);
    let mut took = Vec::new();
    for quick_ack in [true, false] {
        let mut cfg = client_config(srv.addr, ServerStorage::Appending);
        cfg.engine.window = WindowPolicy::Fixed(5);
        cfg.quick_ack = quick_ack;
        let (client, mut events) = start_client(cfg);
        let t0 = Instant::now();
        for i in 0..12 {
            let name = format!("q{quick_ack}-{i}.bin");
            client.add_file(&path, spec(&name, &path)).unwrap();
            let evs = wait_done(
                &mut events,
                std::slice::from_ref(&name),
                Duration::from_secs(30),
            )
            .await;
            assert!(completed(&evs, &name), "{name}: {evs:?}");
        }
        took.push(t0.elapsed());
        client.shutdown(None).await;
    }
    let (with, without) = (took[0], took[1]);
    assert!(
        without >= with * 2,
        "12 uploads took {with:?} with quick ACKs, {without:?} without"
    );
}
