//! The reference ResourceServer over real sockets, driven by the tiny
//! hand-written client of `wire/`.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use chatxfer::engine::md5_of;
use chatxfer::protocol::{HEADER_LEN, MAX_BODY_LEN};
use chatxfer_tools::server::{start, ServerConfig, ServerHandle, Storage, MD5_MISMATCH};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

mod wire;
use wire::*;

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_of_edge_sizes_are_stored_byte_identical() {
    let (tmp, root) = store_dir();
    let srv = server(&root, Storage::Positional).await;
    let mut c = Client::connect(&srv).await;
    let sizes = [0usize, 1, 32_767, 32_768, 32_769, 1 << 20];
    for (i, &size) in sizes.iter().enumerate() {
        let up = Up::new(&format!("f{size}.bin"), bytes(size, i as u32), 32_768);
        upload(&mut c, &up, 2..=up.max_seq()).await;
        assert_eq!(
            std::fs::read(up.path(&root)).unwrap(),
            up.data,
            "size {size}"
        );
    }
    drop(c);
    let st = srv.stats();
    assert_eq!((st.files_completed, st.errors_sent, st.panics), (6, 0, 0));
    assert_eq!(st.bytes_written, sizes.iter().sum::<usize>() as u64);
    srv.shutdown().await;
    // Only the published files: no .part, no .state.
    let mut want: Vec<String> = sizes.iter().map(|s| format!("7/f{s}.bin")).collect();
    want.sort();
    assert_eq!(assert_contained(tmp.path()), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_carry_the_deployed_fields_and_types() {
    let (_tmp, root) = store_dir();
    let srv = server(&root, Storage::Positional).await;
    let mut c = Client::connect(&srv).await;
    let up = Up::new("types.bin", bytes(2500, 1), 1000);
    let r1042 = chunk_ok(&mut c, &up, 1041, 1).await;
    let r1038 = chunk_ok(&mut c, &up, 1037, 2).await;
    let r1044 = chunk_ok(&mut c, &up, 1043, 3).await;
    for (v, last) in [(&r1042, 0), (&r1038, 0), (&r1044, 1)] {
        assert_eq!(v["md5"], up.md5);
        assert_eq!(
            (&v["uid"], &v["sender"], &v["receiver"]),
            (&json!(7), &json!(7), &json!(2))
        );
        assert_eq!(v["last"], last);
    }
    assert!(r1042.get("total_size").is_none() && r1042.get("trans_size").is_none());
    assert_eq!(
        (&r1038["total_size"], &r1038["trans_size"]),
        (&json!("2500"), &json!("2000"))
    );
    assert_eq!(
        (&r1044["total_size"], &r1044["trans_size"]),
        (&json!(2500), &json!(2500))
    );
    assert_eq!(std::fs::read(up.path(&root)).unwrap(), up.data);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_duplicated_chunks_are_harmless() {
    let (tmp, root) = store_dir();
    let srv = server(&root, Storage::Positional).await;
    let mut c = Client::connect(&srv).await;
    let up = Up::new("shuffled.bin", bytes(9_500, 2), 1000);
    chunk_ok(&mut c, &up, 1041, 1).await;
    // A duplicate seq 1 mid-way keeps what was received; 6 completes the
    // file and the duplicates after it are acknowledged without a write.
    for (id, seq) in [
        (1037, 5),
        (1037, 3),
        (1041, 1),
        (1037, 3),
        (1043, 10),
        (1037, 2),
    ] {
        chunk_ok(&mut c, &up, id, seq).await;
    }
    for seq in [9, 4, 4, 8, 7, 6, 6, 10, 1] {
        chunk_ok(&mut c, &up, if seq == 1 { 1041 } else { 1037 }, seq).await;
    }
    assert_eq!(std::fs::read(up.path(&root)).unwrap(), up.data);
    let done = srv.completed();
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].md5.as_str(), done[0].size),
        (up.md5.as_str(), 9_500)
    );
    assert_eq!(srv.stats().files_completed, 1);
    srv.shutdown().await;
    assert_eq!(assert_contained(tmp.path()), vec!["7/shuffled.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_shutdown_continues_with_1043() {
    let (tmp, root) = store_dir();
    let up = Up::new("resume.bin", bytes(39_500, 3), 1000);
    let srv = server(&root, Storage::Positional).await;
    let mut c = Client::connect(&srv).await;
    upload(&mut c, &up, [2, 3, 4, 6, 5, 7, 8, 9, 10, 12, 11]).await;
    chunk_ok(&mut c, &up, 1037, 20).await; // acknowledged beyond a gap
    srv.shutdown().await;
    c.expect_closed().await;
    assert_eq!(
        assert_contained(tmp.path()),
        vec!["7/.resume.bin.part", "7/.resume.bin.state"],
        "state saved, nothing published"
    );
    let state: Value =
        serde_json::from_slice(&std::fs::read(root.join("7/.resume.bin.state")).unwrap()).unwrap();
    assert_eq!(state["received"], json!([[1, 12], [20, 20]]));
    assert_eq!(
        (&state["chunk"], &state["total_size"]),
        (&json!(1000), &json!(39_500))
    );

    let srv = server(&root, Storage::Positional).await;
    let mut c = Client::connect(&srv).await;
    chunk_ok(&mut c, &up, 1043, 13).await;
    assert!(
        !root.join("7/.resume.bin.state").exists(),
        "a state goes once it is stale"
    );
    for seq in (14..=40).filter(|&s| s != 20) {
        chunk_ok(&mut c, &up, 1037, seq).await;
    }
    assert_eq!(std::fs::read(up.path(&root)).unwrap(), up.data);
    assert_eq!(srv.stats().files_completed, 1);
    drop(c);
    srv.shutdown().await;
    assert_eq!(assert_contained(tmp.path()), vec!["7/resume.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_state_a_resume_gets_1012_and_seq_1_starts_again() {
    // A crash leaves no state (it exists only while exact): simulated by
    // deleting it after a clean shutdown.
    let (_tmp, root) = store_dir();
    let up = Up::new("crash.bin", bytes(5_000, 4), 1000);
    let srv = server(&root, Storage::Positional).await;
    let mut c = Client::connect(&srv).await;
    upload(&mut c, &up, [2, 3]).await;
    srv.shutdown().await;
    std::fs::remove_file(root.join("7/.crash.bin.state")).unwrap();

    let srv = server(&root, Storage::Positional).await;
    let mut c = Client::connect(&srv).await;
    let v = expect_error(&mut c, 1043, &up.frame(1043, 4)[HEADER_LEN..], 1012).await;
    assert_eq!((&v["name"], &v["seq"]), (&json!("crash.bin"), &json!(4)));
    upload(&mut c, &up, 2..=5).await;
    assert_eq!(std::fs::read(up.path(&root)).unwrap(), up.data);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_connection_closing_late_keeps_the_new_connections_record() {
    // A cut resets the client at once; the server sees the old connection's
    // EOF up to 500 ms later. Meanwhile the client restarted the file from
    // seq 1 on a new connection. The old connection's close must not drop
    // the record the new one is using: neither a published one (the old
    // connection had completed the file, its replies were lost) nor one in
    // progress.
    let (tmp, root) = store_dir();
    let srv = server(&root, Storage::Positional).await;
    for (name, old_seqs) in [("done.bin", 2..=5), ("active.bin", 2..=3)] {
        let up = Up::new(name, bytes(5_000, 6), 1000);
        let mut old = Client::connect(&srv).await;
        upload(&mut old, &up, old_seqs).await;
        let mut new = Client::connect(&srv).await;
        upload(&mut new, &up, [2]).await;
        drop(old);
        until_open_connections(&srv, 1).await;
        chunk_ok(&mut new, &up, 1037, 3).await;
        chunk_ok(&mut new, &up, 1037, 4).await;
        // Another connection using the file comes and goes mid-way.
        let mut other = Client::connect(&srv).await;
        chunk_ok(&mut other, &up, 1037, 4).await;
        drop(other);
        until_open_connections(&srv, 1).await;
        chunk_ok(&mut new, &up, 1037, 5).await;
        assert_eq!(std::fs::read(up.path(&root)).unwrap(), up.data, "{name}");
        drop(new);
        until_open_connections(&srv, 0).await;
    }
    let st = srv.stats();
    assert_eq!((st.files_completed, st.errors_sent, st.panics), (2, 0, 0));
    srv.shutdown().await;
    assert_eq!(
        assert_contained(tmp.path()),
        vec!["7/active.bin", "7/done.bin"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_mismatch_is_refused_and_nothing_is_published() {
    let (tmp, root) = store_dir();
    let srv = server(&root, Storage::Positional).await;
    let mut c = Client::connect(&srv).await;
    let mut up = Up::new("liar.bin", bytes(2_500, 5), 1000);
    up.md5 = md5_of(b"something else");
    chunk_ok(&mut c, &up, 1041, 1).await;
    chunk_ok(&mut c, &up, 1037, 3).await;
    let v = expect_error(
        &mut c,
        1037,
        &up.frame(1037, 2)[HEADER_LEN..],
        MD5_MISMATCH.code(),
    )
    .await;
    assert_eq!((&v["name"], &v["seq"]), (&json!("liar.bin"), &json!(2)));
    // A late chunk of the same upload gets the same answer.
    expect_error(
        &mut c,
        1037,
        &up.frame(1037, 3)[HEADER_LEN..],
        MD5_MISMATCH.code(),
    )
    .await;
    let st = srv.stats();
    assert_eq!((st.files_completed, st.files_failed), (0, 1));
    drop(c);
    srv.shutdown().await;
    assert_eq!(assert_contained(tmp.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_their_codes_while_another_client_is_served() {
    let (tmp, root) = store_dir();
    let srv = server(&root, Storage::Positional).await;
    let mut good = Client::connect(&srv).await;
    let good_up = Up::new("good.bin", bytes(40_000, 6), 1000);
    chunk_ok(&mut good, &good_up, 1041, 1).await;
    let mut good_seq = 1;

    let mut bad = Client::connect(&srv).await;
    let victim = Up::new("victim.bin", bytes(250, 7), 100);
    chunk_ok(&mut bad, &victim, 1041, 1).await;
    let with = |up: &Up, id: u16, seq: u32, f: &dyn Fn(&mut Value)| {
        let mut v = up.json(id, seq);
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let other = Up::new("other.bin", bytes(10, 8), 100);
    let named = |name: &str| {
        let name = name.to_owned();
        with(&other, 1041, 1, &move |v| v["name"] = json!(name))
    };
    let cases: Vec<(u16, Vec<u8>, i64)> = vec![
        (1041, b"{not json".to_vec(), 1001),
        (1041, b"[1,2,3]".to_vec(), 1001),
        (
            1041,
            with(&other, 1041, 1, &|v| {
                v.as_object_mut().unwrap().remove("data");
            }),
            1001,
        ),
        (
            1037,
            with(&victim, 1037, 2, &|v| v["seq"] = json!("2")),
            1001,
        ),
        (
            1037,
            with(&victim, 1037, 2, &|v| v["uid"] = json!("7")),
            1001,
        ),
        (1043, with(&victim, 1037, 2, &|_| {}), 1001), // 1043 with string sizes
        (
            1043,
            with(&victim, 1043, 2, &|v| v["total_size"] = json!(1u64 << 31)),
            1001,
        ),
        (1041, named(""), 1014),
        (1041, named("a/b"), 1014),
        (1041, named("a\\b"), 1014),
        (1041, named(".."), 1014),
        (1041, named("a..b"), 1014),
        (1041, named("../../escape"), 1014),
        (1041, named("x\0y"), 1014),
        (1041, named(".hidden"), 1014),
        (1041, with(&other, 1041, 1, &|v| v["uid"] = json!(-1)), 1011),
        (
            1041,
            with(&other, 1041, 1, &|v| v["data"] = json!("!!not base64")),
            1001,
        ),
        (
            1041,
            with(&other, 1041, 1, &|v| v["md5"] = json!("xyz")),
            1001,
        ),
        (1037, with(&victim, 1037, 2, &|v| v["seq"] = json!(0)), 1017),
        (1037, with(&victim, 1037, 3, &|v| v["seq"] = json!(4)), 1017),
        (
            1037,
            with(&victim, 1037, 2, &|v| v["name"] = json!("norecord.bin")),
            1012,
        ),
        (
            1037,
            with(&victim, 1037, 2, &|v| v["md5"] = json!(md5_of(b"x"))),
            1012,
        ),
        (
            1037,
            with(&victim, 1037, 2, &|v| v["trans_size"] = json!("150")),
            1018,
        ),
        (
            1037,
            with(&victim, 1037, 2, &|v| v["total_size"] = json!("251")),
            1018,
        ),
        (
            1037,
            with(&victim, 1037, 2, &|v| v["last"] = json!(1)),
            1018,
        ),
        (
            1037,
            with(&victim, 1037, 3, &|v| v["data"] = json!("QUJD")),
            1018,
        ), // 3 bytes, 50 expected
        // 101 bytes where the chunk is 100:
        (
            1037,
            with(&victim, 1037, 2, &|v| {
                v["data"] = json!(base64::engine::general_purpose::STANDARD.encode([0u8; 101]));
                v["trans_size"] = json!("201");
            }),
            1018,
        ),
        (
            1041,
            with(&other, 1041, 1, &|v| v["total_size"] = json!("5")),
            1018,
        ), // longer than the file
        (
            1041,
            with(&other, 1041, 1, &|v| {
                v["total_size"] = json!(u64::MAX.to_string())
            }),
            1018,
        ),
    ];
    for (id, body, code) in &cases {
        let v = expect_error(&mut bad, *id, body, *code).await;
        if let Ok(req) = serde_json::from_slice::<Value>(body) {
            if let (Some(name), Some(seq)) = (req["name"].as_str(), req["seq"].as_u64()) {
                assert_eq!(
                    (v["name"].as_str(), v["seq"].as_u64()),
                    (Some(name), Some(seq)),
                    "{v}"
                );
            }
        }
        good_seq += 1;
        chunk_ok(&mut good, &good_up, 1037, good_seq).await;
    }
    // The victim is intact after all that.
    chunk_ok(&mut bad, &victim, 1037, 2).await;
    chunk_ok(&mut bad, &victim, 1037, 3).await;
    assert_eq!(std::fs::read(victim.path(&root)).unwrap(), victim.data);

    // A body of exactly the limit is served; one byte more closes the connection.
    let big = Up::new("big.bin", bytes(32_768, 9), 32_768);
    let padded = |n: usize| {
        let mut body = big.frame(1041, 1)[HEADER_LEN..].to_vec();
        body.resize(n, b' ');
        body
    };
    bad.send_body(1041, &padded(MAX_BODY_LEN)).await;
    assert_eq!(bad.recv().await.1["error"], 0);
    bad.send_body(1041, &padded(MAX_BODY_LEN + 1)).await;
    bad.expect_closed().await;
    let mut huge = Client::connect(&srv).await;
    huge.send_raw(&[0x04, 0x11, 0xff, 0xff, 0xff, 0xff, b'{'])
        .await;
    huge.expect_closed().await;

    for seq in good_seq + 1..=40 {
        chunk_ok(&mut good, &good_up, 1037, seq).await;
    }
    assert_eq!(std::fs::read(good_up.path(&root)).unwrap(), good_up.data);
    let st = srv.stats();
    assert_eq!((st.closed_bad_input, st.panics), (2, 0));
    assert_eq!(st.errors_sent, cases.len() as u64);
    drop((good, bad, huge));
    srv.shutdown().await;
    assert_eq!(
        assert_contained(tmp.path()),
        vec!["7/big.bin", "7/good.bin", "7/victim.bin"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_style_errors_carry_only_the_code() {
    let (_tmp, root) = store_dir();
    let mut cfg = ServerConfig::new(&root);
    cfg.named_errors = false;
    let srv = start("127.0.0.1:0", cfg).await.unwrap();
    let mut c = Client::connect(&srv).await;
    let up = Up::new("n.bin", bytes(300, 1), 100);
    let v = expect_error(&mut c, 1037, &up.frame(1037, 2)[HEADER_LEN..], 1012).await;
    assert_eq!(v, json!({"error": 1012}));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_ignored_silence_and_injected_errors() {
    let (_tmp, root) = store_dir();
    let srv = server(&root, Storage::Positional).await;
    let mut c = Client::connect(&srv).await;
    let up = Up::new("s.bin", bytes(500, 2), 100);
    c.send_body(1045, br#"{"message_id":1}"#).await;
    c.send_body(4242, b"whatever").await;
    chunk_ok(&mut c, &up, 1041, 1).await; // the first reply is this one

    srv.set_silent(true);
    send(&mut c, &up, 1037, 2).await;
    assert!(
        c.try_recv(Duration::from_millis(300)).await.is_none(),
        "silent"
    );
    srv.set_silent(false);
    chunk_ok(&mut c, &up, 1037, 3).await; // seq 2 was stored all the same

    srv.inject_error("s.bin", chatxfer::protocol::ErrorCode::FileSaveError);
    expect_error(&mut c, 1037, &up.frame(1037, 4)[HEADER_LEN..], 1013).await;
    srv.clear_injected_error("s.bin");
    chunk_ok(&mut c, &up, 1037, 4).await;
    chunk_ok(&mut c, &up, 1037, 5).await;
    assert_eq!(std::fs::read(up.path(&root)).unwrap(), up.data);
    let st = srv.stats();
    assert_eq!(
        (
            st.ignored_frames,
            st.unknown_messages,
            st.replies_dropped,
            st.errors_sent
        ),
        (1, 1, 1, 1)
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_strict_stores_like_the_deployed_server_and_counts_violations() {
    let (_tmp, root) = store_dir();
    let srv = server(&root, Storage::AppendStrict).await;
    let mut c = Client::connect(&srv).await;

    let fine = Up::new("fine.bin", bytes(2_500, 1), 1000);
    upload(&mut c, &fine, [2, 3]).await;
    assert_eq!(std::fs::read(fine.path(&root)).unwrap(), fine.data);
    assert_eq!(srv.violations(), 0);

    let dup = Up::new("dup.bin", bytes(2_500, 2), 1000);
    upload(&mut c, &dup, [2, 2, 3]).await;
    assert_eq!(srv.violations(), 1, "a duplicate");
    assert_eq!(
        std::fs::read(dup.path(&root)).unwrap().len(),
        3_500,
        "appended twice"
    );

    let swapped = Up::new("swapped.bin", bytes(2_500, 3), 1000);
    upload(&mut c, &swapped, [3, 2]).await;
    assert_eq!(srv.violations(), 3, "3 after 1, then 2 after 3");

    // Seq != 1 without a record: 1012, as deployed.
    let none = Up::new("none.bin", bytes(2_500, 4), 1000);
    expect_error(&mut c, 1037, &none.frame(1037, 2)[HEADER_LEN..], 1012).await;

    let done = srv.completed();
    let by_name = |n: &str| done.iter().find(|f| f.name == n).unwrap().clone();
    assert_eq!(by_name("fine.bin").md5, fine.md5);
    assert_ne!(by_name("dup.bin").md5, dup.md5);
    assert_eq!(
        by_name("dup.bin").md5,
        md5_of(&std::fs::read(dup.path(&root)).unwrap())
    );
    assert_ne!(by_name("swapped.bin").md5, swapped.md5);
    assert_eq!(srv.stats().files_completed, 3);
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
        "md5",
        "seq",
        "trans_size",
        "total_size",
        "last",
        "last_seq",
        "data",
        "uid",
        "sender",
        "token",
    ];

    fn value() -> BoxedStrategy<Value> {
        gen::value(-3..8, "(p[0-3]|\\.\\./p|a/b|\\.x|)")
    }

    /// A valid chunk of one of four small files (so records, duplicates and
    /// completions happen across cases), with some fields replaced or removed.
    fn near_valid() -> impl Strategy<Value = Value> {
        (0u32..4, 1u32..=3, gen::edits(KEYS, value())).prop_map(|(n, seq, edits)| {
            let mut up = Up::new(&format!("p{n}"), bytes(20, n), 8);
            up.uid = 3;
            gen::edited(up.json(1037, seq), edits)
        })
    }

    #[derive(Debug, Clone)]
    struct Case {
        frames: Vec<(u16, Vec<u8>)>,
        trailing: Vec<u8>,
    }

    fn case() -> impl Strategy<Value = Case> {
        let id = prop_oneof![
            Just(1041u16),
            Just(1037),
            Just(1043),
            Just(1045),
            any::<u16>()
        ];
        let body = gen::body(near_valid().boxed(), KEYS, value());
        (
            prop::collection::vec((id, body), 0..6),
            prop::collection::vec(any::<u8>(), 0..32),
        )
            .prop_map(|(frames, trailing)| Case { frames, trailing })
    }

    async fn run(srv: &ServerHandle, root: &Path, case: &Case, n: u32) {
        let mut c = Client::connect(srv).await;
        for (id, body) in &case.frames {
            c.send_body(*id, body).await;
            // Every request but 1045 gets exactly one reply (1045: only for
            // a known message id, and this server knows none).
            if matches!(id, 1031 | 1033 | 1037 | 1041 | 1043 | 1047) {
                let (rid, v) = loop {
                    // A 1045 with the id of an uploaded file gets a 1046.
                    match c.recv().await {
                        (1046, _) => continue,
                        r => break r,
                    }
                };
                assert_eq!(rid, id + 1);
                assert!(v["error"].is_i64(), "{v}");
            }
        }
        // Bytes that break framing: the server waits or closes, and closes
        // once we stop sending.
        c.send_raw(&case.trailing).await;
        let _ = c.s.shutdown().await;
        c.expect_closed().await;

        let mut c = Client::connect(srv).await;
        let up = Up::new(&format!("ok{n}.bin"), bytes(700, n), 256);
        upload(&mut c, &up, [2, 3]).await;
        assert_eq!(std::fs::read(up.path(root)).unwrap(), up.data);
    }

    #[test]
    fn garbage_never_stops_the_server() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tmp, root) = store_dir();
        let srv = rt.block_on(async {
            let mut cfg = ServerConfig::new(&root);
            cfg.max_file_size = 1 << 20;
            start("127.0.0.1:0", cfg).await.unwrap()
        });
        let n = std::sync::atomic::AtomicU32::new(0);
        gen::run_cases(case(), 32, |case| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rt.block_on(run(&srv, &root, &case, n));
        });
        assert_eq!(srv.stats().panics, 0);
        rt.block_on(srv.shutdown());
        assert_contained(tmp.path());
    }
}
