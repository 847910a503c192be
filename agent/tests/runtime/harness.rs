//! Drives the real `cvm-agent` over a unix socket with the ttrpc client, with
//! a busybox-static rootfs the test builds itself. Each test gets its own
//! agent, run directory and cgroup parent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use protos::agent::*;
use protos::agent_ttrpc::AgentServiceClient;
use protos::oci;

#[path = "../common/mod.rs"]
pub mod common;

pub use common::Agent;

/// Skips (prints why) unless root and busybox-static are available; with
/// CI=true a missing prerequisite is a failure.
pub fn prerequisites() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let missing = if unsafe { libc::geteuid() } != 0 {
        Some("not root")
    } else if !Path::new("/bin/busybox").exists() {
        Some("busybox-static is not installed (apt-get install busybox-static)")
    } else {
        None
    };
    match missing {
        Some(why) if ci => panic!("runtime tests need: {why}"),
        Some(why) => {
            eprintln!("skipping runtime test: {why}");
            false
        }
        None => true,
    }
}

pub struct Rt {
    pub agent: Agent,
    pub client: AgentServiceClient,
    pub dir: tempfile::TempDir,
    pub cgroup_parent: String,
}

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

impl Rt {
    pub async fn start() -> Rt {
        let dir = tempfile::tempdir().unwrap();
        let cgroup_parent = format!("cvm-test-{}", std::process::id() as u64 * 1000 + rand_suffix());
        let run_dir = dir.path().join("run");
        let cg = cgroup_parent.clone();
        let agent = Agent::start_with(dir.path(), |cmd| {
            cmd.arg("--server-addr")
                .arg(format!("unix://{}", dir.path().join("agent.sock").display()))
                .env("CVM_AGENT_RUN_DIR", &run_dir)
                .env("CVM_AGENT_STORAGE_BASE", dir.path().join("kata"))
                .env("CVM_AGENT_CGROUP_PARENT", &cg)
                .env("RUST_LOG", "debug");
        });
        let client = ttrpc::r#async::Client::connect(&agent.addr()).await.expect("connect to agent");
        Rt { agent, client: AgentServiceClient::new(client), dir, cgroup_parent }
    }

    /// Where the agent accepts storage mount points (its /run/kata-containers).
    #[allow(dead_code)]
    pub fn storage_base(&self) -> PathBuf {
        self.dir.path().join("kata")
    }

    /// Builds a fresh busybox rootfs named `name`.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        let root = self.dir.path().join(name).join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        // List applets with the host's copy: executing the file just written
        // can fail with ETXTBSY while another test thread forks with the
        // write descriptor still inherited.
        let out = std::process::Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&out.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
            }
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n")
            .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
        root
    }

    pub async fn create_sandbox(&self, id: &str, pidns: bool) {
        let req = CreateSandboxRequest {
            sandbox_id: id.into(),
            hostname: "pod-host".into(),
            sandbox_pidns: pidns,
            ..Default::default()
        };
        self.client.create_sandbox(ctx(), &req).await.expect("CreateSandbox");
    }

    pub async fn create(&self, id: &str, spec: oci::Spec) -> ttrpc::Result<()> {
        let req = CreateContainerRequest {
            container_id: id.into(),
            exec_id: id.into(),
            OCI: Some(spec).into(),
            ..Default::default()
        };
        self.client.create_container(ctx(), &req).await.map(drop)
    }

    pub async fn start_c(&self, id: &str) -> ttrpc::Result<()> {
        self.client
            .start_container(ctx(), &StartContainerRequest { container_id: id.into(), ..Default::default() })
            .await
            .map(drop)
    }

    /// Create + start.
    pub async fn run(&self, id: &str, spec: oci::Spec) {
        self.create(id, spec).await.expect("CreateContainer");
        self.start_c(id).await.expect("StartContainer");
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> i32 {
        let req = WaitProcessRequest { container_id: id.into(), exec_id: exec_id.into(), ..Default::default() };
        self.client.wait_process(ctx(), &req).await.expect("WaitProcess").status
    }

    /// Reads stdout (or stderr) until the empty EOF answer.
    pub async fn read_all(&self, id: &str, exec_id: &str, stderr: bool) -> String {
        let mut out = Vec::new();
        loop {
            let req =
                ReadStreamRequest { container_id: id.into(), exec_id: exec_id.into(), len: 4096, ..Default::default() };
            let resp = if stderr {
                self.client.read_stderr(ctx(), &req).await
            } else {
                self.client.read_stdout(ctx(), &req).await
            };
            let data = resp.expect("ReadStdout").data;
            if data.is_empty() {
                break;
            }
            out.extend_from_slice(&data);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[allow(dead_code)]
    pub async fn exec(&self, id: &str, exec_id: &str, args: &[&str], terminal: bool) -> ttrpc::Result<()> {
        let mut p = process(args);
        p.Terminal = terminal;
        let req = ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            process: Some(p).into(),
            ..Default::default()
        };
        self.client.exec_process(ctx(), &req).await.map(drop)
    }

    pub async fn signal(&self, id: &str, exec_id: &str, sig: i32) -> ttrpc::Result<()> {
        let req = SignalProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            signal: sig as u32,
            ..Default::default()
        };
        self.client.signal_process(ctx(), &req).await.map(drop)
    }

    pub async fn remove(&self, id: &str) -> ttrpc::Result<()> {
        let req = RemoveContainerRequest { container_id: id.into(), timeout: 10, ..Default::default() };
        self.client.remove_container(ctx(), &req).await.map(drop)
    }

    /// The container's cgroup directory in hierarchy `controller` (v1) or v2.
    pub fn cgroup_dir(&self, sandbox: &str, id: &str, controller: &str) -> PathBuf {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let base = if v2 { PathBuf::from("/sys/fs/cgroup") } else { Path::new("/sys/fs/cgroup").join(controller) };
        base.join(&self.cgroup_parent).join(sandbox).join(id)
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        // Best effort: leave no test cgroups behind even when a test failed.
        let _ = self.agent.child.kill();
        let _ = self.agent.child.wait();
        for ctrl in
            ["memory", "pids", "cpu", "cpuacct", "cpuset", "freezer", "blkio", "devices", "systemd", "unified", ""]
        {
            let base = Path::new("/sys/fs/cgroup").join(ctrl).join(&self.cgroup_parent);
            remove_cgroup_tree(&base);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    // Processes a failed test left behind (the agent was killed) go first.
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if !procs.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn process(args: &[&str]) -> oci::Process {
    let caps: Vec<String> = [
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    oci::Process {
        Args: args.iter().map(|s| s.to_string()).collect(),
        Env: vec!["PATH=/bin".into(), "HOME=/root".into()],
        Cwd: "/".into(),
        User: Some(oci::User::new()).into(),
        Capabilities: Some(oci::LinuxCapabilities {
            Bounding: caps.clone(),
            Effective: caps.clone(),
            Permitted: caps.clone(),
            Inheritable: Vec::new(),
            Ambient: Vec::new(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

fn mount(dest: &str, typ: &str, src: &str, opts: &[&str]) -> oci::Mount {
    oci::Mount {
        destination: dest.into(),
        type_: typ.into(),
        source: src.into(),
        options: opts.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A spec like `runc spec` makes: new pid/ipc/uts/mount/network namespaces,
/// the usual mounts, masked and readonly paths.
pub fn spec(rootfs: &Path, args: &[&str]) -> oci::Spec {
    let ns = |t: &str| oci::LinuxNamespace { Type: t.into(), ..Default::default() };
    let linux = oci::Linux {
        Namespaces: vec![ns("pid"), ns("ipc"), ns("uts"), ns("mount"), ns("network")],
        MaskedPaths: ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware", "/proc/scsi"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ReadonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    };
    oci::Spec {
        Version: "1.0.2".into(),
        Process: Some(process(args)).into(),
        Root: Some(oci::Root { Path: rootfs.display().to_string(), Readonly: false, ..Default::default() }).into(),
        Hostname: "ctr".into(),
        Mounts: vec![
            mount("/proc", "proc", "proc", &[]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
            mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]),
            mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
            mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
            mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        ],
        Linux: Some(linux).into(),
        ..Default::default()
    }
}
