//! The library's runtime starts on first use and stops cleanly: after
//! `runtime::shutdown` no library thread is left and later calls get an
//! error, not a panic. (A test binary of its own: the runtime is global.)

mod common;

use std::time::Duration;

use chatxfer::engine::ServerStorage;
use chatxfer::runtime::{self, RuntimeError};
use chatxfer_tools::server::Storage;
use common::*;

fn library_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| c.trim().starts_with("chatxfer-rt"))
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn runtime_starts_lazily_and_shuts_down_without_leaving_threads() {
    assert_eq!(library_threads(), 0, "nothing runs before first use");
    // The test's own runtime hosts the server; the client uses the library's.
    let test_rt = tokio::runtime::Runtime::new().unwrap();
    let srv = test_rt.block_on(server(Storage::Positional, true));
    let files = Files::new();
    let (path, bytes) = files.make("a.bin", 300_000, 1);
    let (client, mut events) = start_client(client_config(
        srv.handle.local_addr(),
        ServerStorage::Positional,
    ));
    client.add_file(&path, spec("a.bin", &path)).unwrap();
    let evs = test_rt.block_on(wait_done(
        &mut events,
        &["a.bin".to_string()],
        Duration::from_secs(60),
    ));
    assert!(completed(&evs, "a.bin"));
    // Counted only now: a worker names itself once it runs, so right after
    // start a loaded machine may not have named one yet. The upload ran on
    // the library's workers, so at least one has.
    assert!(library_threads() >= 1, "the runtime started on first use");
    assert_eq!(
        srv.stored_md5(1, "a.bin"),
        Some(chatxfer::engine::md5_of(&bytes))
    );

    runtime::shutdown(Duration::from_secs(5));
    assert_eq!(library_threads(), 0, "every library thread was joined");
    assert!(matches!(runtime::handle(), Err(RuntimeError::ShutDown)));
    assert!(matches!(
        chatxfer::runtime::Client::start(client_config("127.0.0.1:1", ServerStorage::Positional)),
        Err(RuntimeError::ShutDown)
    ));
    runtime::shutdown(Duration::from_secs(1)); // twice is harmless
                                               // The old client's calls still answer (its driver is gone): no panic.
    let _ = client.pause("a.bin");
    drop(client);
    test_rt.block_on(srv.handle.shutdown());
}
