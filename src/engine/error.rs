//! Errors of the engine's calls: a transfer refused when it is registered,
//! or an action that does not fit its state. Failures of a transfer after it
//! was accepted are not errors of a call: they arrive as
//! [`Event::Failed`](super::Event::Failed) with a [`Failure`](super::Failure).

use super::types::FileState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("file name {name:?} is already being transferred")]
    DuplicateName { name: String },
    #[error("file name {name:?} is not acceptable: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{name:?} ended but {in_flight} of its requests are still unanswered; the name is free once they are answered or the connection is renewed")]
    NameInFlight { name: String, in_flight: usize },
    #[error("no transfer named {name:?}")]
    UnknownName { name: String },
    #[error("{name:?}: cannot {action} a transfer that is {state:?}")]
    WrongState {
        name: String,
        action: &'static str,
        state: FileState,
    },
    #[error("{name:?}: chunk size {chunk} gives {body_len}-byte frames, over the server limit of {limit} bytes")]
    ChunkTooLarge {
        name: String,
        chunk: u32,
        body_len: usize,
        limit: usize,
    },
    #[error("{name:?}: chunk size must be at least 1 byte")]
    ZeroChunk { name: String },
    #[error("{name:?}: file of {size} bytes needs more than {max} chunks of {chunk} bytes")]
    TooManyChunks {
        name: String,
        size: u64,
        chunk: u32,
        max: u64,
    },
    #[error("{name:?}: md5 {md5:?} is not 32 hex digits")]
    InvalidMd5 { name: String, md5: String },
    /// The deployed server marks the message of every upload it completes;
    /// with no message (id 0) it dereferences a missing row and crashes.
    #[error("{name:?}: message id {message_id} is not a chat message's id (the ChatServer's 1036 reply gives it); a chat upload needs one above 0")]
    InvalidMessageId { name: String, message_id: i64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
