//! `chatxfer download`: downloads chat files by message id (1045, then
//! pipelined 1047s) and avatars (1033), with a bar per file. Without
//! --server it first uploads a generated picture to an embedded reference
//! server, then downloads it and compares.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar};

use chatxfer::engine::{AvatarRef, DownloadSpec, Event, FileSpec, ServerStorage, WindowPolicy};
use chatxfer::runtime::{Client, ClientConfig, ClientEvent, Events};

use crate::common::{
    bar_style, connection_down, file_md5, generate, say, shown, AnyResult, Embedded, Interrupt,
    LinkArgs,
};

#[derive(clap::Args)]
pub struct Args {
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
    #[arg(long, default_value = "adaptive", value_parser = WindowPolicy::parse)]
    window: WindowPolicy,
    /// Give a transfer up after this long without progress (0s: never).
    #[arg(long, default_value = "60s", value_parser = chatxfer_tools::linkemu::parse_duration)]
    give_up_after: std::time::Duration,
}

/// The file uploaded to the embedded server before downloading it.
const REFERENCE_NAME: &str = "incoming-photo.jpg";

pub async fn run(mut a: Args) -> AnyResult<bool> {
    let stop = Interrupt::watch()?;
    let mut embedded = None;
    let mut reference_md5 = None;
    let server = match a.server.clone() {
        Some(s) => s,
        None => {
            let e = Embedded::start(None, &a.link).await?;
            let message_id = a.message_ids.first().copied().unwrap_or(1);
            reference_md5 = Some(upload_reference(&e.addr, a.uid, message_id).await?);
            if a.message_ids.is_empty() {
                a.message_ids.push(message_id);
            }
            let addr = e.addr.clone();
            embedded = Some(e);
            addr
        }
    };
    if a.message_ids.is_empty() && a.avatars.is_empty() {
        return Err("nothing to download: give --message-id N or --avatar NAME".into());
    }
    let mut config = ClientConfig::new(server);
    config.engine.window = a.window;
    config.engine.give_up_after = (!a.give_up_after.is_zero()).then_some(a.give_up_after);
    let (client, mut events) = Client::start(config)?;
    let multi = MultiProgress::new();
    let style = bar_style("green/blue")?;
    let mut bars = HashMap::new();
    for spec in specs(&a) {
        client.add_download(spec.clone(), &a.out, None)?;
        let bar = multi.add(ProgressBar::new(0));
        bar.set_style(style.clone());
        bar.set_prefix(spec.name.clone());
        bars.insert(spec.name, bar);
    }
    let (mut ok, lines, interrupted) = follow(&mut events, &multi, &bars, &stop).await;
    if interrupted {
        // Downloads keep no journal across runs: cancelling removes each
        // partial file rather than leaving litter nothing will resume.
        for name in bars.keys() {
            let _ = client.cancel(name);
        }
        ok = false;
    }
    client.shutdown(None).await;
    drop(bars);
    println!();
    for l in lines {
        println!("{}", shown(&l));
    }
    if interrupted {
        println!("interrupted: unfinished downloads cancelled and their partial files removed; run the command again to download them");
    }
    if let Some(md5) = reference_md5 {
        let got = file_md5(&a.out.join(REFERENCE_NAME))?;
        if got == md5 {
            println!("downloaded copy matches the uploaded file (md5 {md5})");
        } else {
            println!("DOWNLOADED COPY DIFFERS: md5 {got}, uploaded {md5}");
            ok = false;
        }
    }
    if let Some(e) = embedded {
        e.shutdown().await;
    }
    Ok(ok)
}

/// Uploads a generated 3 MB picture as `message_id` from uid 1 to `to`;
/// returns its md5.
async fn upload_reference(addr: &str, to: i64, message_id: i64) -> AnyResult<String> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join(REFERENCE_NAME);
    generate(&path, 3_000_000, 99)?;
    let md5 = file_md5(&path)?;
    let mut cfg = ClientConfig::new(addr);
    cfg.engine.server_storage = ServerStorage::Positional;
    let (up, mut ev) = Client::start(cfg)?;
    let mut spec = FileSpec::new(REFERENCE_NAME, &path);
    spec.uid = 1;
    spec.sender = 1;
    spec.receiver = to;
    spec.message_id = message_id;
    spec.md5 = Some(md5.clone());
    up.add_file(&path, spec)?;
    let outcome = loop {
        match ev.recv().await {
            Some(ClientEvent::Transfer(Event::Completed { .. })) => break Ok(()),
            Some(ClientEvent::Transfer(Event::Failed { failure, .. })) => {
                break Err(format!("upload before download: {failure}"))
            }
            None => break Err("upload before download: client stopped".to_string()),
            _ => {}
        }
    };
    up.shutdown(None).await;
    outcome?;
    eprintln!("uploaded {REFERENCE_NAME} (3.0 MB) as message {message_id} to the embedded server");
    Ok(md5)
}

/// A download per message id (`msg-N`) and per avatar (`avatar-NAME`).
fn specs(a: &Args) -> Vec<DownloadSpec> {
    let spec = |name: String, message_id: i64, avatar: Option<AvatarRef>| DownloadSpec {
        name,
        message_id,
        uid: a.uid,
        token: a.token.clone(),
        md5: None,
        priority: 0,
        hold: false,
        avatar,
        known: None,
    };
    let messages = a
        .message_ids
        .iter()
        .map(|id| spec(format!("msg-{id}"), *id, None));
    let avatars = a.avatars.iter().map(|n| {
        let avatar = AvatarRef {
            name: n.clone(),
            client_path: n.clone(),
            req_type: "1".into(),
        };
        spec(format!("avatar-{n}"), 0, Some(avatar))
    });
    messages.chain(avatars).collect()
}

/// Moves the bars until every download completed or failed, or Ctrl-C;
/// returns whether all completed, a summary line per file, and whether
/// Ctrl-C cut it short.
async fn follow(
    events: &mut Events,
    multi: &MultiProgress,
    bars: &HashMap<String, ProgressBar>,
    stop: &Interrupt,
) -> (bool, Vec<String>, bool) {
    let start = Instant::now();
    let mut pending: HashSet<&String> = bars.keys().collect();
    let mut ok = true;
    let mut lines = Vec::new();
    let mut saved: HashMap<String, PathBuf> = HashMap::new();
    while !pending.is_empty() {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = stop.wait() => return (false, lines, true),
        };
        let ev = match ev {
            Some(ClientEvent::Transfer(ev)) => ev,
            Some(ClientEvent::Disconnected {
                reason,
                retry_in,
                attempt,
            }) => {
                say(multi, connection_down(&reason, retry_in, attempt));
                continue;
            }
            Some(_) => continue,
            None => break,
        };
        match ev {
            Event::Progress {
                name, acked, total, ..
            } => {
                if let Some(b) = bars.get(&name) {
                    b.set_length(total);
                    b.set_position(acked);
                }
            }
            Event::Saved { name, path, .. } => {
                saved.insert(name, path);
            }
            Event::Completed { name, md5, bytes } => {
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                if let Some(b) = bars.get(&name) {
                    b.finish_with_message("done");
                }
                let path = saved.get(&name).map(|p| p.display().to_string());
                lines.push(format!(
                    "{name:<14} {bytes:>12} bytes {secs:>8.2} s {:>9.1} MB/s  md5 {md5}  {}",
                    bytes as f64 / secs / 1e6,
                    path.unwrap_or_default()
                ));
                pending.remove(&name);
            }
            Event::Failed { name, failure } => {
                ok = false;
                if let Some(b) = bars.get(&name) {
                    b.abandon_with_message(format!("failed: {}", shown(&failure.to_string())));
                }
                lines.push(format!("{name:<14} FAILED: {failure}"));
                pending.remove(&name);
            }
            _ => {}
        }
    }
    (ok, lines, false)
}
