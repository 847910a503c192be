//! Serves the api services on the `socket` of cdh.toml until a stop signal:
//! an owner-only (0600) unix socket; a stale socket file is replaced only when
//! nothing answers on it; a non-socket file at that path is never removed.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ttrpc::r#async::transport::Listener;
use ttrpc::r#async::Server;

use crate::hub::Hub;

/// The filesystem path of a `unix:///path` address.
pub fn socket_path(addr: &str) -> anyhow::Result<PathBuf> {
    let path = addr
        .strip_prefix("unix://")
        .filter(|p| p.starts_with('/'))
        .with_context(|| format!("socket {addr:?}: expected unix:///absolute/path"))?;
    if path.len() > 107 {
        anyhow::bail!("socket path {path} is longer than the 107 bytes a unix socket allows");
    }
    Ok(PathBuf::from(path))
}

fn prepare(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            anyhow::bail!("{} exists and is not a socket; refusing to replace it", path.display())
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("another process is already listening on {}", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    Ok(())
}

/// Serves until `stop` resolves, then removes the socket.
pub async fn serve_until(hub: Arc<Hub>, socket: &str, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let path = socket_path(socket)?;
    prepare(&path)?;
    // Owner-only from the start: no window in which another user can connect.
    // SAFETY: umask only changes this process's file-creation mask; the
    // daemon binds before it starts any work that creates files.
    let old_mask = unsafe { libc::umask(0o177) };
    let bound = Listener::bind(socket);
    unsafe { libc::umask(old_mask) };
    let listener = bound.with_context(|| format!("cannot listen on {socket}"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let mut server = Server::new().add_listener(listener).register_service(crate::service::services(hub));
    server.start().await.with_context(|| format!("cannot start ttrpc server on {socket}"))?;
    tracing::info!(socket, "confidential-data-hub ready");
    stop.await;
    tracing::info!("shutting down");
    if let Err(err) = server.shutdown().await {
        tracing::warn!(%err, "ttrpc server did not shut down cleanly");
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}
