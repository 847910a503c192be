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
#[path = "common/pod.rs"]
mod pod;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use harness::{ctx, Rt};
use pod::{create, pause_bin, prerequisites, start_agent, Hub};
use protos::agent::*;
use support::layout::{busybox_rootfs_layer, Compression, ImageBuilder};
use support::registry::{Registry, RegistryOptions};

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
