//! The reference server as something one could expose (issue 13): a store
//! that follows no link, message ids that stay with their first uploader,
//! tokens on seq 1, and the resource limits (connections, timeouts, reply
//! queue, open `.part` descriptors, unfinished uploads per uid, expiry,
//! disk space). Timeouts are configured short and waited for by polling an
//! observable effect with a bounded deadline.

use std::path::Path;
use std::time::Duration;

use chatxfer::engine::md5_of;
use chatxfer::protocol::HEADER_LEN;
use chatxfer_tools::server::{
    parse_tokens, start, Limits, MessageInfo, ServerConfig, ServerHandle, LEGACY_INDEX_FILE,
    LINK_REFUSED, MESSAGE_ID_TAKEN, NO_SPACE, TOO_MANY_UPLOADS,
};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

mod wire;
use wire::*;

async fn server_with(root: &Path, f: impl FnOnce(&mut ServerConfig)) -> ServerHandle {
    let mut cfg = ServerConfig::new(root);
    f(&mut cfg);
    start("127.0.0.1:0", cfg).await.unwrap()
}

/// Polls `cond` until it holds; fails after [`WAIT`] (a bound, not a timing).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn down_req(name: &str, seq: u32, sender_id: i64) -> Value {
    json!({
        "name": name, "seq": seq, "trans_size": "0", "total_size": "0", "token": "tok",
        "sender_id": sender_id, "receiver_id": 2, "message_id": 1, "uid": 2,
    })
}

async fn ask(c: &mut Client, id: u16, v: &Value) -> Value {
    c.send_body(id, &serde_json::to_vec(v).unwrap()).await;
    let (rid, r) = c.recv().await;
    assert_eq!(rid, id + 1, "{r}");
    r
}

/// Sends `seq` and returns the reply's error code.
async fn code_of(c: &mut Client, up: &Up, id: u16, seq: u32) -> i64 {
    send(c, up, id, seq).await;
    let (rid, v) = c.recv().await;
    assert_eq!(rid, id + 1, "{v}");
    v["error"].as_i64().unwrap()
}

// --------------------------------------------------------------- safe store

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_symlink_is_neither_written_through_nor_served() {
    use std::os::unix::fs::symlink;
    let (tmp, root) = store_dir();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let secret = outside.join("secret.txt");
    std::fs::write(&secret, b"secret").unwrap();
    let srv = server_with(&root, |_| {}).await;
    let mut c = Client::connect(&srv).await;
    // Something of uid 7 exists, so its directory does.
    let first = Up::new("first.bin", bytes(100, 1), 100);
    upload(&mut c, &first, []).await;
    let dir7 = root.join("7");

    // A link where the .part of the next upload goes: not followed.
    symlink(&secret, dir7.join(".evil.bin.part")).unwrap();
    let evil = Up::new("evil.bin", bytes(300, 2), 100);
    assert_eq!(code_of(&mut c, &evil, 1041, 1).await, LINK_REFUSED.code());
    // A whole uid directory that is a link.
    symlink(&outside, root.join("8")).unwrap();
    let mut other = Up::new("x.bin", bytes(300, 3), 100);
    other.uid = 8;
    other.message_id = 8;
    assert_eq!(code_of(&mut c, &other, 1041, 1).await, LINK_REFUSED.code());
    // A link at a published name is replaced by the rename, not written through.
    symlink(&secret, dir7.join("pub.bin")).unwrap();
    let publ = Up::new("pub.bin", bytes(250, 4), 100);
    upload(&mut c, &publ, [2, 3]).await;
    let meta = std::fs::symlink_metadata(dir7.join("pub.bin")).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the link was replaced by the file"
    );
    assert_eq!(std::fs::read(dir7.join("pub.bin")).unwrap(), publ.data);

    // Reads: a link planted as a stored file is not served.
    symlink(&secret, dir7.join("link.txt")).unwrap();
    srv.register_message(500, MessageInfo::new(7, 2, "link.txt"))
        .unwrap();
    let r = ask(&mut c, 1045, &json!({"message_id": 500})).await;
    assert_eq!(r["error"], LINK_REFUSED.code(), "{r}");
    assert!(r.get("total_size").is_none(), "{r}");
    let r = ask(&mut c, 1047, &down_req("link.txt", 1, 7)).await;
    assert_eq!(r["error"], LINK_REFUSED.code(), "{r}");
    assert!(r.get("data").is_none(), "{r}");
    let r = ask(&mut c, 1047, &down_req("x.bin", 1, 8)).await;
    assert_eq!(r["error"], LINK_REFUSED.code(), "{r}");
    let avatar = json!({
        "name": "link.txt", "seq": 1, "trans_size": 0, "total_size": 0, "token": "tok",
        "uid": 7, "client_path": "/c", "req_type": "1",
    });
    let r = ask(&mut c, 1033, &avatar).await;
    assert_eq!(r["error"], LINK_REFUSED.code(), "{r}");
    assert!(r.get("data").is_none(), "{r}");

    assert_eq!(std::fs::read(&secret).unwrap(), b"secret");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing created outside the store"
    );
    assert_eq!(srv.stats().panics, 0);
    drop(c);
    srv.shutdown().await;
}

// ------------------------------------------------------------ message index

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_message_id_is_not_rebound_by_another_uid() {
    let (_tmp, root) = store_dir();
    let srv = server_with(&root, |_| {}).await;
    let mut c = Client::connect(&srv).await;
    let mut victim = Up::new("photo.jpg", bytes(250, 1), 100);
    victim.uid = 3;
    victim.message_id = 600;
    // The attacker starts before the victim completes (passes seq 1) ...
    let mut late = Up::new("evil.jpg", bytes(250, 2), 100);
    late.uid = 4;
    late.message_id = 600;
    chunk_ok(&mut c, &late, 1041, 1).await;
    upload(&mut c, &victim, [2, 3]).await;
    // ... and is refused at completion; another one at seq 1 already.
    chunk_ok(&mut c, &late, 1037, 2).await;
    assert_eq!(
        code_of(&mut c, &late, 1037, 3).await,
        MESSAGE_ID_TAKEN.code()
    );
    let mut early = Up::new("evil2.jpg", bytes(250, 3), 100);
    early.uid = 5;
    early.message_id = 600;
    assert_eq!(
        code_of(&mut c, &early, 1041, 1).await,
        MESSAGE_ID_TAKEN.code()
    );
    // The owner may upload again under the id.
    let mut again = Up::new("photo2.jpg", bytes(150, 4), 100);
    again.uid = 3;
    again.message_id = 600;
    upload(&mut c, &again, [2]).await;

    let r = ask(&mut c, 1045, &json!({"message_id": 600})).await;
    assert_eq!(
        (&r["error"], &r["sender_id"], &r["name"]),
        (&json!(0), &json!(3), &json!("photo2.jpg")),
        "{r}"
    );
    assert_eq!(srv.message(600).unwrap().sender_id, 3);
    // The receiver downloads what the 1046 names: the owner's file.
    let r = ask(&mut c, 1047, &down_req("photo2.jpg", 1, 3)).await;
    let data = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        r["data"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(data, again.data);
    drop(c);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_json_index_is_imported_once() {
    let (_tmp, root) = store_dir();
    std::fs::create_dir_all(root.join("3")).unwrap();
    std::fs::write(root.join("3/old.bin"), b"old bytes").unwrap();
    let legacy = json!({"version": 1, "messages": [[41, {
        "thread_id": 0, "sender_id": 3, "recv_id": 9, "name": "old.bin", "msg_type": 0, "status": 2
    }]]});
    std::fs::write(root.join(LEGACY_INDEX_FILE), legacy.to_string()).unwrap();
    let srv = server_with(&root, |_| {}).await;
    assert_eq!(srv.message(41), Some(MessageInfo::new(3, 9, "old.bin")));
    assert!(
        !root.join(LEGACY_INDEX_FILE).exists(),
        "renamed once imported"
    );
    let mut c = Client::connect(&srv).await;
    let r = ask(&mut c, 1045, &json!({"message_id": 41})).await;
    assert_eq!(r["total_size"], "9", "{r}");
    drop(c);
    srv.shutdown().await;
    // And it survives a restart from the database alone.
    let srv = server_with(&root, |_| {}).await;
    assert_eq!(srv.message(41), Some(MessageInfo::new(3, 9, "old.bin")));
    srv.shutdown().await;
}

// ------------------------------------------------------------------ tokens

#[test]
fn tokens_files_parse_and_bad_lines_are_named() {
    let t = parse_tokens("# uid token\n3 abc\n\n  4\tdef  \n").unwrap();
    assert_eq!((t[&3].as_str(), t[&4].as_str(), t.len()), ("abc", "def", 2));
    for (bad, line) in [
        ("3\n", "line 1"),
        ("3 a b\n", "line 1"),
        ("1 a\nx a\n", "line 2"),
        ("-1 a\n", "line 1"),
        ("1 a\n1 b\n", "line 2"),
    ] {
        let e = parse_tokens(bad).unwrap_err();
        assert!(e.starts_with(line), "{bad:?}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_only_the_owner_starts_an_upload() {
    let (_tmp, root) = store_dir();
    let srv = server_with(&root, |cfg| {
        cfg.tokens = Some(parse_tokens("7 right\n").unwrap());
    })
    .await;
    let mut c = Client::connect(&srv).await;
    let mut up = Up::new("t.bin", bytes(250, 1), 100);
    up.token = "wrong".into();
    assert_eq!(code_of(&mut c, &up, 1041, 1).await, 1010);
    up.uid = 8; // no token known for the uid
    assert_eq!(code_of(&mut c, &up, 1041, 1).await, 1011);
    up.uid = 7;
    // Seq 1 as 1037 carries no token: it cannot start an upload either.
    assert_eq!(code_of(&mut c, &up, 1037, 1).await, 1010);
    up.token = "right".into();
    upload(&mut c, &up, [2, 3]).await;
    assert_eq!(std::fs::read(up.path(&root)).unwrap(), up.data);
    // Downloads check it on seq 1 too (as deployed): wrong token, 1010.
    let mut req = down_req("t.bin", 1, 7);
    req["uid"] = json!(7);
    assert_eq!(ask(&mut c, 1047, &req).await["error"], 1010);
    req["token"] = json!("right");
    assert_eq!(ask(&mut c, 1047, &req).await["error"], 0);
    drop(c);
    srv.shutdown().await;
}

// ------------------------------------------------------------- connections

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_only_and_idle_connections_are_closed_by_the_timeouts() {
    let (_tmp, root) = store_dir();
    let srv = server_with(&root, |cfg| {
        cfg.limits.frame_timeout = Duration::from_millis(200);
        cfg.limits.idle_timeout = Duration::from_millis(400);
    })
    .await;
    // A header announcing 51,200 bytes, then nothing.
    let mut header_only = Client::connect(&srv).await;
    header_only
        .send_raw(&[0x04, 0x11, 0x00, 0x00, 0xc8, 0x00])
        .await;
    // Half a header.
    let mut half = Client::connect(&srv).await;
    half.send_raw(&[0x04, 0x11, 0x00]).await;
    let mut idle = Client::connect(&srv).await;
    header_only.expect_closed().await;
    half.expect_closed().await;
    idle.expect_closed().await;
    until("three timeouts counted", || srv.stats().timed_out == 3).await;
    // A connection that keeps working is not idle.
    let mut busy = Client::connect(&srv).await;
    let up = Up::new("slow.bin", bytes(1000, 1), 100);
    chunk_ok(&mut busy, &up, 1041, 1).await;
    for seq in 2..=10 {
        chunk_ok(&mut busy, &up, 1037, seq).await;
    }
    assert_eq!(std::fs::read(up.path(&root)).unwrap(), up.data);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limits_are_closed_while_others_get_in() {
    let (_tmp, root) = store_dir();
    let srv = server_with(&root, |cfg| {
        cfg.limits.max_connections = 6;
        cfg.limits.max_connections_per_ip = 3;
    })
    .await;
    let up = Up::new("ok.bin", bytes(300, 1), 100);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect_from(&srv, [127, 0, 0, 3]).await;
        chunk_ok(&mut c, &up, 1041, 1).await; // admitted and served
        held.push(c);
    }
    let mut fourth = Client::connect_from(&srv, [127, 0, 0, 3]).await;
    fourth.expect_closed().await;
    // Another address still gets in, up to the total.
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect_from(&srv, [127, 0, 0, 4]).await;
        chunk_ok(&mut c, &up, 1041, 1).await;
        others.push(c);
    }
    let mut over_total = Client::connect_from(&srv, [127, 0, 0, 5]).await;
    over_total.expect_closed().await;
    assert_eq!(srv.stats().refused_connections, 2);
    // A place freed is a place taken.
    drop(held.pop());
    until("a connection closed", || srv.stats().open_connections == 5).await;
    let mut c = Client::connect_from(&srv, [127, 0, 0, 5]).await;
    upload(&mut c, &up, [2, 3]).await;
    assert_eq!(std::fs::read(up.path(&root)).unwrap(), up.data);
    drop((held, others, c));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_stops_being_served() {
    let (_tmp, root) = store_dir();
    const CHUNKS: u32 = 2_000;
    std::fs::create_dir_all(root.join("7")).unwrap();
    // A sparse 64 MiB file: 2,000 download chunks of 32 KiB.
    std::fs::File::create(root.join("7/big.bin"))
        .unwrap()
        .set_len(u64::from(CHUNKS) * 32_768)
        .unwrap();
    let srv = server_with(&root, |cfg| {
        cfg.limits.write_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = Client::connect(&srv).await;
    let mut all = Vec::new();
    for seq in 1..=CHUNKS {
        let body = serde_json::to_vec(&down_req("big.bin", seq, 7)).unwrap();
        chatxfer::protocol::frame::encode(chatxfer::protocol::MsgId(1047), &body, &mut all);
    }
    // Written by a task, since the server stops reading: the write blocks.
    let mut s = c.s;
    let writer = tokio::spawn(async move {
        let _ = s.write_all(&all).await;
        s
    });
    until("the write timeout closed the connection", || {
        srv.stats().timed_out == 1
    })
    .await;
    // The server closes the socket once its reader stopped: the count is final.
    c.s = writer.await.unwrap();
    c.expect_closed().await;
    let served = srv.stats().download_requests;
    eprintln!("served {served} of {CHUNKS} pipelined 1047s before the write timeout");
    // The replies of what was served sit in the socket buffers (a few MiB);
    // without the bound every request would have been read and answered.
    assert!(
        served < u64::from(CHUNKS) / 2,
        "{served} of {CHUNKS} requests served to a peer that reads nothing"
    );
    srv.shutdown().await;
}

// ---------------------------------------------------------------- uploads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_parts_stay_under_the_cap_and_unfinished_uploads_are_capped() {
    let (_tmp, root) = store_dir();
    const CAP: usize = 8;
    let srv = server_with(&root, |cfg| {
        cfg.limits.max_open_parts = CAP;
        cfg.limits.max_unfinished_per_uid = 5;
        cfg.limits.max_unfinished_total = 100;
    })
    .await;
    let mut c = Client::connect(&srv).await;
    // 20 uids x 6 names: the sixth of each uid is over its cap.
    let mut ups = Vec::new();
    for uid in 0..20 {
        for n in 0..6 {
            let mut up = Up::new(&format!("f{n}.bin"), bytes(300, uid * 6 + n), 100);
            up.uid = i64::from(uid);
            up.message_id = i64::from(uid * 6 + n);
            let code = code_of(&mut c, &up, 1041, 1).await;
            if n < 5 {
                assert_eq!(code, 0);
                ups.push(up);
            } else {
                assert_eq!(code, TOO_MANY_UPLOADS.code());
            }
            assert!(srv.open_part_files() <= CAP, "{}", srv.open_part_files());
        }
    }
    assert_eq!(srv.unfinished_uploads(), 100);
    // The server's total is full too: a new uid gets the same answer.
    let mut extra = Up::new("x.bin", bytes(300, 7), 100);
    extra.uid = 99;
    extra.message_id = 5_000;
    assert_eq!(
        code_of(&mut c, &extra, 1041, 1).await,
        TOO_MANY_UPLOADS.code()
    );
    // Every upload completes, files reopened on demand, in reverse order
    // (the least recently used first).
    for up in ups.iter().rev() {
        upload_rest(&mut c, up).await;
        assert_eq!(std::fs::read(up.path(&root)).unwrap(), up.data);
        assert!(srv.open_part_files() <= CAP);
    }
    assert_eq!(srv.unfinished_uploads(), 0);
    // A uid below its cap again may start a new one.
    let mut up = Up::new("f5.bin", bytes(300, 1), 100);
    up.uid = 0;
    up.message_id = 1_000;
    chunk_ok(&mut c, &up, 1041, 1).await;
    drop(c);
    srv.shutdown().await;
}

async fn upload_rest(c: &mut Client, up: &Up) {
    for seq in 2..=up.max_seq() {
        chunk_ok(c, up, 1037, seq).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_expire_with_their_files() {
    let (_tmp, root) = store_dir();
    // Left by an earlier run, an hour old: removed soon after the start.
    std::fs::create_dir_all(root.join("9")).unwrap();
    let stale = root.join("9/.stale.bin.part");
    let f = std::fs::File::create(&stale).unwrap();
    f.set_len(1 << 30).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3_700))
        .unwrap();
    drop(f);
    let expiry = Duration::from_millis(1_000);
    let srv = server_with(&root, |cfg| {
        cfg.limits.upload_expiry = expiry;
    })
    .await;
    until("the stale .part is removed", || !stale.exists()).await;
    let mut c = Client::connect(&srv).await;
    let up = Up::new("gone.bin", bytes(300, 1), 100);
    chunk_ok(&mut c, &up, 1041, 1).await;
    drop(c); // the close writes the resume state
    let part = root.join("7/.gone.bin.part");
    let state = root.join("7/.gone.bin.state");
    until("the state is written", || state.exists()).await;
    // The counter moves once the sweep that removed the files returns.
    until("the abandoned upload is removed and counted", || {
        !part.exists() && !state.exists() && srv.stats().expired_uploads == 2
    })
    .await;
    assert_eq!(srv.unfinished_uploads(), 0);
    // Its record went with it: a resume is told to start again.
    let mut c = Client::connect(&srv).await;
    assert_eq!(code_of(&mut c, &up, 1043, 2).await, 1012);
    // An upload that keeps sending chunks does not expire.
    let live = Up::new("live.bin", bytes(1_500, 2), 100);
    chunk_ok(&mut c, &live, 1041, 1).await;
    for seq in 2..=live.max_seq() {
        chunk_ok(&mut c, &live, 1037, seq).await;
        // The pace of a slow client: 15 chunks span 1.5 expiry times.
        tokio::time::sleep(expiry / 10).await;
    }
    assert_eq!(std::fs::read(live.path(&root)).unwrap(), live.data);
    drop(c);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_size_over_the_free_space_is_refused() {
    let (_tmp, root) = store_dir();
    let srv = server_with(&root, |cfg| {
        cfg.limits = Limits {
            min_free_space: u64::MAX / 2,
            ..Limits::default()
        };
    })
    .await;
    let mut c = Client::connect(&srv).await;
    let up = Up::new("big.bin", bytes(300, 1), 100);
    let v = expect_error(
        &mut c,
        1041,
        &up.frame(1041, 1)[HEADER_LEN..],
        NO_SPACE.code(),
    )
    .await;
    assert_eq!(v["name"], "big.bin");
    assert!(!root.join("7/.big.bin.part").exists());
    assert_eq!(srv.unfinished_uploads(), 0);
    // An empty file needs no space.
    let empty = Up::new("empty.bin", Vec::new(), 100);
    upload(&mut c, &empty, []).await;
    assert_eq!(
        md5_of(&std::fs::read(empty.path(&root)).unwrap()),
        empty.md5
    );
    drop(c);
    srv.shutdown().await;
}
