//! The soak's mix of requests, as a busy pod's shim and kubelet send them:
//! container lifecycles with stdout and stderr, execs with stdin round
//! trips, terminals and signals, guest pulls through the data hub, memory
//! limits that end in OOM kills, and stats and metrics polls. Each worker
//! loops until the segment's deadline; a failure is counted with its cause
//! and the worker goes on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protos::agent::*;
use protos::oci;

use crate::harness::{ctx, spec, Rt};
use crate::pod;

/// Requests done and failures seen, shared by the workers and the sampler.
#[derive(Default)]
pub struct Tally {
    pub lifecycles: AtomicU64,
    pub execs: AtomicU64,
    pub pulls: AtomicU64,
    pub oom_kills: AtomicU64,
    pub oom_events: AtomicU64,
    pub polls: AtomicU64,
    pub failures: AtomicU64,
    /// The first failures, with their causes.
    pub first_failures: Mutex<Vec<String>>,
}

impl Tally {
    pub fn ops(&self) -> u64 {
        [&self.lifecycles, &self.execs, &self.pulls, &self.oom_kills, &self.polls]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn fail(&self, what: String) {
        eprintln!("soak: FAILED {what}");
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_failures.lock().unwrap();
        if first.len() < 20 {
            first.push(what);
        }
    }

    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} container lifecycles, {} execs, {} guest pulls, {} OOM kills ({} OOM events), {} stats/metrics polls, {} failures",
            g(&self.lifecycles),
            g(&self.execs),
            g(&self.pulls),
            g(&self.oom_kills),
            g(&self.oom_events),
            g(&self.polls),
            g(&self.failures)
        )
    }
}

/// What the workers share.
pub struct World {
    pub rt: Rt,
    /// One read-only busybox rootfs for every non-pulled container.
    pub rootfs: PathBuf,
    /// Images in the local registry, and what each one's default command prints.
    pub images: Vec<(String, String)>,
    pub tally: Tally,
}

type Step<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// Runs `step(n)` for n = 0, 1, ... until `until`, counting failures.
async fn repeat<F>(w: &World, label: &str, until: Instant, mut step: F)
where
    F: for<'a> FnMut(&'a World, u64) -> Step<'a>,
{
    let mut n = 0;
    while Instant::now() < until {
        if let Err(e) = step(w, n).await {
            w.tally.fail(format!("{label} #{n}: {e}"));
        }
        n += 1;
    }
}

fn check<T: std::fmt::Debug + PartialEq>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

async fn read_stream(rt: &Rt, cid: &str, exec_id: &str, stderr: bool) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let req =
            ReadStreamRequest { container_id: cid.into(), exec_id: exec_id.into(), len: 16384, ..Default::default() };
        let data =
            if stderr { rt.client.read_stderr(ctx(), &req).await } else { rt.client.read_stdout(ctx(), &req).await }
                .map_err(|e| format!("read {}: {e}", if stderr { "stderr" } else { "stdout" }))?
                .data;
        if data.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&data);
    }
}

async fn wait(rt: &Rt, cid: &str, exec_id: &str) -> Result<i32, String> {
    let req = WaitProcessRequest { container_id: cid.into(), exec_id: exec_id.into(), ..Default::default() };
    rt.client.wait_process(ctx(), &req).await.map(|r| r.status).map_err(|e| format!("WaitProcess: {e}"))
}

fn readonly_spec(rootfs: &Path, args: &[&str]) -> oci::Spec {
    let mut s = spec(rootfs, args);
    if let Some(root) = s.Root.as_mut() {
        root.Readonly = true;
    }
    s
}

/// Lines a lifecycle's container prints to stdout (about 12 KiB in all).
const LINES: usize = 200;

/// Create, start, stdout and stderr to EOF, wait, remove.
async fn lifecycle(w: &World, cid: String) -> Result<(), String> {
    let script = format!("i=0; while [ $i -lt {LINES} ]; do echo line-$i-of-the-soak-stdout-stream-abcdefghij; i=$((i+1)); done; echo done >&2");
    let rt = &w.rt;
    rt.create(&cid, readonly_spec(&w.rootfs, &["sh", "-c", &script]))
        .await
        .map_err(|e| format!("CreateContainer: {e}"))?;
    rt.start_c(&cid).await.map_err(|e| format!("StartContainer: {e}"))?;
    let (out, err) = tokio::join!(read_stream(rt, &cid, "", false), read_stream(rt, &cid, "", true));
    let out = String::from_utf8_lossy(&out?).into_owned();
    check("stdout lines", out.lines().count(), LINES)?;
    check("stderr", err?, b"done\n".to_vec())?;
    check("exit status", wait(rt, &cid, "").await?, 0)?;
    rt.remove(&cid).await.map_err(|e| format!("RemoveContainer: {e}"))?;
    w.tally.lifecycles.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

pub async fn lifecycles(w: Arc<World>, worker: usize, segment: &str, until: Instant) {
    let seg = segment.to_string();
    repeat(&w, "lifecycle", until, move |w, n| Box::pin(lifecycle(w, format!("{seg}-lc{worker}-{n}")))).await;
}

/// The container the execs and the stats polls use during a segment.
pub const HOST: &str = "host";

pub async fn start_host(w: &World) -> Result<(), String> {
    w.rt.create(HOST, readonly_spec(&w.rootfs, &["sleep", "1000000"]))
        .await
        .map_err(|e| format!("CreateContainer: {e}"))?;
    w.rt.start_c(HOST).await.map_err(|e| format!("StartContainer: {e}"))
}

pub async fn stop_host(w: &World) -> Result<(), String> {
    w.rt.remove(HOST).await.map_err(|e| format!("RemoveContainer of {HOST}: {e}"))
}

/// One exec in the host container, rotating through: stdin round trip
/// through `cat` (4 KiB), a terminal, and a long sleep ended by SIGKILL.
async fn exec(w: &World, n: u64) -> Result<(), String> {
    let rt = &w.rt;
    let id = format!("e{n}");
    match n % 10 {
        9 => {
            rt.exec(HOST, &id, &["sh", "-c", "echo tty-ok"], true)
                .await
                .map_err(|e| format!("ExecProcess (tty): {e}"))?;
            let out = read_stream(rt, HOST, &id, false).await?;
            if !String::from_utf8_lossy(&out).contains("tty-ok") {
                return Err(format!("terminal output {:?}", String::from_utf8_lossy(&out)));
            }
            check("tty exit status", wait(rt, HOST, &id).await?, 0)?;
        }
        4 => {
            rt.exec(HOST, &id, &["sleep", "1000"], false).await.map_err(|e| format!("ExecProcess (sleep): {e}"))?;
            rt.signal(HOST, &id, libc::SIGKILL).await.map_err(|e| format!("SignalProcess: {e}"))?;
            check("killed exec status", wait(rt, HOST, &id).await?, 137)?;
        }
        _ => {
            rt.exec(HOST, &id, &["cat"], false).await.map_err(|e| format!("ExecProcess (cat): {e}"))?;
            let payload: Vec<u8> = (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect();
            let write = WriteStreamRequest {
                container_id: HOST.into(),
                exec_id: id.clone(),
                data: payload.clone(),
                ..Default::default()
            };
            let read = read_stream(rt, HOST, &id, false);
            let write_and_close = async {
                let written = rt.client.write_stdin(ctx(), &write).await.map_err(|e| format!("WriteStdin: {e}"))?;
                check("bytes written", written.len as usize, payload.len())?;
                let close = CloseStdinRequest { container_id: HOST.into(), exec_id: id.clone(), ..Default::default() };
                rt.client.close_stdin(ctx(), &close).await.map_err(|e| format!("CloseStdin: {e}"))?;
                Ok::<(), String>(())
            };
            let (out, written) = tokio::join!(read, write_and_close);
            written?;
            check("cat echoed stdin", out?, payload)?;
            check("cat exit status", wait(rt, HOST, &id).await?, 0)?;
        }
    }
    w.tally.execs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

pub async fn execs(w: Arc<World>, until: Instant) {
    repeat(&w, "exec", until, |w, n| Box::pin(exec(w, n))).await;
}

/// A container whose image the data hub pulls (kata's image_guest_pull
/// storage), alternating between the registry's images.
async fn pull(w: &World, cid: String, n: u64) -> Result<(), String> {
    let (image, want) = &w.images[n as usize % w.images.len()];
    let rt = &w.rt;
    pod::create(rt, &cid, "container", image, &[])
        .await
        .map_err(|e| format!("CreateContainer pulling {image}: {e}"))?;
    rt.start_c(&cid).await.map_err(|e| format!("StartContainer: {e}"))?;
    let out = read_stream(rt, &cid, &cid, false).await?;
    check("pulled image's output", String::from_utf8_lossy(&out).into_owned(), want.clone())?;
    check("exit status", wait(rt, &cid, &cid).await?, 0)?;
    rt.remove(&cid).await.map_err(|e| format!("RemoveContainer: {e}"))?;
    w.tally.pulls.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

pub async fn pulls(w: Arc<World>, segment: &str, until: Instant) {
    let seg = segment.to_string();
    repeat(&w, "guest pull", until, move |w, n| Box::pin(pull(w, format!("{seg}-pull{n}"), n))).await;
}

/// A container over its 32 MiB memory limit, every few seconds: the OOM
/// killer ends it (137) and GetOOMEvent reports it.
async fn oom(w: &World, cid: String) -> Result<(), String> {
    let rt = &w.rt;
    let mut s = readonly_spec(&w.rootfs, &["sh", "-c", "x=aaaaaaaa; while true; do x=$x$x; done"]);
    if let Some(linux) = s.Linux.as_mut() {
        linux.Resources.mut_or_insert_default().Memory =
            Some(oci::LinuxMemory { Limit: 32 << 20, Swap: 32 << 20, ..Default::default() }).into();
    }
    rt.create(&cid, s).await.map_err(|e| format!("CreateContainer: {e}"))?;
    rt.start_c(&cid).await.map_err(|e| format!("StartContainer: {e}"))?;
    check("OOM-killed status", wait(rt, &cid, "").await?, 137)?;
    rt.remove(&cid).await.map_err(|e| format!("RemoveContainer: {e}"))?;
    w.tally.oom_kills.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

pub async fn ooms(w: Arc<World>, segment: &str, until: Instant) {
    let seg = segment.to_string();
    repeat(&w, "oom", until, move |w, n| {
        let cid = format!("{seg}-oom{n}");
        Box::pin(async move {
            let r = oom(w, cid).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            r
        })
    })
    .await;
}

/// Kata's shim keeps one GetOOMEvent long poll open for the sandbox's life;
/// so does the soak, counting the events of its OOM containers. A poll that
/// times out (no OOM within the context's deadline) is simply reissued.
pub async fn oom_events(w: Arc<World>) {
    loop {
        match w.rt.client.get_oom_event(ctx(), &GetOOMEventRequest::new()).await {
            Ok(ev) if ev.container_id.contains("-oom") => {
                w.tally.oom_events.fetch_add(1, Ordering::Relaxed);
            }
            Ok(ev) => w.tally.fail(format!("GetOOMEvent named {:?}, which has no memory limit", ev.container_id)),
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::DEADLINE_EXCEEDED => {}
            Err(ttrpc::Error::Others(e)) if e.contains("timeout") || e.contains("deadline") => {}
            Err(e) => {
                w.tally.fail(format!("GetOOMEvent: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// StatsContainer of the host container and GetMetrics, once a second each,
/// as kubelet's and the shim's pollers do.
async fn poll(w: &World) -> Result<(), String> {
    let stats = StatsContainerRequest { container_id: HOST.into(), ..Default::default() };
    let s = w.rt.client.stats_container(ctx(), &stats).await.map_err(|e| format!("StatsContainer: {e}"))?;
    let cg = s.cgroup_stats.as_ref().ok_or("StatsContainer without cgroup stats")?;
    if cg.memory_stats.as_ref().is_none_or(|m| m.usage.as_ref().is_none_or(|u| u.usage == 0)) {
        return Err("StatsContainer reports no memory usage for a running container".into());
    }
    let m =
        w.rt.client.get_metrics(ctx(), &GetMetricsRequest::default()).await.map_err(|e| format!("GetMetrics: {e}"))?;
    if !m.metrics.contains("cvm_agent_") {
        return Err("GetMetrics without the agent's metrics".into());
    }
    w.tally.polls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

pub async fn polls(w: Arc<World>, until: Instant) {
    repeat(&w, "poll", until, |w, _| Box::pin(poll(w))).await;
}
