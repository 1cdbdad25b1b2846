//! The hot path: one upload chunk request written straight into the output
//! buffer, header, JSON and base64 alike, with no intermediate JSON value and
//! no allocation once `out` has grown to a frame's size.

use std::io::Write;

use base64::Engine as _;

use super::{frame::HEADER_LEN, MsgId};

/// How the size fields of a chunk request are typed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeEncoding {
    /// `"trans_size":"65536"` (1041, 1037).
    String,
    /// `"trans_size":65536` (1043).
    Int,
}

impl SizeEncoding {
    pub fn for_id(id: MsgId) -> SizeEncoding {
        if id == MsgId::IMG_CHAT_CONTINUE_UPLOAD_REQ || id == MsgId::UPLOAD_HEAD_ICON_REQ {
            SizeEncoding::Int
        } else {
            SizeEncoding::String
        }
    }
}

/// Everything of a 1041/1037/1043 request except the chunk bytes.
#[derive(Debug, Clone, Copy)]
pub struct ChunkFrame<'a> {
    pub id: MsgId,
    pub name: &'a str,
    pub md5: &'a str,
    pub seq: u32,
    pub trans_size: u64,
    pub total_size: u64,
    pub last: bool,
    /// `ceil(total / chunk)`; the deployed client sends it on 1037/1043, not on 1041.
    pub last_seq: u32,
    pub uid: i64,
    pub sender: i64,
    pub receiver: i64,
    pub message_id: i64,
    /// Sent on 1041 only.
    pub token: &'a str,
}

/// Bytes of base64 for `n` raw bytes (standard alphabet, padded).
pub fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

impl ChunkFrame<'_> {
    /// Appends the whole frame (header and body) to `out`; returns the body length.
    pub fn encode(&self, data: &[u8], out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&self.id.0.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        let body_start = out.len();
        let sizes = SizeEncoding::for_id(self.id);
        // Writing to a Vec cannot fail, so the io::Results below are ignored.
        out.extend_from_slice(b"{\"name\":");
        let _ = serde_json::to_writer(&mut *out, self.name);
        out.extend_from_slice(b",\"md5\":");
        let _ = serde_json::to_writer(&mut *out, self.md5);
        let _ = write!(out, ",\"seq\":{}", self.seq);
        match sizes {
            SizeEncoding::String => {
                let _ = write!(
                    out,
                    ",\"trans_size\":\"{}\",\"total_size\":\"{}\"",
                    self.trans_size, self.total_size
                );
            }
            SizeEncoding::Int => {
                let _ = write!(
                    out,
                    ",\"trans_size\":{},\"total_size\":{}",
                    self.trans_size, self.total_size
                );
            }
        }
        let _ = write!(out, ",\"last\":{}", u8::from(self.last));
        if self.id != MsgId::FILE_INFO_SYNC_REQ {
            let _ = write!(out, ",\"last_seq\":{}", self.last_seq);
        }
        if self.id == MsgId::UPLOAD_HEAD_ICON_REQ {
            // Avatars carry no chat message fields; the token on seq 1 only.
            let _ = write!(out, ",\"uid\":{}", self.uid);
            if self.seq == 1 {
                out.extend_from_slice(b",\"token\":");
                let _ = serde_json::to_writer(&mut *out, self.token);
            }
        } else {
            let _ = write!(
                out,
                ",\"uid\":{},\"sender\":{},\"receiver\":{},\"message_id\":{}",
                self.uid, self.sender, self.receiver, self.message_id
            );
        }
        if self.id == MsgId::FILE_INFO_SYNC_REQ {
            // Only the first chunk carries the token (and the client's
            // `unique_id`, which the server ignores), as the deployed client.
            out.extend_from_slice(b",\"token\":");
            let _ = serde_json::to_writer(&mut *out, self.token);
            out.extend_from_slice(b",\"unique_id\":");
            let _ = serde_json::to_writer(&mut *out, self.name);
        }
        out.extend_from_slice(b",\"data\":\"");
        let b64_start = out.len();
        out.resize(b64_start + base64_len(data.len()), 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(data, &mut out[b64_start..])
            .expect("buffer sized by base64_len");
        debug_assert_eq!(written, base64_len(data.len()));
        out.extend_from_slice(b"\"}");
        let body_len = out.len() - body_start;
        out[start + 2..start + HEADER_LEN].copy_from_slice(&(body_len as u32).to_be_bytes());
        body_len
    }

    /// The body length this frame would have with `data_len` raw bytes,
    /// computed by encoding it with empty data (used to check a chunk size
    /// fits the server's frame limit before anything is queued).
    pub fn body_len_with(&self, data_len: usize) -> usize {
        let mut scratch = Vec::new();
        self.encode(&[], &mut scratch) + base64_len(data_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::UploadChunkReq;
    use crate::protocol::{frame, MAX_BODY_LEN};

    fn sample(id: MsgId) -> ChunkFrame<'static> {
        ChunkFrame {
            id,
            name: "vid\"eo.mp4",
            md5: "0123456789abcdef0123456789abcdef",
            seq: 2,
            trans_size: 65_536,
            total_size: 100_000,
            last: false,
            last_seq: 4,
            uid: 7,
            sender: 7,
            receiver: 9,
            message_id: 1234,
            token: "tok",
        }
    }

    #[test]
    fn encodes_exact_types_per_id_and_round_trips() {
        let data: Vec<u8> = (0..32_768u32).map(|i| (i * 7) as u8).collect();
        for (id, string_sizes) in [(1041, true), (1037, true), (1043, false)] {
            let mut out = Vec::new();
            let body_len = sample(MsgId(id)).encode(&data, &mut out);
            let (got_id, body, used) = frame::split_frame(&out, MAX_BODY_LEN).unwrap().unwrap();
            assert_eq!((got_id.0, body.len(), used), (id, body_len, out.len()));
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v["trans_size"].is_string(), string_sizes, "id {id}");
            assert_eq!(v["total_size"].is_string(), string_sizes, "id {id}");
            assert_eq!(v["seq"], 2);
            assert_eq!(v["last"], 0);
            assert_eq!(
                v.get("last_seq").is_some(),
                id != 1041,
                "last_seq only on 1037/1043"
            );
            assert_eq!(v.get("token").is_some(), id == 1041, "token only on 1041");
            let req = UploadChunkReq::decode(got_id, body).unwrap();
            assert_eq!(req.name, "vid\"eo.mp4");
            let raw = base64::engine::general_purpose::STANDARD
                .decode(req.data.as_bytes())
                .unwrap();
            assert_eq!(raw, data);
        }
    }

    #[test]
    fn default_chunk_fits_the_server_limit_and_body_len_is_exact() {
        let f = sample(MsgId(1037));
        let predicted = f.body_len_with(32_768);
        let mut out = Vec::new();
        assert_eq!(f.encode(&[0; 32_768], &mut out), predicted);
        assert!(predicted <= MAX_BODY_LEN, "{predicted}");
        assert!(f.body_len_with(40 * 1024) > MAX_BODY_LEN);
    }
}
