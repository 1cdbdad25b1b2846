pub mod engine;
pub mod error;
pub mod ffi;
pub mod linkemu;
pub mod protocol;
pub mod runtime;
pub mod server;
#[doc(hidden)]
pub mod sync;

pub use error::{Error, Result};
