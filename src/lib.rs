//! chatxfer's core, built as the static library the Qt chat client links:
//! the wire protocol ([`protocol`]), the sans-IO transfer engine
//! ([`engine`]), the networked runtime ([`runtime`]) and the C and C++
//! interfaces ([`ffi`]). The reference server, the link emulator and the
//! `chatxfer` command are in the `chatxfer-tools` package (tools/).

pub mod engine;
pub mod error;
pub mod ffi;
pub mod log;
pub mod protocol;
pub mod runtime;
#[doc(hidden)]
pub mod sync;

pub use error::{Error, Result};
