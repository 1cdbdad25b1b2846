//! `chatxfer`: upload files to a ResourceServer, run the reference server,
//! or run the demo (generated files through the embedded server, with bars).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use chatxfer::engine::{md5_hex, Event, FileSpec, ServerStorage, WindowPolicy};
use chatxfer::linkemu::{LinkConfig, LinkEmulator};
use chatxfer::runtime::files::FileSource;
use chatxfer::runtime::{Client, ClientConfig};
use chatxfer::server::{self, ServerConfig, ServerHandle};

#[derive(Parser)]
#[command(
    name = "chatxfer",
    version,
    about = "Chat file transfers to a ResourceServer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log filter (tracing env-filter syntax); RUST_LOG wins if set.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate picture- and video-sized files and upload them at once through
    /// the embedded reference server, with a progress bar per file.
    Demo(DemoArgs),
    /// Upload files (to --server, or to an embedded reference server).
    Upload(UploadArgs),
    /// Download chat files by message id (1045, then pipelined 1047s).
    Download(DownloadArgs),
    /// Run the reference ResourceServer.
    Serve(ServeArgs),
}

#[derive(Args)]
struct DownloadArgs {
    /// ResourceServer HOST:PORT. Without it: an embedded reference server,
    /// to which a generated file is uploaded first, then downloaded and compared.
    #[arg(long)]
    server: Option<String>,
    /// Chat message ids whose files to download (repeatable).
    #[arg(long = "message-id")]
    message_ids: Vec<i64>,
    /// Avatar file names to download (1033; repeatable).
    #[arg(long = "avatar")]
    avatars: Vec<String>,
    /// Directory to save into (files keep the server's names).
    #[arg(long, alias = "dest", default_value = ".")]
    out: PathBuf,
    #[command(flatten)]
    link: LinkArgs,
    /// Downloading user id.
    #[arg(long, default_value_t = 2)]
    uid: i64,
    /// Login token (checked by the server on the first chunk).
    #[arg(long, default_value = "")]
    token: String,
    /// Window policy: adaptive, adaptive:MAX or fixed:N.
    #[arg(long, default_value = "adaptive")]
    window: String,
}

#[derive(Args, Clone)]
struct LinkArgs {
    /// Emulated round-trip time added by a loopback link emulator (e.g. 40ms; embedded server only).
    #[arg(long)]
    rtt: Option<String>,
    /// Emulated bandwidth (e.g. 200mbit; embedded server only).
    #[arg(long)]
    rate: Option<String>,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    link: LinkArgs,
    /// Window policy: adaptive, adaptive:MAX or fixed:N.
    #[arg(long, default_value = "adaptive")]
    window: String,
    /// Multiply the generated file sizes by this.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
}

#[derive(Args)]
struct UploadArgs {
    /// Files to upload.
    files: Vec<PathBuf>,
    /// ResourceServer HOST:PORT; without it an embedded reference server is used.
    #[arg(long)]
    server: Option<String>,
    /// How the server stores chunks: appending (the deployed server) or
    /// positional (the reference server). Decides how a cut connection resumes.
    #[arg(long)]
    server_storage: Option<String>,
    /// Uploading user id (also the message's sender).
    #[arg(long, default_value_t = 1)]
    uid: i64,
    /// The chat peer receiving the files.
    #[arg(long, default_value_t = 2)]
    receiver: i64,
    /// Window policy: adaptive, adaptive:MAX or fixed:N.
    #[arg(long, default_value = "adaptive")]
    window: String,
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
    /// Login token, sent on the first chunk.
    #[arg(long, default_value = "")]
    token: String,
    /// Upload the files as avatars (1031, stop-and-wait).
    #[arg(long)]
    avatar: bool,
    #[command(flatten)]
    link: LinkArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Storage directory (files go to DIR/<uid>/<name>).
    #[arg(long)]
    dir: PathBuf,
    /// Error replies carry only `error`, like the deployed server.
    #[arg(long)]
    deployed_errors: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match chatxfer::runtime::handle() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatxfer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Demo(a) => demo(a).await,
            Cmd::Upload(a) => upload(a).await,
            Cmd::Download(a) => download(a).await,
            Cmd::Serve(a) => serve(a).await,
        }
    });
    chatxfer::runtime::shutdown(Duration::from_secs(2));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chatxfer: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

async fn serve(a: ServeArgs) -> AnyResult<bool> {
    let mut cfg = ServerConfig::new(&a.dir);
    cfg.named_errors = !a.deployed_errors;
    let server = server::start(&a.listen, cfg).await?;
    eprintln!(
        "chatxfer: serving on {} into {}",
        server.local_addr(),
        a.dir.display()
    );
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(true)
}

/// Deterministic filler so the demo needs nothing from the user.
fn generate(path: &Path, len: usize, seed: u64) -> std::io::Result<()> {
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

async fn demo(a: DemoArgs) -> AnyResult<bool> {
    let dir = tempfile::tempdir()?;
    let files = [
        ("photo-beach.jpg", 380_000),
        ("screenshot.png", 1_200_000),
        ("photo-party.jpg", 2_600_000),
        ("voice-note.m4a", 700_000),
        ("clip.mp4", 24_000_000),
        ("holiday-video.mp4", 96_000_000),
    ];
    let mut paths = Vec::new();
    for (i, (name, len)) in files.iter().enumerate() {
        let p = dir.path().join(name);
        generate(&p, (*len as f64 * a.scale.max(0.0)) as usize, i as u64 + 7)?;
        paths.push(p);
    }
    eprintln!(
        "chatxfer demo: {} files, {:.1} MB, window {}{}",
        paths.len(),
        files.iter().map(|f| f.1 as f64 * a.scale).sum::<f64>() / 1e6,
        a.window,
        match (&a.link.rtt, &a.link.rate) {
            (None, None) => String::new(),
            (rtt, rate) => format!(
                ", emulated link rtt {} rate {}",
                rtt.as_deref().unwrap_or("0ms"),
                rate.as_deref().unwrap_or("unlimited")
            ),
        }
    );
    upload(UploadArgs {
        files: paths,
        server: None,
        server_storage: None,
        uid: 1,
        receiver: 2,
        window: a.window,
        chunk: chatxfer::protocol::DEFAULT_CHUNK_SIZE,
        state_dir: None,
        resume: false,
        store_dir: None,
        message_id: 1,
        token: String::new(),
        avatar: false,
        link: a.link,
    })
    .await
}

struct Embedded {
    server: ServerHandle,
    emulator: Option<LinkEmulator>,
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
}

async fn start_embedded(
    store_dir: Option<PathBuf>,
    link: &LinkArgs,
) -> AnyResult<(Embedded, String)> {
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
    let emulator = if link.rtt.is_some() || link.rate.is_some() {
        let cfg = LinkConfig::parse_rtt_rate(
            link.rtt.as_deref().unwrap_or("0ms"),
            link.rate.as_deref().unwrap_or("unlimited"),
        )?;
        let emu = LinkEmulator::start("127.0.0.1:0", server.local_addr(), cfg).await?;
        addr = emu.local_addr().to_string();
        Some(emu)
    } else {
        None
    };
    Ok((
        Embedded {
            server,
            emulator,
            _tmp: tmp,
            dir,
        },
        addr,
    ))
}

struct Row {
    name: String,
    path: PathBuf,
    bytes: u64,
    added: Instant,
    done: Option<Instant>,
    md5: Option<String>,
    error: Option<String>,
}

async fn upload(a: UploadArgs) -> AnyResult<bool> {
    if a.files.is_empty() && !a.resume {
        return Err("no files to upload (give FILE... or --resume with --state-dir)".into());
    }
    let window = WindowPolicy::parse(&a.window)?;
    let (embedded, addr) = match &a.server {
        Some(s) => (None, s.clone()),
        None => {
            let (e, addr) = start_embedded(a.store_dir.clone(), &a.link).await?;
            (Some(e), addr)
        }
    };
    let storage = match a.server_storage.as_deref() {
        Some("appending") => ServerStorage::Appending,
        Some("positional") => ServerStorage::Positional,
        Some(other) => {
            return Err(
                format!("--server-storage {other:?}: expected appending or positional").into(),
            )
        }
        // The embedded server writes positionally; a real one appends.
        None if embedded.is_some() => ServerStorage::Positional,
        None => ServerStorage::Appending,
    };
    let mut config = ClientConfig::new(addr.clone());
    config.engine.window = window;
    config.engine.chunk_size = a.chunk;
    config.engine.server_storage = storage;
    config.state_dir = a.state_dir.clone();
    let (client, mut events) = Client::start(config)?;

    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>22} [{bar:32.cyan/blue}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
    )?
    .progress_chars("=> ");
    let mut rows: Vec<Row> = Vec::new();
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let add_bar = |rows: &mut Vec<Row>,
                   bars: &mut HashMap<String, ProgressBar>,
                   name: &str,
                   path: &Path,
                   total: u64| {
        let bar = multi.add(ProgressBar::new(total));
        bar.set_style(style.clone());
        bar.set_prefix(name.chars().take(22).collect::<String>());
        bars.insert(name.to_string(), bar);
        rows.push(Row {
            name: name.into(),
            path: path.into(),
            bytes: total,
            added: Instant::now(),
            done: None,
            md5: None,
            error: None,
        });
    };

    if a.resume {
        for entry in client.offered() {
            add_bar(&mut rows, &mut bars, &entry.name, &entry.path, entry.size);
            if let Err(e) = client.resume_offered(&entry.name) {
                rows.last_mut().expect("just added").error = Some(e.to_string());
            }
        }
    }
    // Hash first (the chat client knows the md5 before it announces a
    // message), so the timings below are the transfers alone.
    let mut md5s = Vec::new();
    for path in &a.files {
        md5s.push(
            FileSource::open(path)
                .and_then(|mut s| {
                    md5_hex(&mut s).map_err(|e| chatxfer::Error::Source {
                        path: path.clone(),
                        source: e,
                    })
                })
                .ok(),
        );
    }
    let mut used = std::collections::HashSet::new();
    for (index, (path, md5)) in a.files.iter().zip(md5s).enumerate() {
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
        let mut spec = FileSpec::new(&name, path);
        spec.uid = a.uid;
        spec.sender = a.uid;
        spec.receiver = a.receiver;
        spec.md5 = md5;
        spec.message_id = a.message_id + index as i64;
        spec.token = a.token.clone();
        spec.avatar = a.avatar;
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        add_bar(&mut rows, &mut bars, &name, path, size);
        if let Err(e) = client.add_file(path, spec) {
            let row = rows.last_mut().expect("just added");
            row.error = Some(e.to_string());
            bars[&name].abandon_with_message(format!("error: {e}"));
        }
    }

    let start = Instant::now();
    let pending = |rows: &[Row]| rows.iter().any(|r| r.done.is_none() && r.error.is_none());
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while pending(&rows) {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = &mut ctrl_c => {
                // Graceful stop: drain in-flight chunks so the journal is exact.
                interrupted = true;
                None
            }
        };
        let Some(ev) = ev else { break };
        match ev {
            Event::Progress { name, acked, .. } => {
                if let Some(b) = bars.get(&name) {
                    b.set_position(acked);
                }
            }
            Event::Completed { name, md5, bytes } => {
                if let Some(row) = rows.iter_mut().find(|r| r.name == name) {
                    row.done = Some(Instant::now());
                    row.md5 = Some(md5);
                    row.bytes = bytes;
                }
                if let Some(b) = bars.get(&name) {
                    b.set_position(bytes);
                    b.finish_with_message("done");
                }
            }
            Event::Failed { name, failure } => {
                if let Some(row) = rows.iter_mut().find(|r| r.name == name) {
                    row.error = Some(failure.to_string());
                }
                if let Some(b) = bars.get(&name) {
                    b.abandon_with_message(format!("failed: {failure}"));
                }
            }
            Event::Disconnected { reason, retry_in } => {
                let _ = multi.println(format!("connection down: {reason}; retry in {retry_in:?}"));
            }
            Event::JournalIgnored { path, reason } => {
                let _ = multi.println(format!("ignoring journal {}: {reason}", path.display()));
            }
            _ => {}
        }
    }
    let elapsed = start.elapsed();
    client.shutdown(Some(Duration::from_secs(5))).await;
    drop(bars);

    // Summary, and for the embedded server a check of the stored copies.
    let mut ok = !interrupted;
    if interrupted {
        let _ = multi
            .println("interrupted: in-flight chunks drained; resume with --resume --state-dir");
    }
    let mut total = 0u64;
    println!();
    for r in &rows {
        match (&r.error, &r.md5, r.done) {
            (None, Some(md5), Some(done)) => {
                let secs = done.duration_since(r.added).as_secs_f64().max(1e-9);
                total += r.bytes;
                let check = match &embedded {
                    Some(e) => {
                        let stored = e.dir.join(a.uid.to_string()).join(&r.name);
                        match FileSource::open(&stored).and_then(|mut s| {
                            md5_hex(&mut s).map_err(|err| chatxfer::Error::Source {
                                path: stored.clone(),
                                source: err,
                            })
                        }) {
                            Ok(m) if &m == md5 => "stored copy md5 OK".to_string(),
                            Ok(m) => {
                                ok = false;
                                format!("STORED COPY DIFFERS (md5 {m})")
                            }
                            Err(err) => {
                                ok = false;
                                format!("stored copy unreadable: {err}")
                            }
                        }
                    }
                    None => "server acknowledged every chunk".to_string(),
                };
                println!(
                    "{:<22} {:>12} bytes {:>8.2} s {:>9.1} MB/s  md5 {md5}  {check}",
                    r.name,
                    r.bytes,
                    secs,
                    r.bytes as f64 / secs / 1e6
                );
            }
            (err, _, _) => {
                ok = false;
                println!(
                    "{:<22} FAILED: {} ({})",
                    r.name,
                    err.as_deref().unwrap_or("did not complete"),
                    r.path.display()
                );
            }
        }
    }
    let stats = client.stats();
    println!(
        "total {:.1} MB in {:.2} s = {:.1} MB/s; {} requests, {} bytes on the wire, {} restarts",
        total as f64 / 1e6,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6,
        stats.requests_sent,
        stats.bytes_sent,
        stats.restarts
    );
    if let Some(e) = embedded {
        if let Some(emu) = e.emulator {
            emu.shutdown().await;
        }
        e.server.shutdown().await;
    }
    Ok(ok)
}

async fn download(mut a: DownloadArgs) -> AnyResult<bool> {
    // Without --server: upload a generated file to an embedded server first.
    let mut embedded = None;
    let mut reference: Option<(String, String)> = None; // (file name, md5)
    let server = match a.server.clone() {
        Some(s) => s,
        None => {
            let (e, addr) = start_embedded(None, &a.link).await?;
            let tmp = tempfile::tempdir()?;
            let path = tmp.path().join("incoming-photo.jpg");
            generate(&path, 3_000_000, 99)?;
            let md5 = md5_hex(&mut FileSource::open(&path)?)?;
            let message_id = a.message_ids.first().copied().unwrap_or(1);
            let mut cfg = ClientConfig::new(addr.clone());
            cfg.engine.server_storage = ServerStorage::Positional;
            let (up, mut ev) = Client::start(cfg)?;
            let mut spec = FileSpec::new("incoming-photo.jpg", &path);
            spec.uid = 1;
            spec.sender = 1;
            spec.receiver = a.uid;
            spec.message_id = message_id;
            spec.md5 = Some(md5.clone());
            up.add_file(&path, spec)?;
            loop {
                match ev.recv().await {
                    Some(Event::Completed { .. }) => break,
                    Some(Event::Failed { failure, .. }) => {
                        return Err(format!("upload before download: {failure}").into())
                    }
                    None => return Err("upload before download: client stopped".into()),
                    _ => {}
                }
            }
            up.shutdown(None).await;
            eprintln!("uploaded incoming-photo.jpg (3.0 MB) as message {message_id} to the embedded server");
            if a.message_ids.is_empty() {
                a.message_ids.push(message_id);
            }
            reference = Some(("incoming-photo.jpg".into(), md5));
            embedded = Some((e, tmp));
            addr
        }
    };
    if a.message_ids.is_empty() && a.avatars.is_empty() {
        return Err("nothing to download: give --message-id N or --avatar NAME".into());
    }
    let mut config = ClientConfig::new(server);
    config.engine.window = WindowPolicy::parse(&a.window)?;
    let (client, mut events) = Client::start(config)?;
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>22} [{bar:32.green/blue}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
    )?
    .progress_chars("=> ");
    let mut bars = HashMap::new();
    let mut pending = std::collections::HashSet::new();
    let wanted = a
        .message_ids
        .iter()
        .map(|id| (format!("msg-{id}"), *id, None))
        .chain(a.avatars.iter().map(|n| {
            let avatar = chatxfer::engine::AvatarRef {
                name: n.clone(),
                client_path: n.clone(),
                req_type: "1".into(),
            };
            (format!("avatar-{n}"), 0, Some(avatar))
        }));
    for (name, message_id, avatar) in wanted {
        let spec = chatxfer::engine::DownloadSpec {
            hold: false,
            name: name.clone(),
            message_id,
            uid: a.uid,
            token: a.token.clone(),
            md5: None,
            priority: 0,
            avatar,
        };
        client.add_download(spec, &a.out, None)?;
        let bar = multi.add(ProgressBar::new(0));
        bar.set_style(style.clone());
        bar.set_prefix(name.clone());
        bars.insert(name.clone(), bar);
        pending.insert(name);
    }
    let start = Instant::now();
    let mut ok = true;
    let mut lines = Vec::new();
    let mut saved = HashMap::new();
    while !pending.is_empty() {
        let Some(ev) = events.recv().await else { break };
        match ev {
            Event::Progress {
                name, acked, total, ..
            } => {
                if let Some(b) = bars.get(&name) {
                    b.set_length(total);
                    b.set_position(acked);
                }
            }
            Event::Saved { name, path } => {
                saved.insert(name, path);
            }
            Event::Completed { name, md5, bytes } => {
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                if let Some(b) = bars.get(&name) {
                    b.finish_with_message("done");
                }
                let path = saved
                    .get(&name)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                lines.push(format!(
                    "{name:<14} {bytes:>12} bytes {secs:>8.2} s {:>9.1} MB/s  md5 {md5}  {path}",
                    bytes as f64 / secs / 1e6
                ));
                pending.remove(&name);
            }
            Event::Failed { name, failure } => {
                ok = false;
                if let Some(b) = bars.get(&name) {
                    b.abandon_with_message(format!("failed: {failure}"));
                }
                lines.push(format!("{name:<14} FAILED: {failure}"));
                pending.remove(&name);
            }
            Event::Disconnected { reason, retry_in } => {
                let _ = multi.println(format!("connection down: {reason}; retry in {retry_in:?}"));
            }
            _ => {}
        }
    }
    client.shutdown(None).await;
    drop(bars);
    println!();
    for l in lines {
        println!("{l}");
    }
    if let Some((name, md5)) = reference {
        let got = md5_hex(&mut FileSource::open(a.out.join(&name))?)?;
        if got == md5 {
            println!("downloaded copy matches the uploaded file (md5 {md5})");
        } else {
            println!("DOWNLOADED COPY DIFFERS: md5 {got}, uploaded {md5}");
            ok = false;
        }
    }
    if let Some((e, _tmp)) = embedded {
        if let Some(emu) = e.emulator {
            emu.shutdown().await;
        }
        e.server.shutdown().await;
    }
    Ok(ok)
}
