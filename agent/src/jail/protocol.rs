//! Messages between the agent and its re-executed container init, one JSON
//! object per line over a socketpair at fd 3 of the init.
//!
//! Sequence: agent → `InitConfig`; init → `Report::Pid` (the process that will
//! exec the workload); agent → `ack` once it watches that pid; init →
//! `Report::Ready` or `Report::Error`; for a new container, agent → `start`;
//! the socket then closes on a successful exec (it is O_CLOEXEC) or carries one
//! last `Report::Error`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::namespaces::NsKind;

/// argv[0] of a re-executed agent acting as a container init.
pub const INIT_ARGV0: &str = "cvm-container-init";
/// The socketpair end is placed at this fd in the init.
pub const SYNC_FD: i32 = 3;
pub const ACK: &str = "ack";
pub const START: &str = "start";
/// Upper bound of one protocol line; the spec is the biggest message.
pub const MAX_LINE: usize = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// A new container: set up namespaces, mounts, then wait for `start`.
    Create,
    /// A process in a running container: join its namespaces and exec.
    Exec,
    /// The sandbox's namespace holder (shared uts/ipc/pid): never execs.
    Pause,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsRequest {
    pub kind: NsKind,
    /// `None`: a new namespace; `Some`: join the namespace at this path.
    pub path: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitConfig {
    pub mode: Mode,
    /// The OCI spec; `Process` is the process to run. Mounts and Linux paths
    /// are only used in `Create` mode.
    pub spec: protos::oci::Spec,
    /// Absolute path of the container rootfs (Create).
    pub rootfs: PathBuf,
    pub namespaces: Vec<NsRequest>,
    /// `cgroup.procs` files the init moves itself into before anything else.
    pub cgroup_procs: Vec<PathBuf>,
    /// Set in a new uts namespace (Create, Pause).
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    Pid(i32),
    Ready,
    Error(String),
}

/// Writes one JSON line.
pub fn send<W: Write, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Reads one JSON line; `Ok(None)` at end of stream.
pub fn recv<R: BufRead, T: for<'de> Deserialize<'de>>(r: &mut R) -> std::io::Result<Option<T>> {
    let mut line = Vec::new();
    let n = std::io::Read::take(&mut *r, MAX_LINE as u64).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "truncated or oversized protocol line"));
    }
    serde_json::from_slice(&line).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_truncation_is_an_error() {
        let mut buf = Vec::new();
        send(&mut buf, &Report::Pid(42)).unwrap();
        send(&mut buf, &Report::Error("no such file: /bin/x".into())).unwrap();
        let mut r = std::io::Cursor::new(buf.clone());
        assert_eq!(recv::<_, Report>(&mut r).unwrap(), Some(Report::Pid(42)));
        assert_eq!(recv::<_, Report>(&mut r).unwrap(), Some(Report::Error("no such file: /bin/x".into())));
        assert_eq!(recv::<_, Report>(&mut r).unwrap(), None);
        let mut cut = std::io::Cursor::new(&buf[..5]);
        assert!(recv::<_, Report>(&mut cut).is_err());
    }
}
