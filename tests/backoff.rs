//! The reconnect backoff keeps its deadline when the app calls in, and a
//! shutdown during the backoff ends the driver at once.

use std::time::Duration;

use chatxfer::runtime::{Backoff, Client, ClientConfig, ClientEvent};

/// A client of a port nobody listens on (connecting fails at once), with a
/// 600 s backoff between attempts.
fn unreachable() -> ClientConfig {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = ClientConfig::new(addr.to_string());
    config.backoff = Backoff {
        initial: Duration::from_secs(600),
        max: Duration::from_secs(600),
        jitter: 0.0,
    };
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_the_backoff_ends_the_driver_at_once() {
    let (client, mut events) = Client::start(unreachable()).unwrap();
    let (_, retry_in) = next(&mut events).await.expect("the first connect fails");
    assert_eq!(retry_in, Some(Duration::from_secs(600)));
    // API calls wake the driver during its backoff; they must not restart it.
    assert!(client.pause("no such transfer").is_err());
    // The scenario, not a synchronisation: the user quits a while after the
    // call, when the driver is back in its backoff.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.shutdown(None).await;
    let (reason, retry_in) = next(&mut events)
        .await
        .expect("the driver ends long before its 600 s backoff");
    assert_eq!((reason.as_str(), retry_in), ("client shut down", None));
}

/// The next `Disconnected` event, within 30 s.
async fn next(
    events: &mut chatxfer::runtime::Events,
) -> Result<(String, Option<Duration>), tokio::time::error::Elapsed> {
    let fut = async {
        loop {
            match events.recv().await {
                Some(ClientEvent::Disconnected {
                    reason, retry_in, ..
                }) => break (reason, retry_in),
                Some(_) => {}
                None => panic!("event stream ended"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fut).await
}

/// A server that answers every connection with an undecodable reply and
/// closes: the reply is no progress, so the backoff keeps growing instead of
/// starting over at every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_replies_do_not_reset_the_backoff() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut out = Vec::new();
            chatxfer::protocol::frame::encode(
                chatxfer::protocol::MsgId(1042),
                b"not json",
                &mut out,
            );
            let _ = sock.write_all(&out).await;
        }
    });
    let mut config = ClientConfig::new(addr.to_string());
    config.backoff = Backoff {
        initial: Duration::from_millis(2),
        max: Duration::from_secs(60),
        jitter: 0.0,
    };
    let (client, mut events) = Client::start(config).unwrap();
    let mut delays = Vec::new();
    while delays.len() < 5 {
        let (_, retry_in) = next(&mut events).await.expect("the client reconnects");
        delays.push(retry_in.unwrap());
    }
    client.shutdown(None).await;
    let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, vec![2, 4, 8, 16, 32], "doubling: no reply reset it");
}

/// A server that never comes back: the transfer's give-up budget runs out
/// while the client is between connection attempts, and it fails saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_gives_up_while_the_server_stays_unreachable() {
    let mut config = unreachable();
    config.engine.give_up_after = Some(Duration::from_millis(300));
    let (client, mut events) = Client::start(config).unwrap();
    let out = tempfile::tempdir().unwrap();
    let spec = chatxfer::engine::DownloadSpec::new("msg-9", 9);
    client.add_download(spec, out.path(), None).unwrap();
    let failure = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Some(ClientEvent::Transfer(chatxfer::engine::Event::Failed {
                    failure, ..
                })) => break failure,
                Some(_) => {}
                None => panic!("event stream ended"),
            }
        }
    })
    .await
    .expect("the budget ends the transfer during a 600 s backoff");
    assert_eq!(failure.code(), chatxfer::engine::CODE_GAVE_UP);
    assert!(failure.to_string().contains("give_up_after"), "{failure}");
    client.shutdown(None).await;
}
