//! Shared helpers of the integration tests: generated files, a reference
//! server in a temporary directory, clients with test-friendly timings.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use chatxfer::engine::{md5_of, Event, FileSpec, ServerStorage, WindowPolicy};
use chatxfer::runtime::{Backoff, Client, ClientConfig, ClientEvent, Events};
use chatxfer_tools::server::{self, ServerConfig, ServerHandle, Storage};

pub const CHUNK: usize = 32_768;

pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn make(&self, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let bytes = pattern(len, seed);
        let p = self.dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        (p, bytes)
    }
}

pub struct TestServer {
    pub handle: ServerHandle,
    pub dir: tempfile::TempDir,
}

pub async fn server(storage: Storage, named_errors: bool) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path());
    cfg.storage = storage;
    cfg.named_errors = named_errors;
    let handle = server::start("127.0.0.1:0", cfg).await.unwrap();
    TestServer { handle, dir }
}

impl TestServer {
    pub fn stored_path(&self, uid: i64, name: &str) -> PathBuf {
        self.dir.path().join(uid.to_string()).join(name)
    }

    pub fn stored_md5(&self, uid: i64, name: &str) -> Option<String> {
        std::fs::read(self.stored_path(uid, name))
            .ok()
            .map(|b| md5_of(&b))
    }
}

pub fn client_config(addr: impl ToString, storage: ServerStorage) -> ClientConfig {
    let mut c = ClientConfig::new(addr.to_string());
    c.engine.server_storage = storage;
    c.engine.window = WindowPolicy::adaptive();
    c.backoff = Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
        jitter: 0.3,
    };
    c.connect_timeout = Duration::from_secs(5);
    c
}

pub fn spec(name: &str, path: &Path) -> FileSpec {
    let mut s = FileSpec::new(name, path);
    s.uid = 1;
    s.sender = 1;
    s.receiver = 2;
    s.message_id = 10;
    s
}

/// Collects the client's events until every named transfer completed or
/// failed (or the generous limit passes, which fails the test rather than
/// hang it).
pub async fn wait_done_client(
    events: &mut Events,
    names: &[String],
    limit: Duration,
) -> Vec<ClientEvent> {
    let mut seen = Vec::new();
    let mut left: std::collections::HashSet<&String> = names.iter().collect();
    let deadline = tokio::time::Instant::now() + limit;
    while !left.is_empty() {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("transfers {left:?} not done within {limit:?}"))
            .expect("client event channel closed");
        if let ClientEvent::Transfer(Event::Completed { name, .. } | Event::Failed { name, .. }) =
            &ev
        {
            left.remove(name);
        }
        seen.push(ev);
    }
    seen
}

/// The transfers' events of [`wait_done_client`] (the runtime's connection
/// and journal events left out).
pub async fn wait_done(events: &mut Events, names: &[String], limit: Duration) -> Vec<Event> {
    let all = wait_done_client(events, names, limit).await;
    all.into_iter()
        .filter_map(|e| match e {
            ClientEvent::Transfer(e) => Some(e),
            _ => None,
        })
        .collect()
}

pub fn completed(events: &[Event], name: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Completed { name: n, .. } if n == name))
}

pub fn start_client(config: ClientConfig) -> (Client, Events) {
    Client::start(config).unwrap()
}
