//! `chatxfer`: upload files to a ResourceServer, download them, run the
//! reference server, or run the demo (generated files through the embedded
//! server, with bars). This file only parses the command line and hands each
//! subcommand to its module.

mod common;
mod demo;
mod download;
mod serve;
mod upload;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

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
    Demo(demo::Args),
    /// Upload files (to --server, or to an embedded reference server).
    Upload(upload::Args),
    /// Download chat files by message id (1045, then pipelined 1047s).
    Download(download::Args),
    /// Run the reference ResourceServer.
    Serve(serve::Args),
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
            Cmd::Demo(a) => demo::run(a).await,
            Cmd::Upload(a) => upload::run(a).await,
            Cmd::Download(a) => download::run(a).await,
            Cmd::Serve(a) => serve::run(a).await,
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
