pub mod engine;
pub mod error;
pub mod protocol;
pub mod runtime;

pub use error::{Error, Result};
