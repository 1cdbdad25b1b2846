//! A download survives an app restart: its journal (in the state
//! directory) is offered by the next process, which removes the partial
//! file the killed one left and downloads the file again, byte-identical;
//! a discarded offer removes journal and partial file.

mod fake_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatxfer::engine::{DownloadSpec, Event};
use chatxfer::runtime::{Client, ClientConfig, ClientEvent, Events};
use fake_server::{garbage, reply, FakeServer, Seen};
use serde_json::json;

fn start(addr: &str, state: &std::path::Path) -> (Client, Events) {
    let mut config = ClientConfig::new(addr);
    config.state_dir = Some(state.to_path_buf());
    Client::start_on(&tokio::runtime::Handle::current(), config)
}

async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(tokio::time::Instant::now() < deadline, "never saw {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_by_a_restart_is_offered_and_done_again() {
    let content = Arc::new(garbage(300_000, 12));
    // First the server stalls after chunk 1 (the app is "killed" then);
    // once healed it serves everything.
    let healed = Arc::new(AtomicBool::new(false));
    let (served, heal) = (content.clone(), healed.clone());
    let server = FakeServer::start(
        vec![],
        Arc::new(move |s: &Seen| match (s.id, s.seq()) {
            (1045, _) => vec![reply::info(21, "trip.mp4", json!("300000"))],
            (1047, seq) if seq == 1 || heal.load(Ordering::SeqCst) => {
                vec![reply::chunk("trip.mp4", seq, &served)]
            }
            _ => vec![],
        }),
    )
    .await;
    let addr = server.addr.to_string();
    let state = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let spec = DownloadSpec {
        uid: 2,
        token: "tok".into(),
        ..DownloadSpec::new("msg-21", 21)
    };

    let (first, _events) = start(&addr, state.path());
    first.add_download(spec.clone(), out.path(), None).unwrap();
    let part = out.path().join("trip.mp4.part");
    let journal = state.path().join("msg-21.download.json");
    until("the partial file in the journal", || {
        std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("trip.mp4.part"))
    })
    .await;
    assert!(part.exists());
    // Killed: no shutdown, no drain; the engine's state is simply gone.
    drop(first);

    let (second, mut events) = start(&addr, state.path());
    let offered = second.offered_downloads();
    assert_eq!(offered.len(), 1, "{offered:?}");
    assert_eq!(offered[0].name, "msg-21");
    assert_eq!(offered[0].part.as_deref(), Some(part.as_path()));
    healed.store(true, Ordering::SeqCst);
    second.resume_offered("msg-21").unwrap();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match events.recv().await {
                Some(ClientEvent::Transfer(
                    e @ (Event::Completed { .. } | Event::Failed { .. }),
                )) => return e,
                Some(_) => {}
                None => panic!("client stopped"),
            }
        }
    })
    .await
    .expect("no outcome");
    assert!(matches!(done, Event::Completed { .. }), "{done:?}");
    // The old partial file is gone; the new download took the plain name.
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["trip.mp4"]);
    assert!(std::fs::read(out.path().join("trip.mp4")).unwrap() == *content);
    second.shutdown(None).await;
    drop(second);

    // Nothing is offered any more: the completed download's journal went.
    let (third, _e) = start(&addr, state.path());
    assert!(third.offered_downloads().is_empty());
    third.shutdown(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_download_offer_removes_journal_and_partial_file() {
    let content = Arc::new(garbage(100_000, 3));
    let served = content.clone();
    let server = FakeServer::start(
        vec![],
        Arc::new(move |s: &Seen| match (s.id, s.seq()) {
            (1045, _) => vec![reply::info(5, "doc.pdf", json!("100000"))],
            (1047, 1) => vec![reply::chunk("doc.pdf", 1, &served)],
            _ => vec![],
        }),
    )
    .await;
    let addr = server.addr.to_string();
    let state = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (first, _events) = start(&addr, state.path());
    first
        .add_download(DownloadSpec::new("msg-5", 5), out.path(), None)
        .unwrap();
    let part = out.path().join("doc.pdf.part");
    let journal = state.path().join("msg-5.download.json");
    until("the partial file in the journal", || {
        std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("doc.pdf.part"))
    })
    .await;
    drop(first);

    let (second, _events) = start(&addr, state.path());
    assert_eq!(second.offered_downloads().len(), 1);
    second.discard_offered("msg-5").unwrap();
    assert!(!part.exists());
    assert!(second.offered_downloads().is_empty());
    assert!(second.discard_offered("msg-5").is_err());
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
    second.shutdown(None).await;
}
