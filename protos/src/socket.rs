//! The unix socket a guest daemon serves its ttrpc API on (the
//! attestation-agent, the confidential data hub): `unix:///absolute/path`,
//! created owner-only (0600) with no window in which another user could
//! connect; a stale socket file is replaced only when nothing answers on it,
//! and a file that is not a socket is never removed.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ttrpc::r#async::transport::Listener;

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

fn context(what: String) -> impl FnOnce(std::io::Error) -> std::io::Error {
    move |e| std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The filesystem path of a `unix:///path` address.
pub fn socket_path(addr: &str) -> std::io::Result<PathBuf> {
    let path = addr
        .strip_prefix("unix://")
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| invalid(format!("socket {addr:?}: expected unix:///absolute/path")))?;
    if path.len() > 107 {
        return Err(invalid(format!("socket path {path} is longer than the 107 bytes a unix socket allows")));
    }
    Ok(PathBuf::from(path))
}

fn prepare(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(context(format!("cannot create {}", dir.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket; refusing to replace it", path.display()),
        )),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("another process is already listening on {}", path.display()),
                ));
            }
            std::fs::remove_file(path).map_err(context(format!("cannot remove stale socket {}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(context(format!("cannot inspect {}", path.display()))(e)),
    }
}

/// Binds `addr` owner-only; returns the listener and the socket's path (for
/// its removal at shutdown).
pub fn bind_owner_only(addr: &str) -> std::io::Result<(Listener, PathBuf)> {
    let path = socket_path(addr)?;
    prepare(&path)?;
    // SAFETY: umask only changes this process's file-creation mask; callers
    // bind before they start work that creates files.
    let old_mask = unsafe { libc::umask(0o177) };
    let bound = Listener::bind(addr);
    unsafe { libc::umask(old_mask) };
    let listener = bound.map_err(|e| std::io::Error::other(format!("cannot listen on {addr}: {e}")))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(context(format!("cannot make {} owner-only", path.display())))?;
    Ok((listener, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_absolute_unix_paths_of_bounded_length() {
        assert_eq!(socket_path("unix:///run/x.sock").unwrap(), Path::new("/run/x.sock"));
        for bad in ["/run/x.sock", "unix://run/x.sock", "vsock://3:1"] {
            assert!(socket_path(bad).unwrap_err().to_string().contains("expected unix:///"), "{bad}");
        }
        let long = format!("unix:///{}", "a".repeat(120));
        assert!(socket_path(&long).unwrap_err().to_string().contains("107 bytes"));
    }

    #[tokio::test]
    async fn binds_owner_only_and_never_replaces_a_live_socket_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix://{}", dir.path().join("d/s.sock").display());
        let (_l, path) = bind_owner_only(&addr).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = bind_owner_only(&addr).err().expect("a live socket is kept").to_string();
        assert!(again.contains("already listening"), "{again}");
        let file = dir.path().join("f");
        std::fs::write(&file, "keep").unwrap();
        let err = bind_owner_only(&format!("unix://{}", file.display())).err().expect("a file is kept").to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }
}
