//! Cgroup limits, OOM events, freezer, stats, update, and cleanup.

use std::time::Duration;

use protos::agent::*;
use protos::oci;

use crate::harness::{ctx, prerequisites, spec, Rt};

fn resources(s: &mut oci::Spec) -> &mut oci::LinuxResources {
    s.Linux.as_mut().unwrap().Resources.mut_or_insert_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_leads_to_an_oom_kill_reported_by_get_oom_event() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let client = rt.client.clone();
    let oom = tokio::spawn(async move { client.get_oom_event(ctx(), &GetOOMEventRequest::new()).await });
    let mut s = spec(&rt.rootfs("oom"), &["sh", "-c", "x=aaaaaaaa; while true; do x=$x$x; done"]);
    resources(&mut s).Memory = Some(oci::LinuxMemory { Limit: 32 << 20, Swap: 32 << 20, ..Default::default() }).into();
    rt.run("oom", s).await;
    assert_eq!(rt.wait("oom", "").await, 137, "killed by the OOM killer");
    let ev = tokio::time::timeout(Duration::from_secs(10), oom).await.expect("OOM event in time").unwrap().unwrap();
    assert_eq!(ev.container_id, "oom");
    rt.remove("oom").await.unwrap();
}

/// Found by the soak: a container removed right after its OOM-killed init
/// was waited for lost its event (the counter is sampled every 200 ms and
/// the cgroup was gone before the next sample). The event is now queued
/// before WaitProcess answers, so a shim that polls afterwards still gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_is_reported_even_when_the_container_is_removed_at_once() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let rootfs = rt.rootfs("oom");
    for i in 0..3 {
        let id = format!("oom{i}");
        let mut s = spec(&rootfs, &["sh", "-c", "x=aaaaaaaa; while true; do x=$x$x; done"]);
        resources(&mut s).Memory =
            Some(oci::LinuxMemory { Limit: 32 << 20, Swap: 32 << 20, ..Default::default() }).into();
        rt.run(&id, s).await;
        assert_eq!(rt.wait(&id, "").await, 137, "killed by the OOM killer");
        rt.remove(&id).await.unwrap();
        let ev =
            tokio::time::timeout(Duration::from_secs(2), rt.client.get_oom_event(ctx(), &GetOOMEventRequest::new()))
                .await
                .unwrap_or_else(|_| panic!("no OOM event for {id}, removed right after its exit"))
                .unwrap();
        assert_eq!(ev.container_id, id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pids_limit_is_enforced_and_update_changes_it() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let mut s = spec(
        &rt.rootfs("pids"),
        &["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 30 & done; echo started; sleep 1000"],
    );
    resources(&mut s).Pids = Some(oci::LinuxPids { Limit: 4, ..Default::default() }).into();
    rt.run("pids", s).await;
    let mut err = String::new();
    // Read stderr until the fork failure shows up.
    while !err.contains("fork") {
        let req = ReadStreamRequest { container_id: "pids".into(), len: 4096, ..Default::default() };
        let chunk = rt.client.read_stderr(ctx(), &req).await.unwrap().data;
        assert!(!chunk.is_empty(), "stderr closed without a fork failure: {err}");
        err.push_str(&String::from_utf8_lossy(&chunk));
    }
    let dir = rt.cgroup_dir("sb", "pids", "pids");
    assert_eq!(std::fs::read_to_string(dir.join("pids.max")).unwrap().trim(), "4");
    let stats = rt
        .client
        .stats_container(ctx(), &StatsContainerRequest { container_id: "pids".into(), ..Default::default() })
        .await
        .unwrap();
    let pids = stats.cgroup_stats.pids_stats.clone().unwrap();
    assert_eq!(pids.limit, 4);
    // The shell may already have died of the failed fork (taking its PID
    // namespace with it), so only the bound is certain.
    assert!(pids.current <= 4, "pids.current {} within the limit", pids.current);

    let mut res = oci::LinuxResources::new();
    res.Pids = Some(oci::LinuxPids { Limit: 64, ..Default::default() }).into();
    let upd = UpdateContainerRequest { container_id: "pids".into(), resources: Some(res).into(), ..Default::default() };
    rt.client.update_container(ctx(), &upd).await.unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("pids.max")).unwrap().trim(), "64");
    rt.remove("pids").await.unwrap();
}

fn freezer_state(rt: &Rt) -> String {
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        let f = std::fs::read_to_string(rt.cgroup_dir("sb", "c", "").join("cgroup.freeze")).unwrap();
        if f.trim() == "1" {
            "FROZEN".into()
        } else {
            "THAWED".into()
        }
    } else {
        std::fs::read_to_string(rt.cgroup_dir("sb", "c", "freezer").join("freezer.state")).unwrap().trim().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_stats_and_cleanup() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let root = rt.rootfs("c");
    let busy = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo done; sleep 1000";
    rt.run("c", spec(&root, &["sh", "-c", busy])).await;
    let req = ReadStreamRequest { container_id: "c".into(), len: 100, ..Default::default() };
    assert_eq!(rt.client.read_stdout(ctx(), &req).await.unwrap().data, b"done\n");

    let stats = rt
        .client
        .stats_container(ctx(), &StatsContainerRequest { container_id: "c".into(), ..Default::default() })
        .await
        .unwrap();
    let cg = stats.cgroup_stats.unwrap();
    assert!(cg.memory_stats.usage.usage > 0, "memory usage: {:?}", cg.memory_stats);
    assert!(cg.cpu_stats.cpu_usage.total_usage > 0, "cpu usage: {:?}", cg.cpu_stats);

    rt.client
        .pause_container(ctx(), &PauseContainerRequest { container_id: "c".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(freezer_state(&rt), "FROZEN");
    let again = rt
        .client
        .pause_container(ctx(), &PauseContainerRequest { container_id: "c".into(), ..Default::default() })
        .await;
    assert!(format!("{:?}", again.unwrap_err()).contains("FAILED_PRECONDITION"));
    rt.client
        .resume_container(ctx(), &ResumeContainerRequest { container_id: "c".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(freezer_state(&rt), "THAWED");

    // Paused containers can still be removed; nothing is left behind.
    rt.client
        .pause_container(ctx(), &PauseContainerRequest { container_id: "c".into(), ..Default::default() })
        .await
        .unwrap();
    let init_pid: i32 = std::fs::read_to_string(rt.cgroup_dir("sb", "c", "pids").join("cgroup.procs"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    rt.remove("c").await.unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{init_pid}")).exists(), "process left behind");
    for ctrl in ["memory", "pids", "freezer", "cpu"] {
        assert!(!rt.cgroup_dir("sb", "c", ctrl).exists(), "{ctrl} cgroup left behind");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(root.to_str().unwrap()), "mount left behind");
    let gone = rt
        .client
        .stats_container(ctx(), &StatsContainerRequest { container_id: "c".into(), ..Default::default() })
        .await;
    assert!(format!("{:?}", gone.unwrap_err()).contains("NOT_FOUND"));

    let details = rt
        .client
        .get_guest_details(ctx(), &GuestDetailsRequest { mem_block_size: true, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(details.agent_details.version, env!("CARGO_PKG_VERSION"));
}
