//! A scripted pair for tests, in the manner of quinn-proto's test `Pair`:
//! the engine on one side, a server the test plays by hand on the other, a
//! clock moved by hand. Tests read like the protocol's story — the client
//! sends, the server acknowledges or errs, the link is cut — and look at
//! what was sent through typed messages, not JSON indexing.

use std::time::{Duration, Instant};

use super::*;
use crate::protocol::messages::{decode_as, DownChunkReq, DownInfoReq, UploadChunkReq};
use crate::protocol::{frame, ErrorCode, MAX_BODY_LEN};

pub(super) struct Pair {
    pub engine: Engine,
    pub now: Instant,
}

/// One frame the client sent.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub id: MsgId,
    body: Vec<u8>,
}

impl Sent {
    /// The upload chunk request it is (1041/1037/1043/1031), with the
    /// per-id JSON types checked by the decoder.
    pub fn chunk(&self) -> UploadChunkReq<'_> {
        UploadChunkReq::decode(self.id, &self.body).expect("an upload chunk request")
    }

    pub fn down_info(&self) -> DownInfoReq {
        decode_as(self.id, &self.body).expect("a 1045")
    }

    pub fn down_chunk(&self) -> DownChunkReq {
        decode_as(self.id, &self.body).expect("a 1047")
    }

    /// Whether a field travels as a JSON string (1041/1037 sizes) or a
    /// number (1043/1031 sizes): the wire type itself is the contract.
    pub fn is_string(&self, field: &str) -> bool {
        let v: serde_json::Value = serde_json::from_slice(&self.body).expect("JSON");
        v.get(field).is_some_and(|f| f.is_string())
    }

    pub fn has(&self, field: &str) -> bool {
        let v: serde_json::Value = serde_json::from_slice(&self.body).expect("JSON");
        v.get(field).is_some()
    }
}

impl Pair {
    /// A connected engine.
    pub fn new(config: EngineConfig) -> Pair {
        let now = Instant::now();
        let mut engine = Engine::new(config);
        engine.connected(now);
        Pair { engine, now }
    }

    /// Registers an upload of `bytes` (its md5 computed here).
    pub fn upload(&mut self, mut spec: FileSpec, bytes: Vec<u8>) -> FileId {
        spec.md5.get_or_insert_with(|| md5_of(&bytes));
        self.engine
            .add_file(spec, Box::new(MemorySource::new(bytes)), self.now)
            .expect("a valid upload")
    }

    /// Everything the client sends now (until the window or the files stop it).
    pub fn client_sends(&mut self) -> Vec<Sent> {
        let mut out = Vec::new();
        while self.engine.poll_transmit(self.now, &mut out).is_some() {}
        let mut sent = Vec::new();
        let mut rest = &out[..];
        while let Some((id, body, used)) = frame::split_frame(rest, MAX_BODY_LEN).unwrap() {
            sent.push(Sent {
                id,
                body: body.to_vec(),
            });
            rest = &rest[used..];
        }
        sent
    }

    /// The server stores `chunk` and acknowledges it.
    pub fn server_acks(&mut self, chunk: &Sent) {
        let rsp = UploadRsp::encode_success_for(chunk.id.reply(), &chunk.chunk());
        self.engine.handle_frame(self.now, chunk.id.reply(), &rsp);
    }

    /// The server answers `chunk` with `code`, the deployed way: no name, no seq.
    pub fn server_errs(&mut self, chunk: &Sent, code: ErrorCode) {
        let body = serde_json::to_vec(&serde_json::json!({ "error": code.code() })).unwrap();
        self.engine.handle_frame(self.now, chunk.id.reply(), &body);
    }

    pub fn cut(&mut self) {
        self.engine.connection_lost(self.now);
    }

    pub fn reconnect(&mut self) {
        self.engine.connected(self.now);
    }

    /// Moves the clock and fires what is due.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.engine.handle_timeout(self.now);
    }

    pub fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.engine.poll_event()).collect()
    }

    pub fn state(&self, name: &str) -> FileState {
        self.engine
            .file_status(name)
            .expect("a registered transfer")
            .state
    }
}
