//! `chatxfer upload`: uploads files (or resumes journaled ones) to a
//! ResourceServer or to an embedded reference server, with a bar per file,
//! then prints a summary (and, for the embedded server, checks the stored
//! copies).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use chatxfer::engine::{Event, FileSpec, ServerStorage, WindowPolicy};
use chatxfer::runtime::journal::JournalEntry;
use chatxfer::runtime::{Client, ClientConfig, ClientEvent, Events};

use crate::common::{
    bar_style, connection_down, file_md5, file_md5_interruptible, say, shown, AnyResult, Embedded,
    Interrupt, Interrupted, LinkArgs,
};

#[derive(clap::Args)]
pub struct Args {
    /// Files to upload.
    files: Vec<PathBuf>,
    /// ResourceServer HOST:PORT; without it an embedded reference server is used.
    #[arg(long)]
    server: Option<String>,
    /// How the server stores chunks: appending (the deployed server) or
    /// positional (the reference server). Decides how a cut connection resumes.
    #[arg(long, value_enum)]
    server_storage: Option<Storage>,
    /// Uploading user id (also the message's sender).
    #[arg(long, default_value_t = 1)]
    uid: i64,
    /// The chat peer receiving the files.
    #[arg(long, default_value_t = 2)]
    receiver: i64,
    /// Window policy: adaptive, adaptive:MAX or fixed:N.
    #[arg(long, default_value = "adaptive", value_parser = WindowPolicy::parse)]
    pub window: WindowPolicy,
    /// Give a transfer up after this long without progress (0s: never).
    #[arg(long, default_value = "60s", value_parser = chatxfer_tools::linkemu::parse_duration)]
    give_up_after: std::time::Duration,
    /// Cap the upload at this many bytes per second on the wire (0: none).
    #[arg(long, default_value_t = 0)]
    rate_limit: u64,

    /// Raw bytes per chunk.
    #[arg(long, default_value_t = chatxfer::protocol::DEFAULT_CHUNK_SIZE)]
    chunk: u32,
    /// Keep journals of unfinished uploads here (resume after a restart).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Continue the unfinished uploads found in --state-dir.
    #[arg(long, requires = "state_dir")]
    resume: bool,
    /// Directory the embedded server stores into (default: a temporary one).
    #[arg(long)]
    store_dir: Option<PathBuf>,
    /// The chat message the upload belongs to; several files get N, N+1, ...
    #[arg(long, default_value_t = 1)]
    message_id: i64,
    /// Login token, sent on the first chunk. Against an appending server it
    /// also enables size probes: after a lost connection (or an inexact
    /// journal) the upload continues after exactly what the server holds
    /// instead of from seq 1, and each upload's stored size is verified at
    /// the end (README "Resuming").
    #[arg(long, default_value = "")]
    token: String,
    /// Upload the files as avatars (1031, stop-and-wait).
    #[arg(long)]
    avatar: bool,
    #[command(flatten)]
    pub link: LinkArgs,
}

impl Args {
    /// `upload FILE...` with every option at its default (the demo's run).
    pub fn embedded(files: Vec<PathBuf>) -> Args {
        Args {
            files,
            server: None,
            server_storage: None,
            uid: 1,
            receiver: 2,
            window: WindowPolicy::adaptive(),
            give_up_after: std::time::Duration::from_secs(60),
            rate_limit: 0,
            chunk: chatxfer::protocol::DEFAULT_CHUNK_SIZE,
            state_dir: None,
            resume: false,
            store_dir: None,
            message_id: 1,
            token: String::new(),
            avatar: false,
            link: LinkArgs::default(),
        }
    }
}

/// Files from this size on are announced while they are hashed (seconds).
const BIG_FILE: u64 = 100_000_000;

/// `--server-storage`.
#[derive(Clone, Copy, ValueEnum)]
enum Storage {
    /// The deployed server: chunks are appended.
    Appending,
    /// The reference server: chunks are written at their offset.
    Positional,
}

pub async fn run(a: Args) -> AnyResult<bool> {
    if a.files.is_empty() && !a.resume {
        return Err("no files to upload (give FILE... or --resume with --state-dir)".into());
    }
    let stop = Interrupt::watch()?;
    // Hashed first (the chat client knows the md5 before it announces a
    // message, so the timings are the transfers alone); Ctrl-C stops it.
    let mut md5s = Vec::with_capacity(a.files.len());
    for path in &a.files {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        if size >= BIG_FILE {
            eprintln!(
                "hashing {} ({:.1} MB)...",
                shown(&path.display().to_string()),
                size as f64 / 1e6
            );
        }
        match file_md5_interruptible(path, &stop).await {
            Ok(md5) => md5s.push(Some(md5)),
            Err(e) if e.is::<Interrupted>() => {
                eprintln!(
                    "interrupted while hashing {}; nothing was sent",
                    path.display()
                );
                return Ok(false);
            }
            // add_file reports the unreadable file.
            Err(_) => md5s.push(None),
        }
    }
    let embedded = match a.server {
        Some(_) => None,
        None => Some(Embedded::start(a.store_dir.clone(), &a.link).await?),
    };
    let (client, mut events) = Client::start(client_config(&a, embedded.as_ref()))?;
    let mut board = Board::new()?;
    if a.resume {
        resume_journaled(&client, &mut board);
    }
    add_files(&client, &a, md5s, &mut board);

    let start = Instant::now();
    let interrupted = follow(&mut events, &mut board, &stop).await;
    let elapsed = start.elapsed();
    client.shutdown(Some(Duration::from_secs(5))).await;
    // The engine's record, after the drain, is what the server acknowledged.
    for row in board.rows.iter_mut().filter(|r| r.pending()) {
        if let Some(st) = client.status(&row.name) {
            row.acked = st.acked;
        }
    }
    board.bars.clear();
    if interrupted {
        let how = match &a.state_dir {
            Some(dir) => format!(
                "resume with: chatxfer upload --resume --state-dir {}",
                shown(&dir.display().to_string())
            ),
            None => "without --state-dir a new run starts over".to_string(),
        };
        // Not through the bars: it must show on a pipe or log file too.
        eprintln!("interrupted: in-flight chunks drained; {how}");
    }

    println!();
    let stored_under = embedded.as_ref().map(|e| e.dir.join(a.uid.to_string()));
    let (all_ok, total) = summarize(&board.rows, stored_under.as_deref());
    let stats = client.stats();
    println!(
        "total {:.1} MB acknowledged in {:.2} s = {:.1} MB/s; {} requests, {} bytes on the wire, {} restarts",
        total as f64 / 1e6,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6,
        stats.requests_sent,
        stats.bytes_sent,
        stats.restarts
    );
    if let Some(e) = embedded {
        e.shutdown().await;
    }
    Ok(all_ok && !interrupted)
}

fn client_config(a: &Args, embedded: Option<&Embedded>) -> ClientConfig {
    let storage = match (a.server_storage, embedded) {
        (Some(Storage::Appending), _) => ServerStorage::Appending,
        (Some(Storage::Positional), _) => ServerStorage::Positional,
        // The embedded server writes positionally; a real one appends.
        (None, Some(_)) => ServerStorage::Positional,
        (None, None) => ServerStorage::Appending,
    };
    let addr = match (embedded, &a.server) {
        (Some(e), _) => e.addr.clone(),
        (None, Some(s)) => s.clone(),
        (None, None) => unreachable!("no --server means an embedded server"),
    };
    let mut config = ClientConfig::new(addr);
    config.engine.window = a.window;
    config.engine.give_up_after = (!a.give_up_after.is_zero()).then_some(a.give_up_after);
    config.engine.chunk_size = a.chunk;
    config.engine.rate_limit = (a.rate_limit > 0).then_some(a.rate_limit);
    config.engine.server_storage = storage;
    config.state_dir = a.state_dir.clone();
    config
}

/// One file's outcome, for the summary.
struct Row {
    name: String,
    path: PathBuf,
    bytes: u64,
    added: Instant,
    done: Option<Instant>,
    md5: Option<String>,
    error: Option<String>,
    /// Bytes the server acknowledged, and how many of them an earlier run did.
    acked: u64,
    acked_before: u64,
}

impl Row {
    fn pending(&self) -> bool {
        self.done.is_none() && self.error.is_none()
    }
}

/// The bars (by file name) and the rows of the summary.
struct Board {
    multi: MultiProgress,
    style: ProgressStyle,
    bars: HashMap<String, ProgressBar>,
    rows: Vec<Row>,
}

impl Board {
    fn new() -> AnyResult<Board> {
        Ok(Board {
            multi: MultiProgress::new(),
            style: bar_style("cyan/blue")?,
            bars: HashMap::new(),
            rows: Vec::new(),
        })
    }

    /// A bar for a file of `total` bytes, starting at `acked` (a resumed
    /// upload), and its row.
    fn add(&mut self, name: &str, path: &Path, total: u64, acked: u64) -> &mut Row {
        // Positioned while hidden: set_position draws at once, and before
        // reset_eta that draw would show the jump to `acked` as a rate.
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        bar.set_style(self.style.clone());
        bar.set_prefix(name.chars().take(22).collect::<String>());
        if acked > 0 {
            // The rate and ETA count only this run's bytes.
            bar.set_position(acked);
            bar.reset_eta();
        }
        let bar = self.multi.add(bar);
        self.bars.insert(name.to_string(), bar);
        self.rows.push(Row {
            name: name.into(),
            path: path.into(),
            bytes: total,
            added: Instant::now(),
            done: None,
            md5: None,
            error: None,
            acked,
            acked_before: acked,
        });
        self.rows.last_mut().expect("just added")
    }

    fn row(&mut self, name: &str) -> Option<&mut Row> {
        self.rows.iter_mut().find(|r| r.name == name)
    }

    fn pending(&self) -> bool {
        self.rows.iter().any(Row::pending)
    }
}

/// Bytes of a journaled upload the server already acknowledged.
fn acked_bytes(entry: &JournalEntry) -> u64 {
    (entry.acked_prefix as u64 * entry.chunk_size as u64).min(entry.size)
}

/// Continues the unfinished uploads an earlier run left in --state-dir.
fn resume_journaled(client: &Client, board: &mut Board) {
    for entry in client.offered() {
        let acked = acked_bytes(&entry);
        board.add(&entry.name, &entry.path, entry.size, acked);
        if let Err(e) = client.resume_offered(&entry.name) {
            board.rows.last_mut().expect("just added").error = Some(e.to_string());
        }
    }
}

/// Adds the command line's files with their md5s, named after their file
/// names (`2-NAME`, ... for duplicates).
fn add_files(client: &Client, a: &Args, md5s: Vec<Option<String>>, board: &mut Board) {
    let mut used = HashSet::new();
    for (index, (path, md5)) in a.files.iter().zip(md5s).enumerate() {
        let name = unique_name(path, &mut used);
        let mut spec = FileSpec::new(&name, path);
        spec.uid = a.uid;
        spec.sender = a.uid;
        spec.receiver = a.receiver;
        spec.md5 = md5;
        spec.message_id = a.message_id + index as i64;
        spec.token = a.token.clone();
        spec.avatar = a.avatar;
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        board.add(&name, path, size, 0);
        if let Err(e) = client.add_file(path, spec) {
            board.rows.last_mut().expect("just added").error = Some(e.to_string());
            board.bars[&name].abandon_with_message(format!("error: {}", shown(&e.to_string())));
        }
    }
}

/// The file's name, or `N-name` if an earlier file already took it.
fn unique_name(path: &Path, used: &mut HashSet<String>) -> String {
    let base = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file")
        .to_string();
    let mut name = base.clone();
    let mut i = 1;
    while !used.insert(name.clone()) {
        i += 1;
        name = format!("{i}-{base}");
    }
    name
}

/// Moves the bars until every file completed or failed; returns whether
/// Ctrl-C cut it short (the client then drains its in-flight chunks on
/// shutdown, so the journal is exact).
async fn follow(events: &mut Events, board: &mut Board, stop: &Interrupt) -> bool {
    while board.pending() {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = stop.wait() => return true,
        };
        let Some(ev) = ev else { break };
        show(ev, board);
    }
    false
}

fn show(ev: ClientEvent, board: &mut Board) {
    let ev = match ev {
        ClientEvent::Transfer(ev) => ev,
        ClientEvent::Disconnected {
            reason,
            retry_in,
            attempt,
        } => {
            say(&board.multi, connection_down(&reason, retry_in, attempt));
            return;
        }
        ClientEvent::JournalIgnored { path, reason } => {
            let line = format!(
                "ignoring journal {}: {}",
                shown(&path.display().to_string()),
                shown(&reason)
            );
            say(&board.multi, line);
            return;
        }
        _ => return,
    };
    match ev {
        Event::Progress { name, acked, .. } => {
            if let Some(b) = board.bars.get(&name) {
                b.set_position(acked);
            }
            if let Some(row) = board.row(&name) {
                row.acked = acked;
            }
        }
        Event::Completed { name, md5, bytes } => {
            if let Some(row) = board.row(&name) {
                row.done = Some(Instant::now());
                row.md5 = Some(md5);
                row.bytes = bytes;
                row.acked = bytes;
            }
            if let Some(b) = board.bars.get(&name) {
                b.set_position(bytes);
                b.finish_with_message("done");
            }
        }
        Event::Failed { name, failure } => {
            if let Some(row) = board.row(&name) {
                row.error = Some(failure.to_string());
            }
            if let Some(b) = board.bars.get(&name) {
                b.abandon_with_message(format!("failed: {}", shown(&failure.to_string())));
            }
        }
        _ => {}
    }
}

/// Prints a line per file; `stored_under` (the embedded server's directory
/// of this uid) has the stored copies checked. Returns whether every file
/// completed (and checked out) and the bytes this run got acknowledged,
/// finished files or not.
fn summarize(rows: &[Row], stored_under: Option<&Path>) -> (bool, u64) {
    let mut ok = true;
    let mut total = 0u64;
    for r in rows {
        total += r.acked.saturating_sub(r.acked_before);
        match (&r.error, &r.md5, r.done) {
            (None, Some(md5), Some(done)) => {
                let secs = done.duration_since(r.added).as_secs_f64().max(1e-9);
                let check = match stored_under {
                    Some(dir) => {
                        let (fine, text) = check_stored(&dir.join(&r.name), md5);
                        ok &= fine;
                        text
                    }
                    None => "server acknowledged every chunk".to_string(),
                };
                println!(
                    "{:<22} {:>12} bytes {:>8.2} s {:>9.1} MB/s  md5 {md5}  {check}",
                    shown(&r.name),
                    r.bytes,
                    secs,
                    r.bytes as f64 / secs / 1e6
                );
            }
            (err, _, _) => {
                ok = false;
                println!(
                    "{:<22} FAILED: {} ({}; {} of {} bytes acknowledged)",
                    shown(&r.name),
                    shown(err.as_deref().unwrap_or("did not complete")),
                    shown(&r.path.display().to_string()),
                    r.acked,
                    r.bytes
                );
            }
        }
    }
    (ok, total)
}

/// Whether the stored copy has the uploaded md5, and the summary's words.
fn check_stored(stored: &Path, md5: &str) -> (bool, String) {
    match file_md5(stored) {
        Ok(m) if m == md5 => (true, "stored copy md5 OK".to_string()),
        Ok(m) => (false, format!("STORED COPY DIFFERS (md5 {m})")),
        Err(err) => (false, format!("stored copy unreadable: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(size: u64, chunk_size: u32, acked_prefix: u32) -> JournalEntry {
        JournalEntry {
            version: 1,
            name: "f".into(),
            path: "f".into(),
            size,
            mtime: None,
            md5: String::new(),
            chunk_size,
            uid: 1,
            sender: 1,
            receiver: 2,
            message_id: 1,
            priority: 0,
            token: String::new(),
            avatar: false,
            acked_prefix,
            acked_beyond: Vec::new(),
            exact: true,
        }
    }

    #[test]
    fn acknowledged_bytes_are_whole_chunks_capped_at_the_size() {
        assert_eq!(acked_bytes(&journal(100_000, 32_768, 0)), 0);
        assert_eq!(acked_bytes(&journal(100_000, 32_768, 2)), 65_536);
        // The last chunk is short.
        assert_eq!(acked_bytes(&journal(100_000, 32_768, 4)), 100_000);
    }

    #[test]
    fn a_resumed_bar_starts_at_its_acknowledged_offset() {
        let mut board = Board::new().unwrap();
        board.add("resumed", Path::new("resumed"), 1000, 400);
        board.add("new", Path::new("new"), 1000, 0);
        assert_eq!(board.bars["resumed"].position(), 400);
        assert_eq!(board.bars["new"].position(), 0);
        // The jump to 400 is not taken for this run's rate.
        assert_eq!(board.bars["resumed"].per_sec(), 0.0);
        assert!(board.pending());
    }
}
