//! End-to-end: the runtime's client against the reference server over TCP,
//! directly and through the link emulator, with faults.

mod common;

use std::time::Duration;

use chatxfer::engine::{md5_of, Event, Failure, ServerStorage, WindowPolicy};
use chatxfer::protocol::ErrorCode;
use chatxfer::runtime::ClientEvent;
use chatxfer_tools::linkemu::{LinkConfig, LinkEmulator, RandomCut};
use chatxfer_tools::server::Storage;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_around_chunk_boundaries_arrive_byte_identical() {
    let srv = server(Storage::Positional, true).await;
    let files = Files::new();
    let (client, mut events) = start_client(client_config(
        srv.handle.local_addr(),
        ServerStorage::Positional,
    ));
    let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 10 << 20, 100 << 20];
    let mut names = Vec::new();
    let mut md5s = Vec::new();
    for (i, len) in sizes.iter().enumerate() {
        let name = format!("f{i}-{len}.bin");
        let (path, bytes) = files.make(&name, *len, i as u64);
        md5s.push(md5_of(&bytes));
        client.add_file(&path, spec(&name, &path)).unwrap();
        names.push(name);
    }
    let evs = wait_done(&mut events, &names, Duration::from_secs(300)).await;
    for (name, md5) in names.iter().zip(&md5s) {
        assert!(completed(&evs, name), "{name} did not complete: {evs:?}");
        assert_eq!(srv.stored_md5(1, name).as_ref(), Some(md5), "{name}");
    }
    client.shutdown(None).await;
    srv.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_files_with_priorities_all_progress_and_complete() {
    let srv = server(Storage::Positional, true).await;
    // A 100 Mbit/s link so the files share it for a while.
    let emu = LinkEmulator::start(
        "127.0.0.1:0",
        srv.handle.local_addr(),
        LinkConfig::parse_rtt_rate("4ms", "100mbit").unwrap(),
    )
    .await
    .unwrap();
    let files = Files::new();
    let (client, mut events) =
        start_client(client_config(emu.local_addr(), ServerStorage::Positional));
    let mut names = Vec::new();
    let mut md5s = Vec::new();
    for i in 0..20u64 {
        let name = format!("m{i}.bin");
        let len = 200_000 + (i as usize % 5) * 150_000;
        let (path, bytes) = files.make(&name, len, 100 + i);
        md5s.push(md5_of(&bytes));
        let mut sp = spec(&name, &path);
        sp.priority = if i % 5 == 0 { 4 } else { 0 };
        client.add_file(&path, sp).unwrap();
        names.push(name);
    }
    let evs = wait_done(&mut events, &names, Duration::from_secs(120)).await;
    // Fair: by the time half of all bytes are acknowledged, every file has
    // progressed (none waits for the others to finish).
    let total: u64 = (0..20u64).map(|i| 200_000 + (i % 5) * 150_000).sum();
    let mut acked = std::collections::HashMap::new();
    for e in &evs {
        if let Event::Progress { name, acked: a, .. } = e {
            acked.insert(name.clone(), *a);
            if acked.values().sum::<u64>() >= total / 2 {
                break;
            }
        }
    }
    for name in &names {
        assert!(
            acked.get(name).copied().unwrap_or(0) > 0,
            "{name} starved: {acked:?}"
        );
    }
    // Weighted: priority 4 gets five chunks per turn to priority 0's one, so
    // at that point the high-priority files are further along (a generous 1.5x).
    let fraction = |i: u64| {
        let len = 200_000 + (i % 5) * 150_000;
        acked.get(&format!("m{i}.bin")).copied().unwrap_or(0) as f64 / len as f64
    };
    let mean = |ids: Vec<u64>| ids.iter().map(|i| fraction(*i)).sum::<f64>() / ids.len() as f64;
    let high = mean((0..20).filter(|i| i % 5 == 0).collect());
    let low = mean((0..20).filter(|i| i % 5 != 0).collect());
    println!("at half the bytes: priority 4 files {high:.2} done, priority 0 files {low:.2}");
    assert!(
        high >= 1.5 * low,
        "priority 4 {high:.2} vs priority 0 {low:.2}"
    );
    for (name, md5) in names.iter().zip(&md5s) {
        assert_eq!(srv.stored_md5(1, name).as_ref(), Some(md5), "{name}");
    }
    client.shutdown(None).await;
    emu.shutdown().await;
    srv.handle.shutdown().await;
}

/// Seeded random cuts, 50 trials per storage mode: every file completes
/// byte-identical; against the appending test peer (with the production
/// reconnect backoff) no chunk is written twice or out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cuts_never_lose_or_duplicate_data() {
    let files = Files::new();
    let inputs: Vec<_> = (0..3)
        .map(|i| files.make(&format!("c{i}.bin"), 90_000 + i * 70_001, 500 + i as u64))
        .collect();
    for (storage, engine_storage) in [
        (Storage::AppendStrict, ServerStorage::Appending),
        (Storage::Positional, ServerStorage::Positional),
    ] {
        let mut total_cuts = 0;
        for trial in 0..50u64 {
            let srv = server(storage, false).await;
            let emu = LinkEmulator::start(
                "127.0.0.1:0",
                srv.handle.local_addr(),
                LinkConfig {
                    random_cut: Some(RandomCut {
                        seed: trial,
                        min_bytes: 1,
                        max_bytes: 900_000,
                    }),
                    ..LinkConfig::default()
                },
            )
            .await
            .unwrap();
            let mut cfg = client_config(emu.local_addr(), engine_storage);
            cfg.engine.window = WindowPolicy::Fixed(8);
            // Cuts as often as every byte, each of which may restart a file
            // from seq 1 against the appending peer: this test is about the
            // bytes stored, not the re-send budget (tested in the engine).
            cfg.engine.max_resend_factor = 1000;
            if storage == Storage::AppendStrict {
                // The production backoff: bytes of the dead connection that
                // already reached the server are processed before the restart's
                // 1041 (with a 5 ms reconnect they could be appended after it;
                // see README "Resuming").
                cfg.backoff = chatxfer::runtime::Backoff::default();
            }
            let (client, mut events) = start_client(cfg);
            let mut names = Vec::new();
            for (i, (path, _)) in inputs.iter().enumerate() {
                let name = format!("c{i}.bin");
                client.add_file(path, spec(&name, path)).unwrap();
                names.push(name);
            }
            let evs = wait_done(&mut events, &names, Duration::from_secs(60)).await;
            for (name, (_, bytes)) in names.iter().zip(&inputs) {
                assert!(
                    completed(&evs, name),
                    "trial {trial} {storage:?}: {name} failed: {evs:?}"
                );
                assert_eq!(
                    srv.stored_md5(1, name),
                    Some(md5_of(bytes)),
                    "trial {trial} {storage:?}: {name} differs"
                );
            }
            assert_eq!(
                srv.handle.violations(),
                0,
                "trial {trial}: duplicate or out-of-order chunk"
            );
            if storage == Storage::Positional {
                // The positional server keeps every record across cuts (a
                // finished one too, for late duplicates): nothing restarts.
                assert_eq!(
                    client.stats().restarts,
                    0,
                    "trial {trial}: a file was sent again from seq 1"
                );
            }
            total_cuts += emu.stats().cuts;
            client.shutdown(None).await;
            emu.shutdown().await;
            srv.handle.shutdown().await;
        }
        assert!(
            total_cuts >= 50,
            "{storage:?}: only {total_cuts} cuts in 50 trials"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarted_mid_upload_resumes_and_completes() {
    let srv = server(Storage::Positional, true).await;
    let addr = srv.handle.local_addr();
    let store = srv.dir;
    let files = Files::new();
    let (path, bytes) = files.make("big.bin", 30 << 20, 9);
    let (client, mut events) = start_client(client_config(addr, ServerStorage::Positional));
    client.add_file(&path, spec("big.bin", &path)).unwrap();
    // Wait until some of it is acknowledged, then stop the server.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            ClientEvent::Transfer(Event::Progress { acked, .. }) if acked > 0 => break,
            ClientEvent::Transfer(Event::Completed { .. }) => panic!("finished before the restart"),
            _ => {}
        }
    }
    srv.handle.shutdown().await;
    let mut cfg = chatxfer_tools::server::ServerConfig::new(store.path());
    cfg.storage = Storage::Positional;
    let srv2 = chatxfer_tools::server::start(&addr.to_string(), cfg)
        .await
        .unwrap();
    let all = wait_done_client(
        &mut events,
        &["big.bin".to_string()],
        Duration::from_secs(120),
    )
    .await;
    assert!(all
        .iter()
        .any(|e| matches!(e, ClientEvent::Disconnected { .. })));
    let evs: Vec<Event> = all
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Transfer(e) => Some(e),
            _ => None,
        })
        .collect();
    assert!(completed(&evs, "big.bin"), "{evs:?}");
    let stored = std::fs::read(store.path().join("1").join("big.bin")).unwrap();
    assert!(stored == bytes);
    client.shutdown(None).await;
    srv2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_for_one_file_fails_it_alone() {
    for (code, named) in [
        (ErrorCode::FileNotExists, false),
        (ErrorCode::FileWritePermissionFailed, false),
        (ErrorCode::FileWritePermissionFailed, true),
    ] {
        let srv = server(Storage::Positional, named).await;
        srv.handle.inject_error("bad.bin", code);
        let files = Files::new();
        let (client, mut events) = start_client(client_config(
            srv.handle.local_addr(),
            ServerStorage::Positional,
        ));
        let mut names = Vec::new();
        let mut inputs = Vec::new();
        for name in ["a.bin", "bad.bin", "b.bin"] {
            let (path, bytes) = files.make(name, 700_000, name.len() as u64);
            client.add_file(&path, spec(name, &path)).unwrap();
            names.push(name.to_string());
            inputs.push(bytes);
        }
        let evs = wait_done(&mut events, &names, Duration::from_secs(60)).await;
        let failure = evs.iter().find_map(|e| match e {
            Event::Failed { name, failure } if name == "bad.bin" => Some(failure.clone()),
            _ => None,
        });
        assert!(
            matches!(failure, Some(Failure::Server { code: c, seq: 1 }) if c == code),
            "{code:?} named={named}: {failure:?}"
        );
        for (name, bytes) in names.iter().zip(&inputs) {
            if name != "bad.bin" {
                assert_eq!(srv.stored_md5(1, name), Some(md5_of(bytes)));
            }
        }
        assert!(srv.stored_md5(1, "bad.bin").is_none());
        client.shutdown(None).await;
        srv.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_is_detected_and_the_upload_completes() {
    let srv = server(Storage::Positional, true).await;
    let files = Files::new();
    let (path, bytes) = files.make("s.bin", 4 << 20, 3);
    let mut cfg = client_config(srv.handle.local_addr(), ServerStorage::Positional);
    cfg.engine.ack_timeout = Duration::from_millis(500);
    let (client, mut events) = start_client(cfg);
    srv.handle.set_silent(true);
    client.add_file(&path, spec("s.bin", &path)).unwrap();
    // The stall is detected (no reply within the ack timeout) and the
    // connection recycled; then the server answers again.
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .unwrap()
            .unwrap();
        if let ClientEvent::Transfer(Event::ConnectionStalled { waited }) = ev {
            assert!(waited >= Duration::from_millis(500));
            break;
        }
    }
    srv.handle.set_silent(false);
    let evs = wait_done(&mut events, &["s.bin".to_string()], Duration::from_secs(60)).await;
    assert!(completed(&evs, "s.bin"), "{evs:?}");
    assert_eq!(srv.stored_md5(1, "s.bin"), Some(md5_of(&bytes)));
    client.shutdown(None).await;
    srv.handle.shutdown().await;
}

/// Through the emulator at 40 ms / 200 Mbit/s, 64 MiB: the adaptive window
/// reaches at least 80 % of the link (wire bytes) and beats fixed:5 by 3x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_window_fills_an_emulated_40ms_200mbit_link() {
    let files = Files::new();
    let (path, _) = files.make("v.bin", 64 << 20, 77);
    let mut rates = Vec::new();
    for window in [WindowPolicy::adaptive(), WindowPolicy::Fixed(5)] {
        let srv = server(Storage::Positional, true).await;
        let emu = LinkEmulator::start(
            "127.0.0.1:0",
            srv.handle.local_addr(),
            LinkConfig::parse_rtt_rate("40ms", "200mbit").unwrap(),
        )
        .await
        .unwrap();
        let mut cfg = client_config(emu.local_addr(), ServerStorage::Positional);
        cfg.engine.window = window;
        let (client, mut events) = start_client(cfg);
        let start = std::time::Instant::now();
        client.add_file(&path, spec("v.bin", &path)).unwrap();
        let evs = wait_done(
            &mut events,
            &["v.bin".to_string()],
            Duration::from_secs(300),
        )
        .await;
        let secs = start.elapsed().as_secs_f64();
        assert!(completed(&evs, "v.bin"));
        let wire = emu.stats().bytes_up as f64;
        let utilisation = wire * 8.0 / secs / 200e6;
        eprintln!(
            "{window}: {:.1} Mbit/s on the wire, {:.0}% of the link",
            wire * 8.0 / secs / 1e6,
            utilisation * 100.0
        );
        rates.push(utilisation);
        client.shutdown(None).await;
        emu.shutdown().await;
        srv.handle.shutdown().await;
    }
    assert!(
        rates[0] >= 0.8,
        "adaptive reached {:.0}% of the link",
        rates[0] * 100.0
    );
    assert!(
        rates[0] >= 3.0 * rates[1],
        "adaptive/fixed:5 = {:.2}",
        rates[0] / rates[1]
    );
}
