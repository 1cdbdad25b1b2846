//! `chatxfer serve`: the reference ResourceServer until Ctrl-C.

use std::path::PathBuf;

use chatxfer_tools::server::{self, ServerConfig};

use crate::common::AnyResult;

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
}

pub async fn run(a: Args) -> AnyResult<bool> {
    let mut cfg = ServerConfig::new(&a.dir);
    cfg.named_errors = !a.deployed_errors;
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
