//! Behaviour tests of the container runtime through the real agent binary
//! over a unix socket (root, busybox-static rootfs built by the test).

mod harness;

use harness::{prerequisites, spec, Rt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_output_exit_codes_and_sigkill() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let root = rt.rootfs("c1");
    rt.run("c1", spec(&root, &["sh", "-c", "echo hello from $(hostname); exit 3"])).await;
    assert_eq!(rt.read_all("c1", "", false).await, "hello from pod-host\n");
    assert_eq!(rt.wait("c1", "").await, 3);
    rt.remove("c1").await.unwrap();

    let root = rt.rootfs("c2");
    rt.run("c2", spec(&root, &["sleep", "1000"])).await;
    rt.signal("c2", "", libc::SIGKILL).await.unwrap();
    assert_eq!(rt.wait("c2", "").await, 137);
    rt.remove("c2").await.unwrap();
    assert!(!rt.cgroup_dir("sb", "c2", "memory").exists(), "cgroup left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_sandbox_removes_everything_and_stops_the_agent() {
    if !prerequisites() {
        return;
    }
    let mut rt = Rt::start().await;
    rt.create_sandbox("sb", true).await;
    let root = rt.rootfs("c1");
    rt.run("c1", spec(&root, &["sleep", "1000"])).await;
    let cg = rt.cgroup_dir("sb", "c1", "pids");
    let pids: Vec<i32> =
        std::fs::read_to_string(cg.join("cgroup.procs")).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 1, "one process in the container cgroup");
    rt.client
        .destroy_sandbox(harness::ctx(), &protos::agent::DestroySandboxRequest::new())
        .await
        .expect("DestroySandbox");
    let status = rt.agent.wait_exit(std::time::Duration::from_secs(20));
    assert!(status.success(), "agent exit after DestroySandbox: {status}");
    assert!(!cg.exists(), "container cgroup left behind");
    assert!(!std::path::Path::new(&format!("/proc/{}", pids[0])).exists(), "container process left behind");
}

mod cgroups;
mod confinement;
mod load;
mod stdio;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_dns_storages_and_hostile_storage_paths() {
    use protos::agent::{CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest, Storage};
    if !prerequisites() {
        return;
    }
    let mut rt = Rt::start().await;
    let d = rt.dir.path().to_path_buf();
    std::fs::create_dir_all(d.join("src")).unwrap();
    std::fs::write(d.join("src/file"), "data").unwrap();
    let storage = |driver: &str, source: &str, mp: &std::path::Path, opts: &[&str]| Storage {
        driver: driver.into(),
        source: source.into(),
        mount_point: mp.display().to_string(),
        options: opts.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let req = CreateSandboxRequest {
        sandbox_id: "sb".into(),
        dns: vec!["nameserver 10.0.0.1".into(), "search example.test".into()],
        storages: vec![
            storage("local", "", &d.join("vol1"), &[]),
            storage("bind", d.join("src").to_str().unwrap(), &d.join("bound"), &["ro"]),
        ],
        ..Default::default()
    };
    rt.client.create_sandbox(harness::ctx(), &req).await.unwrap();
    let again = rt.client.create_sandbox(harness::ctx(), &req).await.unwrap_err();
    assert!(format!("{again:?}").contains("ALREADY_EXISTS"), "{again:?}");
    assert_eq!(
        std::fs::read_to_string(d.join("run/sandbox/resolv.conf")).unwrap(),
        "nameserver 10.0.0.1\nsearch example.test\n"
    );
    assert!(d.join("vol1").is_dir());
    assert_eq!(std::fs::read_to_string(d.join("bound/file")).unwrap(), "data");
    assert!(std::fs::write(d.join("bound/new"), "x").is_err(), "read-only bind storage accepted a write");

    // Hostile storages are refused before anything is created.
    for (driver, mp) in
        [("local", "/proc/evil"), ("local", "/run/../etc/x"), ("9p", "/run/cvm-x"), ("local", "relative")]
    {
        let bad = CreateContainerRequest {
            container_id: "c".into(),
            storages: vec![storage(driver, "", std::path::Path::new(mp), &[])],
            OCI: Some(spec(&rt.rootfs("c"), &["true"])).into(),
            ..Default::default()
        };
        let e = rt.client.create_container(harness::ctx(), &bad).await.unwrap_err();
        assert!(format!("{e:?}").contains("INVALID_ARGUMENT"), "{driver} {mp}: {e:?}");
    }
    let bad_id = rt.create("../../etc", spec(&rt.rootfs("c"), &["true"])).await.unwrap_err();
    assert!(format!("{bad_id:?}").contains("invalid container id"), "{bad_id:?}");

    rt.client.destroy_sandbox(harness::ctx(), &DestroySandboxRequest::new()).await.unwrap();
    rt.agent.wait_exit(std::time::Duration::from_secs(20));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(d.join("bound").to_str().unwrap()), "bind storage still mounted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_but_never_started_container_is_removed_cleanly() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    rt.create("idle", spec(&rt.rootfs("idle"), &["sh", "-c", "echo must-not-run"])).await.unwrap();
    let dup = rt.create("idle", spec(&rt.rootfs("idle2"), &["true"])).await.unwrap_err();
    assert!(format!("{dup:?}").contains("ALREADY_EXISTS"), "{dup:?}");
    let cg = rt.cgroup_dir("sb", "idle", "pids");
    assert!(cg.exists());
    rt.remove("idle").await.unwrap();
    assert!(!cg.exists(), "cgroup left behind");
    let again = rt.start_c("idle").await.unwrap_err();
    assert!(format!("{again:?}").contains("NOT_FOUND"), "{again:?}");
}
