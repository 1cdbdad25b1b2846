//! A picture received live: the ChatServer's 1039 notify already gave its
//! server name, size and sender, so the download asks for chunks at once —
//! the server sees no 1045 (the request that crashes the deployed server
//! when the file is missing) — and the file arrives byte-identical. Known
//! metadata that lies is refused as a 1046's would be.

mod fake_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatxfer::engine::{DownloadSpec, Event, KnownFile};
use chatxfer::runtime::{Client, ClientConfig, ClientEvent};
use fake_server::{garbage, reply, FakeServer, Seen};
use serde_json::json;

async fn outcome(events: &mut chatxfer::runtime::Events, name: &str) -> Event {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match events.recv().await {
                Some(ClientEvent::Transfer(
                    e @ (Event::Completed { .. } | Event::Failed { .. }),
                )) => {
                    let ours = match &e {
                        Event::Completed { name: n, .. } | Event::Failed { name: n, .. } => {
                            n == name
                        }
                        _ => false,
                    };
                    if ours {
                        return e;
                    }
                }
                Some(_) => {}
                None => panic!("client stopped"),
            }
        }
    })
    .await
    .expect("no outcome")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_with_known_metadata_sends_no_1045() {
    let content = Arc::new(garbage(150_000, 4));
    let infos = Arc::new(AtomicU64::new(0));
    let (served, counter) = (content.clone(), infos.clone());
    let server = FakeServer::start(
        vec![],
        Arc::new(move |s: &Seen| match s.id {
            1045 => {
                counter.fetch_add(1, Ordering::SeqCst);
                vec![reply::info(9, "pic.jpg", json!("150000"))]
            }
            1047 => vec![reply::chunk("pic.jpg", s.seq(), &served)],
            _ => vec![],
        }),
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let (client, mut events) = Client::start_on(
        &tokio::runtime::Handle::current(),
        ClientConfig::new(server.addr.to_string()),
    );
    let known = |name: &str, size: u64| DownloadSpec {
        uid: 2,
        token: "tok".into(),
        known: Some(KnownFile {
            server_name: name.into(),
            size,
            sender_id: 1,
            receiver_id: 2,
        }),
        ..DownloadSpec::new("msg-9", 9)
    };
    client
        .add_download(known("pic.jpg", 150_000), out.path(), None)
        .unwrap();
    let e = outcome(&mut events, "msg-9").await;
    assert!(matches!(e, Event::Completed { .. }), "{e:?}");
    assert!(std::fs::read(out.path().join("pic.jpg")).unwrap() == *content);
    assert_eq!(infos.load(Ordering::SeqCst), 0, "a 1045 was sent");

    // A notify whose name escapes is refused before a byte is asked for.
    client
        .add_download(
            DownloadSpec {
                name: "msg-10".into(),
                ..known("../evil.jpg", 10)
            },
            out.path(),
            None,
        )
        .unwrap();
    let e = outcome(&mut events, "msg-10").await;
    assert!(
        matches!(&e, Event::Failed { failure, .. } if failure.to_string().contains("refusing")),
        "{e:?}"
    );
    assert_eq!(infos.load(Ordering::SeqCst), 0);
    client.shutdown(None).await;
}
