//! A CoCo pod as kata's Go shim starts it (virtcontainers/kata_agent.go,
//! fs_share_linux.go, sandbox.go), replayed against the agent in the VM with
//! the generated `protos::agent` messages, field by field as the Go runtime
//! fills them (no filesystem sharing, guest pull):
//!
//! Check → UpdateInterface → UpdateRoutes → (AddARPNeighbors when there are
//! neighbours) → CreateSandbox (the `ephemeral` shm) → GetGuestDetails →
//! per container: CopyFile of hosts, hostname, resolv.conf → CreateContainer
//! with an `image_guest_pull` storage → StartContainer; then the app's
//! stdout, WaitProcess, RemoveContainer, SignalProcess + RemoveContainer of
//! the pause container, DestroySandbox.
//!
//! Every request is timed into a [`Step`] so a run reads as a step list.
//! Nothing here trusts the agent's answers beyond what it checks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use protobuf::MessageField;
use protos::agent::{
    ARPNeighbors, CopyFileRequest, CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest,
    GuestDetailsRequest, ReadStreamRequest, RemoveContainerRequest, Routes, SignalProcessRequest,
    StartContainerRequest, Storage, UpdateInterfaceRequest, UpdateRoutesRequest, WaitProcessRequest,
};
use protos::health::CheckRequest;
use protos::oci::{LinuxCapabilities, LinuxNamespace, Mount, Process, Root, Spec, User};
use protos::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};

/// kata: `/run/kata-containers/shared/containers/` (CopyFile targets).
pub const SHARED_DIR: &str = "/run/kata-containers/shared/containers";
/// kata: `kataGuestSandboxDir()/shm`.
pub const SANDBOX_SHM: &str = "/run/kata-containers/sandbox/shm";
/// kata's shim: `ShmSize` of a Kubernetes pod (64 MiB, containerd's default).
pub const SHM_SIZE: u64 = 64 << 20;
/// Go's `os.ModeDir | 0750`, kata's `DirMode` for CopyFile.
pub const GO_DIR_MODE: u32 = 0x8000_0000 | 0o750;
/// kata: `grpcMaxDataSize`, CopyFile's chunk size.
pub const COPY_CHUNK: usize = 1 << 20;
/// The guest's address and gateway on QEMU user networking.
pub const GUEST_IP: &str = "10.0.2.15";
pub const GUEST_PREFIX: u32 = 24;
pub const GATEWAY: &str = "10.0.2.2";
pub const GUEST_SUBNET: &str = "10.0.2.0/24";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// containerd's default capability set (what the confidential policy allows).
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The pod, as the host's CRI would describe it.
#[derive(Debug, Clone)]
pub struct Pod {
    pub sandbox_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub hostname: String,
    /// The NIC's MAC (`--mac`), the link UpdateInterface names.
    pub mac: String,
    pub dns: Vec<String>,
}

impl Pod {
    pub fn new(name: &str, mac: &str) -> Pod {
        let hex = random_hex(32);
        Pod {
            sandbox_id: random_hex(64),
            name: name.to_owned(),
            namespace: "default".to_owned(),
            uid: format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]),
            hostname: name.to_owned(),
            mac: mac.to_owned(),
            dns: vec![format!("nameserver {GATEWAY}"), "search default.svc.cluster.local".to_owned()],
        }
    }

    /// kata's `updateInterface`: the endpoint as the shim saw it in the pod's
    /// network namespace (a veth, no NOARP, no PCI path).
    pub fn update_interface(&self) -> UpdateInterfaceRequest {
        let mut ip = IPAddress::new();
        ip.family = IPFamily::v4.into();
        ip.address = GUEST_IP.to_owned();
        ip.mask = GUEST_PREFIX.to_string();
        let mut ifc = Interface::new();
        ifc.device = "eth0".to_owned();
        ifc.name = "eth0".to_owned();
        ifc.IPAddresses = vec![ip];
        ifc.mtu = 1500;
        ifc.hwAddr = self.mac.clone();
        ifc.type_ = "veth".to_owned();
        ifc.raw_flags = 0;
        let mut req = UpdateInterfaceRequest::new();
        req.interface = MessageField::some(ifc);
        req
    }

    /// The pod's routes: the subnet's link route and the default route.
    pub fn update_routes(&self) -> UpdateRoutesRequest {
        let mut link = Route::new();
        link.dest = GUEST_SUBNET.to_owned();
        link.device = "eth0".to_owned();
        link.source = GUEST_IP.to_owned();
        link.scope = 253; // RT_SCOPE_LINK
        link.family = IPFamily::v4.into();
        let mut default = Route::new();
        default.gateway = GATEWAY.to_owned();
        default.device = "eth0".to_owned();
        default.family = IPFamily::v4.into();
        let mut routes = Routes::new();
        routes.Routes = vec![link, default];
        let mut req = UpdateRoutesRequest::new();
        req.routes = MessageField::some(routes);
        req
    }

    /// kata's `setupStorages` with no shared filesystem: only the shm.
    pub fn create_sandbox(&self) -> CreateSandboxRequest {
        let mut shm = Storage::new();
        shm.driver = "ephemeral".to_owned();
        shm.mount_point = SANDBOX_SHM.to_owned();
        shm.source = "shm".to_owned();
        shm.fstype = "tmpfs".to_owned();
        shm.options =
            vec!["noexec".into(), "nosuid".into(), "nodev".into(), "mode=1777".into(), format!("size={SHM_SIZE}")];
        let mut req = CreateSandboxRequest::new();
        req.hostname = self.hostname.chars().take(64).collect();
        req.dns = self.dns.clone();
        req.storages = vec![shm];
        req.sandbox_pidns = false;
        req.sandbox_id = self.sandbox_id.clone();
        req
    }

    fn sandbox_annotations(&self) -> BTreeMap<String, String> {
        [
            ("io.kubernetes.cri.sandbox-id", self.sandbox_id.as_str()),
            ("io.kubernetes.cri.sandbox-name", self.name.as_str()),
            ("io.kubernetes.cri.sandbox-namespace", self.namespace.as_str()),
            ("io.kubernetes.cri.sandbox-uid", self.uid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The pause (sandbox) container: kata sends `source = "pause"` for it.
    pub fn pause_container(&self) -> Container {
        let mut annotations = self.sandbox_annotations();
        annotations.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
        annotations.insert(
            "io.kubernetes.cri.sandbox-log-directory".into(),
            format!("/var/log/pods/{}_{}_{}", self.namespace, self.name, self.uid),
        );
        Container {
            id: self.sandbox_id.clone(),
            image: "pause".to_owned(),
            args: vec!["/pause".to_owned()],
            env: vec![PATH_ENV.to_owned()],
            user: (65535, 65535),
            annotations,
            files: Vec::new(),
            sandbox: true,
        }
    }

    /// An app container of this pod running `args` from `image`, with the
    /// pod's hosts, hostname and resolv.conf (copied in by CopyFile).
    pub fn app_container(&self, name: &str, image: &str, args: &[&str]) -> Container {
        let mut annotations = self.sandbox_annotations();
        annotations.insert("io.kubernetes.cri.container-type".into(), "container".into());
        annotations.insert("io.kubernetes.cri.container-name".into(), name.into());
        annotations.insert("io.kubernetes.cri.image-name".into(), image.into());
        let hosts = format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{GUEST_IP}\t{}\n",
            self.hostname
        );
        Container {
            id: random_hex(32),
            image: image.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![PATH_ENV.to_owned(), format!("HOSTNAME={}", self.hostname)],
            user: (0, 0),
            annotations,
            files: vec![
                SharedFile::new("/etc/hosts", hosts.into_bytes()),
                SharedFile::new("/etc/hostname", format!("{}\n", self.hostname).into_bytes()),
                SharedFile::new("/etc/resolv.conf", format!("{}\n", self.dns.join("\n")).into_bytes()),
            ],
            sandbox: false,
        }
    }
}

/// A host file kata copies into the guest and bind-mounts into a container.
#[derive(Debug, Clone)]
pub struct SharedFile {
    pub destination: String,
    pub content: Vec<u8>,
    /// kata: `<cid>-<8 random bytes hex>-<basename>`.
    random: String,
}

impl SharedFile {
    fn new(destination: &str, content: Vec<u8>) -> Self {
        SharedFile { destination: destination.to_owned(), content, random: random_hex(16) }
    }

    pub fn guest_path(&self, cid: &str) -> String {
        let base = self.destination.rsplit('/').next().unwrap_or_default();
        format!("{SHARED_DIR}/{cid}-{}-{base}", self.random)
    }

    /// kata's `copyFile`: the file's mode and owner, in 1 MiB chunks.
    pub fn copy_requests(&self, cid: &str) -> Vec<CopyFileRequest> {
        let mut base = CopyFileRequest::new();
        base.path = self.guest_path(cid);
        base.dir_mode = GO_DIR_MODE;
        base.file_mode = libc::S_IFREG | 0o644;
        base.uid = 0;
        base.gid = 0;
        base.file_size = self.content.len() as i64;
        if self.content.is_empty() {
            return vec![base];
        }
        self.content
            .chunks(COPY_CHUNK)
            .enumerate()
            .map(|(i, chunk)| {
                let mut r = base.clone();
                r.offset = (i * COPY_CHUNK) as i64;
                r.data = chunk.to_vec();
                r
            })
            .collect()
    }
}

/// One container of the pod.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    /// The image reference, or "pause".
    pub image: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub user: (u32, u32),
    pub annotations: BTreeMap<String, String>,
    pub files: Vec<SharedFile>,
    pub sandbox: bool,
}

impl Container {
    /// kata: `/run/kata-containers/<cid>/rootfs`.
    pub fn rootfs(&self) -> String {
        format!("/run/kata-containers/{}/rootfs", self.id)
    }

    /// kata's `handleImageGuestPullBlockVolume`: the image_guest_pull storage,
    /// the container's annotations as `{"metadata": …}` (Go's json.Marshal:
    /// sorted keys, no spaces).
    pub fn guest_pull_storage(&self) -> Storage {
        let metadata = serde_json::json!({ "metadata": self.annotations });
        let mut s = Storage::new();
        s.driver = "image_guest_pull".to_owned();
        s.driver_options = vec![format!("image_guest_pull={metadata}")];
        s.source = self.image.clone();
        s.fstype = "overlay".to_owned();
        s.mount_point = self.rootfs();
        s
    }

    /// The OCI spec containerd's CRI makes, after kata's shim has replaced
    /// the shared-file sources, pointed /dev/shm at the sandbox shm, removed
    /// the pid/network namespaces and every namespace path, dropped hooks and
    /// device cgroup rules, and set the guest rootfs path.
    pub fn spec(&self, hostname: &str) -> Spec {
        let mount = |dst: &str, ty: &str, src: &str, opts: &[&str]| {
            let mut m = Mount::new();
            m.destination = dst.to_owned();
            m.type_ = ty.to_owned();
            m.source = src.to_owned();
            m.options = opts.iter().map(|s| s.to_string()).collect();
            m
        };
        let mut mounts = vec![
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
            ),
            mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
            mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        ];
        if !self.sandbox {
            mounts.push(mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"]));
            for f in &self.files {
                mounts.push(mount(&f.destination, "bind", &f.guest_path(&self.id), &["rbind", "rprivate", "rw"]));
            }
        }
        mounts.push(mount("/dev/shm", "bind", SANDBOX_SHM, &["rbind"]));

        let caps: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        let mut capabilities = LinuxCapabilities::new();
        capabilities.Bounding = caps.clone();
        capabilities.Effective = caps.clone();
        capabilities.Permitted = caps;
        let mut user = User::new();
        (user.UID, user.GID) = self.user;
        let mut process = Process::new();
        process.Args = self.args.clone();
        process.Env = self.env.clone();
        process.Cwd = "/".to_owned();
        process.User = MessageField::some(user);
        process.Capabilities = MessageField::some(capabilities);
        process.NoNewPrivileges = self.sandbox;
        process.OOMScoreAdj = if self.sandbox { -998 } else { 1000 };

        let mut root = Root::new();
        root.Path = self.rootfs();
        root.Readonly = self.sandbox;

        let mut linux = protos::oci::Linux::new();
        // containerd: pid, ipc, uts, mount, network; kata drops pid and
        // network and empties the paths (the app's point at the sandbox's).
        linux.Namespaces = ["ipc", "uts", "mount"]
            .iter()
            .map(|t| {
                let mut ns = LinuxNamespace::new();
                ns.Type = t.to_string();
                ns
            })
            .collect();
        linux.MaskedPaths = MASKED_PATHS.iter().map(|s| s.to_string()).collect();
        linux.ReadonlyPaths = READONLY_PATHS.iter().map(|s| s.to_string()).collect();

        let mut spec = Spec::new();
        spec.Version = "1.1.0".to_owned();
        spec.Process = MessageField::some(process);
        spec.Root = MessageField::some(root);
        spec.Hostname = if self.sandbox { hostname.to_owned() } else { String::new() };
        spec.Mounts = mounts;
        spec.Annotations = self.annotations.clone().into_iter().collect();
        spec.Linux = MessageField::some(linux);
        spec
    }

    /// kata's `createContainer` request.
    pub fn create_request(&self, hostname: &str) -> CreateContainerRequest {
        let mut req = CreateContainerRequest::new();
        req.container_id = self.id.clone();
        req.exec_id = self.id.clone();
        req.storages = vec![self.guest_pull_storage()];
        req.OCI = MessageField::some(self.spec(hostname));
        req.sandbox_pidns = false;
        req
    }

    /// The same request on a rootfs the guest image ships (no storage): the
    /// pod's shape checked without the guest pull.
    pub fn create_request_on_shipped_rootfs(&self, hostname: &str, rootfs: &str) -> CreateContainerRequest {
        let mut req = self.create_request(hostname);
        req.storages.clear();
        if let Some(root) = req.OCI.as_mut().and_then(|s| s.Root.as_mut()) {
            root.Path = rootfs.to_owned();
        }
        req
    }
}

/// One request and how long it took.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub took: Duration,
    pub note: String,
}

/// The host end of one pod: the agent's two services on one connection.
pub struct Shim {
    agent: protos::agent_ttrpc::AgentServiceClient,
    health: protos::health_ttrpc::HealthClient,
    pub steps: Vec<Step>,
    timeout: Duration,
}

impl Shim {
    pub fn new(client: ttrpc::asynchronous::Client, timeout: Duration) -> Shim {
        Shim {
            agent: protos::agent_ttrpc::AgentServiceClient::new(client.clone()),
            health: protos::health_ttrpc::HealthClient::new(client),
            steps: Vec::new(),
            timeout,
        }
    }

    fn ctx(&self, timeout: Duration) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(timeout.as_nanos().min(i64::MAX as u128) as i64)
    }

    /// Runs one request, records it as a step, and returns its result.
    async fn step<T>(
        &mut self,
        name: &str,
        note: impl Into<String>,
        fut: impl std::future::Future<Output = ttrpc::Result<T>>,
    ) -> ttrpc::Result<T> {
        let started = Instant::now();
        let out = fut.await;
        let mut note = note.into();
        if let Err(e) = &out {
            note = format!("{note} -> {}", status_text(e));
        }
        self.steps.push(Step { name: name.to_owned(), took: started.elapsed(), note });
        out
    }

    pub async fn check(&mut self) -> anyhow::Result<()> {
        let ctx = self.ctx(self.timeout);
        let health = self.health.clone();
        let r = self.step("Check", "", health.check(ctx, &CheckRequest::new())).await?;
        anyhow::ensure!(r.status.value() == 1, "Check: not SERVING ({:?})", r.status);
        Ok(())
    }

    /// kata's `setupNetworks`: UpdateInterface (retried on "Link not found",
    /// 20 × 20 ms, as kata), UpdateRoutes, AddARPNeighbors when there are any.
    pub async fn setup_network(&mut self, pod: &Pod, neighbours: Vec<ARPNeighbor>) -> anyhow::Result<()> {
        let agent = self.agent.clone();
        let req = pod.update_interface();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ctx = self.ctx(self.timeout);
            let note = format!("eth0 {} {GUEST_IP}/{GUEST_PREFIX} mtu 1500", pod.mac);
            match self.step("UpdateInterface", note, agent.update_interface(ctx, &req)).await {
                Ok(_) => break,
                Err(e) if attempt < 20 && status_text(&e).contains("Link not found") => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(e).context("UpdateInterface"),
            }
        }
        let ctx = self.ctx(self.timeout);
        let note = format!("{GUEST_SUBNET} dev eth0, default via {GATEWAY}");
        self.step("UpdateRoutes", note, agent.update_routes(ctx, &pod.update_routes()))
            .await
            .context("UpdateRoutes")?;
        if !neighbours.is_empty() {
            let mut n = ARPNeighbors::new();
            n.ARPNeighbors = neighbours;
            let mut req = protos::agent::AddARPNeighborsRequest::new();
            req.neighbors = MessageField::some(n);
            let ctx = self.ctx(self.timeout);
            self.step("AddARPNeighbors", "", agent.add_arp_neighbors(ctx, &req)).await.context("AddARPNeighbors")?;
        }
        Ok(())
    }

    pub async fn create_sandbox(&mut self, pod: &Pod) -> anyhow::Result<()> {
        let agent = self.agent.clone();
        let ctx = self.ctx(self.timeout);
        let note = format!("hostname {}, ephemeral shm {SANDBOX_SHM}", pod.hostname);
        self.step("CreateSandbox", note, agent.create_sandbox(ctx, &pod.create_sandbox()))
            .await
            .context("CreateSandbox")?;
        let mut req = GuestDetailsRequest::new();
        req.mem_block_size = true;
        req.mem_hotplug_probe = true;
        let ctx = self.ctx(self.timeout);
        let d =
            self.step("GetGuestDetails", "", agent.get_guest_details(ctx, &req)).await.context("GetGuestDetails")?;
        if let Some(last) = self.steps.last_mut() {
            let details = d.agent_details.as_ref();
            last.note = format!(
                "agent {}, seccomp {}",
                details.map(|a| a.version.as_str()).unwrap_or("?"),
                details.is_some_and(|a| a.supports_seccomp)
            );
        }
        Ok(())
    }

    /// CopyFile of the container's shared files, then CreateContainer.
    /// `pull_timeout` bounds CreateContainer (it pulls the image).
    pub async fn create_container(
        &mut self,
        c: &Container,
        hostname: &str,
        pull_timeout: Duration,
    ) -> anyhow::Result<()> {
        self.create_container_with(c, c.create_request(hostname), pull_timeout).await
    }

    /// As [`Shim::create_container`] with a prepared request.
    pub async fn create_container_with(
        &mut self,
        c: &Container,
        req: CreateContainerRequest,
        pull_timeout: Duration,
    ) -> anyhow::Result<()> {
        let agent = self.agent.clone();
        for f in &c.files {
            for req in f.copy_requests(&c.id) {
                let ctx = self.ctx(self.timeout);
                let note = format!("{} -> {}", f.destination, req.path);
                self.step("CopyFile", note, agent.copy_file(ctx, &req))
                    .await
                    .with_context(|| format!("CopyFile {}", req.path))?;
            }
        }
        let ctx = self.ctx(pull_timeout);
        let note = match req.storages.first() {
            Some(s) => format!("{} {} {}", short(&c.id), s.driver, s.source),
            None => format!("{} rootfs {}", short(&c.id), req.OCI.Root.Path),
        };
        self.step("CreateContainer", note, agent.create_container(ctx, &req)).await?;
        Ok(())
    }

    /// CreateContainer that must be refused: returns the status message.
    pub async fn create_container_refused(
        &mut self,
        c: &Container,
        hostname: &str,
        pull_timeout: Duration,
    ) -> anyhow::Result<String> {
        match self.create_container(c, hostname, pull_timeout).await {
            Ok(()) => bail!("CreateContainer of {} succeeded; it must be refused", c.image),
            Err(e) => match e.downcast_ref::<ttrpc::Error>() {
                Some(t @ ttrpc::Error::RpcStatus(_)) => Ok(status_text(t)),
                _ => Err(e),
            },
        }
    }

    pub async fn start_container(&mut self, c: &Container) -> anyhow::Result<()> {
        let agent = self.agent.clone();
        let mut req = StartContainerRequest::new();
        req.container_id = c.id.clone();
        let ctx = self.ctx(self.timeout);
        self.step("StartContainer", short(&c.id), agent.start_container(ctx, &req)).await.context("StartContainer")?;
        Ok(())
    }

    /// ReadStdout until `until` appears or the stream ends (kata reads in a
    /// loop; EOF is an error status), bounded to 64 KiB.
    pub async fn read_stdout(&mut self, c: &Container, until: &str, deadline: Duration) -> anyhow::Result<String> {
        let agent = self.agent.clone();
        let started = Instant::now();
        let mut out = Vec::new();
        while !String::from_utf8_lossy(&out).contains(until) && started.elapsed() < deadline {
            let mut req = ReadStreamRequest::new();
            req.container_id = c.id.clone();
            req.exec_id = c.id.clone();
            req.len = 32 * 1024;
            let ctx = self.ctx(deadline.saturating_sub(started.elapsed()).max(Duration::from_secs(1)));
            match agent.read_stdout(ctx, &req).await {
                Ok(r) if r.data.is_empty() => break,
                Ok(r) => out.extend_from_slice(&r.data),
                Err(_) => break,
            }
            if out.len() > 64 * 1024 {
                bail!("stdout of {} exceeds 64 KiB", short(&c.id));
            }
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        self.steps.push(Step {
            name: "ReadStdout".into(),
            took: started.elapsed(),
            note: format!("{:?}", text.trim_end()),
        });
        Ok(text)
    }

    pub async fn wait_process(&mut self, c: &Container) -> anyhow::Result<i32> {
        let agent = self.agent.clone();
        let mut req = WaitProcessRequest::new();
        req.container_id = c.id.clone();
        req.exec_id = c.id.clone();
        let ctx = self.ctx(self.timeout);
        let r = self.step("WaitProcess", short(&c.id), agent.wait_process(ctx, &req)).await.context("WaitProcess")?;
        if let Some(last) = self.steps.last_mut() {
            last.note = format!("{} exit status {}", short(&c.id), r.status);
        }
        Ok(r.status)
    }

    /// kata's stop of a running container: SIGKILL to all its processes
    /// (`exec_id` empty), WaitProcess, then RemoveContainer.
    pub async fn kill_and_wait(&mut self, c: &Container) -> anyhow::Result<()> {
        let agent = self.agent.clone();
        let mut req = SignalProcessRequest::new();
        req.container_id = c.id.clone();
        req.signal = libc::SIGKILL as u32;
        let ctx = self.ctx(self.timeout);
        self.step("SignalProcess", format!("{} SIGKILL", short(&c.id)), agent.signal_process(ctx, &req))
            .await
            .context("SignalProcess")?;
        self.wait_process(c).await.map(|_| ())
    }

    pub async fn remove_container(&mut self, c: &Container) -> anyhow::Result<()> {
        let agent = self.agent.clone();
        let mut req = RemoveContainerRequest::new();
        req.container_id = c.id.clone();
        let ctx = self.ctx(self.timeout);
        self.step("RemoveContainer", short(&c.id), agent.remove_container(ctx, &req))
            .await
            .context("RemoveContainer")?;
        Ok(())
    }

    /// GetMetrics: the agent's Prometheus text.
    pub async fn get_metrics(&mut self) -> anyhow::Result<String> {
        let agent = self.agent.clone();
        let ctx = self.ctx(self.timeout);
        let r = self
            .step("GetMetrics", "", agent.get_metrics(ctx, &protos::agent::GetMetricsRequest::new()))
            .await
            .context("GetMetrics")?;
        Ok(r.metrics)
    }

    /// DestroySandbox; the VM may power off before the reply arrives.
    pub async fn destroy_sandbox(&mut self) -> bool {
        let agent = self.agent.clone();
        let ctx = self.ctx(Duration::from_secs(10));
        self.step("DestroySandbox", "", agent.destroy_sandbox(ctx, &DestroySandboxRequest::new())).await.is_ok()
    }

    /// The steps as aligned lines: `  name  seconds  note`.
    pub fn report(&self) -> Vec<String> {
        self.steps.iter().map(|s| format!("{:<16} {:>7.2} s  {}", s.name, s.took.as_secs_f64(), s.note)).collect()
    }
}

/// An ttrpc error as `CODE: message`.
pub fn status_text(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => format!("{:?}: {}", s.code(), s.message),
        other => other.to_string(),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// `n` lower-case hex digits from /dev/urandom (kata's ids and names).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n.div_ceil(2)];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s.truncate(n);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvm_agent::policy::{AgentPolicy, PolicyEngine};

    fn policy() -> AgentPolicy {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../agent/policy/confidential.rego");
        AgentPolicy::new(PolicyEngine::from_file(&path).unwrap())
    }

    #[test]
    fn the_guest_pull_storage_is_kata_shaped() {
        let pod = Pod::new("coco-demo", "52:54:00:12:34:56");
        let app = pod.app_container("app", "10.0.2.2:5000/coco/demo:1", &["/bin/sh"]);
        let s = app.guest_pull_storage();
        assert_eq!(s.driver, "image_guest_pull");
        assert_eq!(s.source, "10.0.2.2:5000/coco/demo:1");
        assert_eq!(s.fstype, "overlay");
        assert_eq!(s.mount_point, format!("/run/kata-containers/{}/rootfs", app.id));
        let opt = s.driver_options[0].strip_prefix("image_guest_pull=").unwrap();
        let v: serde_json::Value = serde_json::from_str(opt).unwrap();
        assert_eq!(v["metadata"]["io.kubernetes.cri.image-name"], "10.0.2.2:5000/coco/demo:1");
        assert!(!opt.contains(": "), "Go's json.Marshal has no spaces: {opt}");
        let pause = pod.pause_container();
        assert_eq!(pause.guest_pull_storage().source, "pause");
        assert_eq!(pause.id, pod.sandbox_id);
    }

    #[test]
    fn shared_files_are_named_and_chunked_as_kata_does() {
        let f = SharedFile::new("/etc/hosts", vec![7u8; COPY_CHUNK + 10]);
        let reqs = f.copy_requests("abc");
        assert_eq!(reqs.len(), 2);
        let path = &reqs[0].path;
        let name = path.strip_prefix(&format!("{SHARED_DIR}/abc-")).unwrap();
        assert!(name.ends_with("-hosts") && name.len() == 16 + "-hosts".len(), "{path}");
        assert_eq!((reqs[1].offset, reqs[1].data.len()), (COPY_CHUNK as i64, 10));
        assert!(reqs.iter().all(|r| r.file_size == (COPY_CHUNK + 10) as i64 && r.dir_mode == GO_DIR_MODE));
        assert_eq!(SharedFile::new("/etc/x", Vec::new()).copy_requests("c").len(), 1);
    }

    /// The confidential policy (what initdata carries in the demo) allows the
    /// whole pod as kata sends it, and still refuses what it must.
    #[test]
    fn the_confidential_policy_allows_the_pod_as_kata_sends_it() {
        let p = policy();
        let pod = Pod::new("coco-demo", "52:54:00:12:34:56");
        p.check("UpdateInterface", &pod.update_interface()).unwrap();
        p.check("UpdateRoutes", &pod.update_routes()).unwrap();
        p.check("CreateSandbox", &pod.create_sandbox()).unwrap();
        let pause = pod.pause_container();
        p.check("CreateContainer", &pause.create_request(&pod.hostname)).unwrap();
        let app = pod.app_container("app", "10.0.2.2:5000/coco/demo:1", &["/bin/sh", "-c", "cat /secret"]);
        for f in &app.files {
            for r in f.copy_requests(&app.id) {
                p.check("CopyFile", &r).unwrap();
            }
        }
        p.check("CreateContainer", &app.create_request(&pod.hostname)).unwrap();
        let mut read = ReadStreamRequest::new();
        read.container_id = app.id.clone();
        read.exec_id = app.id.clone();
        p.check("ReadStdout", &read).unwrap();

        let mut bad = app.create_request(&pod.hostname);
        bad.OCI.as_mut().unwrap().Root.as_mut().unwrap().Path = "/etc".into();
        assert!(p.check("CreateContainer", &bad).is_err());
    }
}
