//! Runs the ttrpc server until SIGTERM/SIGINT, then stops listening, closes
//! connections and removes its socket file.

use std::future::Future;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use ttrpc::r#async::Server;

use crate::config::AgentConfig;
use crate::policy::AgentPolicy;
use crate::reaper::Reaper;
use crate::shutdown::Shutdown;

/// Serves every agent service on `config.server_addr` until `stop` resolves
/// or `shutdown` is requested (DestroySandbox). The caller checks
/// `shutdown.is_requested()` afterwards to tell the two apart.
pub async fn serve_until(
    config: &AgentConfig,
    shutdown: Shutdown,
    reaper: Reaper,
    policy: std::sync::Arc<AgentPolicy>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let addr = &config.server_addr;
    let listener = addr.listen().with_context(|| format!("cannot listen on {addr}"))?;
    let services = crate::rpc::services(shutdown.clone(), reaper, policy, config.image_pull_timeout);
    let mut server = Server::new().add_listener(listener).register_service(services);
    server.start().await.with_context(|| format!("cannot start ttrpc server on {addr}"))?;
    tracing::info!(%addr, version = crate::rpc::AGENT_VERSION, "agent ready");

    tokio::select! {
        _ = stop => {}
        _ = shutdown.wait() => tracing::info!("shutdown requested by DestroySandbox"),
    }

    tracing::info!("shutting down");
    if let Err(err) = server.shutdown().await {
        tracing::warn!(%err, "ttrpc server did not shut down cleanly");
    }
    addr.cleanup();
    Ok(())
}

/// Installs SIGTERM/SIGINT handlers now and returns a future that resolves on
/// the first of them. Must be called inside the runtime, before listening, so
/// no signal is lost to the default action.
pub fn termination_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "received termination signal"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "received termination signal"),
        }
    })
}
