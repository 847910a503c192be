//! `confidential-data-hub -c cdh.toml`: started as guest-components' daemon
//! is. Reads the config, then serves the api services on its socket until
//! SIGTERM or SIGINT. Without `-c`, the defaults (socket
//! unix:///run/confidential-containers/cdh.sock, no signature policy).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use confidential_data_hub::{server, CdhConfig, Hub};

#[derive(Debug, Parser)]
#[command(
    name = "confidential-data-hub",
    version,
    about = "Confidential data hub: image pull and KBS resources over ttrpc"
)]
struct Cli {
    /// cdh.toml (guest-components' format).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").ok();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(match filter.as_deref() {
            Some("debug") => tracing::Level::DEBUG,
            Some("trace") => tracing::Level::TRACE,
            Some("warn") => tracing::Level::WARN,
            Some("error") => tracing::Level::ERROR,
            _ => tracing::Level::INFO,
        })
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("confidential-data-hub: cannot start async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confidential-data-hub: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error chain on one line, without repeating causes a message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for text in e.chain().map(ToString::to_string) {
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match &cli.config {
        Some(path) => CdhConfig::load(path)?,
        None => CdhConfig::default(),
    };
    tracing::info!(
        config = ?cli.config,
        socket = %config.socket,
        aa = %config.aa.aa_socket,
        policy = ?config.image.image_security_policy_uri,
        "starting"
    );
    let hub = Arc::new(Hub::new(&config).context("building the hub")?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    server::serve_until(hub, &config.socket, stop).await
}
