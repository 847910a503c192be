//! What the soak samples (from /proc and the cgroup tree), the CSV it writes,
//! and the verdict: nothing may trend upward once warmed up, and the idle
//! state after the load must equal the idle state after the warm-up.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The soak's phases, as the CSV labels each sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Load, before the warm-up checkpoint (not judged).
    Warmup,
    /// No request in flight, after the warm-up (the baseline).
    IdleBaseline,
    /// Load, judged for trends.
    Load,
    /// No request in flight, after the load (compared with the baseline).
    IdleFinal,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Warmup => "warmup",
            Phase::IdleBaseline => "idle-baseline",
            Phase::Load => "load",
            Phase::IdleFinal => "idle-final",
        }
    }
}

/// One process's footprint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Proc {
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

impl Proc {
    /// Reads /proc/PID; None once the process is gone.
    pub fn read(pid: u32) -> Option<Proc> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            status.lines().find_map(|l| l.strip_prefix(name))?.trim().trim_end_matches(" kB").trim().parse().ok()
        };
        Some(Proc {
            rss_kib: field("VmRSS:")?,
            threads: field("Threads:")?,
            fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64,
        })
    }
}

/// Everything sampled at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub t_secs: f64,
    pub phase: Phase,
    pub agent: Proc,
    pub hub: Proc,
    /// Lines of the agent's mountinfo (its mount namespace: storages, overlays).
    pub mounts: u64,
    /// Directories under the agent's cgroup parent (memory hierarchy on v1).
    pub cgroups: u64,
    /// Requests completed so far, all kinds.
    pub ops: u64,
}

/// The metrics judged, with how to read them from a sample and the growth
/// allowed between the first and last third of the load (an absolute floor,
/// and a fraction of the starting level).
pub struct Metric {
    pub name: &'static str,
    pub get: fn(&Sample) -> u64,
    pub floor: u64,
    pub fraction: f64,
}

pub const METRICS: &[Metric] = &[
    // Heap pages that hold one live allocation and the allocator's per-thread
    // caches move RSS by a few hundred KiB between samples.
    Metric { name: "agent_rss_kib", get: |s| s.agent.rss_kib, floor: 2048, fraction: 0.05 },
    Metric { name: "agent_fds", get: |s| s.agent.fds, floor: 2, fraction: 0.10 },
    Metric { name: "agent_threads", get: |s| s.agent.threads, floor: 2, fraction: 0.10 },
    Metric { name: "mounts", get: |s| s.mounts, floor: 2, fraction: 0.05 },
    Metric { name: "cgroups", get: |s| s.cgroups, floor: 2, fraction: 0.10 },
    Metric { name: "hub_rss_kib", get: |s| s.hub.rss_kib, floor: 2048, fraction: 0.05 },
    Metric { name: "hub_fds", get: |s| s.hub.fds, floor: 2, fraction: 0.10 },
    Metric { name: "hub_threads", get: |s| s.hub.threads, floor: 2, fraction: 0.10 },
];

/// Counts the directories of a cgroup tree (itself included), 0 if absent.
pub fn count_cgroups(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    1 + entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| count_cgroups(&e.path()))
        .sum::<u64>()
}

pub fn count_mounts(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).map_or(0, |m| m.lines().count() as u64)
}

/// Appends samples to a CSV file as they come, so an interrupted run keeps them.
pub struct Csv {
    path: PathBuf,
    file: std::fs::File,
}

impl Csv {
    pub const HEADER: &'static str =
        "t_s,phase,agent_rss_kib,agent_fds,agent_threads,mounts,cgroups,hub_rss_kib,hub_fds,hub_threads,ops";

    pub fn create(path: &Path) -> std::io::Result<Csv> {
        let mut file = std::fs::File::create(path)?;
        writeln!(file, "{}", Self::HEADER)?;
        Ok(Csv { path: path.to_path_buf(), file })
    }

    /// A sample as a row of the CSV (also the soak's progress line).
    pub fn row(s: &Sample) -> String {
        format!(
            "{:.1},{},{},{},{},{},{},{},{},{},{}",
            s.t_secs,
            s.phase.name(),
            s.agent.rss_kib,
            s.agent.fds,
            s.agent.threads,
            s.mounts,
            s.cgroups,
            s.hub.rss_kib,
            s.hub.fds,
            s.hub.threads,
            s.ops
        )
    }

    pub fn append(&mut self, s: &Sample) -> std::io::Result<()> {
        writeln!(self.file, "{}", Self::row(s))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Least-squares slope of `value` over time, per hour.
fn slope_per_hour(points: &[(f64, u64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 as f64 - mv)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var * 3600.0
    }
}

/// One metric's trend over the load phase.
#[derive(Debug)]
pub struct Trend {
    pub name: &'static str,
    pub first: u64,
    pub last: u64,
    pub allowed: u64,
    pub slope_per_hour: f64,
    pub min: u64,
    pub max: u64,
}

impl Trend {
    pub fn grew(&self) -> bool {
        self.last > self.first + self.allowed
    }
}

/// Fewer load samples than this cannot show a trend.
pub const MIN_LOAD_SAMPLES: usize = 6;

/// Compares the median of the first third of the load samples with the
/// median of the last third, per metric. Medians, because the counts move
/// with the requests in flight at each instant; a leak moves the whole band.
pub fn trends(samples: &[Sample]) -> Result<Vec<Trend>, String> {
    let load: Vec<&Sample> = samples.iter().filter(|s| s.phase == Phase::Load).collect();
    if load.len() < MIN_LOAD_SAMPLES {
        return Err(format!(
            "only {} samples under load after the warm-up; {MIN_LOAD_SAMPLES} are needed to judge a trend (run longer)",
            load.len()
        ));
    }
    let third = load.len() / 3;
    Ok(METRICS
        .iter()
        .map(|m| {
            let values: Vec<u64> = load.iter().map(|s| (m.get)(s)).collect();
            let first = median(values.iter().take(third).copied().collect());
            let last = median(values.iter().skip(values.len() - third).copied().collect());
            let allowed = m.floor.max((first as f64 * m.fraction) as u64);
            let points: Vec<(f64, u64)> = load.iter().map(|s| (s.t_secs, (m.get)(s))).collect();
            Trend {
                name: m.name,
                first,
                last,
                allowed,
                slope_per_hour: slope_per_hour(&points),
                min: values.iter().copied().min().unwrap_or(0),
                max: values.iter().copied().max().unwrap_or(0),
            }
        })
        .collect())
}

/// RSS an idle process may hold above its idle baseline after the load:
/// freed heap pages that keep one live allocation (512 KiB measured per
/// round in tests/runtime/load.rs; allowed once, not per round).
pub const IDLE_RSS_SLACK_KIB: u64 = 2048;

/// The idle state after the load against the idle baseline: counts must be
/// back exactly, RSS within the slack. Returns what differs.
pub fn idle_regressions(baseline: &Sample, after: &Sample) -> Vec<String> {
    let mut out = Vec::new();
    for (name, b, a) in [
        ("agent fds", baseline.agent.fds, after.agent.fds),
        ("agent threads", baseline.agent.threads, after.agent.threads),
        ("mounts", baseline.mounts, after.mounts),
        ("cgroups", baseline.cgroups, after.cgroups),
        ("data hub fds", baseline.hub.fds, after.hub.fds),
    ] {
        if a != b {
            out.push(format!("{name}: {b} idle after the warm-up, {a} idle after the load"));
        }
    }
    for (name, b, a) in [
        ("agent RSS", baseline.agent.rss_kib, after.agent.rss_kib),
        ("data hub RSS", baseline.hub.rss_kib, after.hub.rss_kib),
    ] {
        if a > b + IDLE_RSS_SLACK_KIB {
            out.push(format!("{name}: {b} KiB idle after the warm-up, {a} KiB idle after the load"));
        }
    }
    out
}

/// The report: a markdown table of the trends, for the log and
/// docs/BENCHMARKS.md.
pub fn table(trends: &[Trend], baseline: &Sample, after: &Sample) -> String {
    let mut t = String::from(
        "| metric | min | max | first third (median) | last third (median) | allowed growth | slope per hour | idle after warm-up | idle after load |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let by_name = |s: &Sample, name: &str| METRICS.iter().find(|m| m.name == name).map_or(0, |m| (m.get)(s));
    for tr in trends {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {:+.1} | {} | {} |",
            tr.name,
            tr.min,
            tr.max,
            tr.first,
            tr.last,
            tr.allowed,
            tr.slope_per_hour,
            by_name(baseline, tr.name),
            by_name(after, tr.name),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, phase: Phase, rss: u64, fds: u64) -> Sample {
        Sample {
            t_secs: t,
            phase,
            agent: Proc { rss_kib: rss, fds, threads: 3 },
            hub: Proc { rss_kib: 9000, fds: 12, threads: 4 },
            mounts: 30,
            cgroups: 4,
            ops: 0,
        }
    }

    /// Fluctuation with the requests in flight (a band) is not a trend.
    #[test]
    fn a_noisy_flat_band_passes() {
        let s: Vec<Sample> =
            (0..60).map(|i| sample(i as f64 * 10.0, Phase::Load, 12000 + (i * 7919 % 900), 20 + (i % 5))).collect();
        let t = trends(&s).unwrap();
        assert!(t.iter().all(|t| !t.grew()), "{t:?}");
    }

    /// One fd per sample (a leak per few hundred requests) is caught, and so is
    /// 100 KiB of RSS per sample (10 KiB/s).
    #[test]
    fn slow_leaks_are_caught() {
        let s: Vec<Sample> = (0..60).map(|i| sample(i as f64 * 10.0, Phase::Load, 12000 + i * 100, 20 + i)).collect();
        let t = trends(&s).unwrap();
        let grew: Vec<&str> = t.iter().filter(|t| t.grew()).map(|t| t.name).collect();
        assert_eq!(grew, ["agent_rss_kib", "agent_fds"]);
        let fds = t.iter().find(|t| t.name == "agent_fds").unwrap();
        assert!((fds.slope_per_hour - 360.0).abs() < 1.0, "{}", fds.slope_per_hour);
    }

    #[test]
    fn warm_up_and_idle_samples_are_not_judged_and_too_few_samples_is_an_error() {
        let mut s: Vec<Sample> = (0..10).map(|i| sample(i as f64, Phase::Warmup, 1000 * i, i)).collect();
        s.push(sample(11.0, Phase::IdleBaseline, 5000, 20));
        assert!(trends(&s).unwrap_err().contains("only 0 samples"));
        s.extend((0..6).map(|i| sample(20.0 + i as f64, Phase::Load, 12000, 20)));
        assert!(trends(&s).unwrap().iter().all(|t| !t.grew()));
    }

    #[test]
    fn idle_state_must_come_back() {
        let base = sample(0.0, Phase::IdleBaseline, 12000, 20);
        assert!(idle_regressions(&base, &sample(1.0, Phase::IdleFinal, 12000 + IDLE_RSS_SLACK_KIB, 20)).is_empty());
        let bad = idle_regressions(&base, &sample(1.0, Phase::IdleFinal, 12000 + IDLE_RSS_SLACK_KIB + 1, 21));
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].contains("agent fds: 20 idle after the warm-up, 21"), "{bad:?}");
    }

    #[test]
    fn csv_rows_match_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = Csv::create(&dir.path().join("s.csv")).unwrap();
        csv.append(&sample(1.0, Phase::Load, 1, 2)).unwrap();
        let text = std::fs::read_to_string(csv.path()).unwrap();
        let rows: Vec<usize> = text.lines().map(|l| l.split(',').count()).collect();
        assert_eq!(rows, [11, 11]);
        assert!(text.ends_with("1.0,load,1,2,3,30,4,9000,12,4,0\n"), "{text}");
    }
}
