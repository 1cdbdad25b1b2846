//! `AddTransFile` without an md5 returns before the md5 is known: the file
//! is hashed on a library thread, the upload joins when the hash is done and
//! completes with the right md5; pause and cancel work while it hashes.

mod common;

use std::time::Duration;

use chatxfer::engine::{md5_of, Event, FileState, ServerStorage};
use chatxfer::runtime::ClientEvent;
use chatxfer_tools::server::Storage;
use common::*;

const LIMIT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_file_is_hashed_after_the_call_returns_and_uploads_with_its_md5() {
    let srv = server(Storage::Positional, true).await;
    let files = Files::new();
    // 1 GiB, sparse: seconds of hashing, nothing on disk. Held: it only
    // hashes, so the order of what the client reports is the evidence.
    let big = files.dir.path().join("video.mp4");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let (client, mut events) = start_client(client_config(
        srv.handle.local_addr(),
        ServerStorage::Positional,
    ));
    let mut held = spec("video.mp4", &big);
    held.hold = true;
    client.add_file(&big, held).unwrap();
    // Returned: the md5 is not known yet.
    let st = client.status("video.mp4").unwrap();
    assert_eq!(st.md5, "", "add_file waited for the hash");
    assert_eq!(st.state, FileState::Paused);
    assert_eq!(st.total, 1 << 30);
    // A second file of the same name is refused while the first hashes.
    assert!(client.add_file(&big, spec("video.mp4", &big)).is_err());
    // Cancelled while it hashes: it ends cancelled, nothing is sent.
    client.cancel("video.mp4").unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("no cancellation")
            .unwrap();
        if let ClientEvent::Transfer(Event::StateChanged {
            name,
            state: FileState::Cancelled,
        }) = ev
        {
            assert_eq!(name, "video.mp4");
            break;
        }
    }
    assert!(!srv.stored_path(1, "video.mp4").exists());

    // A real one: the call returns with md5 "", the upload completes with
    // the file's md5 and the stored copy is identical.
    let (path, bytes) = files.make("clip.mp4", 24 << 20, 9);
    client.add_file(&path, spec("clip.mp4", &path)).unwrap();
    assert_eq!(client.status("clip.mp4").unwrap().md5, "");
    let evs = wait_done(&mut events, &["clip.mp4".to_string()], LIMIT).await;
    let done = evs.iter().find_map(|e| match e {
        Event::Completed { name, md5, .. } if name == "clip.mp4" => Some(md5.clone()),
        _ => None,
    });
    assert_eq!(done, Some(md5_of(&bytes)), "{evs:?}");
    assert!(std::fs::read(srv.stored_path(1, "clip.mp4")).unwrap() == bytes);
    client.shutdown(None).await;
    srv.handle.shutdown().await;
}
