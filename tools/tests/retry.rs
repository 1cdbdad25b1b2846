//! Names can be used again and failed transfers retried, as the chat
//! client's bubbles do (a click on a failed bubble retries it): a failed or
//! cancelled upload or download starts over under its name and completes
//! byte-identically; a finished name can be registered anew.

mod common;

use std::time::Duration;

use chatxfer::engine::{DownloadSpec, Event, FileState, ServerStorage};
use chatxfer::protocol::ErrorCode;
use chatxfer_tools::server::{DownloadFault, Storage};
use common::*;

const LIMIT: Duration = Duration::from_secs(120);

fn failed(events: &[Event], name: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Failed { name: n, .. } if n == name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_is_retried_and_a_cancelled_one_too() {
    let srv = server(Storage::Positional, true).await;
    let files = Files::new();
    let (path, bytes) = files.make("photo.jpg", 5 * CHUNK + 123, 1);
    let (client, mut events) = start_client(client_config(
        srv.handle.local_addr(),
        ServerStorage::Positional,
    ));
    let names = vec!["photo.jpg".to_string()];

    // The server refuses it: the upload fails.
    srv.handle
        .inject_error("photo.jpg", ErrorCode::FileWritePermissionFailed);
    client.add_file(&path, spec("photo.jpg", &path)).unwrap();
    let evs = wait_done(&mut events, &names, LIMIT).await;
    assert!(failed(&evs, "photo.jpg"), "{evs:?}");
    // Adding it again is refused while it exists; Retry starts it over.
    assert!(client.resume("photo.jpg").is_err());
    srv.handle.clear_injected_error("photo.jpg");
    client.retry("photo.jpg").unwrap();
    let evs = wait_done(&mut events, &names, LIMIT).await;
    assert!(completed(&evs, "photo.jpg"), "{evs:?}");
    assert_eq!(
        std::fs::read(srv.stored_path(1, "photo.jpg")).unwrap(),
        bytes
    );

    // A completed transfer is not retried, but its name can be used again.
    assert!(client.retry("photo.jpg").is_err());
    let (path2, bytes2) = files.make("photo2.jpg", 2 * CHUNK + 5, 2);
    let mut held = spec("photo.jpg", &path2);
    held.hold = true;
    held.message_id = 11;
    held.md5 = Some(chatxfer::engine::md5_of(&bytes2));
    client.add_file(&path2, held).unwrap();
    client.cancel("photo.jpg").unwrap();
    assert_eq!(
        client.status("photo.jpg").unwrap().state,
        FileState::Cancelled
    );
    client.retry("photo.jpg").unwrap();
    let evs = wait_done(&mut events, &names, LIMIT).await;
    assert!(completed(&evs, "photo.jpg"), "{evs:?}");
    assert_eq!(
        std::fs::read(srv.stored_path(1, "photo.jpg")).unwrap(),
        bytes2
    );
    client.shutdown(None).await;
    srv.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_download_is_retried_into_the_same_directory() {
    let srv = server(Storage::Positional, true).await;
    let files = Files::new();
    let (path, bytes) = files.make("clip.mp4", 4 * CHUNK + 9, 3);
    let (client, mut events) = start_client(client_config(
        srv.handle.local_addr(),
        ServerStorage::Positional,
    ));
    let mut up = spec("clip.mp4", &path);
    up.message_id = 77;
    client.add_file(&path, up).unwrap();
    let evs = wait_done(&mut events, &["clip.mp4".to_string()], LIMIT).await;
    assert!(completed(&evs, "clip.mp4"), "{evs:?}");

    srv.handle
        .set_download_fault("clip.mp4", DownloadFault::InvalidBase64);
    let out = tempfile::tempdir().unwrap();
    let down = DownloadSpec {
        name: "msg-77".into(),
        message_id: 77,
        uid: 2,
        token: "tok".into(),
        md5: None,
        priority: 0,
        hold: false,
        avatar: None,
        known: None,
    };
    client.add_download(down.clone(), out.path(), None).unwrap();
    let names = vec!["msg-77".to_string()];
    let evs = wait_done(&mut events, &names, LIMIT).await;
    assert!(failed(&evs, "msg-77"), "{evs:?}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    srv.handle.clear_download_fault("clip.mp4");
    client.retry("msg-77").unwrap();
    let evs = wait_done(&mut events, &names, LIMIT).await;
    assert!(completed(&evs, "msg-77"), "{evs:?}");
    assert_eq!(std::fs::read(out.path().join("clip.mp4")).unwrap(), bytes);

    // A finished download's name is free for a new one (a second copy).
    client.add_download(down, out.path(), None).unwrap();
    let evs = wait_done(&mut events, &names, LIMIT).await;
    assert!(completed(&evs, "msg-77"), "{evs:?}");
    assert_eq!(
        std::fs::read(out.path().join("clip (1).mp4")).unwrap(),
        bytes
    );
    client.shutdown(None).await;
    srv.handle.shutdown().await;
}
