//! A fault inside the library (here: a panic in the connection driver,
//! raised by a source read on its task) must not hang the app: every
//! unfinished transfer fails with `Failure::Internal`, the client reports
//! itself broken, later calls return `Error::Broken`, and `wait_idle`
//! returns instead of waiting forever.

use std::io;
use std::time::Duration;

use chatxfer::engine::{ChunkSource, Event, Failure, FileSpec, FileState, CODE_INTERNAL};
use chatxfer::runtime::{Client, ClientConfig, ClientEvent};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A source whose reads panic: a stand-in for any bug on the driver's path.
struct PanickingSource;

impl ChunkSource for PanickingSource {
    fn len(&self) -> u64 {
        100_000
    }

    fn read_at(&mut self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
        panic!("source exploded");
    }
}

/// Accepts connections and reads (and drops) whatever arrives.
async fn sink_server(listener: TcpListener) {
    while let Ok((mut sock, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    }
}

fn spec(name: &str) -> FileSpec {
    FileSpec {
        md5: Some("0123456789abcdef0123456789abcdef".into()),
        hold: true,
        message_id: 1,
        ..FileSpec::new(name, name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_driver_fails_every_transfer_and_breaks_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sink_server(listener));
    let (client, mut events) = Client::start_on(
        &tokio::runtime::Handle::current(),
        ClientConfig::new(addr.to_string()),
    );

    // A second, held transfer: it never reads, but must fail too.
    client
        .add_source(spec("held.bin"), Box::new(PanickingSource))
        .unwrap();
    let mut exploding = spec("boom.bin");
    exploding.hold = false;
    client
        .add_source(exploding, Box::new(PanickingSource))
        .unwrap();

    let mut failed = Vec::new();
    let mut final_disconnect = None;
    // A deadline only for a failing run; a passing one ends on the events.
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        while failed.len() < 2 || final_disconnect.is_none() {
            match events.recv().await {
                Some(ClientEvent::Transfer(Event::Failed { name, failure })) => {
                    failed.push((name, failure))
                }
                Some(ClientEvent::Disconnected {
                    reason,
                    retry_in: None,
                    ..
                }) => final_disconnect = Some(reason),
                Some(_) => {}
                None => break,
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "no failure events: {failed:?}");

    failed.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["boom.bin", "held.bin"]);
    for (name, failure) in &failed {
        assert_eq!(failure.code(), CODE_INTERNAL, "{name}: {failure}");
        let Failure::Internal { message } = failure else {
            panic!("{name}: {failure:?}");
        };
        assert!(message.contains("source exploded"), "{message}");
    }
    assert!(final_disconnect.unwrap().contains("internal error"));

    let why = client.broken().expect("the client says it is broken");
    assert!(why.contains("source exploded"), "{why}");
    assert_eq!(client.status("held.bin").unwrap().state, FileState::Failed);
    let later = client.add_source(spec("later.bin"), Box::new(PanickingSource));
    assert!(
        matches!(later, Err(chatxfer::Error::Broken { .. })),
        "{later:?}"
    );
    assert!(matches!(
        client.pause("held.bin"),
        Err(chatxfer::Error::Broken { .. })
    ));
    let idle = client.wait_idle_for(Duration::from_secs(30)).await;
    assert!(
        matches!(idle, Err(chatxfer::Error::Broken { .. })),
        "{idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_idle_for_times_out_while_a_transfer_is_unfinished() {
    // Nothing listens here: the held upload stays unfinished.
    let (client, _events) = Client::start_on(
        &tokio::runtime::Handle::current(),
        ClientConfig::new("127.0.0.1:9"),
    );
    client
        .add_source(spec("held.bin"), Box::new(PanickingSource))
        .unwrap();
    let idle = client.wait_idle_for(Duration::from_millis(50)).await;
    assert!(matches!(idle, Ok(false)), "{idle:?}");
    client.cancel("held.bin").unwrap();
    let idle = client.wait_idle_for(Duration::from_secs(30)).await;
    assert!(matches!(idle, Ok(true)), "{idle:?}");
    assert!(client.broken().is_none());
}
