//! `chatxfer demo`: generates picture- and video-sized files and uploads
//! them through the embedded reference server (what `upload` does for the
//! user's files).

use chatxfer::engine::WindowPolicy;

use crate::common::{generate, AnyResult, LinkArgs};
use crate::upload;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    link: LinkArgs,
    /// Window policy: adaptive, adaptive:MAX or fixed:N.
    #[arg(long, default_value = "adaptive", value_parser = WindowPolicy::parse)]
    window: WindowPolicy,
    /// Multiply the generated file sizes by this.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
}

/// Names and sizes of a chat's typical attachments.
const FILES: [(&str, usize); 6] = [
    ("photo-beach.jpg", 380_000),
    ("screenshot.png", 1_200_000),
    ("photo-party.jpg", 2_600_000),
    ("voice-note.m4a", 700_000),
    ("clip.mp4", 24_000_000),
    ("holiday-video.mp4", 96_000_000),
];

pub async fn run(a: Args) -> AnyResult<bool> {
    let dir = tempfile::tempdir()?;
    let mut paths = Vec::new();
    for (i, (name, len)) in FILES.iter().enumerate() {
        let p = dir.path().join(name);
        generate(&p, (*len as f64 * a.scale.max(0.0)) as usize, i as u64 + 7)?;
        paths.push(p);
    }
    eprintln!(
        "chatxfer demo: {} files, {:.1} MB, window {}{}",
        paths.len(),
        FILES.iter().map(|f| f.1 as f64 * a.scale).sum::<f64>() / 1e6,
        a.window,
        a.link.describe()
    );
    let mut args = upload::Args::embedded(paths);
    args.window = a.window;
    args.link = a.link;
    upload::run(args).await
}
