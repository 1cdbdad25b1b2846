//! Exact resume against an appending server (issue 12), over real sockets:
//! the reference server in its deployed-style appending mode behind the link
//! emulator, which cuts each connection after about 100 chunks' worth of
//! bytes, six times. With a token the client probes the stored size (1047
//! seq 1) after each cut and continues after it; without one it restarts
//! from seq 1 (the figure before this change).

mod common;

use std::time::Duration;

use chatxfer::engine::{md5_of, ServerStorage};
use chatxfer::runtime::Backoff;
use chatxfer_tools::linkemu::{LinkConfig, LinkEmulator};
use chatxfer_tools::server::Storage;
use common::*;

const SIZE: usize = 24 << 20;
const CUTS: u64 = 6;
/// About 100 chunks: a 32 KiB chunk is a frame of about 44,000 bytes.
const CUT_AFTER: u64 = 100 * 44_000;

/// Uploads the 24 MB file through cuts; returns (file bytes sent / size,
/// cuts, the client's counters).
async fn upload_through_cuts(token: &str) -> (f64, u64, chatxfer::engine::Stats) {
    let srv = server(Storage::AppendStrict, false).await;
    let cutting = LinkConfig {
        cut_after_bytes: Some(CUT_AFTER),
        ..LinkConfig::default()
    };
    let emu = LinkEmulator::start("127.0.0.1:0", srv.handle.local_addr(), cutting)
        .await
        .unwrap();
    let files = Files::new();
    let (path, bytes) = files.make("big.mp4", SIZE, 77);
    let mut cfg = client_config(emu.local_addr(), ServerStorage::Appending);
    // The production backoff: without a token the restart's 1041 must not
    // overtake bytes of the dead connection (README "Resuming").
    cfg.backoff = Backoff::default();
    let (client, mut events) = start_client(cfg);
    let mut s = spec("big.mp4", &path);
    s.token = token.into();
    client.add_file(&path, s).unwrap();
    // The emulator reads its config per connection: once the sixth cut is
    // seen, later connections are not cut (one more may slip in if the
    // client reconnects before the poll sees the count: at least six).
    // Polling an observable count, not a sleep standing in for an event.
    let names = vec!["big.mp4".to_string()];
    let done = wait_done(&mut events, &names, Duration::from_secs(120));
    tokio::pin!(done);
    let mut cutting = true;
    let evs = loop {
        tokio::select! {
            evs = &mut done => break evs,
            _ = tokio::time::sleep(Duration::from_millis(5)), if cutting => {
                if emu.stats().cuts >= CUTS {
                    emu.set_config(LinkConfig::default());
                    cutting = false;
                }
            }
        }
    };
    assert!(completed(&evs, "big.mp4"), "token {token:?}: {evs:?}");
    assert_eq!(
        srv.stored_md5(1, "big.mp4"),
        Some(md5_of(&bytes)),
        "token {token:?}: stored file differs"
    );
    assert_eq!(
        srv.handle.violations(),
        0,
        "token {token:?}: a chunk appended twice or out of order"
    );
    let stats = client.stats();
    let sent = stats.upload_bytes_sent as f64 / SIZE as f64;
    let cuts = emu.stats().cuts;
    client.shutdown(None).await;
    emu.shutdown().await;
    srv.handle.shutdown().await;
    (sent, cuts, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_after_every_100_chunks_cost_at_most_15_percent_with_a_token() {
    let (before, cuts_before, without) = upload_through_cuts("").await;
    let (after, cuts_after, with) = upload_through_cuts("tok").await;
    eprintln!(
        "24 MB to an appending server, cut after ~100 chunks: \
         restart from seq 1 (no token, {cuts_before} cuts) {before:.3}x, probe and resume \
         (--token, {cuts_after} cuts) {after:.3}x"
    );
    assert!(
        cuts_before >= CUTS && cuts_after >= CUTS,
        "{cuts_before} / {cuts_after} cuts"
    );
    assert!(after <= 1.15, "with a token: {after:.3}x the file sent");
    assert_eq!(without.probes, 0, "no token, no probe");
    assert!(without.restarts >= CUTS);
    // Every cut resumed from the probed size (one more cut may have found
    // nothing in flight and resumed exactly without a probe).
    assert!(
        with.probe_resumes >= CUTS - 1 && with.restarts == 0,
        "{with:?}"
    );
    assert!(
        before > 1.5,
        "without a token every cut restarts: {before:.3}x"
    );
}
