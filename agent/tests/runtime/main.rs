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
