//! A pod whose images are pulled in the guest, as kata's shim drives it: the
//! real `confidential-data-hub` on a unix socket, the real agent pointed at
//! it, the pause bundle, and kata's `image_guest_pull` storage. Shared by
//! tests/guest_pull.rs and tests/soak.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protos::agent::*;
use protos::agent_ttrpc::AgentServiceClient;

use crate::harness::{self, ctx, Rt};
use crate::support;

const PAUSE_BUILT: &str = env!("CARGO_BIN_EXE_pause");

/// The pause program: this crate's, or a static build of it named by
/// CVM_AGENT_TEST_PAUSE (e.g. the release one) so the pause container can run.
pub fn pause_bin() -> String {
    std::env::var("CVM_AGENT_TEST_PAUSE").unwrap_or_else(|_| PAUSE_BUILT.to_string())
}

/// The data hub: CVM_AGENT_TEST_CDH (e.g. the release one), else
/// target/<profile>/confidential-data-hub, next to this test's deps/ dir.
pub fn cdh_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CVM_AGENT_TEST_CDH") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().join("confidential-data-hub")
}

pub fn prerequisites() -> bool {
    if !harness::prerequisites() || !support::require_tools(&["docker-registry", "skopeo"]) {
        return false;
    }
    if !cdh_bin().exists() {
        let why = format!("{} is not built (cargo build -p confidential-data-hub)", cdh_bin().display());
        assert!(!support::in_ci(), "CI=true: {why}");
        println!("SKIP: {why}");
        return false;
    }
    true
}

/// The real data hub on `socket`, pulling from `registry_host` over plain
/// HTTP, with an optional signature policy file.
pub struct Hub {
    pub child: Child,
    log: PathBuf,
}

impl Hub {
    pub fn start(dir: &Path, socket: &Path, registry_host: &str, policy: Option<&Path>) -> Hub {
        std::fs::create_dir_all(dir).unwrap();
        let policy = policy.map_or(String::new(), |p| format!("image_security_policy_uri = \"{}\"\n", p.display()));
        let toml = format!(
            "socket = \"unix://{}\"\n\n[aa]\naa_socket = \"unix://{}/no-aa.sock\"\n\n[kbc]\nname = \"cc_kbc\"\nurl = \"http://kbs.invalid\"\n\n\
             [image]\nwork_dir = \"{}/work\"\npull_deadline_secs = 120\n{policy}\n\
             [[image.registry_config.registry]]\nprefix = \"{registry_host}\"\nlocation = \"{registry_host}\"\ninsecure = true\n",
            socket.display(),
            dir.display(),
            dir.display(),
        );
        std::fs::write(dir.join("cdh.toml"), toml).unwrap();
        let log = dir.join("cdh.log");
        let _ = std::fs::remove_file(socket);
        let mut child = Command::new(cdh_bin())
            .arg("-c")
            .arg(dir.join("cdh.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start confidential-data-hub");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("confidential-data-hub exited ({st}): {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "confidential-data-hub did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Hub { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guest image's pause bundle, as rootfs/build.sh installs it.
pub fn pause_bundle(dir: &Path) -> PathBuf {
    let b = dir.join("pause_bundle");
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::copy(pause_bin(), b.join("rootfs/pause")).unwrap();
    let config = r#"{"ociVersion":"1.0.2","process":{"terminal":false,"user":{"uid":65535,"gid":65535},"args":["/pause"],
        "env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"cwd":"/","noNewPrivileges":true},
        "root":{"path":"rootfs","readonly":true}}"#;
    std::fs::write(b.join("config.json"), config).unwrap();
    b
}

/// A real agent whose storage base, pause bundle and data hub are the test's.
pub async fn start_agent(dir: tempfile::TempDir, cdh_socket: &Path) -> Rt {
    // One cgroup tree per agent: two tests' agents both name their sandbox
    // "sb", and the first one's teardown would kill the other's processes.
    static AGENTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = AGENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cgroup_parent = format!("cvm-test-pull-{}-{n}", std::process::id());
    let base = dir.path().join("kata");
    let bundle = pause_bundle(dir.path());
    let agent = harness::Agent::start_with(dir.path(), |cmd| {
        cmd.arg("--server-addr")
            .arg(format!("unix://{}", dir.path().join("agent.sock").display()))
            .env("CVM_AGENT_RUN_DIR", dir.path().join("run"))
            .env("CVM_AGENT_STORAGE_BASE", &base)
            .env("CVM_AGENT_CGROUP_PARENT", &cgroup_parent)
            .env("CVM_AGENT_PAUSE_BUNDLE", &bundle)
            .env("CVM_AGENT_CDH_ADDR", format!("unix://{}", cdh_socket.display()))
            .env("RUST_LOG", "debug");
    });
    let client = ttrpc::r#async::Client::connect(&agent.addr()).await.expect("connect to agent");
    Rt { agent, client: AgentServiceClient::new(client), dir, cgroup_parent }
}

/// The pod annotations kata's shim copies into the storage's metadata and the spec.
pub fn annotations(kind: &str, image: &str) -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.cri.container-type".to_string(), kind.to_string()),
        ("io.kubernetes.cri.sandbox-id".to_string(), "sb".to_string()),
        ("io.kubernetes.cri.sandbox-name".to_string(), "web-7d9c".to_string()),
        ("io.kubernetes.cri.sandbox-namespace".to_string(), "default".to_string()),
        ("io.kubernetes.cri.image-name".to_string(), image.to_string()),
    ])
}

/// As kata's handleImageGuestPullBlockVolume builds it.
pub fn kata_storage(base: &Path, cid: &str, source: &str, metadata: &HashMap<String, String>) -> Storage {
    let json = serde_json::json!({ "metadata": metadata }).to_string();
    Storage {
        driver: "image_guest_pull".into(),
        driver_options: vec![format!("image_guest_pull={json}")],
        source: source.into(),
        fstype: "overlay".into(),
        mount_point: format!("{}/{cid}/rootfs", base.display()),
        ..Default::default()
    }
}

pub async fn create(rt: &Rt, cid: &str, kind: &str, image: &str, args: &[&str]) -> ttrpc::Result<()> {
    let base = rt.storage_base();
    let ann = annotations(kind, image);
    let mut spec = harness::spec(&base.join(cid).join("rootfs"), args);
    spec.Annotations = ann.clone();
    let source = if kind == "sandbox" { "pause" } else { image };
    let req = CreateContainerRequest {
        container_id: cid.into(),
        exec_id: cid.into(),
        OCI: Some(spec).into(),
        storages: vec![kata_storage(&base, cid, source, &ann)],
        ..Default::default()
    };
    rt.client.create_container(ctx(), &req).await.map(drop)
}
