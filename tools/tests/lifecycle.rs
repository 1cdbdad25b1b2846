//! The chat client's login life: a logout (disconnect) in the middle of an
//! upload keeps it registered and quiet; a re-login to another address
//! (here: a second server on the same store, as after a server move)
//! continues it to a byte-identical file.

mod common;

use std::time::Duration;

use chatxfer::engine::{Event, FileState, ServerStorage};
use chatxfer::runtime::ClientEvent;
use chatxfer_tools::server::{self, ServerConfig, Storage};
use common::*;

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_mid_upload_then_login_elsewhere_completes_it() {
    let store = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = ServerConfig::new(store.path());
        c.storage = Storage::Positional;
        c
    };
    let first = server::start("127.0.0.1:0", config()).await.unwrap();
    let files = Files::new();
    let (path, bytes) = files.make("video.mp4", 60 << 20, 5);
    let (client, mut events) =
        start_client(client_config(first.local_addr(), ServerStorage::Positional));
    client.add_file(&path, spec("video.mp4", &path)).unwrap();

    // Log out as soon as part of it is acknowledged.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("no progress")
            .unwrap();
        match ev {
            ClientEvent::Transfer(Event::Progress { acked, total, .. }) if acked > 0 => {
                assert!(acked < total, "finished before the logout could happen");
                break;
            }
            ClientEvent::Transfer(Event::Failed { failure, .. }) => panic!("{failure}"),
            _ => {}
        }
    }
    client.disconnect().unwrap();
    assert!(!client.is_connecting());
    // The connection goes down for the app's reason, with no retry planned.
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("no disconnect event")
            .unwrap();
        if let ClientEvent::Disconnected {
            reason, retry_in, ..
        } = ev
        {
            assert_eq!(retry_in, None, "{reason}");
            assert!(reason.contains("the app asked"), "{reason}");
            break;
        }
    }
    let held = client.status("video.mp4").unwrap();
    assert_eq!(held.state, FileState::Sending);
    assert!(held.acked < held.total);
    first.shutdown().await;

    // Re-login: another port, same store.
    let second = server::start("127.0.0.1:0", config()).await.unwrap();
    client.connect_to(second.local_addr().to_string()).unwrap();
    let evs = wait_done(&mut events, &["video.mp4".to_string()], LIMIT).await;
    assert!(completed(&evs, "video.mp4"), "{evs:?}");
    let stored = std::fs::read(store.path().join("1").join("video.mp4")).unwrap();
    assert!(stored == bytes, "stored copy differs");
    client.shutdown(None).await;
    second.shutdown().await;
}
