//! Ctrl-C (SIGINT) against the `chatxfer` command, in each phase: while it
//! hashes a big file (nothing is sent), during an upload (the summary counts
//! what the server acknowledged), during a download (the partial file is
//! removed). Each run waits for an observable sign of its phase before the
//! signal, never for a fixed time.

mod fake_server;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fake_server::{garbage, reply, FakeServer, Seen};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longer than any of these runs takes when it works.
const HANG: Duration = Duration::from_secs(120);

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatxfer"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn interrupt(child: &Child) {
    let pid = child.id().expect("still running") as libc::pid_t;
    // SAFETY: kill(2) with a pid of our own child and a valid signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
}

/// Polls `ready` until it holds (bounded by `HANG`).
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG;
    while !ready() {
        assert!(tokio::time::Instant::now() < deadline, "never saw {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Ended {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Waits for the command to end; `stderr` is its stderr if the test took
/// it (with what was already read from it), else the child's own.
async fn end(
    mut child: Child,
    stderr: Option<(Box<dyn tokio::io::AsyncRead + Unpin + Send>, String)>,
) -> Ended {
    let (mut err, seen) = match stderr {
        Some(taken) => taken,
        None => (Box::new(child.stderr.take().unwrap()) as _, String::new()),
    };
    let mut out = child.stdout.take().unwrap();
    let (mut stdout, mut rest) = (String::new(), String::new());
    let status = tokio::time::timeout(HANG, async {
        let (a, b) = tokio::join!(
            out.read_to_string(&mut stdout),
            err.read_to_string(&mut rest)
        );
        a.unwrap();
        b.unwrap();
        child.wait().await.unwrap()
    })
    .await
    .expect("the command did not end after Ctrl-C");
    Ended {
        success: status.success(),
        stdout,
        stderr: seen + &rest,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_hashing_a_big_file_stops_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("video.mp4");
    // Sparse: 16 GiB to hash, nothing on disk; ignoring Ctrl-C would mean
    // minutes of hashing and then bytes at the server.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(16 << 30)
        .unwrap();
    let server = FakeServer::start(vec![], Arc::new(|s: &Seen| vec![reply::upload_ack(s)])).await;
    let addr = server.addr.to_string();
    let mut child = command(&["upload", big.to_str().unwrap(), "--server", &addr])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    loop {
        let line = tokio::time::timeout(HANG, lines.next_line())
            .await
            .expect("no hashing line")
            .unwrap()
            .expect("stderr closed before hashing");
        seen += &line;
        seen.push('\n');
        if line.starts_with("hashing ") {
            break;
        }
    }
    interrupt(&child);
    let ended = end(child, Some((Box::new(lines.into_inner()), seen))).await;
    assert!(!ended.success, "{}", ended.stderr);
    assert!(
        ended.stderr.contains("interrupted while hashing"),
        "{}",
        ended.stderr
    );
    assert_eq!(server.received(), 0, "bytes were sent after Ctrl-C");
    assert_eq!(server.connections(), 0);
    assert!(!ended.stderr.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_an_upload_reports_what_the_server_acknowledged() {
    const ACKED: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clip.bin");
    std::fs::write(&file, garbage(2_000_000, 3)).unwrap();
    let acks_sent = Arc::new(AtomicU64::new(0));
    let counter = acks_sent.clone();
    // Acknowledges the first ten chunks, then falls silent.
    let server = FakeServer::start(
        vec![],
        Arc::new(move |s: &Seen| {
            if s.seq() as u64 <= ACKED {
                counter.fetch_add(1, Ordering::SeqCst);
                vec![reply::upload_ack(s)]
            } else {
                vec![]
            }
        }),
    )
    .await;
    let addr = server.addr.to_string();
    let child = command(&[
        "upload",
        file.to_str().unwrap(),
        "--server",
        &addr,
        "--window",
        "fixed:16",
    ])
    .spawn()
    .unwrap();
    until("ten acks", || acks_sent.load(Ordering::SeqCst) == ACKED).await;
    interrupt(&child);
    let ended = end(child, None).await;
    assert!(!ended.success);
    let acked = ACKED * 32_768;
    assert!(
        ended
            .stdout
            .contains(&format!("{acked} of 2000000 bytes acknowledged")),
        "{}",
        ended.stdout
    );
    assert!(
        ended
            .stdout
            .contains(&format!("total {:.1} MB acknowledged", acked as f64 / 1e6)),
        "{}",
        ended.stdout
    );
    assert!(ended.stderr.contains("interrupted"), "{}", ended.stderr);
    assert!(!ended.stderr.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_download_removes_the_partial_file() {
    let content = garbage(200_000, 9);
    // Announces the file, serves the first chunk, then falls silent.
    let server = FakeServer::start(
        vec![],
        Arc::new(move |s: &Seen| match (s.id, s.seq()) {
            (1045, _) => vec![reply::info(5, "movie.mp4", json!("200000"))],
            (1047, 1) => vec![reply::chunk("movie.mp4", 1, &content)],
            _ => vec![],
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let addr = server.addr.to_string();
    let child = command(&[
        "download",
        "--server",
        &addr,
        "--message-id",
        "5",
        "--out",
        out.to_str().unwrap(),
    ])
    .spawn()
    .unwrap();
    let part = out.join("movie.mp4.part");
    until("the partial file", || part.exists()).await;
    interrupt(&child);
    let ended = end(child, None).await;
    assert!(!ended.success);
    assert!(
        ended.stdout.contains("partial files removed"),
        "{}",
        ended.stdout
    );
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!Path::new(&part).exists());
    assert!(!ended.stderr.contains("panicked"));
}
