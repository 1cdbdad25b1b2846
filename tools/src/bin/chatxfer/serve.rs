//! `chatxfer serve`: the reference ResourceServer until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use chatxfer_tools::server::{self, Limits, ServerConfig};

use crate::common::AnyResult;

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?}: expected a whole number above 0")),
    }
}

fn bytes(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("{s:?}: expected a number of bytes"))
}

/// A duration above zero (a zero timeout would close every connection).
fn timeout(s: &str) -> Result<Duration, String> {
    match chatxfer_tools::linkemu::parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?}: must be above 0")),
        d => Ok(d),
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Storage directory (files go to DIR/<uid>/<name>).
    #[arg(long)]
    dir: PathBuf,
    /// Error replies carry only `error`, like the deployed server.
    #[arg(long)]
    deployed_errors: bool,
    /// Store like the deployed server: seq 1 truncates, every other chunk
    /// is appended (out-of-order or repeated chunks counted as violations).
    /// For testing clients against it; the default writes positionally.
    #[arg(long)]
    appending: bool,
    /// Login tokens, one `UID TOKEN` per line (`#` comments): seq 1 of an
    /// upload (1041, 1031) and of a download (1047, 1033) must carry the
    /// uid's token (1011 no token for the uid, 1010 another token).
    /// Without it any token is accepted, as the deployed server does for
    /// uploads.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Connections open at once; more are accepted and closed at once.
    #[arg(long, default_value = "2048", value_parser = positive)]
    max_connections: usize,
    /// Connections open at once from one IP address.
    #[arg(long, default_value = "256", value_parser = positive)]
    max_connections_per_ip: usize,
    /// A frame must arrive whole within this time once it started.
    #[arg(long, default_value = "30s", value_parser = timeout)]
    frame_timeout: Duration,
    /// A connection with nothing received and nothing pending closes after this.
    #[arg(long, default_value = "300s", value_parser = timeout)]
    idle_timeout: Duration,
    /// A peer that takes no reply bytes for this long is disconnected.
    #[arg(long, default_value = "60s", value_parser = timeout)]
    write_timeout: Duration,
    /// Reply bytes queued per connection before its requests wait.
    #[arg(long, default_value = "262144", value_parser = positive)]
    reply_queue_bytes: usize,
    /// Open `.part` descriptors (least recently used ones are closed beyond it).
    #[arg(long, default_value = "512", value_parser = positive)]
    max_open_parts: usize,
    /// Unfinished uploads per uid (1025 beyond it).
    #[arg(long, default_value = "64", value_parser = positive)]
    max_unfinished_per_uid: usize,
    /// Unfinished uploads of all uids together (1025 beyond it).
    #[arg(long, default_value = "16384", value_parser = positive)]
    max_unfinished_total: usize,
    /// An unfinished upload without a chunk for this long is removed.
    #[arg(long, default_value = "3600s", value_parser = timeout)]
    upload_expiry: Duration,
    /// Free disk space a new upload must leave after its declared size (1024 otherwise).
    #[arg(long, default_value = "67108864", value_parser = bytes)]
    min_free_space: u64,
    /// Largest declared file size accepted (1018 beyond it).
    #[arg(long, default_value = "1099511627776", value_parser = bytes)]
    max_file_size: u64,
}

impl Args {
    pub fn config(&self) -> AnyResult<ServerConfig> {
        let mut cfg = ServerConfig::new(&self.dir);
        cfg.named_errors = !self.deployed_errors;
        if self.appending {
            cfg.storage = chatxfer_tools::server::Storage::AppendStrict;
        }
        cfg.max_file_size = self.max_file_size;
        cfg.limits = Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            frame_timeout: self.frame_timeout,
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            reply_queue_bytes: self.reply_queue_bytes,
            max_open_parts: self.max_open_parts,
            max_unfinished_per_uid: self.max_unfinished_per_uid,
            max_unfinished_total: self.max_unfinished_total,
            upload_expiry: self.upload_expiry,
            min_free_space: self.min_free_space,
        };
        if let Some(path) = &self.tokens {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the tokens file {}: {e}", path.display()))?;
            let tokens = server::parse_tokens(&text)
                .map_err(|e| format!("tokens file {}: {e}", path.display()))?;
            cfg.tokens = Some(tokens);
        }
        Ok(cfg)
    }
}

pub async fn run(a: Args) -> AnyResult<bool> {
    let cfg = a.config()?;
    let server = server::start(&a.listen, cfg).await?;
    // Tests and the C++ examples read the address from this line.
    eprintln!(
        "chatxfer: serving on {} into {}",
        server.local_addr(),
        a.dir.display()
    );
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(true)
}
