//! The pod: its id, hostname, DNS, its own storages, the namespace holder
//! shared by its containers (uts, ipc, optionally pid), and the table of
//! containers. Storages named by a CreateContainer belong to that container,
//! an `image_guest_pull` rootfs included (pulled by the data hub through the
//! [`ImagePuller`] seam).
//!
//! The table's lock is held only to look up, insert or remove an entry, never
//! across a container operation: each container has its own locks, so no
//! request for one container waits on another.

pub mod guest_pull;
pub mod storage;
mod tmpfs;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::cgroups::valid_id;
use crate::container::{Container, CreateParams, Result, RuntimeError};
use crate::image_pull::{ImagePuller, PullCounters};
use crate::jail::protocol::{InitConfig, Mode, NsRequest};
use crate::namespaces::NsKind;
use crate::process::{spawn, stdio, Process};
use crate::reaper::Reaper;
use crate::shutdown::Shutdown;
use storage::Prepared;

pub use crate::container::create::SharedNamespaces;

/// OOM kills waiting for the host's GetOOMEvent long poll.
const OOM_EVENT_BACKLOG: usize = 64;

/// Where the runtime keeps its files and cgroups.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Sandbox files (resolv.conf); default /run/cvm-agent, env
    /// CVM_AGENT_RUN_DIR when not PID 1.
    pub run_dir: PathBuf,
    /// Parent of all sandbox cgroups; default `cvm-agent`, env
    /// CVM_AGENT_CGROUP_PARENT when not PID 1.
    pub cgroup_parent: String,
    /// Every storage mount point lies under it; default /run/kata-containers
    /// (where kata's shim points storages), env CVM_AGENT_STORAGE_BASE when
    /// not PID 1 (the host writes PID 1's environment: it must not move the
    /// base that confines every storage and CopyFile).
    pub storage_base: PathBuf,
    /// The guest image's pause bundle (kata's /pause_bundle), env
    /// CVM_AGENT_PAUSE_BUNDLE when not PID 1.
    pub pause_bundle: PathBuf,
    /// The confidential data hub's ttrpc address (kata's
    /// unix:///run/confidential-containers/cdh.sock), env CVM_AGENT_CDH_ADDR
    /// when not PID 1.
    pub cdh_addr: String,
}

/// A development override, never taken by PID 1 (whose environment the host
/// writes on the kernel command line).
fn dev_env(name: &str) -> Option<String> {
    (std::process::id() != 1).then(|| std::env::var(name).ok()).flatten().filter(|v| !v.is_empty())
}

impl RuntimeConfig {
    pub fn from_env() -> RuntimeConfig {
        RuntimeConfig {
            run_dir: dev_env("CVM_AGENT_RUN_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| PathBuf::from("/run/cvm-agent")),
            cgroup_parent: dev_env("CVM_AGENT_CGROUP_PARENT")
                .filter(|p| valid_id(p))
                .unwrap_or_else(|| "cvm-agent".into()),
            storage_base: dev_env("CVM_AGENT_STORAGE_BASE")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| PathBuf::from("/run/kata-containers")),
            pause_bundle: dev_env("CVM_AGENT_PAUSE_BUNDLE")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| PathBuf::from(guest_pull::DEFAULT_PAUSE_BUNDLE)),
            cdh_addr: dev_env("CVM_AGENT_CDH_ADDR").unwrap_or_else(|| crate::image_pull::DEFAULT_CDH_ADDR.into()),
        }
    }
}

#[derive(Default)]
struct SandboxState {
    id: Option<String>,
    pause: Option<Arc<Process>>,
    /// The holder's own leaf cgroup (`.pause` can never be a container id).
    pause_cgroup: Option<crate::cgroups::ContainerCgroup>,
    shared: SharedNamespaces,
    storages: Vec<Prepared>,
}

pub struct Sandbox {
    reaper: Reaper,
    shutdown: Shutdown,
    config: RuntimeConfig,
    state: Mutex<SandboxState>,
    containers: RwLock<HashMap<String, Arc<Container>>>,
    /// Ids being created, so two CreateContainer calls cannot race.
    creating: Mutex<HashSet<String>>,
    oom_tx: mpsc::Sender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::Receiver<String>>,
    puller: Arc<dyn ImagePuller>,
    pull_counters: PullCounters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sandbox {
    pub fn new(reaper: Reaper, shutdown: Shutdown, config: RuntimeConfig, puller: Arc<dyn ImagePuller>) -> Sandbox {
        // Bounded: a host that never calls GetOOMEvent must not grow the
        // agent's memory; later events are dropped (and logged) instead.
        let (oom_tx, oom_rx) = mpsc::channel(OOM_EVENT_BACKLOG);
        Sandbox {
            reaper,
            shutdown,
            config,
            state: Mutex::new(SandboxState::default()),
            containers: RwLock::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
            puller,
            pull_counters: PullCounters::default(),
        }
    }

    /// Guest image pull counters (GetMetrics).
    pub fn pull_counters(&self) -> &PullCounters {
        &self.pull_counters
    }

    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    /// Where storages, CopyFile targets and volumes must lie.
    pub fn storage_base(&self) -> &std::path::Path {
        &self.config.storage_base
    }

    fn sandbox_id(&self) -> String {
        lock(&self.state).id.clone().unwrap_or_else(|| "standalone".into())
    }

    pub async fn create(&self, req: &protos::agent::CreateSandboxRequest) -> Result<()> {
        let id = if req.sandbox_id.is_empty() { "sandbox".to_string() } else { req.sandbox_id.clone() };
        if !valid_id(&id) {
            return Err(RuntimeError::InvalidArgument(format!("invalid sandbox id {:?}", req.sandbox_id)));
        }
        if req.hostname.len() > 64 || req.hostname.contains(['\0', '/']) {
            return Err(RuntimeError::InvalidArgument(format!("invalid hostname {:?}", req.hostname)));
        }
        {
            let mut st = lock(&self.state);
            if st.id.is_some() {
                return Err(RuntimeError::AlreadyExists("the sandbox already exists".into()));
            }
            st.id = Some(id.clone());
        }
        if let Err(e) = self.setup(&id, req).await {
            self.teardown().await;
            lock(&self.state).id = None;
            return Err(e);
        }
        tracing::info!(sandbox = %id, hostname = %req.hostname, pidns = req.sandbox_pidns, "sandbox created");
        Ok(())
    }

    async fn setup(&self, id: &str, req: &protos::agent::CreateSandboxRequest) -> Result<()> {
        let dir = self.config.run_dir.join("sandbox");
        std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::Internal(format!("{}: {e}", dir.display())))?;
        let mut resolv = String::new();
        for line in &req.dns {
            if line.contains('\n') {
                return Err(RuntimeError::InvalidArgument(format!("invalid DNS entry {line:?}")));
            }
            resolv.push_str(line);
            resolv.push('\n');
        }
        std::fs::write(dir.join("resolv.conf"), resolv)
            .map_err(|e| RuntimeError::Internal(format!("resolv.conf: {e}")))?;
        // The sandbox's storages are undone at DestroySandbox (or by the
        // teardown of a failed CreateSandbox).
        for s in &req.storages {
            let prepared = storage::prepare(&self.config.storage_base, s)?;
            lock(&self.state).storages.push(prepared);
        }
        // The namespace holder: uts (with the hostname), ipc, and pid if shared.
        let mut namespaces = vec![
            NsRequest { kind: NsKind::Uts, path: None, fd: None },
            NsRequest { kind: NsKind::Ipc, path: None, fd: None },
        ];
        if req.sandbox_pidns {
            namespaces.push(NsRequest { kind: NsKind::Pid, path: None, fd: None });
        }
        let mut process = protos::oci::Process::new();
        process.Args = vec!["pause".into()];
        let spec = protos::oci::Spec { Process: Some(process).into(), ..Default::default() };
        let pause_cgroup =
            crate::cgroups::ContainerCgroup::create(&format!("{}/{id}/.pause", self.config.cgroup_parent), None)
                .map_err(|e| RuntimeError::Internal(e.to_string()))?;
        let cgroup_procs = pause_cgroup.procs_files();
        lock(&self.state).pause_cgroup = Some(pause_cgroup);
        let cfg = InitConfig {
            mode: Mode::Pause,
            spec,
            rootfs: Default::default(),
            namespaces,
            cgroup_procs,
            hostname: (!req.hostname.is_empty()).then(|| req.hostname.clone()),
            uid_map: String::new(),
            gid_map: String::new(),
        };
        let (agent_io, child_io) = stdio::pipes().map_err(|e| RuntimeError::Internal(format!("stdio: {e}")))?;
        let r = self.reaper.clone();
        let spawned = tokio::task::spawn_blocking(move || spawn::spawn_init(&r, &cfg, child_io))
            .await
            .map_err(|e| RuntimeError::Internal(format!("spawn task: {e}")))?
            .map_err(|e| RuntimeError::Internal(format!("sandbox namespaces: {e}")))?;
        let pause = Process::new("pause".into(), spawned.pid, spawned.waiter, agent_io);
        let ns = |name: &str| Some(PathBuf::from(format!("/proc/{}/ns/{name}", pause.pid)));
        let mut st = lock(&self.state);
        st.shared =
            SharedNamespaces { uts: ns("uts"), ipc: ns("ipc"), pid: if req.sandbox_pidns { ns("pid") } else { None } };
        st.pause = Some(pause);
        Ok(())
    }

    /// Removes every container, the namespace holder, storages and the
    /// sandbox cgroup, then asks the agent to shut down.
    pub async fn destroy(&self) -> Result<()> {
        self.teardown().await;
        lock(&self.state).id = None;
        tracing::info!("sandbox destroyed; requesting agent shutdown");
        self.shutdown.request();
        Ok(())
    }

    async fn teardown(&self) {
        let all: Vec<Arc<Container>> =
            self.containers.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        // All containers at once: one slow container must not hold up the rest.
        let mut removals = tokio::task::JoinSet::new();
        for c in all {
            removals.spawn(async move {
                if let Err(e) = c.remove(Some(Duration::from_secs(10))).await {
                    tracing::warn!(container = %c.id, error = %e, "container did not go away cleanly");
                }
                c.id.clone()
            });
        }
        while let Some(done) = removals.join_next().await {
            if let Ok(id) = done {
                self.containers.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
            }
        }
        let (pause, pause_cgroup, storages) = {
            let mut st = lock(&self.state);
            (st.pause.take(), st.pause_cgroup.take(), std::mem::take(&mut st.storages))
        };
        if let Some(p) = pause {
            let _ = p.signal(libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), p.wait()).await;
        }
        if let Some(cg) = pause_cgroup {
            for _ in 0..100 {
                if cg.delete().is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        storage::undo_all(storages);
        let id = self.sandbox_id();
        // The per-sandbox cgroup directory is empty once its containers are gone.
        if let Ok(cg) = crate::cgroups::ContainerCgroup::create(&format!("{}/{id}", self.config.cgroup_parent), None) {
            let _ = cg.delete();
        }
    }

    /// How many containers exist (created, running or stopped, not removed).
    pub fn container_count(&self) -> usize {
        self.containers.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id:?} not found")))
    }

    pub async fn create_container(&self, req: protos::agent::CreateContainerRequest) -> Result<()> {
        let id = req.container_id.clone();
        if !valid_id(&id) {
            return Err(RuntimeError::InvalidArgument(format!("invalid container id {id:?}")));
        }
        let spec = req
            .OCI
            .into_option()
            .ok_or_else(|| RuntimeError::InvalidArgument("CreateContainer without an OCI spec".into()))?;
        {
            let map = self.containers.read().unwrap_or_else(|p| p.into_inner());
            if map.contains_key(&id) || !lock(&self.creating).insert(id.clone()) {
                return Err(RuntimeError::AlreadyExists(format!("container {id:?} already exists")));
            }
        }
        let result = self.create_reserved(&id, req.exec_id, req.sandbox_pidns, &req.storages, spec).await;
        lock(&self.creating).remove(&id);
        let container = result?;
        self.containers.write().unwrap_or_else(|p| p.into_inner()).insert(id, container);
        Ok(())
    }

    async fn create_reserved(
        &self,
        id: &str,
        exec_id: String,
        sandbox_pidns: bool,
        storages: &[protos::agent::Storage],
        mut spec: protos::oci::Spec,
    ) -> Result<Arc<Container>> {
        // The container's storages belong to it: undone in reverse order if
        // creating it fails at any later step, and by RemoveContainer.
        let (prepared, image) = self.prepare_container_storages(id, storages).await?;
        if let Some(image) = &image {
            guest_pull::apply(&mut spec, image);
        }
        let mut shared = lock(&self.state).shared.clone();
        if !sandbox_pidns {
            shared.pid = None;
        }
        let params = CreateParams {
            id: id.to_string(),
            exec_id: if exec_id.is_empty() { id.to_string() } else { exec_id },
            spec,
            cgroup_path: format!("{}/{}/{id}", self.config.cgroup_parent, self.sandbox_id()),
            shared,
            oom_events: self.oom_tx.clone(),
        };
        match Container::create(&self.reaper, params).await {
            Ok(c) => {
                c.adopt_storages(prepared);
                Ok(c)
            }
            Err(e) => {
                storage::undo_all(prepared);
                Err(e)
            }
        }
    }

    /// Prepares a container's storages in order (an image_guest_pull one
    /// through the data hub); if one fails, undoes the ones before it.
    async fn prepare_container_storages(
        &self,
        id: &str,
        storages: &[protos::agent::Storage],
    ) -> Result<(Vec<Prepared>, Option<guest_pull::ImageProcess>)> {
        if storages.iter().filter(|s| s.driver == guest_pull::DRIVER).count() > 1 {
            return Err(RuntimeError::InvalidArgument(format!(
                "container {id:?} names more than one {} storage (one rootfs per container)",
                guest_pull::DRIVER
            )));
        }
        let driver = guest_pull::GuestPull {
            base: &self.config.storage_base,
            puller: self.puller.as_ref(),
            pause_bundle: &self.config.pause_bundle,
            counters: &self.pull_counters,
        };
        let mut done = Vec::with_capacity(storages.len());
        let mut image = None;
        for s in storages {
            let result = if s.driver == guest_pull::DRIVER {
                driver.prepare(id, s).await.map(|(p, process)| {
                    image = Some(process);
                    p
                })
            } else {
                storage::prepare(&self.config.storage_base, s)
            };
            match result {
                Ok(p) => done.push(p),
                Err(e) => {
                    storage::undo_all(done);
                    return Err(e);
                }
            }
        }
        Ok((done, image))
    }

    pub async fn remove_container(&self, id: &str, timeout: Option<Duration>) -> Result<()> {
        let c = self.container(id)?;
        c.remove(timeout).await?;
        self.containers.write().unwrap_or_else(|p| p.into_inner()).remove(id);
        drop(c);
        crate::memory::release_free_heap_soon();
        Ok(())
    }

    /// Long poll: the id of the next container with an OOM kill.
    pub async fn next_oom_event(&self) -> Result<String> {
        self.oom_rx.lock().await.recv().await.ok_or_else(|| RuntimeError::Internal("OOM event channel closed".into()))
    }
}
