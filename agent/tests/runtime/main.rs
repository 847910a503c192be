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
    rt.run("c1", spec(&root, &["sh", "-c", "echo hello from $(hostname); ls /proc/self/fd | tr '\\n' ' '; exit 3"]))
        .await;
    // Only stdio reaches the process (3 is `ls`'s own directory fd).
    assert_eq!(rt.read_all("c1", "", false).await, "hello from pod-host\n0 1 2 3 ");
    assert_eq!(rt.wait("c1", "").await, 3);
    rt.remove("c1").await.unwrap();

    let root = rt.rootfs("c2");
    rt.run("c2", spec(&root, &["sleep", "1000"])).await;
    rt.signal("c2", "", libc::SIGKILL).await.unwrap();
    assert_eq!(rt.wait("c2", "").await, 137);
    rt.remove("c2").await.unwrap();

    // SIGTERM to a PID 1 without a handler would be ignored: kata sends SIGKILL.
    rt.run("c3", spec(&rt.rootfs("c3"), &["sleep", "1000"])).await;
    rt.signal("c3", "", libc::SIGTERM).await.unwrap();
    assert_eq!(rt.wait("c3", "").await, 137);
    // With a handler, SIGTERM is delivered as is.
    rt.run("c4", spec(&rt.rootfs("c4"), &["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.1; done"])).await;
    // Wait until the shell has installed its trap (SigCgt bit of SIGTERM).
    let procs = rt.cgroup_dir("sb", "c4", "pids").join("cgroup.procs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let pid = std::fs::read_to_string(&procs).unwrap().lines().next().unwrap_or("0").to_string();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught =
            status.lines().find_map(|l| l.strip_prefix("SigCgt:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok());
        if caught.is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "trap never installed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    rt.signal("c4", "", libc::SIGTERM).await.unwrap();
    assert_eq!(rt.wait("c4", "").await, 7);
    for id in ["c3", "c4"] {
        rt.remove(id).await.unwrap();
    }
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
    let pause = rt.cgroup_dir("sb", ".pause", "pids");
    let status = rt.agent.wait_exit(std::time::Duration::from_secs(20));
    assert!(status.success(), "agent exit after DestroySandbox: {status}");
    assert!(!pause.exists(), "namespace holder's cgroup left behind");
    assert!(!cg.exists(), "container cgroup left behind");
    assert!(!std::path::Path::new(&format!("/proc/{}", pids[0])).exists(), "container process left behind");
}

mod cgroups;
mod confinement;
mod exe_hijack;
mod hostile_requests;
mod load;
mod stdio;
mod storage_drivers;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_dns_storages_and_hostile_storage_paths() {
    use protos::agent::{CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest, Storage};
    if !prerequisites() {
        return;
    }
    let mut rt = Rt::start().await;
    let d = rt.dir.path().to_path_buf();
    let base = rt.storage_base();
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
            storage("local", "", &base.join("vol1"), &[]),
            storage("bind", d.join("src").to_str().unwrap(), &base.join("bound"), &["ro"]),
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
    assert!(base.join("vol1").is_dir());
    assert_eq!(std::fs::read_to_string(base.join("bound/file")).unwrap(), "data");
    assert!(std::fs::write(base.join("bound/new"), "x").is_err(), "read-only bind storage accepted a write");

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
    assert!(!mounts.contains(base.join("bound").to_str().unwrap()), "bind storage still mounted");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_the_sandbox_pid_namespace_when_asked() {
    use protos::agent::CreateContainerRequest;
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", true).await;
    let shared = |id: &str, args: &[&str]| CreateContainerRequest {
        container_id: id.into(),
        exec_id: id.into(),
        sandbox_pidns: true,
        OCI: Some(spec(&rt.rootfs(id), args)).into(),
        ..Default::default()
    };
    rt.client.create_container(harness::ctx(), &shared("a", &["sleep", "4242"])).await.unwrap();
    rt.start_c("a").await.unwrap();
    // PID 1 of the pod is the agent's namespace holder; `a` is visible from `b`.
    let script = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done";
    rt.client.create_container(harness::ctx(), &shared("b", &["sh", "-c", script])).await.unwrap();
    rt.start_c("b").await.unwrap();
    let out = rt.read_all("b", "", false).await;
    assert!(out.lines().any(|l| l.trim() == "sleep 4242"), "b sees a: {out:?}");
    assert_eq!(rt.wait("b", "").await, 0);
    // A container without sandbox_pidns gets its own namespace.
    rt.run("c", spec(&rt.rootfs("c"), &["sh", "-c", script])).await;
    let out = rt.read_all("c", "", false).await;
    assert!(!out.contains("sleep 4242"), "c must not see a: {out:?}");
    for id in ["a", "b", "c"] {
        rt.remove(id).await.unwrap();
    }
}
