//! A process running in a container (the init or an exec): its pid, its
//! exit status (fed by the reaper) and its stdio streams. Each stream has its
//! own lock, so a blocked ReadStdout never holds up a write, a signal or
//! another process.

pub mod spawn;
pub mod stdio;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::sync::{watch, Mutex};

use crate::reaper::{ExitStatus, ExitWaiter};
use stdio::{AgentStdio, Stream};

/// Upper bound of one ReadStdout/ReadStderr answer (the host asks for `len`).
pub const MAX_READ: usize = 1 << 20;

pub struct Process {
    pub exec_id: String,
    pub pid: i32,
    exit: watch::Receiver<Option<ExitStatus>>,
    stdin: Mutex<Option<Stream>>,
    stdout: Mutex<Option<Stream>>,
    stderr: Mutex<Option<Stream>>,
    tty: Option<Arc<OwnedFd>>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("exec_id", &self.exec_id).field("pid", &self.pid).finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdStream {
    Stdout,
    Stderr,
}

impl Process {
    /// Wraps a started process; its exit is published when the reaper reports it.
    pub fn new(exec_id: String, pid: i32, waiter: ExitWaiter, io: AgentStdio) -> Arc<Process> {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            if let Some(status) = waiter.wait().await {
                tx.send_replace(Some(status));
            }
        });
        Arc::new(Process {
            exec_id,
            pid,
            exit: rx,
            stdin: Mutex::new(io.stdin),
            stdout: Mutex::new(io.stdout),
            stderr: Mutex::new(io.stderr),
            tty: io.tty,
        })
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    pub fn has_exited(&self) -> bool {
        self.exit_status().is_some()
    }

    /// Waits for the exit; `None` if the reaper went away.
    pub async fn wait(&self) -> Option<ExitStatus> {
        let mut rx = self.exit.clone();
        rx.wait_for(|s| s.is_some()).await.ok().and_then(|s| *s)
    }

    /// Long-poll read: blocks until data or end of stream (empty result).
    pub async fn read(&self, which: StdStream, len: usize) -> std::io::Result<Vec<u8>> {
        let slot = match which {
            StdStream::Stdout => &self.stdout,
            StdStream::Stderr => &self.stderr,
        };
        let guard = slot.lock().await;
        match guard.as_ref() {
            Some(stream) => stream.read(len.clamp(1, MAX_READ)).await,
            None => Ok(Vec::new()),
        }
    }

    pub async fn write_stdin(&self, data: &[u8]) -> std::io::Result<usize> {
        let guard = self.stdin.lock().await;
        match guard.as_ref() {
            Some(stream) => {
                stream.write_all(data).await?;
                Ok(data.len())
            }
            None => Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stdin is closed")),
        }
    }

    /// Closes stdin so the process reads end of file (pipes only: on a pty
    /// the master also carries output).
    pub async fn close_stdin(&self) {
        if self.tty.is_none() {
            self.stdin.lock().await.take();
        }
    }

    pub fn resize_tty(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        match &self.tty {
            Some(master) => stdio::resize(master, rows, cols),
            None => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the process has no terminal")),
        }
    }

    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        if self.has_exited() {
            // kata: signalling a process that is gone is not an error.
            return Ok(());
        }
        // SAFETY: kill with a pid we own (reaped only through the reaper, so
        // it cannot have been reused while `exit` is None).
        if unsafe { libc::kill(self.pid, sig) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(())
    }
}
