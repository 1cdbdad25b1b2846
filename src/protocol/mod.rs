//! The ResourceServer wire protocol (see `shared/PROTOCOL.md`).
//!
//! * [`frame`]: the 6-byte header (2-byte id, 4-byte length, big-endian) and a
//!   decoder that refuses a body over the configured limit *before* allocating.
//! * [`MsgId`]: the message ids.
//! * [`ErrorCode`]: the server's error codes; unknown codes are kept as they are.
//! * [`messages`]: typed requests and replies with the exact JSON type of every
//!   field per message id (sizes are strings in 1041/1037, ints in 1043).
//! * [`name`]: the one file-name rule of client and server.
//! * [`chunk`]: the hot path, an upload chunk request written straight into the
//!   output buffer (base64 included) without an intermediate JSON value.
//!
//! Invariant: nothing here panics on input from the network. Every decode
//! returns a [`ProtocolError`] for garbage.

pub mod chunk;
mod error_code;
pub mod frame;
pub mod messages;
mod msg_id;
pub mod name;
pub mod seqset;

pub use chunk::{ChunkFrame, SizeEncoding};
pub use error_code::ErrorCode;
pub use frame::{Frame, FrameDecoder, FrameError, HEADER_LEN, MAX_BODY_LEN};
pub use msg_id::MsgId;
pub use seqset::SeqRanges;

/// Default raw chunk size, as the deployed client (`MAX_FILE_LEN`).
pub const DEFAULT_CHUNK_SIZE: u32 = 32_768;

/// The server's download chunk size (`MAX_FILE_LEN`, fixed on the deployed server).
pub const DOWNLOAD_CHUNK: u64 = 32_768;

/// Largest total size that may travel in a 1043: the deployed server reads it
/// with `asInt`, and anything above `i32::MAX` throws and ends the process.
pub const MAX_1043_SIZE: u64 = i32::MAX as u64;

/// Whether `s` is an md5 as the protocol carries it: 32 hex digits.
pub fn is_md5_hex(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Errors decoding a message body.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("message {id}: invalid JSON body: {source}")]
    Json {
        id: u16,
        #[source]
        source: serde_json::Error,
    },
    #[error("message {id}: unexpected message id (wanted {wanted})")]
    UnexpectedId { id: u16, wanted: &'static str },
    #[error("message {id}: field `{field}`: {problem}")]
    Field {
        id: u16,
        field: &'static str,
        problem: String,
    },
}
