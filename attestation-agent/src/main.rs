//! `attestation-agent`: `serve` (the ttrpc daemon), `get-resource` and
//! `get-evidence` (one-shot). Only wiring: config, logging, signals.
//! Logs go to stderr; stdout carries only the requested bytes.
//!
//! Without a subcommand it serves, with the arguments kata's agent launches
//! guest-components' AA with: `--attestation_sock unix:///…`,
//! `--initdata-toml FILE` (when the pod has initdata) and `-c FILE` (the
//! initdata's aa.toml, when there is one).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use attestation_agent::agent::{Agent, StartOptions};
use attestation_agent::attester::device::LinuxKernel;
use attestation_agent::config::Config;
use base64::Engine;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "attestation-agent",
    about = "TEE evidence, KBS attestation and key release for the confidential guest"
)]
struct Cli {
    /// aa.toml; without it, /etc/attestation-agent/aa.toml, then agent.aa_kbc_params on the kernel command line.
    #[arg(long, short = 'c', global = true, visible_alias = "config-file")]
    config: Option<PathBuf>,
    /// ttrpc socket, unix:///absolute/path (overrides [server] socket).
    #[arg(long = "attestation_sock", short = 'a', global = true, value_name = "ADDR")]
    attestation_sock: Option<String>,
    /// Initdata TOML: its digest (by its `algorithm`) is bound at start as
    /// BindInitData does, and a mismatch with the TEE's measurement refuses
    /// to start (overrides `initdata` of aa.toml).
    #[arg(long = "initdata-toml", short = 't', global = true, visible_alias = "initdata_toml", value_name = "FILE")]
    initdata_toml: Option<PathBuf>,
    /// Initdata digest (standard base64) to bind at start instead of a TOML
    /// document (guest-components' alternative; --initdata-toml wins).
    #[arg(long = "initdata-digest", short = 'i', global = true, visible_alias = "initdata_digest", value_name = "B64")]
    initdata_digest: Option<String>,
    /// Default: serve.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the ttrpc API on the configured unix socket.
    Serve,
    /// Fetch one resource (kbs:///repo/type/tag) and write its bytes to stdout.
    GetResource { uri: String },
    /// Print evidence JSON binding the given runtime data (at most 64 bytes).
    GetEvidence {
        #[arg(long)]
        runtime_data_b64: String,
    },
}

const DEFAULT_CONFIG: &str = "/etc/attestation-agent/aa.toml";

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    if let Some(path) = path {
        return Ok(Config::load(&path)?);
    }
    let default = PathBuf::from(DEFAULT_CONFIG);
    if default.exists() {
        return Ok(Config::load(&default)?);
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("cannot read /proc/cmdline")?;
    if !cmdline.contains("agent.aa_kbc_params=") {
        // kata launches the AA without -c when the pod's initdata has no
        // aa.toml: serve evidence without a KBS rather than fail the pod.
        tracing::warn!("no aa.toml and no agent.aa_kbc_params: no KBS configured");
        return Ok(Config::default());
    }
    Ok(Config::from_kernel_cmdline(&cmdline)?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = load_config(cli.config)?;
    if let Some(socket) = cli.attestation_sock {
        attestation_agent::server::socket_path(&socket).context("--attestation_sock")?;
        config.server.socket = socket;
    }
    if let Some(path) = cli.initdata_toml {
        config.initdata = Some(path);
    }
    let command = cli.command.unwrap_or(Command::Serve);
    let serving = matches!(command, Command::Serve);
    let agent = Agent::start(&config, StartOptions { kernel: Arc::new(LinuxKernel), eventlog: serving })
        .context("attestation-agent cannot start")?;
    if let (Some(b64), None) = (&cli.initdata_digest, &config.initdata) {
        let digest = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .context("--initdata-digest is not standard base64")?;
        agent.bind_init_data(&digest).await.context("attestation-agent cannot start: --initdata-digest")?;
    }
    match command {
        Command::Serve => {
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let mut hup = signal(SignalKind::hangup())?;
            let stop = async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = hup.recv() => {}
                }
            };
            attestation_agent::server::serve_until(Arc::new(agent), &config.server.socket, stop).await
        }
        Command::GetResource { uri } => {
            let bytes = agent.resource(&uri).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.flush()?;
            Ok(())
        }
        Command::GetEvidence { runtime_data_b64 } => {
            let data = base64::engine::general_purpose::STANDARD
                .decode(runtime_data_b64.trim())
                .context("--runtime-data-b64 is not standard base64")?;
            let evidence = agent.evidence(&data).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&evidence)?;
            out.write_all(b"\n")?;
            Ok(())
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = match std::env::var("AA_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("attestation-agent: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("attestation-agent: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
