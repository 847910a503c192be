//! CreateContainer: validates the spec (namespace paths opened and checked
//! here, sysctls limited to the container's own namespaces), creates the
//! cgroup and stdio, and starts the container init, which sets everything up
//! and then waits for StartContainer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{ns_paths, sysctl, Container, Result, RuntimeError, Status};
use crate::cgroups::{CgroupError, ContainerCgroup};
use crate::jail::protocol::{id_map, InitConfig, Mode, NsRequest};
use crate::namespaces::NsKind;
use crate::process::{spawn, stdio, Process};
use crate::reaper::Reaper;

/// Namespaces the sandbox shares with its containers.
#[derive(Clone, Debug, Default)]
pub struct SharedNamespaces {
    pub uts: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    /// Set when the request asks for the sandbox PID namespace.
    pub pid: Option<PathBuf>,
}

pub struct CreateParams {
    pub id: String,
    pub exec_id: String,
    pub spec: protos::oci::Spec,
    /// Cgroup path relative to each hierarchy root.
    pub cgroup_path: String,
    pub shared: SharedNamespaces,
    /// Where OOM kills of this container are announced (GetOOMEvent).
    pub oom_events: mpsc::Sender<String>,
}

/// Builds the namespace list: the spec's, with the sandbox's shared ones
/// filled in, and always a new mount namespace.
pub fn plan_namespaces(spec: &protos::oci::Spec, shared: &SharedNamespaces) -> Result<Vec<NsRequest>> {
    let mut out: Vec<NsRequest> = Vec::new();
    for ns in spec.Linux.as_ref().map(|l| l.Namespaces.as_slice()).unwrap_or_default() {
        let kind = NsKind::from_oci(&ns.Type)
            .ok_or_else(|| RuntimeError::InvalidArgument(format!("unknown namespace type {:?}", ns.Type)))?;
        if out.iter().any(|n| n.kind == kind) {
            return Err(RuntimeError::InvalidArgument(format!("namespace {:?} listed twice", ns.Type)));
        }
        let mut path = (!ns.Path.is_empty()).then(|| PathBuf::from(&ns.Path));
        if let Some(p) = &path {
            if !p.is_absolute() {
                return Err(RuntimeError::InvalidArgument(format!("namespace path {p:?} is not absolute")));
            }
        }
        if path.is_none() {
            path = match kind {
                NsKind::Uts => shared.uts.clone(),
                NsKind::Ipc => shared.ipc.clone(),
                NsKind::Pid => shared.pid.clone(),
                _ => None,
            };
        }
        if kind == NsKind::Mount && path.is_some() {
            return Err(RuntimeError::InvalidArgument("a container cannot join an existing mount namespace".into()));
        }
        out.push(NsRequest { kind, path, fd: None });
    }
    if !out.iter().any(|n| n.kind == NsKind::Mount) {
        out.push(NsRequest { kind: NsKind::Mount, path: None, fd: None });
    }
    Ok(out)
}

fn rootfs_of(spec: &protos::oci::Spec) -> Result<PathBuf> {
    let root = spec.Root.as_ref().map(|r| r.Path.as_str()).unwrap_or_default();
    let path = Path::new(root);
    if !path.is_absolute() {
        return Err(RuntimeError::InvalidArgument(format!(
            "Root.Path {root:?} must be an absolute path prepared before CreateContainer"
        )));
    }
    let real = path.canonicalize().map_err(|e| RuntimeError::InvalidArgument(format!("Root.Path {root}: {e}")))?;
    if !real.is_dir() || real == Path::new("/") {
        return Err(RuntimeError::InvalidArgument(format!("Root.Path {root} is not a usable rootfs directory")));
    }
    Ok(real)
}

impl Container {
    pub async fn create(reaper: &Reaper, p: CreateParams) -> Result<Arc<Container>> {
        let process = p
            .spec
            .Process
            .as_ref()
            .ok_or_else(|| RuntimeError::InvalidArgument("the OCI spec has no Process".into()))?;
        if process.Args.is_empty() {
            return Err(RuntimeError::InvalidArgument("Process.Args is empty".into()));
        }
        if let Some(h) = p.spec.Hooks.as_ref() {
            let n = h.Prestart.len()
                + h.CreateRuntime.len()
                + h.CreateContainer.len()
                + h.StartContainer.len()
                + h.Poststart.len()
                + h.Poststop.len();
            if n > 0 {
                // Hooks from the host would run host-chosen code in the guest.
                return Err(RuntimeError::InvalidArgument(format!(
                    "the spec has {n} OCI hooks; this agent does not run hooks from the host"
                )));
            }
        }
        let rootfs = rootfs_of(&p.spec)?;
        let mut namespaces = plan_namespaces(&p.spec, &p.shared)?;
        // Checked fds, joined by the init as they are (never reopened by path).
        let ns_fds = ns_paths::open_checked(&mut namespaces).map_err(|e| match e {
            // Out of fds or memory is the agent's trouble, not the request's.
            ns_paths::NsPathError::Open { ref source, .. }
                if matches!(source.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)) =>
            {
                RuntimeError::Internal(e.to_string())
            }
            e => RuntimeError::InvalidArgument(e.to_string()),
        })?;
        if let Some(l) = p.spec.Linux.as_ref() {
            sysctl::check(l.Sysctl.keys(), &namespaces).map_err(|e| RuntimeError::InvalidArgument(e.to_string()))?;
        }
        let new_uts = namespaces.iter().any(|n| n.kind == NsKind::Uts && n.path.is_none());
        let hostname = (new_uts && !p.spec.Hostname.is_empty()).then(|| p.spec.Hostname.clone());

        let (uid_map, gid_map) = if namespaces.iter().any(|n| n.kind == NsKind::User && n.path.is_none()) {
            let l = p.spec.Linux.as_ref();
            let uid = id_map(l.map(|l| l.UIDMappings.as_slice()).unwrap_or_default())
                .map_err(RuntimeError::InvalidArgument)?;
            let gid = id_map(l.map(|l| l.GIDMappings.as_slice()).unwrap_or_default())
                .map_err(RuntimeError::InvalidArgument)?;
            if uid.is_empty() || gid.is_empty() {
                return Err(RuntimeError::InvalidArgument(
                    "a new user namespace needs uidMappings and gidMappings".into(),
                ));
            }
            (uid, gid)
        } else {
            (String::new(), String::new())
        };
        let resources = p.spec.Linux.as_ref().and_then(|l| l.Resources.as_ref());
        let cgroup = ContainerCgroup::create(&p.cgroup_path, resources).map_err(|e| match e {
            CgroupError::DeviceRules { .. } => RuntimeError::InvalidArgument(e.to_string()),
            e => RuntimeError::Internal(e.to_string()),
        })?;
        let (agent_io, child_io) =
            stdio::for_process(process).map_err(|e| RuntimeError::Internal(format!("stdio: {e}")))?;

        let cfg = InitConfig {
            mode: Mode::Create,
            spec: p.spec.clone(),
            rootfs,
            namespaces,
            cgroup_procs: cgroup.procs_files(),
            hostname,
            uid_map,
            gid_map,
        };
        let r = reaper.clone();
        let spawned = tokio::task::spawn_blocking(move || spawn::spawn_init_with_fds(&r, &cfg, child_io, &ns_fds))
            .await
            .map_err(|e| RuntimeError::Internal(format!("spawn task: {e}")))?;
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                // The init is gone or going; give the cgroup back.
                for _ in 0..50 {
                    if cgroup.delete().is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return Err(RuntimeError::Internal(format!("container {}: {e}", p.id)));
            }
        };
        let init = Process::new(p.exec_id.clone(), spawned.pid, spawned.waiter, agent_io);
        let oom_watch = super::oom::OomWatch::spawn(p.id.clone(), &cgroup, p.oom_events);
        tracing::info!(container = %p.id, pid = spawned.pid, cgroup = cgroup.path(), "container created");
        Ok(Arc::new(Container {
            id: p.id,
            spec: p.spec,
            cgroup,
            ns_dir: PathBuf::from(format!("/proc/{}/ns", spawned.pid)),
            init,
            status: Mutex::new(Status::Created),
            gate: Mutex::new(spawned.gate),
            execs: Mutex::new(Default::default()),
            storages: Mutex::new(Vec::new()),
            oom_watch,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protos::oci::{Linux, LinuxNamespace, Spec};

    fn spec_with(ns: &[(&str, &str)]) -> Spec {
        let mut linux = Linux::new();
        linux.Namespaces = ns
            .iter()
            .map(|(t, p)| LinuxNamespace { Type: t.to_string(), Path: p.to_string(), ..Default::default() })
            .collect();
        Spec { Linux: Some(linux).into(), ..Default::default() }
    }

    #[test]
    fn shared_sandbox_namespaces_fill_in_and_mount_is_always_new() {
        let shared =
            SharedNamespaces { uts: Some("/proc/7/ns/uts".into()), ipc: None, pid: Some("/proc/7/ns/pid".into()) };
        let plan =
            plan_namespaces(&spec_with(&[("uts", ""), ("pid", ""), ("network", "/run/netns/x")]), &shared).unwrap();
        assert_eq!(plan[0], NsRequest { kind: NsKind::Uts, path: Some("/proc/7/ns/uts".into()), fd: None });
        assert_eq!(plan[1], NsRequest { kind: NsKind::Pid, path: Some("/proc/7/ns/pid".into()), fd: None });
        assert_eq!(plan[2], NsRequest { kind: NsKind::Network, path: Some("/run/netns/x".into()), fd: None });
        assert_eq!(plan[3], NsRequest { kind: NsKind::Mount, path: None, fd: None });
    }

    #[test]
    fn hostile_namespace_entries_are_refused() {
        let none = SharedNamespaces::default();
        assert!(plan_namespaces(&spec_with(&[("time", "")]), &none).is_err());
        assert!(plan_namespaces(&spec_with(&[("pid", ""), ("pid", "")]), &none).is_err());
        assert!(plan_namespaces(&spec_with(&[("network", "relative/path")]), &none).is_err());
        assert!(plan_namespaces(&spec_with(&[("mount", "/proc/1/ns/mnt")]), &none).is_err());
    }
}
