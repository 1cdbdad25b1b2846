//! What several subcommands share: the emulated-link options, the embedded
//! reference server (optionally behind the link emulator), generated files,
//! the progress-bar style and file md5s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chatxfer::engine::md5_hex;
use chatxfer::runtime::files::FileSource;
use chatxfer_tools::linkemu::{self, LinkConfig, LinkEmulator};
use chatxfer_tools::server::{self, ServerConfig, ServerHandle};
use indicatif::ProgressStyle;

pub type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// A link rate in bits per second; `None` is uncapped.
#[derive(Clone, Copy, Debug)]
pub struct Rate(pub Option<u64>);

fn parse_rate(s: &str) -> Result<Rate, String> {
    linkemu::parse_rate(s).map(Rate)
}

#[derive(clap::Args, Clone, Default)]
pub struct LinkArgs {
    /// Emulated round-trip time added by a loopback link emulator (e.g. 40ms; embedded server only).
    #[arg(long, value_parser = linkemu::parse_duration)]
    pub rtt: Option<Duration>,
    /// Emulated bandwidth (e.g. 200mbit; embedded server only).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<Rate>,
}

impl LinkArgs {
    /// The emulator's settings, or `None` when no option asks for one.
    fn config(&self) -> Option<LinkConfig> {
        if self.rtt.is_none() && self.rate.is_none() {
            return None;
        }
        Some(LinkConfig {
            one_way_delay: self.rtt.unwrap_or_default() / 2,
            rate_bits_per_sec: self.rate.and_then(|r| r.0),
            ..LinkConfig::default()
        })
    }

    /// `", emulated link rtt 40ms rate 200 Mbit/s"`, or empty without one.
    pub fn describe(&self) -> String {
        if self.rtt.is_none() && self.rate.is_none() {
            return String::new();
        }
        let rate = match self.rate.and_then(|r| r.0) {
            Some(bits) => format!("{} Mbit/s", bits as f64 / 1e6),
            None => "unlimited".into(),
        };
        format!(
            ", emulated link rtt {:?} rate {rate}",
            self.rtt.unwrap_or_default()
        )
    }
}

/// The embedded reference server, and the emulator in front of it if any.
pub struct Embedded {
    pub server: ServerHandle,
    emulator: Option<LinkEmulator>,
    _tmp: Option<tempfile::TempDir>,
    /// Where the server stores (`<dir>/<uid>/<name>`).
    pub dir: PathBuf,
    /// The address clients connect to (the emulator's when there is one).
    pub addr: String,
}

impl Embedded {
    /// Starts the server on a loopback port, storing into `store_dir` or a
    /// temporary directory, behind the link emulator if `link` asks for it.
    pub async fn start(store_dir: Option<PathBuf>, link: &LinkArgs) -> AnyResult<Embedded> {
        let (tmp, dir) = match store_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir()?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let server = server::start("127.0.0.1:0", ServerConfig::new(&dir)).await?;
        let mut addr = server.local_addr().to_string();
        let emulator = match link.config() {
            Some(cfg) => {
                let emu = LinkEmulator::start("127.0.0.1:0", server.local_addr(), cfg).await?;
                addr = emu.local_addr().to_string();
                Some(emu)
            }
            None => None,
        };
        Ok(Embedded {
            server,
            emulator,
            _tmp: tmp,
            dir,
            addr,
        })
    }

    pub async fn shutdown(self) {
        if let Some(emu) = self.emulator {
            emu.shutdown().await;
        }
        self.server.shutdown().await;
    }
}

/// Deterministic filler so the demo needs nothing from the user.
pub fn generate(path: &Path, len: usize, seed: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = seed | 1;
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        for word in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n])?;
        left -= n;
    }
    f.flush()
}

/// One bar per file: name, bar, bytes, rate, message; `colors` is indicatif's
/// `fg/bg` (uploads and downloads differ).
pub fn bar_style(colors: &str) -> AnyResult<ProgressStyle> {
    Ok(ProgressStyle::with_template(&format!(
        "{{prefix:>22}} [{{bar:32.{colors}}}] {{bytes:>10}}/{{total_bytes:<10}} {{binary_bytes_per_sec:>12}} {{msg}}"
    ))?
    .progress_chars("=> "))
}

/// The md5 (lowercase hex) of a file's contents.
pub fn file_md5(path: &Path) -> chatxfer::Result<String> {
    FileSource::open(path).and_then(|mut s| {
        md5_hex(&mut s).map_err(|e| chatxfer::Error::Source {
            path: path.to_path_buf(),
            source: e,
        })
    })
}

/// Ctrl-C, watched from the command's start: hashing, transfers and
/// waits all see it, so no phase of a run ignores it.
#[derive(Clone)]
pub struct Interrupt(tokio::sync::watch::Receiver<bool>);

impl Interrupt {
    /// Starts watching for Ctrl-C (on the current runtime). The handler is
    /// in place when this returns, so no later phase can miss a Ctrl-C.
    pub fn watch() -> std::io::Result<Interrupt> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        #[cfg(unix)]
        let mut signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        #[cfg(windows)]
        let mut signal = tokio::signal::windows::ctrl_c()?;
        tokio::spawn(async move {
            if signal.recv().await.is_some() {
                let _ = tx.send(true);
            }
            // Keep the sender (and so the state) for the run's rest.
            std::future::pending::<()>().await;
        });
        Ok(Interrupt(rx))
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once Ctrl-C was pressed.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|set| *set).await;
    }
}

/// Returned when Ctrl-C stopped a phase.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// The md5 of a file, read off the runtime's threads and stopped by Ctrl-C
/// between two reads (hashing a video takes seconds).
pub async fn file_md5_interruptible(path: &Path, stop: &Interrupt) -> AnyResult<String> {
    use md5::Digest;
    use std::io::Read;
    let path = path.to_path_buf();
    let stop = stop.clone();
    // Err(None): interrupted; Err(Some(text)): unreadable.
    let hashed = tokio::task::spawn_blocking(move || -> Result<String, Option<String>> {
        let unreadable = |e: std::io::Error| Some(format!("{}: cannot read: {e}", path.display()));
        let mut file = std::fs::File::open(&path).map_err(unreadable)?;
        let mut hasher = md5::Md5::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if stop.is_set() {
                return Err(None);
            }
            let n = file.read(&mut buf).map_err(unreadable)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex(&hasher.finalize()))
    });
    match hashed.await {
        Ok(Ok(md5)) => Ok(md5),
        Ok(Err(None)) => Err(Interrupted.into()),
        Ok(Err(Some(text))) => Err(text.into()),
        Err(e) => Err(format!("hashing failed: {e}").into()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` safe to print on a terminal: control characters (escape
/// sequences, carriage returns) and bidirectional overrides, which a server
/// could put in a file name or an error, are shown escaped.
pub fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A line above the bars, or on stderr when there are none to draw (not
/// a terminal): a log or a pipe must see it too.
pub fn say(multi: &indicatif::MultiProgress, line: String) {
    if multi.is_hidden() {
        eprintln!("{line}");
    } else {
        let _ = multi.println(line);
    }
}

/// The line printed when the connection is down: why, and when the next
/// attempt (and which) starts.
pub fn connection_down(reason: &str, retry_in: Option<Duration>, attempt: u32) -> String {
    match retry_in {
        Some(d) => format!(
            "connection down: {}; retry {attempt} in {:.1} s",
            shown(reason),
            d.as_secs_f64()
        ),
        None => format!("connection down: {}", shown(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped_and_plain_text_kept() {
        assert_eq!(shown("photo (1).jpg"), "photo (1).jpg");
        assert_eq!(shown("照片.png"), "照片.png");
        let hostile = "a\u{1b}]0;owned\u{7}b\r\nc\u{202e}gpj.exe";
        let s = shown(hostile);
        assert!(
            !s.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{s:?}"
        );
        assert_eq!(s, "a\\u{1b}]0;owned\\u{7}b\\u{d}\\u{a}c\\u{202e}gpj.exe");
    }

    #[test]
    fn the_connection_line_says_which_retry_and_when() {
        let line = connection_down(
            "connect to h:1: refused",
            Some(Duration::from_millis(3200)),
            4,
        );
        assert_eq!(
            line,
            "connection down: connect to h:1: refused; retry 4 in 3.2 s"
        );
        assert_eq!(
            connection_down("client shut down", None, 0),
            "connection down: client shut down"
        );
    }
}
