//! Reaps every child of the agent and hands each exit status to the one waiter
//! registered for that pid.
//!
//! The agent is a child subreaper (or PID 1), so orphaned container processes
//! are re-parented to it. One task runs `waitpid(-1, WNOHANG)` on SIGCHLD and
//! dispatches by pid. Rules it must never break:
//! - every child of the agent is spawned through [`Reaper::spawn`] (or its pid
//!   registered with [`Reaper::watch`] while it cannot yet be reaped), so no
//!   other code calls `waitpid` and no exit status is stolen or lost;
//! - reaping and registering happen under the same short lock, so a status is
//!   never delivered to a newer process that reused the pid;
//! - statuses of unregistered pids (true orphans) are logged and dropped.

use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a process ended, as `waitpid` reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// Shell convention used by kata's WaitProcess: the exit code, or
    /// 128 + signal number when a signal killed the process.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }

    fn from_raw(status: libc::c_int) -> Option<ExitStatus> {
        if libc::WIFEXITED(status) {
            Some(ExitStatus::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(ExitStatus::Signaled(libc::WTERMSIG(status)))
        } else {
            None
        }
    }
}

/// Resolves with the exit status of one registered pid.
#[derive(Debug)]
pub struct ExitWaiter {
    rx: oneshot::Receiver<ExitStatus>,
}

impl ExitWaiter {
    /// Waits for the exit. `None` only if the reaper was dropped.
    pub async fn wait(self) -> Option<ExitStatus> {
        self.rx.await.ok()
    }
}

#[derive(Default)]
struct Table {
    waiters: HashMap<i32, oneshot::Sender<ExitStatus>>,
}

/// Cloneable handle to the agent-wide reaper.
#[derive(Clone)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

impl Reaper {
    /// Makes this process a child subreaper (a no-op for PID 1) and starts the
    /// reaping task. Must be called inside a tokio runtime.
    pub fn start() -> io::Result<Reaper> {
        if std::process::id() != 1 {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper { table: Arc::new(Mutex::new(Table::default())) };
        let task = reaper.clone();
        tokio::spawn(async move {
            loop {
                task.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawns `cmd` and registers its pid before any reap can observe it.
    /// The returned `Child` must never be waited on; use the waiter.
    ///
    /// The table lock is held across the fork on purpose: when exec fails,
    /// std's spawn waits for the child itself and treats ECHILD (a reap by us
    /// in between) as a bug, which would abort the agent. The fork+exec of
    /// the small static init takes about a millisecond.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(std::process::Child, ExitWaiter)> {
        let mut table = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        table.waiters.insert(child.id() as i32, tx);
        Ok((child, ExitWaiter { rx }))
    }

    /// Registers a pid that is not reapable yet (for example a grandchild whose
    /// parent, our direct child, is still alive). Replaces an older waiter.
    pub fn watch(&self, pid: i32) -> ExitWaiter {
        let (tx, rx) = oneshot::channel();
        self.lock().waiters.insert(pid, tx);
        ExitWaiter { rx }
    }

    /// Reaps every exited child now and dispatches the statuses.
    pub fn reap_all(&self) {
        let mut table = self.lock();
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: plain syscall with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let Some(exit) = ExitStatus::from_raw(status) else { continue };
            match table.waiters.remove(&pid) {
                Some(tx) => {
                    tracing::debug!(pid, ?exit, "reaped");
                    let _ = tx.send(exit);
                }
                None => tracing::debug!(pid, ?exit, "reaped an orphan nobody waits for"),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding this lock is a bug; the table is still usable.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(ExitStatus::Exited(3).code(), 3);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
    }
}
