//! `cvm-agent`: wires configuration, logging and the ttrpc server together.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use cvm_agent::config::{AgentConfig, KernelParams, LogFormat, LogLevel, Overrides, SERVER_ADDR_ENV};

/// Guest agent of the confidential VM (kata agent protocol over ttrpc).
#[derive(Debug, Parser)]
#[command(name = "cvm-agent", version)]
struct Args {
    /// Listen address: vsock://CID:PORT (CID -1 = any) or unix:///path.
    /// Overrides KATA_AGENT_SERVER_ADDR and the agent.server_addr kernel parameter.
    #[arg(long, value_name = "ADDR")]
    server_addr: Option<String>,
    /// Log verbosity (default: agent.log= kernel parameter, else info).
    #[arg(long, value_enum)]
    log_level: Option<LogLevel>,
    /// Log line format on stderr.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

fn main() -> ExitCode {
    // Re-executed as a container init by the runtime (see `jail`).
    if cvm_agent::jail::is_init_invocation() {
        return cvm_agent::jail::main();
    }
    let args = Args::parse();
    let kernel = KernelParams::from_proc();
    let flags = Overrides { server_addr: args.server_addr, log_level: args.log_level, log_format: args.log_format };
    let config = match AgentConfig::resolve(&kernel, std::env::var(SERVER_ADDR_ENV).ok(), &flags) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("cvm-agent: {err}");
            return ExitCode::from(2);
        }
    };
    cvm_agent::logging::init(config.log_level, config.log_format);
    install_panic_logger();
    if !kernel.ignored.is_empty() {
        tracing::info!(params = ?kernel.ignored, "ignoring agent.* kernel parameters this agent does not handle");
    }
    if std::process::id() == 1 {
        tracing::warn!("running as PID 1; init duties (mounts, modules, reaping, power-off) are not implemented yet");
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(%err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    // DestroySandbox requests it; after the server stops, `is_requested()`
    // tells a requested shutdown from a signal.
    let shutdown = cvm_agent::shutdown::Shutdown::new();
    let result = runtime.block_on(async {
        let stop = cvm_agent::server::termination_signal()?;
        let reaper = cvm_agent::reaper::Reaper::start().context("cannot start the child reaper")?;
        cvm_agent::server::serve_until(&config, shutdown.clone(), reaper, stop).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "agent stopped");
            ExitCode::FAILURE
        }
    }
}

/// Panics are bugs; in release builds they abort. Log them first so the
/// console shows what happened.
fn install_panic_logger() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "agent bug: panic");
        default(info);
    }));
}
