//! RemoveContainer: kills every process, waits for them (honouring the
//! timeout; 0 waits forever), removes the cgroup and undoes the storages
//! the container named. The container's mounts
//! live in its own mount namespace and vanish with its last process.

use std::time::{Duration, Instant};

use super::{lock, Container, Result, RuntimeError, Status};

impl Container {
    pub async fn remove(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        // A created-but-not-started init waits on its gate: dropping the gate
        // makes it exit without running the workload.
        lock(&self.gate).take();
        self.kill_all();
        let wait_init = self.init.wait();
        match timeout {
            Some(t) => {
                if tokio::time::timeout(t, wait_init).await.is_err() {
                    return Err(RuntimeError::DeadlineExceeded(format!(
                        "container {}: processes still alive after {t:?}",
                        self.id
                    )));
                }
            }
            None => {
                wait_init.await;
            }
        }
        // Processes outside the init's PID namespace (shared sandbox pidns)
        // die on their own schedule; retry until the cgroup is empty.
        loop {
            self.kill_all();
            // The last look at the OOM-kill counter before the cgroup goes.
            self.oom_watch.flush();
            match self.cgroup.delete() {
                Ok(()) => break,
                Err(e) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(RuntimeError::DeadlineExceeded(format!("container {}: {e}", self.id)));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        self.set_status(Status::Stopped);
        lock(&self.execs).clear();
        // Its processes are gone: the storages it named can go too.
        crate::sandbox::storage::undo_all(std::mem::take(&mut *lock(&self.storages)));
        tracing::info!(container = %self.id, "container removed");
        Ok(())
    }
}
