//! Socket addresses the agent listens on and the host client dials:
//! `vsock://CID:PORT` (CID `-1` = any), `unix:///path` and `unix://@abstract`,
//! plus the hybrid-vsock handshake used to reach a guest port through a host
//! unix socket (cloud-hypervisor, firecracker, vhost-device-vsock).
//!
//! Parsing never guesses: anything that is not one of these forms is an error
//! that names the accepted forms.

use std::fmt;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use ttrpc::r#async::transport::Listener;

/// `VMADDR_CID_ANY`: listen on every CID the guest has.
pub const VSOCK_CID_ANY: u32 = u32::MAX;

/// Longest reply line accepted from a hybrid-vsock multiplexer (`OK <port>\n`).
const HYBRID_REPLY_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("unsupported address {0:?}: expected vsock://CID:PORT, unix:///path or unix://@name")]
    Scheme(String),
    #[error("invalid vsock address {addr:?}: {reason}")]
    Vsock { addr: String, reason: &'static str },
    #[error("invalid unix socket address {addr:?}: {reason}")]
    Unix { addr: String, reason: &'static str },
}

/// A parsed listen/dial address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockAddr {
    /// A vsock endpoint; `cid == VSOCK_CID_ANY` listens on all CIDs.
    Vsock { cid: u32, port: u32 },
    /// A filesystem unix socket.
    UnixPath(PathBuf),
    /// A Linux abstract unix socket (written `unix://@name`).
    UnixAbstract(String),
}

impl FromStr for SockAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, AddrError> {
        if let Some(rest) = s.strip_prefix("vsock://") {
            let bad = |reason| AddrError::Vsock { addr: s.to_owned(), reason };
            let (cid, port) = rest.split_once(':').ok_or_else(|| bad("missing ':' between CID and port"))?;
            let cid = match cid {
                "-1" => VSOCK_CID_ANY,
                c => c.parse::<u32>().map_err(|_| bad("CID is not -1 or an unsigned 32-bit number"))?,
            };
            let port = port.parse::<u32>().map_err(|_| bad("port is not an unsigned 32-bit number"))?;
            return Ok(SockAddr::Vsock { cid, port });
        }
        if let Some(rest) = s.strip_prefix("unix://") {
            let bad = |reason| AddrError::Unix { addr: s.to_owned(), reason };
            if let Some(name) = rest.strip_prefix('@') {
                if name.is_empty() {
                    return Err(bad("empty abstract socket name"));
                }
                return Ok(SockAddr::UnixAbstract(name.to_owned()));
            }
            if !rest.starts_with('/') {
                return Err(bad("path must be absolute (unix:///run/agent.sock)"));
            }
            // sun_path is 108 bytes including the terminating NUL.
            if rest.len() > 107 {
                return Err(bad("path longer than the 107 bytes a unix socket allows"));
            }
            return Ok(SockAddr::UnixPath(PathBuf::from(rest)));
        }
        Err(AddrError::Scheme(s.to_owned()))
    }
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SockAddr::Vsock { cid: VSOCK_CID_ANY, port } => write!(f, "vsock://-1:{port}"),
            SockAddr::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            SockAddr::UnixPath(p) => write!(f, "unix://{}", p.display()),
            SockAddr::UnixAbstract(n) => write!(f, "unix://@{n}"),
        }
    }
}

impl SockAddr {
    /// Binds a listener for the ttrpc server.
    ///
    /// A leftover socket file from a previous run is replaced only when nothing
    /// answers on it; a live listener is never stolen. A new filesystem socket
    /// is made owner-only (0600): the agent API controls the whole guest.
    /// Every accepted connection is flow-controlled ([`crate::flow`]): a host
    /// that does not read its replies is back-pressured, not buffered.
    pub fn listen(&self) -> io::Result<Listener> {
        Ok(match self {
            SockAddr::UnixPath(path) => {
                remove_stale_socket(path)?;
                let listener = bind_unix(&std::os::unix::net::SocketAddr::from_pathname(path)?)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                crate::flow::bound_connections(listener)
            }
            SockAddr::UnixAbstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                crate::flow::bound_connections(bind_unix(&addr)?)
            }
            SockAddr::Vsock { cid, port } => crate::flow::bound_connections(tokio_vsock::VsockListener::bind(
                tokio_vsock::VsockAddr::new(*cid, *port),
            )?),
        })
    }

    /// Removes the socket file of a filesystem address (after shutdown).
    pub fn cleanup(&self) {
        if let SockAddr::UnixPath(path) = self {
            if let Err(err) = std::fs::remove_file(path) {
                if err.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), %err, "could not remove socket file");
                }
            }
        }
    }
}

fn bind_unix(addr: &std::os::unix::net::SocketAddr) -> io::Result<tokio::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind_addr(addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket; refusing to replace it", path.display()),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another process is already listening on {}", path.display()),
        )),
        Err(_) => {
            tracing::info!(path = %path.display(), "removing stale socket file");
            std::fs::remove_file(path)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HybridVsockError {
    #[error("cannot connect to hybrid vsock socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("hybrid vsock handshake on {path} failed: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("hybrid vsock multiplexer {path} closed the connection: nothing listens on guest port {port}")]
    Refused { path: PathBuf, port: u32 },
    #[error("hybrid vsock multiplexer {path} answered {reply:?} instead of \"OK <port>\"")]
    BadReply { path: PathBuf, reply: String },
    #[error("hybrid vsock handshake on {path} timed out after {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
}

/// Dials guest vsock `port` through the hybrid-vsock unix socket at `path`:
/// sends `CONNECT <port>\n`, expects a line starting with `OK `, and returns
/// the stream positioned right after that line.
pub async fn hybrid_vsock_connect(path: &Path, port: u32, timeout: Duration) -> Result<UnixStream, HybridVsockError> {
    let handshake = async {
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|source| HybridVsockError::Connect { path: path.to_owned(), source })?;
        let io_err = |source| HybridVsockError::Io { path: path.to_owned(), source };
        stream.write_all(format!("CONNECT {port}\n").as_bytes()).await.map_err(io_err)?;
        // Byte by byte: anything after the newline already belongs to the
        // guest connection and must stay in the socket.
        let mut reply = Vec::with_capacity(16);
        loop {
            let mut byte = [0u8; 1];
            let n = stream.read(&mut byte).await.map_err(io_err)?;
            if n == 0 {
                return Err(if reply.is_empty() {
                    HybridVsockError::Refused { path: path.to_owned(), port }
                } else {
                    HybridVsockError::BadReply { path: path.to_owned(), reply: String::from_utf8_lossy(&reply).into() }
                });
            }
            if byte[0] == b'\n' {
                break;
            }
            reply.push(byte[0]);
            if reply.len() > HYBRID_REPLY_MAX {
                return Err(HybridVsockError::BadReply {
                    path: path.to_owned(),
                    reply: String::from_utf8_lossy(&reply).into(),
                });
            }
        }
        if !reply.starts_with(b"OK ") {
            return Err(HybridVsockError::BadReply {
                path: path.to_owned(),
                reply: String::from_utf8_lossy(&reply).into(),
            });
        }
        Ok(stream)
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| HybridVsockError::Timeout { path: path.to_owned(), timeout })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form() {
        assert_eq!("vsock://-1:1024".parse::<SockAddr>().unwrap(), SockAddr::Vsock { cid: VSOCK_CID_ANY, port: 1024 });
        assert_eq!("vsock://3:5000".parse::<SockAddr>().unwrap(), SockAddr::Vsock { cid: 3, port: 5000 });
        assert_eq!("unix:///run/a.sock".parse::<SockAddr>().unwrap(), SockAddr::UnixPath("/run/a.sock".into()));
        assert_eq!("unix://@agent".parse::<SockAddr>().unwrap(), SockAddr::UnixAbstract("agent".into()));
    }

    #[test]
    fn display_round_trips() {
        for s in ["vsock://-1:1024", "vsock://3:5000", "unix:///run/a.sock", "unix://@agent"] {
            assert_eq!(s.parse::<SockAddr>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed_addresses_with_a_reason() {
        for (s, needle) in [
            ("tcp://1.2.3.4:5", "expected vsock://"),
            ("vsock://3", "missing ':'"),
            ("vsock://-2:1024", "CID"),
            ("vsock://3:99999999999", "port"),
            ("vsock://3:", "port"),
            ("unix://relative.sock", "absolute"),
            ("unix://@", "empty abstract"),
            ("/run/a.sock", "expected vsock://"),
        ] {
            let err = s.parse::<SockAddr>().unwrap_err().to_string();
            assert!(err.contains(needle), "{s}: {err}");
        }
        let long = format!("unix:///{}", "a".repeat(120));
        assert!(long.parse::<SockAddr>().unwrap_err().to_string().contains("107 bytes"));
    }

    /// A one-shot multiplexer that answers `reply` to the CONNECT line.
    async fn mux_replying(reply: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mux.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            assert_eq!(line, b"CONNECT 1024");
            s.write_all(reply).await.unwrap();
            // Keep the stream open briefly so the client can read what follows.
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        (dir, path)
    }

    #[tokio::test]
    async fn hybrid_handshake_leaves_bytes_after_ok_in_the_stream() {
        let (_dir, path) = mux_replying(b"OK 49152\nFRAME").await;
        let mut s = hybrid_vsock_connect(&path, 1024, Duration::from_secs(5)).await.unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"FRAME");
    }

    #[tokio::test]
    async fn hybrid_handshake_rejects_bad_and_oversized_replies() {
        let (_dir, path) = mux_replying(b"ERR no such port\n").await;
        let err = hybrid_vsock_connect(&path, 1024, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, HybridVsockError::BadReply { ref reply, .. } if reply == "ERR no such port"), "{err}");

        let (_dir, path) = mux_replying(&[b'O'; 200]).await;
        let err = hybrid_vsock_connect(&path, 1024, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, HybridVsockError::BadReply { .. }), "{err}");
    }

    #[tokio::test]
    async fn hybrid_handshake_times_out_on_a_silent_multiplexer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mux.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap(); // never accepts
        let err = hybrid_vsock_connect(&path, 1024, Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, HybridVsockError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn refuses_to_replace_a_live_socket_or_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let addr = SockAddr::UnixPath(file.clone());
        assert!(addr.listen().err().unwrap().to_string().contains("not a socket"));
        assert_eq!(std::fs::read(&file).unwrap(), b"x");

        let live = dir.path().join("live.sock");
        let _holder = std::os::unix::net::UnixListener::bind(&live).unwrap();
        let err = SockAddr::UnixPath(live).listen().err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn accepts_on_an_abstract_socket() {
        use futures_util::StreamExt;
        use std::os::linux::net::SocketAddrExt;
        let name = format!("cvm-agent-transport-test-{}", std::process::id());
        let mut listener = SockAddr::UnixAbstract(name.clone()).listen().unwrap();
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let mut client = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
        let mut conn = listener.next().await.unwrap().unwrap();
        std::io::Write::write_all(&mut client, b"ping").unwrap();
        let mut got = [0u8; 4];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn replaces_a_stale_socket_and_makes_it_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let addr = SockAddr::UnixPath(path.clone());
        let _listener = addr.listen().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        addr.cleanup();
        assert!(!path.exists());
    }
}
