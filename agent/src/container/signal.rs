//! SignalProcess. kata semantics: an empty exec id means the init; SIGKILL to
//! the init (empty exec id) kills every process of the container, found
//! through its cgroup, and thaws a paused container so the kill lands.

use super::{Container, Result, RuntimeError, Status};

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
