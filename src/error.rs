//! Typed errors of the library's API calls: the engine's (a refused
//! transfer, a wrong state), and the edge's (a source file that cannot be
//! read, or changed). Failures of a transfer after it was accepted are not
//! errors of a call: they arrive as
//! [`Event::Failed`](crate::engine::Event::Failed) with a
//! [`Failure`](crate::engine::Failure).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Refused by the engine.
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
    #[error("{}: cannot upload: {source}", path.display())]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: changed since the upload started ({detail}); not resumed", path.display())]
    SourceChanged { path: PathBuf, detail: String },
    /// The client stopped after an internal error (a bug); its transfers
    /// failed. A new client works.
    #[error("{reason}; create a new client")]
    Broken { reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
