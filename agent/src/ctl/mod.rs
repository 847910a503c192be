//! Host-side client for the agent API, as used by `cvm-agent-ctl`, tests and
//! operators: connect over unix, vsock or hybrid vsock, then call any RPC by
//! name with a JSON body in kata's JSON shape (proto field names, enums as
//! numbers, `null` for an absent sub-message, omitted fields defaulted).

mod dispatch;

use std::path::PathBuf;
use std::time::Duration;

use ttrpc::context::Context;
use ttrpc::r#async::transport::Socket;
use ttrpc::r#async::Client;

use crate::transport::{hybrid_vsock_connect, HybridVsockError, SockAddr};

pub use dispatch::{call_method, METHODS};

/// Where the agent is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SockAddr,
    /// Reach guest vsock port N through the hybrid-vsock unix socket at `addr`.
    pub hybrid_vsock_port: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("--hybrid-vsock needs a unix:///path address of the multiplexer socket, not {0}")]
    HybridNeedsUnixPath(SockAddr),
    #[error(transparent)]
    Hybrid(#[from] HybridVsockError),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SockAddr, source: ttrpc::Error },
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SockAddr, timeout: Duration },
    #[error("unknown method {0:?}; `cvm-agent-ctl methods` lists them")]
    UnknownMethod(String),
    #[error("request body for {method} is not valid: {source}")]
    BadBody { method: &'static str, source: serde_json::Error },
    #[error("cannot render the {method} response as JSON: {source}")]
    BadResponse { method: &'static str, source: serde_json::Error },
    #[error("cannot read request body from {path}: {source}")]
    BodyFile { path: PathBuf, source: std::io::Error },
    /// The agent answered with a non-OK ttrpc status.
    #[error("rpc error: code = {code_name} ({code}) desc = {message}")]
    Status { code: i32, code_name: String, message: String },
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    #[error("transport error: {0}")]
    Transport(ttrpc::Error),
}

impl CtlError {
    fn from_ttrpc(err: ttrpc::Error, timeout: Duration) -> Self {
        match err {
            ttrpc::Error::RpcStatus(status) => CtlError::Status {
                code: status.code.value(),
                code_name: format!("{:?}", status.code()),
                message: status.message,
            },
            ttrpc::Error::Others(ref msg) if msg.contains("timeout") || msg.contains("deadline") => {
                CtlError::Timeout(timeout)
            }
            other => CtlError::Transport(other),
        }
    }
}

impl Target {
    /// Opens a ttrpc connection, bounded by `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<Client, CtlError> {
        if let Some(port) = self.hybrid_vsock_port {
            let SockAddr::UnixPath(path) = &self.addr else {
                return Err(CtlError::HybridNeedsUnixPath(self.addr.clone()));
            };
            let stream = hybrid_vsock_connect(path, port, timeout).await?;
            return Ok(Client::new(Socket::new(stream)));
        }
        let addr = self.addr.to_string();
        match tokio::time::timeout(timeout, Client::connect(&addr)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(CtlError::Connect { addr: self.addr.clone(), source }),
            Err(_) => Err(CtlError::ConnectTimeout { addr: self.addr.clone(), timeout }),
        }
    }
}

/// A request body given inline (`'{...}'`) or as `@file.json`; empty means `{}`.
pub fn read_body(arg: Option<&str>) -> Result<String, CtlError> {
    match arg {
        None => Ok("{}".to_owned()),
        Some(a) => match a.strip_prefix('@') {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|source| CtlError::BodyFile { path: PathBuf::from(path), source })
            }
            None if a.trim().is_empty() => Ok("{}".to_owned()),
            None => Ok(a.to_owned()),
        },
    }
}

/// A ttrpc context whose deadline the server also sees; zero means none.
pub fn context(timeout: Duration) -> Context {
    ttrpc::context::with_timeout(timeout.as_nanos().min(i64::MAX as u128) as i64)
}

/// Calls `method` with a JSON `body` on a connected agent and returns the
/// response as pretty JSON. A zero `timeout` waits for the reply forever.
pub async fn call_on(client: &Client, method: &str, body: &str, timeout: Duration) -> Result<String, CtlError> {
    let response = call_method(client, method, body, context(timeout)).await.map_err(|e| match e {
        DispatchError::Ctl(e) => e,
        DispatchError::Rpc(e) => CtlError::from_ttrpc(e, timeout),
    })?;
    // `{:#}` is serde_json's pretty form (two-space indent), and cannot fail.
    Ok(format!("{response:#}"))
}

/// What the per-method dispatch can fail with, before mapping ttrpc errors.
#[derive(Debug)]
pub enum DispatchError {
    Ctl(CtlError),
    Rpc(ttrpc::Error),
}

impl From<ttrpc::Error> for DispatchError {
    fn from(e: ttrpc::Error) -> Self {
        DispatchError::Rpc(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_forms() {
        assert_eq!(read_body(None).unwrap(), "{}");
        assert_eq!(read_body(Some("  ")).unwrap(), "{}");
        assert_eq!(read_body(Some("{\"a\":1}")).unwrap(), "{\"a\":1}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b.json");
        std::fs::write(&f, "{\"container_id\":\"x\"}").unwrap();
        assert_eq!(read_body(Some(&format!("@{}", f.display()))).unwrap(), "{\"container_id\":\"x\"}");
        let err = read_body(Some("@/nonexistent/b.json")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/b.json"), "{err}");
    }

    #[test]
    fn hybrid_mode_needs_a_socket_path() {
        let t = Target { addr: "vsock://3:1024".parse().unwrap(), hybrid_vsock_port: Some(1024) };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        match rt.block_on(t.connect(Duration::from_secs(1))) {
            Err(CtlError::HybridNeedsUnixPath(_)) => {}
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("connected to a vsock address in hybrid mode"),
        }
    }
}
