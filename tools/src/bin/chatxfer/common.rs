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
