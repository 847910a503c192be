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
/// Fds the agent hands to the init (checked namespace files) are placed at
/// `INHERITED_FD_BASE + i`, at most `MAX_INHERITED_FDS` of them.
pub const INHERITED_FD_BASE: i32 = SYNC_FD + 1;
pub const MAX_INHERITED_FDS: usize = 16;
pub const ACK: &str = "ack";
pub const START: &str = "start";
/// Agent → init: the uid/gid maps of the new user namespace are written.
pub const MAPPED: &str = "mapped";
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
    /// `None`: a new namespace; `Some`: join the namespace at this path
    /// (only for messages when `fd` is set).
    pub path: Option<PathBuf>,
    /// Join the namespace open at this fd of the init, inherited from the
    /// agent, which checked that very file (type, not the agent's own).
    #[serde(default)]
    pub fd: Option<i32>,
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
    /// `uid_map` / `gid_map` lines for a new user namespace, written by the agent.
    #[serde(default)]
    pub uid_map: String,
    #[serde(default)]
    pub gid_map: String,
}

/// Renders OCI id mappings as a /proc/<pid>/uid_map body; refuses empty or
/// overflowing ranges.
pub fn id_map(maps: &[protos::oci::LinuxIDMapping]) -> Result<String, String> {
    let mut out = String::new();
    for m in maps {
        if m.Size == 0 || m.ContainerID.checked_add(m.Size).is_none() || m.HostID.checked_add(m.Size).is_none() {
            return Err(format!("invalid id mapping {} {} {}", m.ContainerID, m.HostID, m.Size));
        }
        out.push_str(&format!("{} {} {}\n", m.ContainerID, m.HostID, m.Size));
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    /// The init created a user namespace and waits for its id maps.
    NeedIdMaps,
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
    fn id_maps_render_and_overflowing_or_empty_ranges_are_refused() {
        let m = |c: u32, h: u32, n: u32| protos::oci::LinuxIDMapping {
            ContainerID: c,
            HostID: h,
            Size: n,
            ..Default::default()
        };
        assert_eq!(id_map(&[m(0, 100000, 65536), m(65536, 5, 1)]).unwrap(), "0 100000 65536\n65536 5 1\n");
        assert!(id_map(&[m(0, u32::MAX, 2)]).is_err());
        assert!(id_map(&[m(0, 1, 0)]).is_err());
    }

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
