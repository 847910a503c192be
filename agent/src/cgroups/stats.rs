//! Reads a container cgroup's counters into kata's `CgroupStats` message
//! (memory, cpu, pids), for v1 and v2. Read-only; missing files give zeros.

use std::collections::HashMap;
use std::path::Path;

use cgroups_rs::cpu::CpuController;
use cgroups_rs::cpuacct::CpuAcctController;
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use protos::agent::{CgroupStats, CpuStats, CpuUsage, MemoryData, MemoryStats, PidsStats};

use super::ContainerCgroup;

fn read_u64(dir: &Path, file: &str) -> u64 {
    std::fs::read_to_string(dir.join(file)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn read_map(dir: &Path, file: &str) -> HashMap<String, u64> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

pub fn collect(cg: &ContainerCgroup) -> CgroupStats {
    let v2 = cg.is_v2();
    let mut out = CgroupStats::new();
    if let Some(dir) = cg.controller_dir::<MemController>() {
        let stats = read_map(dir, "memory.stat");
        let mut m = MemoryStats::new();
        let mut usage = MemoryData::new();
        if v2 {
            usage.usage = read_u64(dir, "memory.current");
            usage.max_usage = read_u64(dir, "memory.peak");
            usage.limit = read_u64(dir, "memory.max");
            usage.failcnt = read_map(dir, "memory.events").get("max").copied().unwrap_or(0);
            m.cache = stats.get("file").copied().unwrap_or(0);
        } else {
            usage.usage = read_u64(dir, "memory.usage_in_bytes");
            usage.max_usage = read_u64(dir, "memory.max_usage_in_bytes");
            usage.limit = read_u64(dir, "memory.limit_in_bytes");
            usage.failcnt = read_u64(dir, "memory.failcnt");
            m.cache = stats.get("cache").copied().unwrap_or(0);
            m.use_hierarchy = read_u64(dir, "memory.use_hierarchy") == 1;
        }
        m.usage = Some(usage).into();
        m.stats = stats;
        out.memory_stats = Some(m).into();
    }
    let mut cpu = CpuUsage::new();
    if v2 {
        if let Some(dir) = cg.controller_dir::<CpuController>() {
            let st = read_map(dir, "cpu.stat");
            cpu.total_usage = st.get("usage_usec").copied().unwrap_or(0) * 1000;
            cpu.usage_in_usermode = st.get("user_usec").copied().unwrap_or(0) * 1000;
            cpu.usage_in_kernelmode = st.get("system_usec").copied().unwrap_or(0) * 1000;
        }
    } else if let Some(dir) = cg.controller_dir::<CpuAcctController>() {
        cpu.total_usage = read_u64(dir, "cpuacct.usage");
        cpu.percpu_usage = std::fs::read_to_string(dir.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // cpuacct.stat is in USER_HZ ticks.
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let st = read_map(dir, "cpuacct.stat");
        cpu.usage_in_usermode = st.get("user").copied().unwrap_or(0) * 1_000_000_000 / hz;
        cpu.usage_in_kernelmode = st.get("system").copied().unwrap_or(0) * 1_000_000_000 / hz;
    }
    let mut c = CpuStats::new();
    c.cpu_usage = Some(cpu).into();
    out.cpu_stats = Some(c).into();
    if let Some(dir) = cg.controller_dir::<PidController>() {
        let mut p = PidsStats::new();
        p.current = read_u64(dir, "pids.current");
        p.limit = read_u64(dir, "pids.max");
        out.pids_stats = Some(p).into();
    }
    out
}
