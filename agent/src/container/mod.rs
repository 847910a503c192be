//! A container of the sandbox: its spec, cgroup, init process and exec'd
//! processes. One verb per file (`create`, `start`, `exec`, `signal`,
//! `remove`, `resources`); each takes only this container's own locks, so
//! requests for different containers never wait on each other.

pub mod create;
mod exec;
mod ns_paths;
mod oom;
mod remove;
mod resources;
mod signal;
mod start;
pub mod sysctl;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::cgroups::ContainerCgroup;
use crate::process::spawn::StartGate;
use crate::process::Process;

pub use create::CreateParams;

/// Errors of the runtime, grouped by what the caller did wrong (or not).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A peer refused (e.g. the data hub's signature policy).
    #[error("{0}")]
    PermissionDenied(String),
    /// A peer the request needs is not there (e.g. the data hub, a registry, the KBS).
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

pub struct Container {
    pub id: String,
    spec: protos::oci::Spec,
    cgroup: ContainerCgroup,
    init: Arc<Process>,
    status: Mutex<Status>,
    gate: Mutex<Option<StartGate>>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Namespace files of the init, joined by exec'd processes.
    ns_dir: PathBuf,
    /// Storages named by this container's CreateContainer, undone on removal.
    storages: Mutex<Vec<crate::sandbox::storage::Prepared>>,
    oom_watch: oom::OomWatch,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container").field("id", &self.id).field("init", &self.init).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Container {
    pub fn status(&self) -> Status {
        let s = *lock(&self.status);
        if s == Status::Running && self.init.has_exited() {
            return Status::Stopped;
        }
        s
    }

    fn set_status(&self, s: Status) {
        *lock(&self.status) = s;
    }

    pub fn init(&self) -> &Arc<Process> {
        &self.init
    }

    /// Takes ownership of the storages prepared for this container.
    pub fn adopt_storages(&self, storages: Vec<crate::sandbox::storage::Prepared>) {
        lock(&self.storages).extend(storages);
    }

    pub fn cgroup(&self) -> &ContainerCgroup {
        &self.cgroup
    }

    /// The process for `exec_id`; empty means the init (kata semantics).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() || exec_id == self.init.exec_id {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            RuntimeError::NotFound(format!("container {}: no process with exec id {exec_id:?}", self.id))
        })
    }

    /// Waits for a process and returns its exit code (128+signal when killed).
    /// An exec'd process is forgotten afterwards, as kata does.
    pub async fn wait(&self, exec_id: &str) -> Result<i32> {
        let p = self.process(exec_id)?;
        let status = p.wait().await.ok_or_else(|| RuntimeError::Internal("the reaper stopped".into()))?;
        if !Arc::ptr_eq(&p, &self.init) {
            lock(&self.execs).remove(&p.exec_id);
        } else {
            // An OOM kill that ended the init is announced before its status.
            self.oom_watch.flush();
            self.set_status(Status::Stopped);
        }
        Ok(status.code())
    }
}
