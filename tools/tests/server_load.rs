//! Load and attack test of the reference server (issue 13), loopback only,
//! bounded in count and time. In one process, one phase after the other so
//! their memory and descriptor figures stay apart:
//!
//! 1. 5,000 idle connections and 2,000 that send a header announcing
//!    51,200 bytes and nothing more, from 40 loopback addresses; with all
//!    of them open, the `chatxfer upload` command uploads a file, which must
//!    be stored byte-identically, and the process's resident memory stays
//!    under 200 MB. Then the frame and idle timeouts close them all.
//! 2. One connection sends 10,000 distinct 1041s (2,000 uids): the `.part`
//!    descriptors open stay within the configured cap while another user
//!    uploads; after it leaves, every abandoned upload is removed by the
//!    (short) expiry.
//!
//! The counts are scaled down (and the scale printed) if the descriptor
//! hard limit cannot hold both ends of every connection.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chatxfer_tools::server::{start, ServerConfig, ServerHandle};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod wire;
use wire::*;

const IDLE: usize = 5_000;
const HEADER_ONLY: usize = 2_000;
const SOURCES: u8 = 40;
const MAX_RSS: u64 = 200 << 20;
const DISTINCT_1041: usize = 10_000;
const PART_CAP: usize = 256;
/// The bound on every wait of this test (not a timing assertion).
const BOUND: Duration = Duration::from_secs(120);

/// Raises the soft descriptor limit to the hard one; returns it.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return 1024;
        }
    }
    lim.rlim_cur
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn rss() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// Descriptors of this process open on `.part` files under `root`.
fn open_parts_under(root: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.starts_with(root) && t.to_string_lossy().ends_with(".part"))
        .count()
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens `n` connections from the loopback addresses 127.0.1.1..=SOURCES;
/// each sends `first` (if any) and stays open. Batches of 250 wait until
/// the server accepted them: a handshake completes in the kernel, and
/// connecting faster than the server accepts overflows its listen backlog
/// (a dropped handshake would leave a connection the server never sees).
async fn open_many(srv: &ServerHandle, n: usize, first: &'static [u8]) -> Vec<TcpStream> {
    let addr = srv.local_addr();
    let mut out = Vec::with_capacity(n);
    let base = srv.stats().connections;
    for start in (0..n).step_by(250) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in start..(start + 250).min(n) {
            let ip = [127, 0, 1, 1 + (i % usize::from(SOURCES)) as u8];
            tasks.spawn(async move {
                let mut s = connect_from(addr, ip).await.unwrap();
                if !first.is_empty() {
                    s.write_all(first).await.unwrap();
                }
                s
            });
        }
        while let Some(s) = tasks.join_next().await {
            out.push(s.unwrap());
        }
        let want = base + out.len() as u64;
        until("the server accepted the batch", || {
            srv.stats().connections >= want
        })
        .await;
    }
    out
}

/// `chatxfer upload FILE --server ADDR` as a user runs it; true on exit 0.
async fn command_upload(
    addr: std::net::SocketAddr,
    file: &Path,
    uid: i64,
    message_id: i64,
) -> bool {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatxfer"))
        .args(["upload", "--server", &addr.to_string()])
        .args(["--server-storage", "positional", "--give-up-after", "60s"])
        .args([
            "--uid",
            &uid.to_string(),
            "--message-id",
            &message_id.to_string(),
        ])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    match tokio::time::timeout(BOUND, child.wait()).await {
        Ok(status) => status.unwrap().success(),
        Err(_) => panic!("the upload did not finish within {BOUND:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_connections_and_files_leave_a_normal_upload_untouched() {
    let hard = raise_fd_limit();
    // Both ends of every connection live in this process.
    let need = 2 * (IDLE + HEADER_ONLY) + 1_000;
    let scale = (hard.saturating_sub(1_000) as f64 / need as f64).min(1.0);
    let (idle_n, header_n) = (
        (IDLE as f64 * scale) as usize,
        (HEADER_ONLY as f64 * scale) as usize,
    );
    if scale < 1.0 {
        eprintln!(
            "descriptor hard limit {hard}: scaled to {idle_n} idle + {header_n} header-only connections"
        );
    }
    let (tmp, root) = store_dir();
    let files = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(&root);
    cfg.limits.max_connections = 8_192;
    // Long enough to outlast the set-up and the upload (under 1 s here, on
    // a machine shared with two builds), short enough for a test.
    cfg.limits.frame_timeout = Duration::from_secs(20);
    cfg.limits.idle_timeout = Duration::from_secs(25);
    cfg.limits.max_open_parts = PART_CAP;
    cfg.limits.upload_expiry = Duration::from_secs(2);
    let srv = start("127.0.0.1:0", cfg).await.unwrap();

    // ---------------------------------------------------- phase 1: sockets
    let rss_start = rss();
    let t = Instant::now();
    let idle = open_many(&srv, idle_n, b"").await;
    // 1041 announcing 51,200 bytes, then silence.
    let header = open_many(&srv, header_n, &[0x04, 0x11, 0x00, 0x00, 0xc8, 0x00]).await;
    let total = (idle_n + header_n) as u64;
    while srv.stats().open_connections != total {
        assert!(
            t.elapsed() < BOUND,
            "not all attack connections open after {BOUND:?}: {:?}",
            srv.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let setup_secs = t.elapsed().as_secs_f64();
    let rss_open = rss();
    let file = files.path().join("normal.bin");
    let data = bytes(8 << 20, 13);
    std::fs::write(&file, &data).unwrap();
    let ok = command_upload(srv.local_addr(), &file, 5, 7_001).await;
    let st = srv.stats();
    eprintln!(
        "{total} attack connections open after {:.1} s; RSS {:.1} MB before, {:.1} MB with them open; \
         upload done {:.1} s after the start, timed out so far: {}, refused: {}",
        setup_secs,
        rss_start as f64 / 1e6,
        rss_open as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        st.timed_out,
        st.refused_connections,
    );
    assert!(ok, "chatxfer upload failed");
    assert!(std::fs::read(root.join("5/normal.bin")).unwrap() == data);
    assert_eq!(
        st.timed_out, 0,
        "the attack connections were all open during the upload"
    );
    assert!(
        rss_open < MAX_RSS,
        "RSS {rss_open} with {total} connections"
    );
    // The timeouts close them all (the peers never write again).
    until("the timeouts closed the attack connections", || {
        srv.stats().open_connections == 0
    })
    .await;
    assert_eq!(srv.stats().timed_out, total);
    drop((idle, header));
    let rss_closed = rss();
    // What the allocator keeps is not held by the server: give it back.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
    let rss_trimmed = rss();
    eprintln!(
        "RSS after the timeouts closed them: {:.1} MB ({:.1} MB after malloc_trim)",
        rss_closed as f64 / 1e6,
        rss_trimmed as f64 / 1e6
    );
    // The connections' memory is free again (glibc keeps freed memory
    // until trimmed; elsewhere the figure is only printed).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    assert!(
        rss_trimmed < rss_open,
        "RSS {rss_trimmed} after the close, {rss_open} with the connections open"
    );

    // ------------------------------------------------------ phase 2: files
    let mut attacker = Client::connect(&srv).await;
    let mut worst = 0;
    let mut sent = 0;
    let victim_data = bytes(2 << 20, 14);
    std::fs::write(files.path().join("other.bin"), &victim_data).unwrap();
    let other_path = files.path().join("other.bin");
    let addr = srv.local_addr();
    let mut other = None;
    let mut refused = 0;
    while sent < DISTINCT_1041 {
        if sent == DISTINCT_1041 / 2 {
            // Halfway, with the descriptor cap reached: another user uploads.
            let path = other_path.clone();
            other = Some(tokio::spawn(async move {
                command_upload(addr, &path, 6, 7_002).await
            }));
        }
        // Pipelined in bursts of 100, answered before the next burst.
        let burst = 100.min(DISTINCT_1041 - sent);
        let mut out = Vec::new();
        for i in sent..sent + burst {
            let mut up = Up::new(&format!("a{i}.bin"), bytes(200, i as u32), 100);
            up.uid = 10_000 + (i % 2_000) as i64;
            up.message_id = 100_000 + i as i64;
            out.extend(up.frame(1041, 1));
        }
        attacker.send_raw(&out).await;
        for _ in 0..burst {
            let (id, v) = attacker.recv().await;
            assert_eq!(id, 1042, "{v}");
            if v["error"] != 0 {
                refused += 1;
            }
        }
        sent += burst;
        worst = worst.max(open_parts_under(&root));
    }
    assert!(
        other.expect("started").await.unwrap(),
        "another user's upload failed during the attack"
    );
    assert!(std::fs::read(root.join("6/other.bin")).unwrap() == victim_data);
    eprintln!(
        "{DISTINCT_1041} distinct 1041s on one connection ({refused} refused): \
         at most {worst} .part descriptors open (cap {PART_CAP}), {} unfinished uploads",
        srv.unfinished_uploads()
    );
    assert!(worst <= PART_CAP, "{worst} .part descriptors open");
    assert_eq!(
        refused, 0,
        "2,000 uids x 5 uploads stay under the per-uid cap"
    );
    drop(attacker);
    until("the abandoned uploads expired", || {
        srv.unfinished_uploads() == 0 && srv.stats().open_connections == 0
    })
    .await;
    // Their files go with them (the expiry runs on; it removes late
    // resume states too).
    until("no .part or .state left", || leftovers(&root) == 0).await;
    assert_eq!(srv.stats().panics, 0);
    srv.shutdown().await;
    drop(tmp);
}

/// Hidden upload files left under `root`.
fn leftovers(root: &Path) -> usize {
    let mut n = 0;
    for d in std::fs::read_dir(root).unwrap().flatten() {
        if !d.file_type().unwrap().is_dir() {
            continue;
        }
        n += std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|f| f.file_name().to_string_lossy().starts_with('.'))
            .count();
    }
    n
}
