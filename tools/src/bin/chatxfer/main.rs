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
        // Colours only for a terminal; a log file or pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("chatxfer").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_option_values_are_usage_errors() {
        for args in [
            &["upload", "f", "--server-storage", "sideways"][..],
            &["upload", "f", "--window", "fixed:0"],
            &["demo", "--rtt", "40"],
            &["download", "--rate", "10mbps"],
            &["serve", "--dir", "d", "--idle-timeout", "0s"],
            &["serve", "--dir", "d", "--max-connections", "0"],
            &["serve", "--dir", "d", "--min-free-space", "lots"],
        ] {
            let e = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            // InvalidValue from a ValueEnum, ValueValidation from a parser.
            assert!(
                matches!(
                    e.kind(),
                    clap::error::ErrorKind::InvalidValue | clap::error::ErrorKind::ValueValidation
                ),
                "{args:?}: {e}"
            );
        }
    }

    #[test]
    fn documented_invocations_parse() {
        for args in [
            &[
                "demo", "--rtt", "40ms", "--rate", "200mbit", "--window", "fixed:5",
            ][..],
            &[
                "upload",
                "a",
                "b",
                "--server",
                "h:1",
                "--server-storage",
                "positional",
            ],
            &[
                "upload",
                "--resume",
                "--state-dir",
                "s",
                "--window",
                "adaptive:64",
            ],
            &[
                "download",
                "--message-id",
                "3",
                "--avatar",
                "x.png",
                "--dest",
                "d",
            ],
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--dir",
                "d",
                "--deployed-errors",
            ],
            &[
                "serve",
                "--dir",
                "d",
                "--tokens",
                "t.txt",
                "--max-connections",
                "100",
                "--max-connections-per-ip",
                "10",
                "--frame-timeout",
                "5s",
                "--idle-timeout",
                "60s",
                "--write-timeout",
                "10s",
                "--reply-queue-bytes",
                "65536",
                "--max-open-parts",
                "64",
                "--max-unfinished-per-uid",
                "8",
                "--max-unfinished-total",
                "100",
                "--upload-expiry",
                "600s",
                "--min-free-space",
                "0",
                "--max-file-size",
                "1000000",
            ],
        ] {
            assert!(parse(args).is_ok(), "{args:?}");
        }
        // The flags reach the server's configuration; the defaults are the library's.
        let Cli {
            cmd: Cmd::Serve(serve),
            ..
        } = parse(&["serve", "--dir", "d", "--max-open-parts", "7"]).unwrap()
        else {
            panic!("not serve");
        };
        let cfg = serve.config().unwrap();
        assert_eq!(cfg.limits.max_open_parts, 7);
        assert_eq!(
            chatxfer_tools::server::Limits {
                max_open_parts: chatxfer_tools::server::Limits::default().max_open_parts,
                ..cfg.limits
            },
            chatxfer_tools::server::Limits::default()
        );
        // --resume needs --state-dir.
        assert!(parse(&["upload", "--resume"]).is_err());
    }
}
