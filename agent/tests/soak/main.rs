//! Soak (`make soak`): the real agent and data hub under a steady mix of
//! requests for SOAK_SECONDS (default 600; 3600 for the figures in
//! docs/BENCHMARKS.md), sampling every SOAK_SAMPLE_SECS (default 10) the
//! agent's RSS, fds and threads, its mounts, the cgroups under its parent,
//! and the data hub's RSS, fds and threads into SOAK_OUT/soak.csv.
//!
//! The run is a warm-up (a sixth of the time, 1 to 10 min), an idle
//! checkpoint, the judged load, and a final idle checkpoint. It fails on any
//! failed request, on an OOM kill that GetOOMEvent did not report, on a
//! metric whose median over the last third of the load exceeds the first
//! third's by more than its allowance (series.rs), and on an idle state
//! after the load that differs from the one after the warm-up.
//!
//! Needs what tests/guest_pull.rs needs (root, busybox-static,
//! docker-registry, skopeo, the data hub binary). `make soak` runs it on the
//! static release binaries the guest image ships (CVM_AGENT_TEST_BIN,
//! CVM_AGENT_TEST_CDH) and plots the CSV.

#[path = "../../../image-rs/tests/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../runtime/harness.rs"]
mod harness;
#[path = "../common/pod.rs"]
mod pod;
mod series;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use series::{Csv, Phase, Proc, Sample};
use support::layout::{busybox_rootfs_layer, Compression, ImageBuilder};
use support::registry::{Registry, RegistryOptions};
use workload::World;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What the sampler reads.
struct Probe {
    agent_pid: u32,
    hub_pid: u32,
    cgroup_dir: PathBuf,
    start: Instant,
    world: Arc<World>,
}

impl Probe {
    fn sample(&self, phase: Phase) -> Sample {
        Sample {
            t_secs: self.start.elapsed().as_secs_f64(),
            phase,
            agent: Proc::read(self.agent_pid).unwrap_or_else(|| panic!("the agent (pid {}) is gone", self.agent_pid)),
            hub: Proc::read(self.hub_pid).unwrap_or_else(|| panic!("the data hub (pid {}) is gone", self.hub_pid)),
            mounts: series::count_mounts(self.agent_pid),
            cgroups: series::count_cgroups(&self.cgroup_dir),
            ops: self.world.tally.ops(),
        }
    }

    /// Waits until both processes are down to their idle threads (main and
    /// one tokio worker per CPU; blocking-pool threads linger 10 s after
    /// their last task), then samples.
    async fn idle_sample(&self, phase: Phase) -> Sample {
        let idle_threads = 1 + std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let s = self.sample(phase);
            if (s.agent.threads <= idle_threads && s.hub.threads <= idle_threads) || Instant::now() > deadline {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return self.sample(phase);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Samples every `every` while `phase` holds a load phase (None: paused).
async fn sampler(
    probe: Arc<Probe>,
    phase: Arc<Mutex<Option<Phase>>>,
    log: Arc<Mutex<(Csv, Vec<Sample>)>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(p) = *phase.lock().unwrap() else { continue };
        let s = probe.sample(p);
        println!("soak: {}", Csv::row(&s));
        record(&log, s);
    }
}

fn record(log: &Mutex<(Csv, Vec<Sample>)>, s: Sample) {
    let mut log = log.lock().unwrap();
    log.0.append(&s).expect("append to the soak CSV");
    log.1.push(s);
}

/// One segment of load: every worker until `until`, the host container
/// around them; returns once all have finished.
async fn segment(w: &Arc<World>, name: &str, until: Instant) {
    workload::start_host(w).await.expect("start the exec/stats container");
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..2 {
        let (w, name) = (w.clone(), name.to_string());
        tasks.spawn(async move { workload::lifecycles(w, worker, &name, until).await });
    }
    let (w1, w2, w3, w4) = (w.clone(), w.clone(), w.clone(), w.clone());
    let (n1, n2) = (name.to_string(), name.to_string());
    tasks.spawn(async move { workload::execs(w1, until).await });
    tasks.spawn(async move { workload::pulls(w2, &n1, until).await });
    tasks.spawn(async move { workload::ooms(w3, &n2, until).await });
    tasks.spawn(async move { workload::polls(w4, until).await });
    while let Some(r) = tasks.join_next().await {
        r.expect("a soak worker panicked");
    }
    workload::stop_host(w).await.expect("remove the exec/stats container");
}

fn images(dir: &Path, reg: &Registry) -> Vec<(String, String)> {
    [("app:gzip", Compression::Gzip), ("app:zstd", Compression::Zstd)]
        .into_iter()
        .map(|(tag, c)| {
            let layout = dir.join(format!("layout-{}", tag.replace(':', "-")));
            let greeting = format!("soak image {tag}");
            ImageBuilder::new()
                .layer(busybox_rootfs_layer(c))
                .cmd(&["/bin/sh", "-c", &format!("echo {greeting}")])
                .build()
                .write_to_layout(&layout, "t");
            reg.push_oci_layout(&layout, "t", tag);
            (reg.reference(tag), format!("{greeting}\n"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by `make soak` (SOAK_SECONDS, default 600)"]
async fn soak() {
    if !pod::prerequisites() {
        return;
    }
    let total = Duration::from_secs(env_u64("SOAK_SECONDS", 600));
    let every = Duration::from_secs(env_u64("SOAK_SAMPLE_SECS", 10).max(1));
    let warm = (total / 6).clamp(Duration::from_secs(60), Duration::from_secs(600));
    let out = std::env::var_os("SOAK_OUT").map_or_else(|| std::env::temp_dir().join("cvm-soak"), PathBuf::from);
    std::fs::create_dir_all(&out).unwrap();
    let agent_bin = harness::common::agent_bin();
    println!(
        "soak: {total:?} ({warm:?} warm-up), a sample every {every:?}; agent {agent_bin}, data hub {}; output in {}",
        pod::cdh_bin().display(),
        out.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start(RegistryOptions::plain());
    let images = images(dir.path(), &reg);
    let socket = dir.path().join("cdh.sock");
    let hub = pod::Hub::start(&dir.path().join("cdh"), &socket, &reg.host(), None);
    let rt = pod::start_agent(dir, &socket).await;
    rt.create_sandbox("sb", false).await;
    let rootfs = rt.rootfs("shared");
    let cgroup_root = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    };
    let cgroup_dir = cgroup_root.join(&rt.cgroup_parent);
    let agent_pid = rt.agent.child.id();
    let world = Arc::new(World { rt, rootfs, images, tally: Default::default() });
    let probe =
        Arc::new(Probe { agent_pid, hub_pid: hub.child.id(), cgroup_dir, start: Instant::now(), world: world.clone() });
    let log = Arc::new(Mutex::new((Csv::create(&out.join("soak.csv")).unwrap(), Vec::new())));
    let phase = Arc::new(Mutex::new(Some(Phase::Warmup)));
    println!("soak: {}", Csv::HEADER);
    let sampling = tokio::spawn(sampler(probe.clone(), phase.clone(), log.clone(), every));
    let listener = tokio::spawn(workload::oom_events(world.clone()));

    segment(&world, "warm", Instant::now() + warm).await;
    *phase.lock().unwrap() = None;
    let baseline = probe.idle_sample(Phase::IdleBaseline).await;
    record(&log, baseline);
    println!("soak: warmed up: {}", world.tally.summary());

    *phase.lock().unwrap() = Some(Phase::Load);
    let load_start = Instant::now();
    segment(&world, "load", load_start + total.saturating_sub(warm)).await;
    *phase.lock().unwrap() = None;
    let load_time = load_start.elapsed();
    let after = probe.idle_sample(Phase::IdleFinal).await;
    record(&log, after);
    sampling.abort();

    // An OOM event may trail its container's exit by a moment.
    let t = &world.tally;
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.oom_events.load(Ordering::Relaxed) < t.oom_kills.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    listener.abort();

    let samples = log.lock().unwrap().1.clone();
    let trends = series::trends(&samples).unwrap_or_else(|e| panic!("soak: {e}"));
    let grown: Vec<String> = trends
        .iter()
        .filter(|t| t.grew())
        .map(|t| {
            format!(
                "{}: median {} over the first third of the load, {} over the last (allowed +{})",
                t.name, t.first, t.last, t.allowed
            )
        })
        .collect();
    let idle = series::idle_regressions(&baseline, &after);
    let table = series::table(&trends, &baseline, &after);
    let verdict = if grown.is_empty() && idle.is_empty() && t.failures.load(Ordering::Relaxed) == 0 {
        "nothing grew".to_string()
    } else {
        format!("FAILED: {}", grown.iter().chain(&idle).cloned().collect::<Vec<_>>().join("; "))
    };
    let rate = t.ops() as f64 / probe.start.elapsed().as_secs_f64();
    let summary = format!(
        "{} in {:.0} min ({:.0} min judged after a {:.0} min warm-up), {:.1} requests/s in all; a sample every {} s, {} samples.\n\n{table}\nVerdict: {verdict}.\n",
        t.summary(),
        probe.start.elapsed().as_secs_f64() / 60.0,
        load_time.as_secs_f64() / 60.0,
        warm.as_secs_f64() / 60.0,
        rate,
        every.as_secs(),
        samples.len(),
    );
    std::fs::write(out.join("summary.md"), &summary).unwrap();
    println!("\n{summary}\nCSV: {}", out.join("soak.csv").display());

    let failures = t.first_failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} requests failed; the first: {failures:#?}", t.failures.load(Ordering::Relaxed));
    assert_eq!(
        t.oom_events.load(Ordering::Relaxed),
        t.oom_kills.load(Ordering::Relaxed),
        "every OOM kill is reported once by GetOOMEvent"
    );
    assert!(t.pulls.load(Ordering::Relaxed) > 0 && t.execs.load(Ordering::Relaxed) > 0, "the mix ran: {}", t.summary());
    assert!(
        grown.is_empty(),
        "upward trends under load:\n{}\nagent log: {}",
        grown.join("\n"),
        probe.world.rt.agent.log.display()
    );
    assert!(idle.is_empty(), "the idle state after the load differs:\n{}", idle.join("\n"));
    drop(hub);
}
