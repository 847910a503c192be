//! ExecProcess: a new process inside a running container. It joins every
//! namespace of the container's init that differs from the agent's own, and
//! the container's cgroup; the container's seccomp profile applies to it, and
//! it never gets a capability (or loses no_new_privs) that the container's
//! own process does not have.

use std::path::Path;
use std::sync::Arc;

use super::{lock, Container, Result, RuntimeError, Status};
use crate::jail::protocol::{InitConfig, Mode, NsRequest};
use crate::namespaces::NsKind;
use crate::process::{spawn, stdio, Process};
use crate::reaper::Reaper;

fn same_namespace(a: &Path, b: &Path) -> bool {
    match (std::fs::read_link(a), std::fs::read_link(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

impl Container {
    pub async fn exec(&self, reaper: &Reaper, exec_id: &str, mut process: protos::oci::Process) -> Result<()> {
        if exec_id.is_empty() {
            return Err(RuntimeError::InvalidArgument("ExecProcess needs an exec id".into()));
        }
        if self.status() != Status::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is {:?}, not running",
                self.id,
                self.status()
            )));
        }
        if process.Args.is_empty() {
            return Err(RuntimeError::InvalidArgument("Process.Args is empty".into()));
        }
        if exec_id == self.init.exec_id || lock(&self.execs).contains_key(exec_id) {
            return Err(RuntimeError::AlreadyExists(format!("container {}: exec id {exec_id:?} is in use", self.id)));
        }
        let mut namespaces = Vec::new();
        // Every namespace of the init that differs from ours, user included
        // (an exec must never run as real root next to a user-namespaced init).
        for kind in NsKind::JOIN_ORDER {
            let theirs = self.ns_dir.join(kind.proc_name());
            if !same_namespace(&theirs, &Path::new("/proc/self/ns").join(kind.proc_name())) {
                namespaces.push(NsRequest { kind, path: Some(theirs), fd: None });
            }
        }
        // Never more privilege than the container's own process has.
        let init = self.spec.Process.as_ref();
        let init_caps = init.and_then(|p| p.Capabilities.as_ref());
        process.Capabilities = crate::capabilities::bound_exec(process.Capabilities.as_ref(), init_caps)
            .map_err(RuntimeError::InvalidArgument)?
            .into();
        process.NoNewPrivileges |= init.is_some_and(|p| p.NoNewPrivileges);
        let (agent_io, child_io) =
            stdio::for_process(&process).map_err(|e| RuntimeError::Internal(format!("stdio: {e}")))?;
        let mut spec = self.spec.clone();
        spec.Mounts.clear();
        spec.Process = Some(process).into();
        let cfg = InitConfig {
            mode: Mode::Exec,
            spec,
            rootfs: Default::default(),
            namespaces,
            cgroup_procs: self.cgroup.procs_files(),
            hostname: None,
            uid_map: String::new(),
            gid_map: String::new(),
        };
        let r = reaper.clone();
        let spawned = tokio::task::spawn_blocking(move || spawn::spawn_init(&r, &cfg, child_io))
            .await
            .map_err(|e| RuntimeError::Internal(format!("spawn task: {e}")))?
            .map_err(|e| RuntimeError::Internal(format!("container {}: exec {exec_id}: {e}", self.id)))?;
        let p = Process::new(exec_id.to_string(), spawned.pid, spawned.waiter, agent_io);
        let mut execs = lock(&self.execs);
        if execs.contains_key(exec_id) {
            let _ = p.signal(libc::SIGKILL);
            return Err(RuntimeError::AlreadyExists(format!("container {}: exec id {exec_id:?} is in use", self.id)));
        }
        execs.insert(exec_id.to_string(), Arc::clone(&p));
        tracing::debug!(container = %self.id, exec_id, pid = p.pid, "process started");
        Ok(())
    }
}
