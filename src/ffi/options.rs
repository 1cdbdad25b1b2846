//! A client's settings as both foreign faces give them (C++
//! `chatxfer::ClientOptions`, C `chatxfer_options`), converted once into
//! the runtime's [`ClientConfig`]. Zero in a number means "the library's
//! default" except where a field says otherwise; `defaults()` is what
//! `DefaultOptions()` / `chatxfer_options_init` hand out.

use std::path::PathBuf;
use std::time::Duration;

use super::{Code, FfiError, FfiResult};
use crate::engine::{EngineConfig, ServerStorage, WindowPolicy};
use crate::runtime::files::ExistingFile;
use crate::runtime::ClientConfig;

/// Most chunks in flight a client may be set to (about 180 MB of frames):
/// memory is bounded by the window, so the window is bounded too.
pub const MAX_WINDOW: u32 = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The deployed ResourceServer appends chunks (true); the reference
    /// server writes them at their offset (false).
    pub server_appends: bool,
    /// A fixed window of this many chunks in flight; 0: adaptive.
    pub fixed_window: u32,
    /// The adaptive window's most chunks in flight (memory: about 44 KB
    /// each); 0: 512.
    pub max_window: u32,
    /// Raw bytes per upload chunk; 0: 32768 (the deployed client's).
    pub chunk_size: u32,
    pub connect_timeout_ms: u32,
    /// No reply to a chunk for this long: the connection is renewed.
    pub ack_timeout_ms: u32,
    /// A transfer without progress for this long fails (GAVE_UP); 0: never.
    pub give_up_after_ms: u64,
    /// An upload putting more than this many times its size on the wire
    /// fails (GAVE_UP); 0: 3.
    pub max_resend_factor: u32,
    /// Where journals of unfinished uploads live; "": none.
    pub state_dir: String,
    /// A download announced larger than this fails; 0: 4 GiB.
    pub max_download_size: u64,
    /// Upload bytes per second on the wire; 0: no cap.
    pub rate_limit: u64,
    /// The login token, used by uploads and downloads whose spec has none.
    pub token: String,
    /// A download whose name is taken fails instead of taking the next
    /// free name (`photo (1).jpg`).
    pub existing_files_fail: bool,
}

impl Default for Options {
    fn default() -> Options {
        let engine = EngineConfig::default();
        Options {
            server_appends: true,
            fixed_window: 0,
            max_window: 0,
            chunk_size: 0,
            connect_timeout_ms: 0,
            ack_timeout_ms: 0,
            give_up_after_ms: engine
                .give_up_after
                .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64),
            max_resend_factor: 0,
            state_dir: String::new(),
            max_download_size: 0,
            rate_limit: 0,
            token: String::new(),
            existing_files_fail: false,
        }
    }
}

impl Options {
    /// The runtime's settings for a connection to `server`.
    pub fn config(&self, server: String) -> FfiResult<ClientConfig> {
        let mut c = ClientConfig::new(server);
        let e = &mut c.engine;
        e.server_storage = if self.server_appends {
            ServerStorage::Appending
        } else {
            ServerStorage::Positional
        };
        if self.fixed_window > MAX_WINDOW || self.max_window > MAX_WINDOW {
            return Err(FfiError::new(
                Code::InvalidArgument,
                format!(
                    "a window of {} chunks: at most {MAX_WINDOW} may be in flight",
                    self.fixed_window.max(self.max_window)
                ),
            ));
        }
        e.window = match (self.fixed_window, self.max_window) {
            (0, 0) => WindowPolicy::adaptive(),
            (0, max) => WindowPolicy::parse(&format!("adaptive:{max}"))
                .map_err(|why| FfiError::new(Code::InvalidArgument, why))?,
            (n, _) => WindowPolicy::Fixed(n),
        };
        if self.chunk_size > 0 {
            e.chunk_size = self.chunk_size;
        }
        if self.ack_timeout_ms > 0 {
            e.ack_timeout = Duration::from_millis(self.ack_timeout_ms.into());
        }
        e.give_up_after =
            (self.give_up_after_ms > 0).then(|| Duration::from_millis(self.give_up_after_ms));
        if self.max_resend_factor > 0 {
            e.max_resend_factor = self.max_resend_factor.into();
        }
        if self.max_download_size > 0 {
            e.max_download_size = self.max_download_size;
        }
        e.rate_limit = (self.rate_limit > 0).then_some(self.rate_limit);
        if self.connect_timeout_ms > 0 {
            c.connect_timeout = Duration::from_millis(self.connect_timeout_ms.into());
        }
        c.state_dir = (!self.state_dir.is_empty()).then(|| PathBuf::from(&self.state_dir));
        c.existing_files = if self.existing_files_fail {
            ExistingFile::Fail
        } else {
            ExistingFile::PickFreeName
        };
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_librarys_and_every_field_reaches_the_config() {
        let d = Options::default().config("h:1".into()).unwrap();
        let lib = EngineConfig::default();
        assert_eq!(d.engine.server_storage, ServerStorage::Appending);
        assert_eq!(d.engine.window, lib.window);
        assert_eq!(d.engine.chunk_size, lib.chunk_size);
        assert_eq!(d.engine.give_up_after, lib.give_up_after);
        assert_eq!(d.engine.max_resend_factor, lib.max_resend_factor);
        assert_eq!(d.engine.max_download_size, lib.max_download_size);
        assert_eq!(d.engine.rate_limit, None);
        assert_eq!(d.state_dir, None);

        let o = Options {
            server_appends: false,
            fixed_window: 0,
            max_window: 64,
            chunk_size: 16_384,
            connect_timeout_ms: 1500,
            ack_timeout_ms: 2500,
            give_up_after_ms: 0,
            max_resend_factor: 5,
            state_dir: "/tmp/j".into(),
            max_download_size: 1 << 20,
            rate_limit: 250_000,
            token: "t".into(),
            existing_files_fail: true,
        };
        let c = o.config("h:1".into()).unwrap();
        assert_eq!(c.engine.server_storage, ServerStorage::Positional);
        assert_eq!(c.engine.window, WindowPolicy::parse("adaptive:64").unwrap());
        assert_eq!(c.engine.chunk_size, 16_384);
        assert_eq!(c.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.engine.ack_timeout, Duration::from_millis(2500));
        assert_eq!(c.engine.give_up_after, None);
        assert_eq!(c.engine.max_resend_factor, 5);
        assert_eq!(c.state_dir, Some(PathBuf::from("/tmp/j")));
        assert_eq!(c.engine.max_download_size, 1 << 20);
        assert_eq!(c.engine.rate_limit, Some(250_000));
        assert_eq!(c.existing_files, ExistingFile::Fail);
        let huge = Options {
            max_window: MAX_WINDOW + 1,
            ..Options::default()
        };
        assert_eq!(
            huge.config("h:1".into()).unwrap_err().code,
            Code::InvalidArgument
        );
        let fixed = Options {
            fixed_window: 7,
            ..Options::default()
        };
        assert_eq!(
            fixed.config("h:1".into()).unwrap().engine.window,
            WindowPolicy::Fixed(7)
        );
    }
}
