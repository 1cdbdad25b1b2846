//! The library's logs reach the host's callback, filtered by level, with
//! one line per transfer and per connection change at info; removing the
//! callback stops them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatxfer::engine::{Event, FileSpec, MemorySource};
use chatxfer::log::set_log_sink;
use chatxfer::runtime::{Client, ClientConfig, ClientEvent};
use tracing::Level;

type Lines = Arc<Mutex<Vec<(Level, String, String)>>>;

fn capture(lines: &Lines, max: Level) {
    let lines = lines.clone();
    set_log_sink(
        Some(max),
        Some(Arc::new(move |level, target: &str, message: &str| {
            lines
                .lock()
                .unwrap()
                .push((level, target.to_string(), message.to_string()))
        })),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_reach_the_callback_by_level_until_it_is_removed() {
    let lines: Lines = Arc::default();
    capture(&lines, Level::INFO);

    // Nothing listens there: the connection fails, the transfer gives up.
    let mut config = ClientConfig::new("127.0.0.1:9");
    config.engine.give_up_after = Some(Duration::from_millis(300));
    let (client, mut events) = Client::start_on(&tokio::runtime::Handle::current(), config);
    let bytes = vec![7u8; 1000];
    let mut spec = FileSpec::new("note.txt", "note.txt");
    spec.message_id = 1;
    spec.md5 = Some(chatxfer::engine::md5_of(&bytes));
    client
        .add_source(spec, Box::new(MemorySource::new(bytes)))
        .unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(ClientEvent::Transfer(Event::Failed { .. })) = events.recv().await {
                break;
            }
        }
    })
    .await;
    assert!(failed.is_ok(), "the transfer did not give up");

    let seen = lines.lock().unwrap().clone();
    assert!(
        seen.iter().all(|(level, _, _)| *level <= Level::INFO),
        "{seen:?}"
    );
    let failed_line = seen
        .iter()
        .find(|(_, _, m)| m.contains("transfer failed") && m.contains("note.txt"));
    let (level, target, message) = failed_line.unwrap_or_else(|| panic!("{seen:?}"));
    assert_eq!(*level, Level::INFO);
    assert!(target.starts_with("chatxfer::engine"), "{target}");
    assert!(message.contains("gave up"), "{message}");
    assert!(
        seen.iter()
            .any(|(_, t, m)| t.starts_with("chatxfer::runtime")
                && m.contains("connection down")
                && m.contains("127.0.0.1:9")),
        "{seen:?}"
    );
    // One line per transfer at info, not one per chunk or retry.
    let about_note = seen
        .iter()
        .filter(|(_, _, m)| m.contains("note.txt"))
        .count();
    assert!(about_note <= 2, "{seen:?}");

    // The client is gone: what follows is only this test's lines.
    client.shutdown(None).await;
    drop(client);

    // Warnings only: an info line is no longer passed on; then none at all.
    capture(&lines, Level::WARN);
    let before = lines.lock().unwrap().len();
    tracing::info!(target: "chatxfer::test", "not passed on");
    tracing::warn!(target: "chatxfer::test", "passed on");
    let after = lines.lock().unwrap()[before..].to_vec();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].2, "passed on");
    set_log_sink(None, None).unwrap();
    tracing::error!(target: "chatxfer::test", "nobody hears this");
    assert_eq!(lines.lock().unwrap().len(), before + 1);
}
