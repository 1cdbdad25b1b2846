//! The `chatxfer` command against hostile and broken servers: refused,
//! silent, garbage, oversized and truncated frames, a crawl, closes, lying
//! acks, and downloads whose names or sizes or chunks lie. For every case
//! the command either completes correctly (the stored or saved bytes are
//! the source's) or exits non-zero with a FAILED line, within a small
//! multiple of its give-up budget; it never panics, never prints a raw
//! terminal control, sends the server less than 3x the file's size, writes
//! nothing outside `--out`, replaces no file and follows no planted link.
//!
//! By default the test binary runs with `--give-up-after 3s`. To check a
//! release build as shipped: `CHATXFER_BIN=target/release/chatxfer
//! CHATXFER_DEFAULT_BUDGET=1 cargo test -p chatxfer-tools --test
//! hostile_servers` (the command's own 60 s budget; takes minutes).

mod fake_server;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_server::{garbage, header, refused_addr, reply, Act, FakeServer, Script, Seen};
use serde_json::{json, Value};

/// The command's give-up budget in these tests (its default with
/// `CHATXFER_DEFAULT_BUDGET`).
fn budget() -> Duration {
    if std::env::var_os("CHATXFER_DEFAULT_BUDGET").is_some() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(3)
    }
}

fn default_budget() -> bool {
    std::env::var_os("CHATXFER_DEFAULT_BUDGET").is_some()
}
/// A run still going after this many budgets is a hang.
const HANG_BUDGETS: u32 = 20;
/// Ending later than this many budgets is too slow (generous: the cases
/// run side by side on a small machine).
const SLOW_BUDGETS: u32 = 8;
const UPLOAD_SIZE: usize = 200_000;
const DOWNLOAD_SIZE: usize = 100_000;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    Fail,
    /// Completes; a download is saved under this name.
    Complete(&'static str),
}

struct Case {
    name: &'static str,
    download: bool,
    /// `None`: nothing listens (connection refused).
    server: Option<(Vec<Act>, Script)>,
    expect: Expect,
    /// Words the FAILED line must contain (the cause, named).
    says: Option<&'static str>,
}

impl Case {
    fn saying(mut self, words: &'static str) -> Case {
        self.says = Some(words);
        self
    }
}

fn script(f: impl Fn(&Seen) -> Vec<Act> + Send + Sync + 'static) -> Script {
    Arc::new(f)
}

fn upload(name: &'static str, on_connect: Vec<Act>, s: Script, expect: Expect) -> Case {
    Case {
        name,
        download: false,
        server: Some((on_connect, s)),
        expect,
        says: None,
    }
}

fn download(name: &'static str, on_connect: Vec<Act>, s: Script, expect: Expect) -> Case {
    Case {
        name,
        download: true,
        server: Some((on_connect, s)),
        expect,
        says: None,
    }
}

fn content() -> Arc<Vec<u8>> {
    Arc::new(garbage(DOWNLOAD_SIZE, 7))
}

/// A download server that announces `file` with `size` and serves
/// `content` correctly, except where `lie` changes a chunk reply.
fn serving(
    file: &'static str,
    size: Value,
    lie: impl Fn(&Seen, Act) -> Vec<Act> + Send + Sync + 'static,
) -> Script {
    let content = content();
    script(move |s| match s.id {
        1045 => vec![reply::info(5, file, size.clone())],
        1047 => lie(s, reply::chunk(file, s.seq(), &content)),
        _ => vec![],
    })
}

fn honest(_: &Seen, a: Act) -> Vec<Act> {
    vec![a]
}

fn cases() -> Vec<Case> {
    let ack = |s: &Seen| vec![reply::upload_ack(s)];
    let sized = json!(DOWNLOAD_SIZE.to_string());
    vec![
        // --- uploads ---
        Case {
            name: "upload to a refused port",
            download: false,
            server: None,
            expect: Expect::Fail,
            says: Some("last problem: connect to"),
        },
        upload(
            "upload, silent server",
            vec![],
            script(|_| vec![]),
            Expect::Fail,
        ),
        upload(
            "upload, garbage bytes in reply",
            vec![],
            script(|s| vec![Act::Raw(garbage(700, s.frame_on_connection + 1))]),
            Expect::Fail,
        ),
        upload(
            "upload, garbage on connect",
            vec![Act::Raw(garbage(3000, 5))],
            script(|_| vec![]),
            Expect::Fail,
        ),
        upload(
            "upload, oversized frame",
            vec![],
            script(|_| vec![Act::Raw(header(1042, 60_000))]),
            Expect::Fail,
        )
        .saying("exceeds the limit"),
        upload(
            "upload, truncated frame then close",
            vec![],
            script(|_| {
                let mut half = header(1042, 100);
                half.extend_from_slice(&[b'{'; 50]);
                vec![Act::Raw(half), Act::Close]
            }),
            Expect::Fail,
        ),
        upload(
            "upload, close after every frame",
            vec![],
            script(|_| vec![Act::Close]),
            Expect::Fail,
        ),
        upload(
            "upload, a byte every half second",
            vec![],
            script(|s| {
                let mut bytes = Vec::new();
                chatxfer::protocol::frame::encode(
                    chatxfer::protocol::MsgId(1042),
                    json!({"error": 0, "name": s.name(), "seq": s.seq()})
                        .to_string()
                        .as_bytes(),
                    &mut bytes,
                );
                vec![Act::Trickle(bytes, Duration::from_millis(500))]
            }),
            Expect::Fail,
        ),
        upload(
            "upload, first chunk acked then close, every time",
            vec![],
            script(move |s| match s.seq() {
                1 => vec![reply::upload_ack(s), Act::Close],
                _ => vec![],
            }),
            Expect::Fail,
        ),
        upload(
            "upload, non-JSON replies",
            vec![],
            script(|s| vec![Act::ReplyRaw(s.id + 1, b"not json at all".to_vec())]),
            Expect::Fail,
        ),
        upload(
            "upload, success without name or seq",
            vec![],
            script(|s| vec![Act::Reply(s.id + 1, json!({"error": 0}))]),
            Expect::Fail,
        ),
        upload(
            "upload, error is a string",
            vec![],
            script(|s| vec![Act::Reply(s.id + 1, json!({"error": "boom"}))]),
            Expect::Fail,
        )
        .saying("boom"),
        upload(
            "upload, deeply nested JSON",
            vec![],
            script(|s| {
                let deep = "[".repeat(20_000) + &"]".repeat(20_000);
                vec![Act::ReplyRaw(s.id + 1, deep.into_bytes())]
            }),
            Expect::Fail,
        ),
        upload(
            "upload, wrong reply ids",
            vec![],
            script(|s| {
                vec![Act::Reply(
                    9999,
                    json!({"error": 0, "name": s.name(), "seq": s.seq()}),
                )]
            }),
            Expect::Fail,
        ),
        upload(
            "upload, download replies to upload chunks",
            vec![],
            script(|s| vec![reply::chunk_with(&s.name(), s.seq(), b"x", 1, 1, true)]),
            Expect::Fail,
        ),
        upload(
            "upload, acks for a name never sent",
            vec![],
            script(|s| {
                vec![Act::Reply(
                    s.id + 1,
                    json!({"error": 0, "name": "someone-else.bin", "seq": s.seq()}),
                )]
            }),
            Expect::Fail,
        ),
        upload(
            "upload, acks out of range",
            vec![],
            script(|s| {
                vec![Act::Reply(
                    s.id + 1,
                    json!({"error": 0, "name": s.name(), "seq": 1_000_000 + s.seq()}),
                )]
            }),
            Expect::Fail,
        ),
        upload(
            "upload, negative and zero seqs",
            vec![],
            script(|s| {
                vec![
                    Act::Reply(s.id + 1, json!({"error": 0, "name": s.name(), "seq": 0})),
                    Act::Reply(
                        s.id + 1,
                        json!({"error": 0, "name": s.name(), "seq": -s.seq()}),
                    ),
                ]
            }),
            Expect::Fail,
        ),
        upload(
            "upload, unsolicited acks on connect",
            (1..40)
                .map(|seq| Act::Reply(1038, json!({"error": 0, "name": "src.bin", "seq": seq})))
                .collect(),
            script(|_| vec![]),
            Expect::Fail,
        ),
        upload(
            "upload, every chunk refused with a server error",
            vec![],
            script(|s| vec![Act::Reply(s.id + 1, json!({"error": 1015}))]),
            Expect::Fail,
        )
        .saying("error 1015"),
        upload(
            "upload, every ack twice",
            vec![],
            script(move |s| vec![reply::upload_ack(s), reply::upload_ack(s)]),
            Expect::Complete("src.bin"),
        ),
        upload(
            "upload, honest server",
            vec![],
            script(ack),
            Expect::Complete("src.bin"),
        ),
        // --- downloads ---
        Case {
            name: "download from a refused port",
            download: true,
            server: None,
            expect: Expect::Fail,
            says: Some("last problem: connect to"),
        },
        download(
            "download, silent server",
            vec![],
            script(|_| vec![]),
            Expect::Fail,
        ),
        download(
            "download, garbage",
            vec![],
            script(|s| vec![Act::Raw(garbage(900, s.frame_on_connection + 3))]),
            Expect::Fail,
        ),
        download(
            "download, oversized frame",
            vec![],
            script(|_| vec![Act::Raw(header(1046, 1_000_000))]),
            Expect::Fail,
        ),
        download(
            "download, close after every frame",
            vec![],
            script(|_| vec![Act::Close]),
            Expect::Fail,
        ),
        download(
            "download, a byte every half second",
            vec![],
            script(|_| {
                let mut bytes = Vec::new();
                if let Act::Reply(id, body) = reply::info(5, "slow.jpg", json!("100000")) {
                    chatxfer::protocol::frame::encode(
                        chatxfer::protocol::MsgId(id),
                        body.to_string().as_bytes(),
                        &mut bytes,
                    );
                }
                vec![Act::Trickle(bytes, Duration::from_millis(500))]
            }),
            Expect::Fail,
        ),
        download(
            "download, name escapes with ..",
            vec![],
            serving("../escape.jpg", sized.clone(), honest),
            Expect::Fail,
        ),
        download(
            "download, absolute name",
            vec![],
            serving("/tmp/chatxfer-hostile-abs.jpg", sized.clone(), honest),
            Expect::Fail,
        ),
        download(
            "download, name .bashrc",
            vec![],
            serving(".bashrc", sized.clone(), honest),
            Expect::Fail,
        )
        .saying("refusing"),
        download(
            "download, name with terminal escapes",
            vec![],
            serving("a\u{1b}]0;owned\u{7}\u{1b}[2Jb.jpg", sized.clone(), honest),
            Expect::Fail,
        ),
        download(
            "download, name with a newline",
            vec![],
            serving("x\ny.jpg", sized.clone(), honest),
            Expect::Fail,
        ),
        download(
            "download, 1 TB announced",
            vec![],
            serving("big.mp4", json!("1099511627776"), honest),
            Expect::Fail,
        )
        .saying("max_download_size"),
        download(
            "download, negative size",
            vec![],
            serving("neg.jpg", json!("-5"), honest),
            Expect::Fail,
        ),
        download(
            "download, size not a number",
            vec![],
            serving("nan.jpg", json!("lots"), honest),
            Expect::Fail,
        ),
        download(
            "download, chunks with the wrong seq",
            vec![],
            serving("seq.jpg", sized.clone(), |s, _| {
                vec![reply::chunk("seq.jpg", s.seq() + 1, &content())]
            }),
            Expect::Fail,
        ),
        download(
            "download, chunks with bad base64",
            vec![],
            serving("b64.jpg", sized.clone(), |s, _| {
                vec![Act::Reply(
                    1048,
                    json!({"error": 0, "name": "b64.jpg", "seq": s.seq(), "data": "%%%not base64",
                           "total_size": DOWNLOAD_SIZE.to_string(), "is_last": false}),
                )]
            }),
            Expect::Fail,
        ),
        download(
            "download, chunks longer than the file",
            vec![],
            serving("long.jpg", sized.clone(), |s, _| {
                vec![reply::chunk_with(
                    "long.jpg",
                    s.seq(),
                    &garbage(40_000, 3),
                    DOWNLOAD_SIZE as u64,
                    40_000,
                    false,
                )]
            }),
            Expect::Fail,
        ),
        download(
            "download, early is_last",
            vec![],
            serving("early.jpg", sized.clone(), |s, _| {
                let c = content();
                vec![reply::chunk_with(
                    "early.jpg",
                    s.seq(),
                    &c[..32_768],
                    DOWNLOAD_SIZE as u64,
                    32_768,
                    true,
                )]
            }),
            Expect::Fail,
        ),
        download(
            "download, chunks for another name",
            vec![],
            serving("mine.jpg", sized.clone(), |s, _| {
                vec![reply::chunk("theirs.jpg", s.seq(), &content())]
            }),
            Expect::Fail,
        ),
        download(
            "download, error replies without data",
            vec![],
            serving("err.jpg", sized.clone(), |_, _| {
                vec![Act::Reply(1048, json!({"error": 0}))]
            }),
            Expect::Fail,
        ),
        download(
            "download, planted .part symlink",
            vec![],
            serving("photo.jpg", sized.clone(), honest),
            Expect::Complete("photo.jpg"),
        ),
        download(
            "download, name of an existing file",
            vec![],
            serving("taken.jpg", sized.clone(), honest),
            Expect::Complete("taken (1).jpg"),
        ),
        download(
            "download, name of a planted symlink",
            vec![],
            serving("link.jpg", sized.clone(), honest),
            Expect::Complete("link (1).jpg"),
        ),
    ]
}

const PRECIOUS: &[u8] = b"precious: must not change\n";

/// `root/out` with a `.bashrc`, an existing `taken.jpg`, and symlinks
/// (`photo.jpg.part`, `link.jpg`) to files in `root/outside`.
fn plant(root: &Path) -> PathBuf {
    let out = root.join("out");
    let outside = root.join("outside");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    for f in ["target.txt", "target2.txt"] {
        std::fs::write(outside.join(f), PRECIOUS).unwrap();
    }
    std::fs::write(out.join(".bashrc"), PRECIOUS).unwrap();
    std::fs::write(out.join("taken.jpg"), PRECIOUS).unwrap();
    std::os::unix::fs::symlink(outside.join("target.txt"), out.join("photo.jpg.part")).unwrap();
    std::os::unix::fs::symlink(outside.join("target2.txt"), out.join("link.jpg")).unwrap();
    out
}

/// Every path under `dir`, relative to it, sorted (symlinks not followed).
fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

struct Outcome {
    case: &'static str,
    problems: Vec<String>,
    /// The command's FAILED line, if any (shown with --nocapture).
    failed_line: Option<String>,
}

async fn run(case: Case) -> Outcome {
    let mut problems = Vec::new();
    let root = tempfile::tempdir().unwrap();
    let out = plant(root.path());
    let source = root.path().join("src.bin");
    let bytes = garbage(UPLOAD_SIZE, 11);
    std::fs::write(&source, &bytes).unwrap();
    let before = tree(root.path());

    let refused = case.server.is_none();
    let server = match case.server {
        Some((on_connect, script)) => Some(FakeServer::start(on_connect, script).await),
        None => None,
    };
    let addr = match &server {
        Some(s) => s.addr,
        None => refused_addr().await,
    };
    let bin =
        std::env::var_os("CHATXFER_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_chatxfer").into());
    let mut cmd = tokio::process::Command::new(bin);
    if case.download {
        cmd.args(["download", "--message-id", "5", "--out"])
            .arg(&out);
    } else {
        cmd.arg("upload").arg(&source);
    }
    cmd.args(["--server", &addr.to_string()]);
    if !default_budget() {
        cmd.args(["--give-up-after", &format!("{}s", budget().as_secs())]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let child = cmd.spawn().unwrap();
    let run = tokio::time::timeout(budget() * HANG_BUDGETS, child.wait_with_output()).await;
    let elapsed = started.elapsed();
    let Ok(output) = run else {
        problems.push(format!(
            "still running after {:?}: a hang",
            budget() * HANG_BUDGETS
        ));
        return Outcome {
            case: case.name,
            problems,
            failed_line: None,
        };
    };
    let output = output.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let context = format!(
        "exit {:?} after {elapsed:.1?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status.code()
    );

    // Within the budget, give or take the reconnect and shutdown around it.
    if elapsed > budget() * SLOW_BUDGETS {
        problems.push(format!("took {elapsed:?}, over {SLOW_BUDGETS} budgets"));
    }
    // The command says what it is waiting for instead of sitting silent.
    if refused
        && !(stderr.contains("connection down: connect to") && stderr.contains("; retry 1 in"))
    {
        problems.push("no line saying the server is unreachable and when it retries".into());
    }
    if stderr.contains("panicked") {
        problems.push("a panic".into());
    }
    if output.stdout.contains(&0x1b) || output.stderr.contains(&0x1b) {
        problems.push("a raw terminal escape in the output".into());
    }
    match case.expect {
        Expect::Fail => {
            if output.status.success() {
                problems.push("exit 0 from a hostile server".into());
            }
            let line = stdout.lines().find(|l| l.contains("FAILED"));
            match (line, case.says) {
                (None, _) => problems.push("no FAILED line naming the cause".into()),
                (Some(line), Some(words)) if !line.contains(words) => {
                    problems.push(format!("the FAILED line does not say {words:?}"))
                }
                _ => {}
            }
        }
        Expect::Complete(saved) => {
            if !output.status.success() {
                problems.push("did not complete".into());
            }
            let ok = if case.download {
                std::fs::read(out.join(saved)).ok() == Some(content().to_vec())
            } else {
                server.as_ref().and_then(|s| s.stored(saved)) == Some(bytes.clone())
            };
            if !ok {
                problems.push(format!("{saved} is not byte-identical"));
            }
        }
    }
    if let Some(s) = &server {
        if !case.download && s.received() >= 3 * UPLOAD_SIZE as u64 {
            problems.push(format!(
                "the server received {} bytes for a {UPLOAD_SIZE}-byte file",
                s.received()
            ));
        }
    }
    // Nothing changed but a saved file in `out`.
    let after = tree(root.path());
    let added: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
    let expected_new = match case.expect {
        Expect::Complete(saved) if case.download => vec![PathBuf::from("out").join(saved)],
        _ => vec![],
    };
    if added.iter().any(|p| !expected_new.contains(p)) || after.len() < before.len() {
        problems.push(format!("files added or removed: {added:?}"));
    }
    for precious in [
        "outside/target.txt",
        "outside/target2.txt",
        "out/.bashrc",
        "out/taken.jpg",
    ] {
        if std::fs::read(root.path().join(precious)).ok().as_deref() != Some(PRECIOUS) {
            problems.push(format!("{precious} changed"));
        }
    }
    if Path::new("/tmp/chatxfer-hostile-abs.jpg").exists() {
        problems.push("wrote an absolute path".into());
    }
    if !problems.is_empty() {
        problems.push(context);
    }
    Outcome {
        case: case.name,
        problems,
        failed_line: stdout
            .lines()
            .find(|l| l.contains("FAILED"))
            .map(str::to_string),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_survives_every_hostile_server() {
    // A few at a time: each waits on its budget, not on the CPU.
    let permits = Arc::new(tokio::sync::Semaphore::new(if default_budget() {
        64
    } else {
        8
    }));
    let mut runs = tokio::task::JoinSet::new();
    let all = cases();
    let count = all.len();
    for case in all {
        let permits = permits.clone();
        runs.spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            run(case).await
        });
    }
    let mut failures = Vec::new();
    let mut done = 0;
    while let Some(outcome) = runs.join_next().await {
        let outcome = outcome.unwrap();
        done += 1;
        eprintln!(
            "{}: {}",
            outcome.case,
            outcome.failed_line.as_deref().unwrap_or("completed")
        );
        if !outcome.problems.is_empty() {
            failures.push(format!("{}: {}", outcome.case, outcome.problems.join("; ")));
        }
    }
    assert_eq!(done, count);
    assert!(
        failures.is_empty(),
        "{} of {count} cases went wrong:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
