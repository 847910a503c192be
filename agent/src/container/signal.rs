//! SignalProcess. kata semantics: an empty exec id means the init; SIGKILL to
//! the init (empty exec id) kills every process of the container, found
//! through its cgroup, and thaws a paused container so the kill lands.
//! SIGTERM to an init that has no SIGTERM handler becomes SIGKILL (kata does
//! this: PID 1 of a PID namespace ignores signals it does not handle).

use std::sync::Arc;

use super::{Container, Result, RuntimeError, Status};

/// Whether `pid` has a handler for `sig` (SigCgt in /proc/<pid>/status).
fn catches(pid: i32, sig: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("SigCgt:").map(|v| v.trim().to_string())))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

impl Container {
    pub fn signal(&self, exec_id: &str, sig: i32) -> Result<()> {
        if !(1..=64).contains(&sig) {
            return Err(RuntimeError::InvalidArgument(format!("invalid signal {sig}")));
        }
        let p = self.process(exec_id)?;
        if exec_id.is_empty() && sig == libc::SIGKILL {
            self.kill_all();
            return Ok(());
        }
        let sig = if sig == libc::SIGTERM && Arc::ptr_eq(&p, &self.init) && !catches(p.pid, sig) {
            libc::SIGKILL
        } else {
            sig
        };
        p.signal(sig).map_err(|e| RuntimeError::Internal(format!("signal {sig} to pid {}: {e}", p.pid)))
    }

    /// SIGKILL to every process in the container's cgroup.
    pub(crate) fn kill_all(&self) {
        let _ = self.init.signal(libc::SIGKILL);
        for pid in self.cgroup.pids() {
            // SAFETY: kill of a process in our own container cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if self.status() == Status::Paused {
            let _ = self.cgroup.thaw();
            self.set_status(Status::Running);
        }
    }
}
