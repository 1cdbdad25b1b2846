//! The client process dies mid-upload and starts again with the same state
//! directory (`chatxfer upload --state-dir`, then `--resume`).
//!
//! * Reference (positional) server, SIGKILL: the upload resumes with 1043 from
//!   the journal and the stored file is byte-identical.
//! * Appending test peer (stores like the deployed server, counts any
//!   duplicate or out-of-order chunk), graceful SIGINT: in-flight chunks are
//!   drained, the journal is exact, the upload resumes exactly.
//! * Appending test peer, SIGKILL: the journal is inexact (acks may have been
//!   lost), so the file is sent again from seq 1, whose 1041 truncates.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chatxfer::engine::md5_of;
use chatxfer::runtime::journal;
use chatxfer_tools::linkemu::{LinkConfig, LinkEmulator};
use chatxfer_tools::server::Storage;
use common::*;

const SIZE: usize = 6 << 20;

fn upload_cmd(addr: &str, storage: &str, state: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatxfer"));
    c.args([
        "upload",
        "--server",
        addr,
        "--server-storage",
        storage,
        "--uid",
        "1",
    ])
    .arg("--state-dir")
    .arg(state)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

/// Waits (bounded) until the journal shows at least `seqs` acknowledged chunks.
async fn wait_for_journal(state: &Path, seqs: u32) -> journal::JournalEntry {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(e) = journal::scan(state).0.into_iter().next() {
            if e.acked_prefix >= seqs {
                return e;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no journal with {seqs} chunks"
        );
        // Polling an observable condition, not standing in for one.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(
    storage: Storage,
    client_storage: &str,
    graceful: bool,
    token: Option<&str>,
) -> (u64, u64, journal::JournalEntry) {
    let upload_cmd = |addr: &str, storage: &str, state: &Path| {
        let mut c = upload_cmd(addr, storage, state);
        if let Some(t) = token {
            c.args(["--token", t]);
        }
        c
    };
    let srv = server(storage, false).await;
    // 40 Mbit/s: the upload takes over a second, long enough to interrupt.
    let emu = LinkEmulator::start(
        "127.0.0.1:0",
        srv.handle.local_addr(),
        LinkConfig::parse_rtt_rate("10ms", "40mbit").unwrap(),
    )
    .await
    .unwrap();
    let addr = emu.local_addr().to_string();
    let files = Files::new();
    let (path, bytes) = files.make("video.mp4", SIZE, 42);
    let state = tempfile::tempdir().unwrap();

    let mut first = upload_cmd(&addr, client_storage, state.path())
        .arg(&path)
        .spawn()
        .unwrap();
    let journal_seen = wait_for_journal(state.path(), 20).await;
    if graceful {
        let pid = first.id().unwrap() as libc::pid_t;
        // SAFETY: a plain syscall on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    } else {
        first.kill().await.unwrap(); // SIGKILL
    }
    let status = first.wait().await.unwrap();
    assert!(
        !status.success(),
        "the first run was interrupted, it must not report success"
    );
    let journal_left = journal::scan(state.path()).0;
    assert_eq!(
        journal_left.len(),
        1,
        "an unfinished upload leaves its journal"
    );
    let left = journal_left[0].clone();
    assert!(left.acked_prefix >= journal_seen.acked_prefix);
    assert_eq!(
        left.exact, graceful,
        "only a drained shutdown writes an exact journal"
    );

    // Let the dead connection's bytes still inside the emulated link drain
    // to the server first, so the counts below belong to the second run.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while emu.stats().active > 0 || srv.handle.stats().open_connections > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old connection never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let chunks_before = srv.handle.stats().chunks_received;
    let status = upload_cmd(&addr, client_storage, state.path())
        .arg("--resume")
        .status()
        .await
        .unwrap();
    assert!(status.success(), "the resumed upload failed");
    let resumed_chunks = srv.handle.stats().chunks_received - chunks_before;
    assert_eq!(
        srv.stored_md5(1, "video.mp4"),
        Some(md5_of(&bytes)),
        "stored file differs"
    );
    assert!(
        journal::scan(state.path()).0.is_empty(),
        "a completed upload leaves no journal"
    );
    assert_eq!(
        srv.handle.violations(),
        0,
        "duplicate or out-of-order chunk on the appending peer"
    );
    emu.shutdown().await;
    srv.handle.shutdown().await;
    (resumed_chunks, SIZE.div_ceil(CHUNK) as u64, left)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_resumes_with_1043_against_the_reference_server() {
    let (resumed, total, left) = run(Storage::Positional, "positional", false, None).await;
    assert!(
        resumed <= total - left.acked_prefix as u64 + 64,
        "resumed upload sent {resumed} of {total} chunks after {} were journaled",
        left.acked_prefix
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gracefully_stopped_client_resumes_exactly_against_an_appending_server() {
    let (resumed, total, left) = run(Storage::AppendStrict, "appending", true, None).await;
    assert_eq!(
        resumed,
        total - left.acked_prefix as u64,
        "exact resume sends each missing chunk once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_starts_over_against_an_appending_server() {
    let (resumed, total, _) = run(Storage::AppendStrict, "appending", false, None).await;
    assert_eq!(
        resumed, total,
        "after a crash the appending server gets the file again from seq 1"
    );
}

/// With `--token` the killed client's inexact journal is not thrown away:
/// the resumed run asks the appending server the stored size (1047 seq 1)
/// and sends only the chunks after it, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_with_a_token_resumes_from_the_stored_size_against_an_appending_server() {
    let (resumed, total, left) = run(Storage::AppendStrict, "appending", false, Some("tok")).await;
    assert!(
        resumed <= total - left.acked_prefix as u64,
        "resumed upload sent {resumed} of {total} chunks after {} were journaled",
        left.acked_prefix
    );
}
