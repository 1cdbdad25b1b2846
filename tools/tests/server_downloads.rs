//! The reference ResourceServer's download side (1045/1047/1033) and avatar
//! uploads (1031), over real sockets with a small raw client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use chatxfer::engine::md5_of;
use chatxfer::protocol::{frame, ChunkFrame, FrameDecoder, MsgId};
use chatxfer_tools::server::{
    start, DownloadFault, MessageInfo, ServerConfig, ServerHandle, Storage, INDEX_FILE,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
/// How long "no reply" is waited for.
const QUIET: Duration = Duration::from_millis(300);
const CHUNK: usize = 32_768;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

// ------------------------------------------------------------------ client

struct Client {
    s: TcpStream,
    dec: FrameDecoder,
}

impl Client {
    async fn connect(server: &ServerHandle) -> Client {
        Client {
            s: TcpStream::connect(server.local_addr()).await.unwrap(),
            dec: FrameDecoder::new(usize::MAX >> 1),
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    async fn send(&mut self, id: u16, v: &Value) {
        self.send_raw(&encode(id, v)).await;
    }

    /// The next reply, `Some(None)` if the connection closed, `None` if
    /// nothing came within `wait`.
    async fn try_recv(&mut self, wait: Duration) -> Option<Option<(u16, Value)>> {
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(f) = self.dec.next_frame().unwrap() {
                return Some(Some((f.id.0, serde_json::from_slice(&f.body).unwrap())));
            }
            match tokio::time::timeout_at(deadline, self.s.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(None),
                Ok(Ok(n)) => self.dec.extend(&buf[..n]),
            }
        }
    }

    async fn recv(&mut self) -> (u16, Value) {
        self.try_recv(WAIT)
            .await
            .expect("a reply in time")
            .expect("connection open")
    }

    async fn expect_quiet(&mut self) {
        if let Some(r) = self.try_recv(QUIET).await {
            panic!("expected no reply, got {r:?}");
        }
    }

    /// Sends and returns the reply, asserting its id.
    async fn ask(&mut self, id: u16, v: &Value) -> Value {
        self.send(id, v).await;
        let (rid, r) = self.recv().await;
        assert_eq!(rid, id + 1, "reply to {id}: {r}");
        r
    }
}

fn encode(id: u16, v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(MsgId(id), &serde_json::to_vec(v).unwrap(), &mut out);
    out
}

fn bytes(n: usize, salt: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_add(salt).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn store_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    (tmp, root)
}

async fn server(root: &Path, named: bool) -> ServerHandle {
    let mut cfg = ServerConfig::new(root);
    cfg.named_errors = named;
    start("127.0.0.1:0", cfg).await.unwrap()
}

/// Uploads `data` as `<uid>/<name>` for `message_id` (1041, then 1037s).
async fn upload(c: &mut Client, uid: i64, name: &str, data: &[u8], message_id: i64) {
    let md5 = md5_of(data);
    let max_seq = data.len().div_ceil(CHUNK).max(1) as u32;
    for seq in 1..=max_seq {
        let start = (seq as usize - 1) * CHUNK;
        let end = (start + CHUNK).min(data.len());
        let id = if seq == 1 { 1041 } else { 1037 };
        let mut out = Vec::new();
        ChunkFrame {
            id: MsgId(id),
            name,
            md5: &md5,
            seq,
            trans_size: end as u64,
            total_size: data.len() as u64,
            last: seq == max_seq,
            last_seq: max_seq,
            uid,
            sender: uid,
            receiver: 2,
            message_id,
            token: "tok",
        }
        .encode(&data[start..end], &mut out);
        c.send_raw(&out).await;
        let (rid, v) = c.recv().await;
        assert_eq!((rid, &v["error"]), (id + 1, &json!(0)), "{v}");
    }
}

fn down_req(name: &str, seq: u32, sender_id: i64) -> Value {
    json!({
        "name": name, "seq": seq, "trans_size": "0", "total_size": "0", "token": "tok",
        "sender_id": sender_id, "receiver_id": 2, "message_id": 1, "uid": 2,
    })
}

fn avatar_req(name: &str, seq: u32, uid: i64) -> Value {
    json!({
        "name": name, "seq": seq, "trans_size": 0, "total_size": 0, "token": "tok",
        "uid": uid, "client_path": "/home/u/avatars", "req_type": "1",
    })
}

/// Sends 1047 for every seq of a `total`-byte file in one write and checks
/// that the replies come back in order, each a real chunk; returns the
/// decoded bytes.
async fn download_pipelined(c: &mut Client, name: &str, sender_id: i64, total: usize) -> Vec<u8> {
    let n = total.div_ceil(CHUNK) as u32;
    let mut out = Vec::new();
    for seq in 1..=n {
        out.extend(encode(1047, &down_req(name, seq, sender_id)));
    }
    c.send_raw(&out).await;
    let mut got = Vec::new();
    for seq in 1..=n {
        let (rid, v) = c.recv().await;
        assert_eq!(rid, 1048);
        assert_eq!((&v["error"], &v["seq"]), (&json!(0), &json!(seq)), "{v}");
        let data = B64.decode(v["data"].as_str().unwrap()).unwrap();
        got.extend_from_slice(&data);
        assert_eq!(v["total_size"], json!(total.to_string()), "{v}");
        assert_eq!(v["current_size"], json!(got.len().to_string()), "{v}");
        assert_eq!(v["is_last"], json!(seq == n));
        assert_eq!(
            (&v["name"], &v["sender_id"], &v["receiver_id"]),
            (&json!(name), &json!(sender_id), &json!(2))
        );
    }
    got
}

/// Nothing was written outside `<root>/<digits>/` (besides the index).
fn assert_contained(tmp: &Path) {
    let top: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        top.iter().all(|n| n == "store" || n == "outside.txt"),
        "{top:?}"
    );
    for e in std::fs::read_dir(tmp.join("store")).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().into_string().unwrap();
        assert!(
            n.starts_with(INDEX_FILE)
                || (e.file_type().unwrap().is_dir() && n.bytes().all(|b| b.is_ascii_digit())),
            "{n:?} in the store"
        );
    }
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_of_edge_sizes_are_byte_identical_and_pipelined_in_order() {
    let (tmp, root) = store_dir();
    let srv = server(&root, true).await;
    let mut c = Client::connect(&srv).await;
    for (i, size) in [1usize, 32_767, 32_768, 32_769, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let name = format!("d{size}.bin");
        let data = bytes(size, i as u32);
        let message_id = 500 + i as i64;
        upload(&mut c, 9, &name, &data, message_id).await;

        let info = c.ask(1045, &json!({ "message_id": message_id })).await;
        assert_eq!(
            info,
            json!({
                "error": 0, "message_id": message_id, "thread_id": 0, "sender_id": 9,
                "recv_id": 2, "name": name, "msg_type": 0, "status": 2,
                "total_size": size.to_string(),
            })
        );
        let got = download_pipelined(&mut c, &name, 9, size).await;
        assert!(got == data, "size {size}: downloaded bytes differ");
    }
    let st = srv.stats();
    assert_eq!(
        (st.downloads_completed, st.panics, st.errors_sent),
        (5, 0, 0)
    );
    assert_eq!(st.download_bytes, 1 + 32_767 + 32_768 + 32_769 + (1 << 20));
    drop(c);
    srv.shutdown().await;
    assert_contained(tmp.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_seqs_empty_files_and_tokens_named_and_deployed_style() {
    for named in [true, false] {
        let (_tmp, root) = store_dir();
        let srv = server(&root, named).await;
        let mut c = Client::connect(&srv).await;
        let data = bytes(100_000, 3);
        upload(&mut c, 4, "w.bin", &data, 7).await;
        upload(&mut c, 4, "empty.bin", &[], 8).await;

        let r = c.ask(1047, &down_req("w.bin", 1, 4)).await;
        assert_eq!(r["seq"], 1);
        // Expected 2: 3 is refused, and so are 0 and a seq of a name never started.
        for (name, seq) in [("w.bin", 3), ("w.bin", 0), ("other.bin", 2)] {
            let r = c.ask(1047, &down_req(name, seq, 4)).await;
            if named {
                assert_eq!(
                    r,
                    json!({"error": 1017, "name": name, "seq": seq, "sender_id": 4, "receiver_id": 2})
                );
            } else {
                assert_eq!(
                    r,
                    json!({"error": 0, "name": name, "sender_id": 4, "receiver_id": 2}),
                    "deployed overwrite: error 0, no data, no seq"
                );
            }
        }
        // The refusals did not move the expectation: 2 still comes.
        let r = c.ask(1047, &down_req("w.bin", 2, 4)).await;
        assert_eq!((&r["error"], &r["seq"]), (&json!(0), &json!(2)), "{r}");
        // Seq 1 resets it at any time.
        let r = c.ask(1047, &down_req("w.bin", 1, 4)).await;
        assert_eq!(r["seq"], 1);

        // A 0-byte file: 1018 (deployed: error 0 without data).
        let info = c.ask(1045, &json!({"message_id": 8})).await;
        assert_eq!(info["total_size"], "0");
        let r = c.ask(1047, &down_req("empty.bin", 1, 4)).await;
        let want = if named { 1018 } else { 0 };
        assert_eq!(r["error"], want, "{r}");
        assert!(
            r.get("data").is_none() && (named || r.get("seq").is_none()),
            "{r}"
        );

        // A missing file: 1012 (deployed: error 0 without data).
        let r = c.ask(1047, &down_req("nope.bin", 1, 4)).await;
        assert_eq!(r["error"], if named { 1012 } else { 0 }, "{r}");
        assert!(r.get("data").is_none());

        // Tokens: 1011 and 1010 keep their codes, even deployed-style.
        srv.set_token(2, "good");
        let r = c.ask(1047, &down_req("w.bin", 1, 4)).await;
        if named {
            assert_eq!(r, json!({"error": 1010, "name": "w.bin", "seq": 1}));
        } else {
            assert_eq!(r, json!({"error": 1010}));
        }
        let mut req = down_req("w.bin", 1, 4);
        req["uid"] = 3.into();
        let r = c.ask(1047, &req).await;
        assert_eq!(r["error"], 1011);
        let mut req = down_req("w.bin", 1, 4);
        req["token"] = "good".into();
        let r = c.ask(1047, &req).await;
        assert_eq!((&r["error"], &r["seq"]), (&json!(0), &json!(1)), "{r}");
        // Only seq 1 is checked.
        let r = c.ask(1047, &down_req("w.bin", 2, 4)).await;
        assert_eq!(r["seq"], 2);
        assert_eq!(srv.stats().panics, 0);
        srv.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_id_gets_no_reply_and_later_requests_are_answered() {
    let (_tmp, root) = store_dir();
    let srv = server(&root, true).await;
    let mut c = Client::connect(&srv).await;
    upload(&mut c, 1, "k.bin", &bytes(10, 1), 42).await;
    c.send(1045, &json!({"message_id": 41})).await;
    c.expect_quiet().await;
    // Unknown, garbage and valid back to back: the first reply is the valid
    // one's (replies are in request order, so nothing came for the others).
    c.send(1045, &json!({"message_id": 43})).await;
    c.send(1045, &json!({"message_id": "42"})).await;
    c.send_raw(&{
        let mut out = Vec::new();
        frame::encode(MsgId(1045), b"not json", &mut out);
        out
    })
    .await;
    let r = c.ask(1045, &json!({"message_id": 42})).await;
    assert_eq!(
        (&r["message_id"], &r["name"]),
        (&json!(42), &json!("k.bin"))
    );
    let r = c.ask(1047, &down_req("k.bin", 1, 1)).await;
    assert_eq!(
        B64.decode(r["data"].as_str().unwrap()).unwrap(),
        bytes(10, 1)
    );
    c.expect_quiet().await;
    assert_eq!(srv.stats().unknown_messages, 4);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_index_survives_a_restart() {
    let (_tmp, root) = store_dir();
    let srv = server(&root, true).await;
    let mut c = Client::connect(&srv).await;
    upload(&mut c, 3, "kept.bin", &bytes(40_000, 2), 77).await;
    // A file put there by other means, registered for the tests.
    std::fs::write(root.join("3").join("side.bin"), b"side").unwrap();
    srv.register_message(78, MessageInfo::new(3, 5, "side.bin"))
        .unwrap();
    drop(c);
    srv.shutdown().await;

    let srv = server(&root, true).await;
    assert_eq!(srv.message(77), Some(MessageInfo::new(3, 2, "kept.bin")));
    let mut c = Client::connect(&srv).await;
    let r = c.ask(1045, &json!({"message_id": 77})).await;
    assert_eq!(
        (&r["error"], &r["name"], &r["sender_id"], &r["total_size"]),
        (&json!(0), &json!("kept.bin"), &json!(3), &json!("40000"))
    );
    let r = c.ask(1045, &json!({"message_id": 78})).await;
    assert_eq!((&r["recv_id"], &r["total_size"]), (&json!(5), &json!("4")));
    let got = download_pipelined(&mut c, "kept.bin", 3, 40_000).await;
    assert!(got == bytes(40_000, 2));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_and_hidden_files_are_refused() {
    let (tmp, root) = store_dir();
    let srv = server(&root, true).await;
    let mut c = Client::connect(&srv).await;
    std::fs::write(tmp.path().join("outside.txt"), b"secret").unwrap();
    upload(&mut c, 6, "in.bin", &bytes(10, 1), 60).await;
    // An upload in progress leaves its hidden .part and (after the close) .state.
    let mut first = Vec::new();
    ChunkFrame {
        id: MsgId(1041),
        name: "half.bin",
        md5: &md5_of(&bytes(70_000, 1)),
        seq: 1,
        trans_size: CHUNK as u64,
        total_size: 70_000,
        last: false,
        last_seq: 3,
        uid: 6,
        sender: 6,
        receiver: 2,
        message_id: 61,
        token: "t",
    }
    .encode(&bytes(70_000, 1)[..CHUNK], &mut first);
    c.send_raw(&first).await;
    assert_eq!(c.recv().await.1["error"], 0);

    for (name, sender) in [
        ("../outside.txt", 6),
        ("../../outside.txt", 6),
        ("6/in.bin", 6),
        ("/etc/passwd", 6),
        ("..", 6),
        ("a\\b", 6),
        ("in.bin\0", 6),
        (".half.bin.part", 6),
        ("", 6),
        ("in.bin", -6),
    ] {
        let r = c.ask(1047, &down_req(name, 1, sender)).await;
        assert_eq!(r["error"], 1012, "{name:?}: {r}");
        assert!(r.get("data").is_none());
        let r = c.ask(1033, &avatar_req(name, 1, sender)).await;
        assert_eq!(r["error"], 1012, "{name:?}: {r}");
        assert!(r.get("data").is_none());
    }
    // A message whose name would leave the store: an error, never the size.
    srv.register_message(62, MessageInfo::new(6, 2, "../../outside.txt"))
        .unwrap();
    let r = c.ask(1045, &json!({"message_id": 62})).await;
    assert_eq!(r["error"], 1012, "{r}");
    // Avatar uploads refuse such names too (1014, nothing created).
    for name in ["../x.png", "/abs.png", "a/b.png", ".x.png"] {
        let r = c.ask(1031, &icon_req(name, 1, 6, b"abc", 3)).await;
        assert_eq!(r["error"], 1014, "{name:?}: {r}");
    }
    drop(c);
    srv.shutdown().await;
    assert_contained(tmp.path());
    assert_eq!(
        std::fs::read(tmp.path().join("outside.txt")).unwrap(),
        b"secret"
    );
}

fn icon_req(name: &str, seq: u32, uid: i64, chunk: &[u8], total: usize) -> Value {
    let max_seq = total.div_ceil(CHUNK).max(1) as u32;
    let trans = ((seq as usize - 1) * CHUNK + chunk.len()) as u64;
    let mut v = json!({
        "md5": "", "name": name, "seq": seq, "trans_size": trans, "total_size": total,
        "uid": uid, "last": i64::from(trans == total as u64), "data": B64.encode(chunk),
        "last_seq": max_seq,
    });
    if seq == 1 {
        v["token"] = "tok".into();
    }
    v
}

/// Uploads an avatar stop-and-wait with 1031, checking every 1032.
async fn upload_avatar(c: &mut Client, name: &str, uid: i64, data: &[u8]) {
    let md5 = md5_of(data);
    let max_seq = data.len().div_ceil(CHUNK).max(1) as u32;
    for seq in 1..=max_seq {
        let start = (seq as usize - 1) * CHUNK;
        let end = (start + CHUNK).min(data.len());
        let mut req = icon_req(name, seq, uid, &data[start..end], data.len());
        req["md5"] = md5.as_str().into();
        let r = c.ask(1031, &req).await;
        assert_eq!(
            r,
            json!({
                "error": 0, "total_size": data.len(), "seq": seq, "name": name,
                "trans_size": end, "last": i64::from(seq == max_seq), "md5": md5,
                "uid": uid, "last_seq": max_seq,
            })
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avatar_upload_then_download_round_trip() {
    let (tmp, root) = store_dir();
    let srv = server(&root, false).await;
    let mut c = Client::connect(&srv).await;
    let data = bytes(70_000, 9);
    upload_avatar(&mut c, "head.png", 5, &data).await;
    assert_eq!(std::fs::read(root.join("5/head.png")).unwrap(), data);

    let mut got = Vec::new();
    for seq in 1..=3u32 {
        let r = c.ask(1033, &avatar_req("head.png", seq, 5)).await;
        assert_eq!((&r["error"], &r["seq"]), (&json!(0), &json!(seq)), "{r}");
        got.extend(B64.decode(r["data"].as_str().unwrap()).unwrap());
        assert_eq!(
            (&r["total_size"], &r["current_size"], &r["is_last"]),
            (
                &json!("70000"),
                &json!(got.len().to_string()),
                &json!(seq == 3)
            )
        );
        assert_eq!(
            (&r["client_path"], &r["name"], &r["req_type"]),
            (&json!("/home/u/avatars"), &json!("head.png"), &json!("1"))
        );
    }
    assert!(got == data);

    // 1033 errors keep their codes (even deployed-style), with the echoes.
    let r = c.ask(1033, &avatar_req("head.png", 3, 5)).await;
    assert_eq!(
        r,
        json!({"error": 1017, "name": "head.png", "client_path": "/home/u/avatars", "req_type": "1"})
    );
    // The expected seq is one per name, shared with 1047 (as deployed).
    assert_eq!(c.ask(1033, &avatar_req("head.png", 1, 5)).await["seq"], 1);
    assert_eq!(c.ask(1047, &down_req("head.png", 2, 5)).await["seq"], 2);
    assert_eq!(
        c.ask(1033, &avatar_req("head.png", 2, 5)).await["error"],
        1017
    );

    // Tokens on seq 1 of 1031 and 1033: only `error` deployed-style.
    srv.set_token(5, "right");
    assert_eq!(
        c.ask(1031, &icon_req("h2.png", 1, 5, b"x", 1)).await,
        json!({"error": 1010})
    );
    assert_eq!(
        c.ask(1033, &avatar_req("head.png", 1, 5)).await,
        json!({"error": 1010})
    );
    assert_eq!(
        c.ask(1033, &avatar_req("head.png", 1, 8)).await,
        json!({"error": 1011})
    );
    let mut req = avatar_req("head.png", 1, 5);
    req["token"] = "right".into();
    assert_eq!(c.ask(1033, &req).await["seq"], 1);
    // Sizes as strings would crash the deployed server (asInt): 1001.
    let mut req = icon_req("h3.png", 1, 5, b"x", 1);
    req["total_size"] = "1".into();
    assert_eq!(c.ask(1031, &req).await["error"], 1001);
    assert_eq!(srv.stats().panics, 0);
    drop(c);
    srv.shutdown().await;
    assert_contained(tmp.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_faults_bend_the_replies() {
    let (_tmp, root) = store_dir();
    let srv = server(&root, true).await;
    let mut c = Client::connect(&srv).await;
    let data = bytes(3 * CHUNK, 4);
    upload(&mut c, 1, "f.bin", &data, 90).await;
    let data_of = |r: &Value| B64.decode(r["data"].as_str().unwrap());

    srv.set_download_fault("f.bin", DownloadFault::WrongSeq);
    let r = c.ask(1047, &down_req("f.bin", 1, 1)).await;
    assert_eq!((&r["error"], &r["seq"]), (&json!(0), &json!(2)));

    srv.set_download_fault("f.bin", DownloadFault::InvalidBase64);
    let r = c.ask(1047, &down_req("f.bin", 1, 1)).await;
    assert!(data_of(&r).is_err(), "{r}");

    srv.set_download_fault("f.bin", DownloadFault::OversizedData);
    let r = c.ask(1047, &down_req("f.bin", 1, 1)).await;
    assert_eq!(data_of(&r).unwrap().len(), CHUNK + 1024);

    srv.set_download_fault("f.bin", DownloadFault::TruncatedData);
    let r = c.ask(1047, &down_req("f.bin", 1, 1)).await;
    assert_eq!(data_of(&r).unwrap(), &data[..CHUNK / 2]);

    for hostile in ["../../etc/passwd", "/abs/path"] {
        srv.set_download_fault("f.bin", DownloadFault::HostileInfoName(hostile.into()));
        let r = c.ask(1045, &json!({"message_id": 90})).await;
        assert_eq!((&r["error"], &r["name"]), (&json!(0), &json!(hostile)));
    }

    srv.set_download_fault("f.bin", DownloadFault::DropReplies);
    c.send(1045, &json!({"message_id": 90})).await;
    c.send(1047, &down_req("f.bin", 1, 1)).await;
    c.expect_quiet().await;

    // One reply lost; the server moved on all the same.
    srv.set_download_fault("f.bin", DownloadFault::DropReply { seq: 2 });
    for seq in 1..=3 {
        c.send(1047, &down_req("f.bin", seq, 1)).await;
    }
    assert_eq!(c.recv().await.1["seq"], 1);
    assert_eq!(c.recv().await.1["seq"], 3);
    c.expect_quiet().await;
    let r = c.ask(1047, &down_req("f.bin", 2, 1)).await;
    assert_eq!(r["error"], 1017, "the name finished with seq 3");

    srv.clear_download_fault("f.bin");
    let got = download_pipelined(&mut c, "f.bin", 1, 3 * CHUNK).await;
    assert!(got == data);
    assert_eq!(srv.stats().replies_dropped, 3);
    srv.shutdown().await;
}

// ---------------------------------------------------------------- proptest

mod garbage {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::BoxedStrategy;

    #[path = "../garbage/mod.rs"]
    mod gen;

    const KEYS: &[&str] = &[
        "name",
        "seq",
        "message_id",
        "sender_id",
        "uid",
        "token",
        "trans_size",
        "total_size",
        "data",
        "last",
        "md5",
        "client_path",
        "req_type",
    ];

    fn value() -> BoxedStrategy<Value> {
        gen::value(-2..6, "(g\\.bin|\\.\\./g\\.bin|/g\\.bin|a/b|\\.g|\\.\\.|)")
    }

    /// A valid request of `id` for the file g.bin, with some fields
    /// replaced or removed.
    fn near_valid(id: u16) -> impl Strategy<Value = Value> {
        (1u32..=3, gen::edits(KEYS, value())).prop_map(move |(seq, edits)| {
            let v = match id {
                1045 => json!({"message_id": 1}),
                1047 => down_req("g.bin", seq, 1),
                1033 => avatar_req("g.bin", seq, 1),
                _ => icon_req("a.png", 1, 1, b"abc", 3),
            };
            gen::edited(v, edits)
        })
    }

    fn frame_strategy() -> impl Strategy<Value = (u16, Vec<u8>)> {
        let id = prop_oneof![Just(1045u16), Just(1047), Just(1031), Just(1033)];
        id.prop_flat_map(|id| (Just(id), gen::body(near_valid(id).boxed(), KEYS, value())))
    }

    async fn run(srv: &ServerHandle, frames: &[(u16, Vec<u8>)], want: &[u8]) {
        let mut c = Client::connect(srv).await;
        for (id, body) in frames {
            let mut out = Vec::new();
            frame::encode(MsgId(*id), body, &mut out);
            c.send_raw(&out).await;
            if *id != 1045 {
                // Exactly one reply each (1045s may or may not get one).
                let (rid, v) = loop {
                    match c.recv().await {
                        (1046, _) => continue,
                        r => break r,
                    }
                };
                assert_eq!(rid, id + 1, "{v}");
                assert!(v["error"].is_i64(), "{v}");
            }
        }
        drop(c);
        // The server still serves: a whole download on a new connection.
        let mut c = Client::connect(srv).await;
        let info = c.ask(1045, &json!({"message_id": 1})).await;
        assert_eq!(info["total_size"], "40000");
        let got = download_pipelined(&mut c, "g.bin", 1, 40_000).await;
        assert!(got == want);
    }

    #[test]
    fn garbage_download_and_avatar_requests_never_stop_the_server() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tmp, root) = store_dir();
        let want = bytes(40_000, 5);
        let srv = rt.block_on(async {
            let mut cfg = ServerConfig::new(&root);
            cfg.max_file_size = 1 << 20;
            cfg.storage = Storage::Positional;
            let srv = start("127.0.0.1:0", cfg).await.unwrap();
            let mut c = Client::connect(&srv).await;
            upload(&mut c, 1, "g.bin", &want, 1).await;
            srv
        });
        gen::run_cases(
            prop::collection::vec(frame_strategy(), 0..6),
            32,
            |frames| {
                rt.block_on(run(&srv, &frames, &want));
            },
        );
        assert_eq!(srv.stats().panics, 0);
        rt.block_on(srv.shutdown());
        assert_contained(tmp.path());
        assert_eq!(std::fs::read(root.join("1/g.bin")).unwrap(), want);
    }
}
