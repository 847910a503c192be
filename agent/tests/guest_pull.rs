//! kata's guest image pull end to end: the real agent driven over ttrpc with
//! the requests kata's shim sends for a pod whose images are pulled in the
//! guest (CreateSandbox, the sandbox container from the guest's pause bundle,
//! an app container with an `image_guest_pull` storage carrying the pod
//! annotations), the real `confidential-data-hub` binary pulling from a real
//! Distribution registry (image pushed by skopeo), and the container's
//! output read back. Refusals (an unknown digest, no data hub, a signature
//! policy that rejects) must fail CreateContainer naming the cause and leave
//! no mount and no directory under /run/kata-containers/<cid>.
//!
//! Needs root, busybox-static, docker-registry, skopeo and the data hub
//! binary (`cargo build -p confidential-data-hub`); otherwise SKIP (CI=true: fail).
//! The data hub runs without an attestation-agent (pulls are then not
//! measured; its key-broker paths are covered by confidential-data-hub's tests).

#[path = "../../image-rs/tests/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "runtime/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{ctx, Rt};
use protos::agent::*;
use protos::agent_ttrpc::AgentServiceClient;
use support::layout::{busybox_rootfs_layer, Compression, ImageBuilder};
use support::registry::{Registry, RegistryOptions};

const PAUSE_BUILT: &str = env!("CARGO_BIN_EXE_pause");

/// The pause program: this crate's, or a static build of it named by
/// CVM_AGENT_TEST_PAUSE (e.g. the release one) so the pause container can run.
fn pause_bin() -> String {
    std::env::var("CVM_AGENT_TEST_PAUSE").unwrap_or_else(|_| PAUSE_BUILT.to_string())
}

/// target/<profile>/confidential-data-hub, next to this test's deps/ dir.
fn cdh_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().join("confidential-data-hub")
}

fn prerequisites() -> bool {
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
struct Hub {
    child: Child,
    log: PathBuf,
}

impl Hub {
    fn start(dir: &Path, socket: &Path, registry_host: &str, policy: Option<&Path>) -> Hub {
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

    fn log_text(&self) -> String {
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
fn pause_bundle(dir: &Path) -> PathBuf {
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
async fn start_agent(dir: tempfile::TempDir, cdh_socket: &Path) -> Rt {
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
fn annotations(kind: &str, image: &str) -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.cri.container-type".to_string(), kind.to_string()),
        ("io.kubernetes.cri.sandbox-id".to_string(), "sb".to_string()),
        ("io.kubernetes.cri.sandbox-name".to_string(), "web-7d9c".to_string()),
        ("io.kubernetes.cri.sandbox-namespace".to_string(), "default".to_string()),
        ("io.kubernetes.cri.image-name".to_string(), image.to_string()),
    ])
}

/// As kata's handleImageGuestPullBlockVolume builds it.
fn kata_storage(base: &Path, cid: &str, source: &str, metadata: &HashMap<String, String>) -> Storage {
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

async fn create(rt: &Rt, cid: &str, kind: &str, image: &str, args: &[&str]) -> ttrpc::Result<()> {
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

/// Mount points (as this process, in the agent's and the hub's namespace, sees them) under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
}

fn app_image() -> support::layout::BuiltImage {
    ImageBuilder::new()
        .layer(busybox_rootfs_layer(Compression::Gzip))
        .cmd(&["/bin/sh", "-c", "echo hello-$GREETING from $(pwd)"])
        .env("GREETING=image")
        .working_dir("/tmp")
        .build()
}

async fn metrics(rt: &Rt) -> String {
    rt.client.get_metrics(ctx(), &GetMetricsRequest::default()).await.expect("GetMetrics").metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kata_pod_pulls_its_image_in_the_guest_runs_it_and_unmounts_it_on_remove() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::plain());
    app_image().write_to_layout(&dir.path().join("layout"), "t");
    reg.push_oci_layout(&dir.path().join("layout"), "t", "app:1");
    let socket = dir.path().join("cdh.sock");
    let hub = Hub::start(&dir.path().join("cdh"), &socket, &reg.host(), None);
    let rt = start_agent(dir, &socket).await;
    let base = rt.storage_base();
    rt.create_sandbox("sb", false).await;

    // The sandbox container: the pause bundle, no pull.
    create(&rt, "sb", "sandbox", "pause", &[]).await.expect("CreateContainer of the pause container");
    assert!(base.join("sb/rootfs/pause").is_file());
    // kata copies only the pause program into the sandbox rootfs, so it must be
    // static: it is in the guest image (`make release`: crt-static); a debug
    // build of this crate is not, and then only the bundle is checked here
    // (`the_pause_program_*` runs it directly; CVM_AGENT_TEST_PAUSE names a static one).
    let pause_runs = support::tarball::is_static_elf(&std::fs::read(pause_bin()).unwrap());
    if pause_runs {
        rt.start_c("sb").await.expect("StartContainer of the pause container");
    } else {
        println!("NOTE: {} is dynamically linked: the pause container is created, not started", pause_bin());
    }

    // The app: pulled by the data hub; its config supplies args and cwd.
    let image = reg.reference("app:1");
    let t0 = Instant::now();
    create(&rt, "app", "container", &image, &[])
        .await
        .unwrap_or_else(|e| panic!("CreateContainer with image_guest_pull: {e}\nhub log:\n{}", hub.log_text()));
    println!("guest pull + CreateContainer took {:?}", t0.elapsed());
    let app_rootfs = base.join("app/rootfs");
    assert_eq!(mounts_under(&base.join("app")), [app_rootfs.display().to_string()], "the data hub's overlay");
    rt.start_c("app").await.expect("StartContainer");
    assert_eq!(rt.wait("app", "app").await, 0);
    assert_eq!(rt.read_all("app", "app", false).await, "hello-image from /tmp\n");

    rt.remove("app").await.expect("RemoveContainer");
    assert!(mounts_under(&base.join("app")).is_empty(), "RemoveContainer left {:?}", mounts_under(&base.join("app")));
    assert!(!base.join("app").exists(), "RemoveContainer left the bundle");
    if pause_runs {
        rt.signal("sb", "sb", libc::SIGTERM).await.expect("SIGTERM to pause");
        assert_eq!(rt.wait("sb", "sb").await, 0, "pause exits 0 on SIGTERM");
    }
    rt.remove("sb").await.expect("RemoveContainer of the pause container");
    assert!(!base.join("sb").exists());

    let m = metrics(&rt).await;
    assert!(m.contains("cvm_agent_guest_pulls_total{outcome=\"ok\"} 1\n"), "{m}");
    assert!(m.contains("cvm_agent_guest_pull_duration_seconds_sum "), "{m}");
}

#[track_caller]
fn assert_refused(result: ttrpc::Result<()>, code: ttrpc::Code, wants: &[&str], base: &Path, cid: &str) {
    let status = match result {
        Err(ttrpc::Error::RpcStatus(s)) => s,
        other => panic!("CreateContainer should have been refused, got {other:?}"),
    };
    println!("refused: {:?}: {}", status.code(), status.message());
    assert_eq!(status.code(), code, "{}", status.message());
    for want in wants {
        assert!(status.message().contains(want), "status lacks {want:?}: {}", status.message());
    }
    assert!(mounts_under(&base.join(cid)).is_empty(), "a refused pull left mounts {:?}", mounts_under(&base.join(cid)));
    assert!(!base.join(cid).exists(), "a refused pull left {}", base.join(cid).display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_pulls_fail_create_container_naming_the_cause_and_leave_no_mount() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::plain());
    app_image().write_to_layout(&dir.path().join("layout"), "t");
    reg.push_oci_layout(&dir.path().join("layout"), "t", "app:1");
    let socket = dir.path().join("cdh.sock");
    let hub_dir = dir.path().join("cdh");
    let reject = dir.path().join("reject.json");
    std::fs::write(&reject, r#"{"default":[{"type":"reject"}]}"#).unwrap();
    let rt = start_agent(dir, &socket).await;
    let base = rt.storage_base();
    rt.create_sandbox("sb", false).await;

    // No data hub listening.
    let image = reg.reference("app:1");
    let r = create(&rt, "c1", "container", &image, &[]).await;
    assert_refused(
        r,
        ttrpc::Code::UNAVAILABLE,
        &["c1", &image, "not reachable", socket.to_str().unwrap()],
        &base,
        "c1",
    );

    // A digest the registry does not have.
    let hub = Hub::start(&hub_dir, &socket, &reg.host(), None);
    let unknown = format!("{}/app@sha256:{}", reg.host(), "0".repeat(64));
    let r = create(&rt, "c2", "container", &unknown, &[]).await;
    assert_refused(
        r,
        ttrpc::Code::NOT_FOUND,
        &["c2", &unknown, "confidential data hub answered NOT_FOUND"],
        &base,
        "c2",
    );
    drop(hub);

    // A signature policy that rejects everything.
    let hub = Hub::start(&hub_dir, &socket, &reg.host(), Some(&reject));
    let r = create(&rt, "c3", "container", &image, &[]).await;
    assert_refused(r, ttrpc::Code::PERMISSION_DENIED, &["c3", &image, "signature policy"], &base, "c3");

    // The same id works once the cause is gone: nothing of c3 was left behind.
    drop(hub);
    let _hub = Hub::start(&hub_dir, &socket, &reg.host(), None);
    create(&rt, "c3", "container", &image, &[]).await.expect("CreateContainer after the refusals");
    assert_eq!(mounts_under(&base.join("c3")).len(), 1);
    rt.remove("c3").await.expect("RemoveContainer");
    assert!(mounts_under(&base.join("c3")).is_empty());

    let m = metrics(&rt).await;
    for outcome in ["unavailable", "not_found", "permission_denied", "ok"] {
        assert!(m.contains(&format!("cvm_agent_guest_pulls_total{{outcome=\"{outcome}\"}} 1\n")), "{outcome}: {m}");
    }
}

/// The pause program itself: it reaps the children it inherits (no zombie
/// stays) and exits 0 on SIGTERM and SIGINT.
#[test]
fn the_pause_program_reaps_inherited_children_and_exits_zero_on_sigterm_and_sigint() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("orphan.pid");
        // sh starts a short-lived child, then becomes pause: pause inherits it.
        let mut child = Killed(
            Command::new("sh")
                .arg("-c")
                .arg(format!("sleep 0.2 & echo $! > {}; exec {}", pidfile.display(), pause_bin()))
                .spawn()
                .expect("run pause"),
        );
        let child = &mut child.0;
        std::thread::sleep(Duration::from_millis(800));
        assert!(child.try_wait().unwrap().is_none(), "pause must keep running");
        let orphan = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
        let stat = std::fs::read_to_string(format!("/proc/{orphan}/stat")).unwrap_or_default();
        assert!(stat.is_empty(), "pause left its exited child unreaped: {stat}");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "pause did not exit on signal {sig}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "signal {sig}");
    }
}

/// A child killed and reaped when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
