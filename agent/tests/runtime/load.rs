//! Load: 50 containers created, started and removed concurrently, then 1000
//! exec+wait cycles; the agent's fd count and RSS return to their baseline.

use std::sync::Arc;
use std::time::Instant;

use crate::harness::{prerequisites, spec, Rt};

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

async fn lifecycle(rt: &Rt, id: &str, rootfs: &std::path::Path) {
    let mut s = spec(rootfs, &["sh", "-c", "echo ok"]);
    s.Root.as_mut().unwrap().Readonly = true;
    rt.run(id, s).await;
    assert_eq!(rt.read_all(id, "", false).await, "ok\n");
    assert_eq!(rt.wait(id, "").await, 0);
    rt.remove(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_containers_then_a_thousand_execs_leave_fds_and_rss_at_baseline() {
    if !prerequisites() {
        return;
    }
    let rt = Arc::new(Rt::start().await);
    rt.create_sandbox("sb", true).await;
    // One read-only rootfs shared by every container.
    let rootfs = rt.rootfs("shared");
    let pid = rt.agent.child.id();
    // Warm up once so lazily allocated runtime state counts as baseline.
    lifecycle(&rt, "warm", &rootfs).await;
    let (fd0, rss0) = (fd_count(pid), rss_kib(pid));

    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let rt = rt.clone();
        let rootfs = rootfs.clone();
        tasks.push(tokio::spawn(async move { lifecycle(&rt, &format!("c{i}"), &rootfs).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let fifty = t.elapsed();

    let mut s = spec(&rootfs, &["sleep", "100000"]);
    s.Root.as_mut().unwrap().Readonly = true;
    rt.run("host", s).await;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            for n in (w..1000).step_by(8) {
                let id = format!("e{n}");
                rt.exec("host", &id, &["true"], false).await.unwrap();
                assert_eq!(rt.wait("host", &id).await, 0);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let execs = t.elapsed();
    rt.remove("host").await.unwrap();

    let (fd1, rss1) = (fd_count(pid), rss_kib(pid));
    println!("50 concurrent container lifecycles: {fifty:?}; 1000 exec+wait: {execs:?}");
    println!("agent fds: baseline {fd0}, after {fd1}; RSS: baseline {rss0} KiB, after {rss1} KiB");
    assert_eq!(fd1, fd0, "fd leak");
    assert!(rss1 <= rss0 + 8 * 1024, "RSS grew from {rss0} KiB to {rss1} KiB");
}
