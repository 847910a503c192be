//! Serves the ttrpc API until a stop signal on the owner-only unix socket of
//! `protos::socket` (stale sockets replaced only when nothing answers, a
//! non-socket file never removed).

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use ttrpc::r#async::Server;

use crate::agent::Agent;

/// The filesystem path of a `unix:///path` address (one rule for every guest daemon).
pub use protos::socket::socket_path;

/// Serves until `stop` resolves, then removes the socket.
pub async fn serve_until(agent: Arc<Agent>, socket: &str, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (listener, path) = protos::socket::bind_owner_only(socket)?;
    let mut server = Server::new().add_listener(listener).register_service(crate::service::services(agent.clone()));
    server.start().await.with_context(|| format!("cannot start ttrpc server on {socket}"))?;
    tracing::info!(socket, tee = %agent.tee(), "attestation-agent ready");
    stop.await;
    tracing::info!("shutting down");
    if let Err(err) = server.shutdown().await {
        tracing::warn!(%err, "ttrpc server did not shut down cleanly");
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}
