//! A scriptable fake ResourceServer for hostile-server tests: a script
//! decides, frame by frame, what the server sends back (good replies, bad
//! ones, raw bytes, a slow trickle, silence or a close). It counts every
//! byte it receives and keeps what uploads sent (written at their seq's
//! offset), so a test can bound the client's traffic and check a completed
//! upload byte for byte.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use chatxfer::protocol::{frame, FrameDecoder, MsgId, MAX_BODY_LEN};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does.
#[derive(Debug, Clone)]
pub enum Act {
    /// A frame with this id and JSON body.
    Reply(u16, Value),
    /// A frame with this id and raw body (not JSON, or deliberately broken).
    ReplyRaw(u16, Vec<u8>),
    /// Bytes as they are (a broken header, garbage, half a frame).
    Raw(Vec<u8>),
    /// These bytes, one at a time, one per interval (a server at a crawl).
    Trickle(Vec<u8>, Duration),
    /// Close the connection.
    Close,
}

/// What the script knows when a frame arrives.
pub struct Seen<'a> {
    /// Connections accepted before this one.
    pub connection: u64,
    /// Frames received on this connection before this one.
    pub frame_on_connection: u64,
    pub id: u16,
    /// The frame's body as JSON (`Null` if it is not JSON).
    pub body: &'a Value,
}

impl Seen<'_> {
    pub fn name(&self) -> String {
        self.body["name"].as_str().unwrap_or_default().to_string()
    }

    pub fn seq(&self) -> i64 {
        self.body["seq"].as_i64().unwrap_or(0)
    }

    pub fn is_upload_chunk(&self) -> bool {
        matches!(self.id, 1041 | 1037 | 1043 | 1031)
    }
}

pub type Script = Arc<dyn Fn(&Seen) -> Vec<Act> + Send + Sync>;

/// Scripts for the usual replies, to build hostile ones from.
pub mod reply {
    use super::*;

    /// The success reply to an upload chunk (1042 for 1041, 1038 for 1037...).
    pub fn upload_ack(seen: &Seen) -> Act {
        Act::Reply(
            seen.id + 1,
            json!({"error": 0, "name": seen.name(), "seq": seen.seq(), "last": seen.body["last"],
                   "md5": seen.body["md5"], "uid": seen.body["uid"]}),
        )
    }

    /// A 1046 for a file `name` of `size` bytes (the size as given: the
    /// deployed server sends a string).
    pub fn info(message_id: i64, name: &str, size: Value) -> Act {
        Act::Reply(
            1046,
            json!({"error": 0, "message_id": message_id, "thread_id": 1, "sender_id": 1,
                   "recv_id": 2, "name": name, "msg_type": 2, "status": 1, "total_size": size}),
        )
    }

    /// A correct 1048 for chunk `seq` of `content` (32 KiB chunks).
    pub fn chunk(name: &str, seq: i64, content: &[u8]) -> Act {
        let chunk = chatxfer::protocol::DOWNLOAD_CHUNK as usize;
        let start = ((seq.max(1) - 1) as usize * chunk).min(content.len());
        let end = (start + chunk).min(content.len());
        chunk_with(
            name,
            seq,
            &content[start..end],
            content.len() as u64,
            end as u64,
            end == content.len(),
        )
    }

    /// A 1048 with every field given (for lying ones).
    pub fn chunk_with(
        name: &str,
        seq: i64,
        data: &[u8],
        total: u64,
        current: u64,
        is_last: bool,
    ) -> Act {
        Act::Reply(
            1048,
            json!({"error": 0, "name": name, "seq": seq,
                   "data": base64::engine::general_purpose::STANDARD.encode(data),
                   "total_size": total.to_string(), "current_size": current.to_string(),
                   "is_last": is_last, "sender_id": 1, "receiver_id": 2}),
        )
    }
}

/// A frame header announcing `len` body bytes (nothing follows it).
pub fn header(id: u16, len: u32) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// Deterministic garbage.
pub fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(Default)]
struct Shared {
    received: AtomicU64,
    connections: AtomicU64,
    /// Upload bytes by name, written at each chunk's offset.
    stored: Mutex<HashMap<String, Vec<u8>>>,
}

pub struct FakeServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    /// Listens on a loopback port; `on_connect` is sent to every new
    /// connection before anything is read, `script` answers each frame.
    pub async fn start(on_connect: Vec<Act>, script: Script) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((sock, _)) = listener.accept().await {
                    let connection = shared.connections.fetch_add(1, Ordering::SeqCst);
                    let (shared, script, on_connect) =
                        (shared.clone(), script.clone(), on_connect.clone());
                    tokio::spawn(async move {
                        serve(sock, connection, &shared, &on_connect, &script).await;
                    });
                }
            }
        });
        FakeServer { addr, shared, task }
    }

    /// Bytes the client sent, over every connection.
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// What uploads of `name` wrote, each chunk at its seq's offset.
    pub fn stored(&self, name: &str) -> Option<Vec<u8>> {
        self.shared.stored.lock().unwrap().get(name).cloned()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port nothing listens on (bound, then released).
pub async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Returns false once the connection should end.
async fn act(sock: &mut TcpStream, acts: Vec<Act>) -> bool {
    for a in acts {
        let bytes = match a {
            Act::Reply(id, body) => {
                let mut out = Vec::new();
                frame::encode(MsgId(id), &serde_json::to_vec(&body).unwrap(), &mut out);
                out
            }
            Act::ReplyRaw(id, body) => {
                let mut out = Vec::new();
                frame::encode(MsgId(id), &body, &mut out);
                out
            }
            Act::Raw(bytes) => bytes,
            Act::Trickle(bytes, every) => {
                for b in bytes {
                    if sock.write_all(&[b]).await.is_err() {
                        return false;
                    }
                    tokio::time::sleep(every).await;
                }
                continue;
            }
            Act::Close => return false,
        };
        if sock.write_all(&bytes).await.is_err() {
            return false;
        }
    }
    true
}

async fn serve(
    mut sock: TcpStream,
    connection: u64,
    shared: &Shared,
    on_connect: &[Act],
    script: &Script,
) {
    if !act(&mut sock, on_connect.to_vec()).await {
        return;
    }
    let mut decoder = FrameDecoder::new(MAX_BODY_LEN);
    let mut buf = vec![0u8; 64 * 1024];
    let mut frames = 0u64;
    loop {
        let n = match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        shared.received.fetch_add(n as u64, Ordering::SeqCst);
        decoder.extend(&buf[..n]);
        loop {
            let f = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            let body: Value = serde_json::from_slice(&f.body).unwrap_or(Value::Null);
            let seen = Seen {
                connection,
                frame_on_connection: frames,
                id: f.id.0,
                body: &body,
            };
            frames += 1;
            if seen.is_upload_chunk() {
                keep(shared, &seen);
            }
            let acts = script(&seen);
            if !act(&mut sock, acts).await {
                return;
            }
        }
    }
}

/// Writes an upload chunk's bytes at its offset (`trans_size` - len).
fn keep(shared: &Shared, seen: &Seen) {
    let Some(data) = seen.body["data"]
        .as_str()
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
    else {
        return;
    };
    let trans = match &seen.body["trans_size"] {
        Value::String(s) => s.parse::<u64>().ok(),
        v => v.as_u64(),
    };
    let Some(end) = trans else { return };
    let Some(start) = end.checked_sub(data.len() as u64) else {
        return;
    };
    if end > 1 << 30 {
        return;
    }
    let mut stored = shared.stored.lock().unwrap();
    let file = stored.entry(seen.name()).or_default();
    if file.len() < end as usize {
        file.resize(end as usize, 0);
    }
    file[start as usize..end as usize].copy_from_slice(&data);
}
