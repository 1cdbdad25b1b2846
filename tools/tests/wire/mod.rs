//! A tiny hand-written client of the reference server for the server
//! tests, built on the crate's protocol encoders, and their shared set-up.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use chatxfer::engine::md5_of;
use chatxfer::protocol::{frame, ChunkFrame, FrameDecoder, MsgId, HEADER_LEN};
use chatxfer_tools::server::{start, ServerConfig, ServerHandle, Storage};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WAIT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------ client

pub struct Client {
    pub s: TcpStream,
    pub dec: FrameDecoder,
}

impl Client {
    pub async fn connect(server: &ServerHandle) -> Client {
        Client {
            s: TcpStream::connect(server.local_addr()).await.unwrap(),
            dec: FrameDecoder::new(usize::MAX >> 1),
        }
    }

    /// Connects from the loopback address `ip` (any 127.x.y.z works on
    /// Linux), so per-address limits can tell clients apart.
    pub async fn connect_from(server: &ServerHandle, ip: [u8; 4]) -> Client {
        Client {
            s: connect_from(server.local_addr(), ip).await.unwrap(),
            dec: FrameDecoder::new(usize::MAX >> 1),
        }
    }

    /// Errors are ignored: a test that sends something the server closes
    /// the connection for checks that with `expect_closed`.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    pub async fn send_body(&mut self, id: u16, body: &[u8]) {
        let mut out = Vec::new();
        frame::encode(MsgId(id), body, &mut out);
        self.send_raw(&out).await;
    }

    /// The next reply, `None` if the server closed the connection.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Option<(u16, Value)>> {
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(f) = self.dec.next_frame().unwrap() {
                return Some(Some((f.id.0, serde_json::from_slice(&f.body).unwrap())));
            }
            match tokio::time::timeout_at(deadline, self.s.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(None),
                Ok(Ok(n)) => self.dec.extend(&buf[..n]),
            }
        }
    }

    pub async fn recv(&mut self) -> (u16, Value) {
        self.try_recv(WAIT)
            .await
            .expect("a reply in time")
            .expect("connection open")
    }

    /// Reads until the server closes (EOF or reset); replies are discarded.
    pub async fn expect_closed(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(WAIT, self.s.read(&mut buf)).await {
                Err(_) => panic!("the server did not close the connection"),
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// A TCP connection to `to` from the loopback address `ip`.
pub async fn connect_from(to: std::net::SocketAddr, ip: [u8; 4]) -> std::io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind((std::net::Ipv4Addr::from(ip), 0).into())?;
    sock.connect(to).await
}

/// A file to upload in chunks of `chunk` bytes.
pub struct Up {
    pub name: String,
    pub data: Vec<u8>,
    pub chunk: usize,
    pub md5: String,
    pub uid: i64,
    pub message_id: i64,
    pub token: String,
}

impl Up {
    pub fn new(name: &str, data: Vec<u8>, chunk: usize) -> Up {
        Up {
            name: name.into(),
            md5: md5_of(&data),
            data,
            chunk,
            uid: 7,
            message_id: 99,
            token: "tok".into(),
        }
    }

    pub fn max_seq(&self) -> u32 {
        self.data.len().div_ceil(self.chunk).max(1) as u32
    }

    pub fn range(&self, seq: u32) -> std::ops::Range<usize> {
        let start = (seq as usize - 1) * self.chunk;
        start..(start + self.chunk).min(self.data.len())
    }

    pub fn frame(&self, id: u16, seq: u32) -> Vec<u8> {
        let r = self.range(seq);
        let mut out = Vec::new();
        ChunkFrame {
            id: MsgId(id),
            name: &self.name,
            md5: &self.md5,
            seq,
            trans_size: r.end as u64,
            total_size: self.data.len() as u64,
            last: seq == self.max_seq(),
            last_seq: self.max_seq(),
            uid: self.uid,
            sender: self.uid,
            receiver: 2,
            message_id: self.message_id,
            token: &self.token,
        }
        .encode(&self.data[r], &mut out);
        out
    }

    /// The body of a request as JSON, to be mangled by a test.
    pub fn json(&self, id: u16, seq: u32) -> Value {
        let f = self.frame(id, seq);
        serde_json::from_slice(&f[HEADER_LEN..]).unwrap()
    }

    pub fn path(&self, root: &Path) -> PathBuf {
        root.join(self.uid.to_string()).join(&self.name)
    }
}

pub async fn send(c: &mut Client, up: &Up, id: u16, seq: u32) {
    c.send_raw(&up.frame(id, seq)).await;
}

/// Sends `seq` and asserts a success reply for exactly it.
pub async fn chunk_ok(c: &mut Client, up: &Up, id: u16, seq: u32) -> Value {
    send(c, up, id, seq).await;
    let (rid, v) = c.recv().await;
    assert_eq!(rid, id + 1, "{v}");
    assert_eq!(v["error"], 0, "seq {seq} of {}: {v}", up.name);
    assert_eq!(
        (v["name"].as_str(), v["seq"].as_u64()),
        (Some(&*up.name), Some(seq as u64))
    );
    v
}

/// Sends a request and asserts an error reply with `code` (named).
pub async fn expect_error(c: &mut Client, id: u16, body: &[u8], code: i64) -> Value {
    c.send_body(id, body).await;
    let (rid, v) = c.recv().await;
    assert_eq!(rid, id + 1);
    assert_eq!(
        v["error"],
        code,
        "body {}: {v}",
        String::from_utf8_lossy(&body[..body.len().min(200)])
    );
    v
}

/// Seq 1 as 1041, then the other seqs (in `order`) as 1037, pipelined.
pub async fn upload(c: &mut Client, up: &Up, order: impl IntoIterator<Item = u32>) {
    chunk_ok(c, up, 1041, 1).await;
    let order: Vec<u32> = order.into_iter().collect();
    for &seq in &order {
        send(c, up, 1037, seq).await;
    }
    for &seq in &order {
        let (rid, v) = c.recv().await;
        assert_eq!((rid, &v["error"]), (1038, &json!(0)), "{v}");
        assert_eq!(v["seq"], seq, "replies come back in order");
    }
}

pub fn bytes(n: usize, salt: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_add(salt).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

pub async fn server(root: &Path, storage: Storage) -> ServerHandle {
    let mut cfg = ServerConfig::new(root);
    cfg.storage = storage;
    start("127.0.0.1:0", cfg).await.unwrap()
}

/// `tmp` holds only `store`; inside it only `<digits>/<file>` (and the
/// message index).
pub fn assert_contained(tmp: &Path) -> Vec<String> {
    let top: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        top,
        vec!["store"],
        "something was written beside the storage dir"
    );
    let mut files = Vec::new();
    for uid in std::fs::read_dir(tmp.join("store")).unwrap() {
        let uid = uid.unwrap();
        let uname = uid.file_name().into_string().unwrap();
        if uname.starts_with(chatxfer_tools::server::INDEX_FILE) {
            continue;
        }
        assert!(
            uid.file_type().unwrap().is_dir(),
            "{uname} is not a directory"
        );
        assert!(
            uname.bytes().all(|b| b.is_ascii_digit()),
            "uid dir {uname:?}"
        );
        for f in std::fs::read_dir(uid.path()).unwrap() {
            let f = f.unwrap();
            assert!(
                f.file_type().unwrap().is_file(),
                "{:?} is not a file",
                f.path()
            );
            files.push(format!("{uname}/{}", f.file_name().into_string().unwrap()));
        }
    }
    files.sort();
    files
}

pub fn store_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    (tmp, root)
}

/// Waits until the server has seen `n` connections close.
pub async fn until_open_connections(srv: &ServerHandle, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while srv.stats().open_connections != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections did not close"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
