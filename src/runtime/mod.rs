//! The library's own tokio runtime and the networked client built on it.
//!
//! * [`handle`]: the runtime, started lazily on first use with named worker
//!   threads (`chatxfer-rt`), so a host application (the Qt client) needs no
//!   async runtime of its own. [`shutdown`] stops it and joins its threads.
//! * [`Client`]: one connection to a ResourceServer driven by one task (see
//!   `client.rs`), reconnecting with backoff and resuming unfinished uploads
//!   as the engine plans them.
//!
//! Invariant: the engine is only touched under the client's mutex, and the
//! mutex is never held across an `.await`.

mod client;
pub mod files;
pub mod journal;

use std::sync::Mutex;
use std::time::Duration;

pub use client::{Backoff, Client, ClientConfig, ClientEvent, Events};

static RUNTIME: Mutex<RuntimeSlot> = Mutex::new(RuntimeSlot::NotStarted);

enum RuntimeSlot {
    NotStarted,
    Running(tokio::runtime::Runtime),
    ShutDown,
}

/// Errors of the runtime itself.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the chatxfer runtime was shut down")]
    ShutDown,
    #[error("cannot start the chatxfer runtime: {0}")]
    Start(#[source] std::io::Error),
}

/// A handle to the library's runtime, starting it on first use.
pub fn handle() -> Result<tokio::runtime::Handle, RuntimeError> {
    let mut slot = crate::sync::lock(&RUNTIME);
    match &*slot {
        RuntimeSlot::Running(rt) => Ok(rt.handle().clone()),
        RuntimeSlot::ShutDown => Err(RuntimeError::ShutDown),
        RuntimeSlot::NotStarted => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("chatxfer-rt")
                .enable_all()
                .build()
                .map_err(RuntimeError::Start)?;
            let h = rt.handle().clone();
            *slot = RuntimeSlot::Running(rt);
            Ok(h)
        }
    }
}

/// Stops the runtime: every task is cancelled and its threads are joined
/// (waiting at most `timeout` for blocking work). Later calls to [`handle`]
/// fail with [`RuntimeError::ShutDown`]. Calling it twice is harmless.
///
/// Must not be called from inside the runtime's own threads.
pub fn shutdown(timeout: Duration) {
    let taken = {
        let mut slot = crate::sync::lock(&RUNTIME);
        std::mem::replace(&mut *slot, RuntimeSlot::ShutDown)
    };
    if let RuntimeSlot::Running(rt) = taken {
        rt.shutdown_timeout(timeout);
    }
}
