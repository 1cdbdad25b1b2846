//! Tools around the chatxfer core, kept out of the static library the Qt
//! client links: the reference ResourceServer ([`server`]), the loopback link
//! emulator ([`linkemu`]) and, as this package's binary, the `chatxfer`
//! command (demo, upload, download, serve).

pub mod linkemu;
pub mod server;
