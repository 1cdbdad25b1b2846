//! Downloads end to end: files uploaded with a message id to the reference
//! server, then fetched back by message id (1045, pipelined 1047s).

mod common;

use std::path::Path;
use std::time::Duration;

use chatxfer::engine::{md5_of, DownloadSpec, Event, ServerStorage, WindowPolicy};
use chatxfer::runtime::ClientEvent;
use chatxfer_tools::linkemu::{LinkConfig, LinkEmulator, RandomCut};
use chatxfer_tools::server::Storage;
use common::*;

fn down_spec(name: &str, message_id: i64, md5: Option<String>) -> DownloadSpec {
    DownloadSpec {
        hold: false,
        name: name.into(),
        message_id,
        uid: 2,
        token: "tok".into(),
        md5,
        priority: 0,
        avatar: None,
        known: None,
    }
}

/// Uploads `files` (name, bytes) with message ids 100, 101, ... to `srv`.
async fn upload_all(srv: &TestServer, files: &Files, inputs: &[(String, Vec<u8>)]) {
    let (client, mut events) = start_client(client_config(
        srv.handle.local_addr(),
        ServerStorage::Positional,
    ));
    for (i, (name, bytes)) in inputs.iter().enumerate() {
        let path = files.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let mut sp = spec(name, &path);
        sp.message_id = 100 + i as i64;
        client.add_file(&path, sp).unwrap();
    }
    let names: Vec<String> = inputs.iter().map(|(n, _)| n.clone()).collect();
    let evs = wait_done(&mut events, &names, Duration::from_secs(300)).await;
    for n in &names {
        assert!(completed(&evs, n), "upload of {n} failed: {evs:?}");
    }
    client.shutdown(None).await;
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_download_byte_identical() {
    let srv = server(Storage::Positional, true).await;
    let files = Files::new();
    let sizes = [0usize, 1, CHUNK - 1, CHUNK, CHUNK + 1, 100 << 20];
    let inputs: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("s{i}.bin"), pattern(*n, 30 + i as u64)))
        .collect();
    upload_all(&srv, &files, &inputs).await;
    let out = tempfile::tempdir().unwrap();
    let (client, mut events) = start_client(client_config(
        srv.handle.local_addr(),
        ServerStorage::Positional,
    ));
    let mut names = Vec::new();
    for (i, (_, bytes)) in inputs.iter().enumerate() {
        let name = format!("d{i}");
        client
            .add_download(
                down_spec(&name, 100 + i as i64, Some(md5_of(bytes))),
                out.path(),
                None,
            )
            .unwrap();
        names.push(name);
    }
    let evs = wait_done(&mut events, &names, Duration::from_secs(300)).await;
    for (i, (file, bytes)) in inputs.iter().enumerate() {
        assert!(completed(&evs, &names[i]), "{file}: {evs:?}");
        assert!(read(out.path(), file) == *bytes, "{file} differs");
        assert!(!out.path().join(format!("{file}.part")).exists());
    }
    client.shutdown(None).await;
    srv.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cuts_during_downloads_never_corrupt() {
    let srv = server(Storage::Positional, false).await;
    let files = Files::new();
    let inputs = vec![
        ("a.bin".to_string(), pattern(300_001, 1)),
        ("b.bin".to_string(), pattern(170_000, 2)),
    ];
    upload_all(&srv, &files, &inputs).await;
    let mut cuts = 0;
    for trial in 0..50u64 {
        let emu = LinkEmulator::start(
            "127.0.0.1:0",
            srv.handle.local_addr(),
            LinkConfig {
                random_cut: Some(RandomCut {
                    seed: 1000 + trial,
                    min_bytes: 1,
                    max_bytes: 2_000,
                }),
                ..LinkConfig::default()
            },
        )
        .await
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut cfg = client_config(emu.local_addr(), ServerStorage::Positional);
        cfg.engine.window = WindowPolicy::Fixed(8);
        let (client, mut events) = start_client(cfg);
        let mut names = Vec::new();
        for (i, (_, bytes)) in inputs.iter().enumerate() {
            let name = format!("t{trial}-{i}");
            client
                .add_download(
                    down_spec(&name, 100 + i as i64, Some(md5_of(bytes))),
                    out.path(),
                    None,
                )
                .unwrap();
            names.push(name);
        }
        let evs = wait_done(&mut events, &names, Duration::from_secs(60)).await;
        for (i, (file, bytes)) in inputs.iter().enumerate() {
            assert!(completed(&evs, &names[i]), "trial {trial}: {file}: {evs:?}");
            assert!(
                read(out.path(), file) == *bytes,
                "trial {trial}: {file} differs"
            );
        }
        cuts += emu.stats().cuts;
        client.shutdown(None).await;
        emu.shutdown().await;
    }
    assert!(cuts >= 50, "only {cuts} cuts");
    srv.handle.shutdown().await;
}

/// Through the emulator at 40 ms / 200 Mbit/s, 64 MiB: pipelined downloads
/// use at least 80 % of the link (wire bytes) and beat one request per reply 5x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_download_fills_an_emulated_40ms_200mbit_link() {
    let srv = server(Storage::Positional, true).await;
    let files = Files::new();
    let big = ("v.bin".to_string(), pattern(64 << 20, 5));
    upload_all(&srv, &files, std::slice::from_ref(&big)).await;
    let mut rates = Vec::new();
    for (window, limit) in [
        (WindowPolicy::adaptive(), 64u64 << 20),
        (WindowPolicy::Fixed(1), 4 << 20),
    ] {
        let emu = LinkEmulator::start(
            "127.0.0.1:0",
            srv.handle.local_addr(),
            LinkConfig::parse_rtt_rate("40ms", "200mbit").unwrap(),
        )
        .await
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut cfg = client_config(emu.local_addr(), ServerStorage::Positional);
        cfg.engine.window = window;
        let (client, mut events) = start_client(cfg);
        let start = std::time::Instant::now();
        client
            .add_download(down_spec("d", 100, None), out.path(), None)
            .unwrap();
        // One request per reply would take minutes for 64 MiB: time the
        // first `limit` bytes (the rate is steady after the first chunk).
        let secs = loop {
            let ev = tokio::time::timeout(Duration::from_secs(300), events.recv())
                .await
                .unwrap()
                .unwrap();
            match ev {
                ClientEvent::Transfer(Event::Progress { acked, .. }) if acked >= limit => {
                    break start.elapsed().as_secs_f64()
                }
                ClientEvent::Transfer(Event::Completed { .. }) => {
                    break start.elapsed().as_secs_f64()
                }
                ClientEvent::Transfer(Event::Failed { failure, .. }) => panic!("{failure}"),
                _ => {}
            }
        };
        let wire = emu.stats().bytes_down as f64;
        let utilisation = wire * 8.0 / secs / 200e6;
        eprintln!(
            "download {window}: {:.1} Mbit/s on the wire over {:.1} MB, {:.0}% of the link",
            wire * 8.0 / secs / 1e6,
            wire / 1e6,
            utilisation * 100.0
        );
        rates.push(utilisation);
        client.shutdown(None).await;
        emu.shutdown().await;
    }
    assert!(
        rates[0] >= 0.8,
        "pipelined download reached {:.0}% of the link",
        rates[0] * 100.0
    );
    assert!(
        rates[0] >= 5.0 * rates[1],
        "pipelined / one-per-reply = {:.1}",
        rates[0] / rates[1]
    );
    srv.handle.shutdown().await;
}

/// A hostile server: names that would escape the destination, wrong seqs,
/// oversized, truncated or invalid data, and a 1045 nobody answers. Each
/// download fails with a clear error; nothing is written outside `out`, and
/// no partial file is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_server_gets_clear_failures_and_nothing_outside_the_destination() {
    use chatxfer_tools::server::DownloadFault;
    let faults = [
        DownloadFault::HostileInfoName("../../escape.bin".into()),
        DownloadFault::HostileInfoName("/tmp/chatxfer-abs-escape.bin".into()),
        DownloadFault::HostileInfoName("..\\\\win.bin".into()),
        DownloadFault::WrongSeq,
        DownloadFault::InvalidBase64,
        DownloadFault::OversizedData,
        DownloadFault::TruncatedData,
        DownloadFault::DropReplies,
    ];
    let srv = server(Storage::Positional, true).await;
    let files = Files::new();
    let inputs: Vec<(String, Vec<u8>)> = (0..faults.len())
        .map(|i| (format!("h{i}.bin"), pattern(100_000, 70 + i as u64)))
        .collect();
    upload_all(&srv, &files, &inputs).await;
    for (i, fault) in faults.iter().enumerate() {
        srv.handle.set_download_fault(&inputs[i].0, fault.clone());
    }
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let mut cfg = client_config(srv.handle.local_addr(), ServerStorage::Positional);
    cfg.engine.info_timeout = Duration::from_millis(500);
    let (client, mut events) = start_client(cfg);
    let mut names = Vec::new();
    for i in 0..faults.len() {
        let name = format!("h{i}");
        client
            .add_download(down_spec(&name, 100 + i as i64, None), &out, None)
            .unwrap();
        names.push(name);
    }
    let evs = wait_done(&mut events, &names, Duration::from_secs(60)).await;
    for (i, fault) in faults.iter().enumerate() {
        let failure = evs.iter().find_map(|e| match e {
            Event::Failed { name, failure } if *name == names[i] => Some(failure.to_string()),
            _ => None,
        });
        let failure = failure.unwrap_or_else(|| panic!("{fault:?} did not fail the download"));
        eprintln!("{fault:?}: {failure}");
    }
    // Only `out` (possibly empty) exists under root; no partial files remain.
    let mut seen = Vec::new();
    for entry in walk(root.path()) {
        seen.push(entry.strip_prefix(root.path()).unwrap().to_path_buf());
    }
    assert!(seen.iter().all(|p| p.starts_with("out")), "{seen:?}");
    assert!(
        seen.iter()
            .all(|p| p.extension().is_none_or(|e| e != "part")),
        "{seen:?}"
    );
    assert!(!Path::new("/tmp/chatxfer-abs-escape.bin").exists());
    client.shutdown(None).await;
    srv.handle.shutdown().await;
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.clone());
        if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

/// Avatars: uploaded with 1031 (stop-and-wait), downloaded with 1033.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avatar_upload_then_download_round_trip() {
    let srv = server(Storage::Positional, true).await;
    let files = Files::new();
    let (path, bytes) = files.make("me.png", 3 * CHUNK + 77, 11);
    let (client, mut events) = start_client(client_config(
        srv.handle.local_addr(),
        ServerStorage::Positional,
    ));
    let mut sp = spec("me.png", &path);
    sp.avatar = true;
    sp.token = "tok".into();
    client.add_file(&path, sp).unwrap();
    let evs = wait_done(
        &mut events,
        &["me.png".to_string()],
        Duration::from_secs(60),
    )
    .await;
    assert!(completed(&evs, "me.png"), "{evs:?}");
    assert_eq!(srv.stored_md5(1, "me.png"), Some(md5_of(&bytes)));
    let out = tempfile::tempdir().unwrap();
    let spec = DownloadSpec {
        hold: false,
        name: "avatar-me".into(),
        message_id: 0,
        uid: 1,
        token: "tok".into(),
        md5: Some(md5_of(&bytes)),
        priority: 0,
        avatar: Some(chatxfer::engine::AvatarRef {
            name: "me.png".into(),
            client_path: "/home/me/avatar.png".into(),
            req_type: "1".into(),
        }),
        known: None,
    };
    client.add_download(spec, out.path(), None).unwrap();
    let evs = wait_done(
        &mut events,
        &["avatar-me".to_string()],
        Duration::from_secs(60),
    )
    .await;
    assert!(completed(&evs, "avatar-me"), "{evs:?}");
    assert!(read(out.path(), "me.png") == bytes);
    client.shutdown(None).await;
    srv.handle.shutdown().await;
}
