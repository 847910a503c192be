//! GetMetrics: the agent's own figures in Prometheus text format (resident
//! memory, open descriptors, threads, containers), the guest image pulls
//! (by outcome, and seconds spent) and the policy's decision counters. Read
//! from /proc/self on each call; nothing is kept between calls.

use std::fmt::Write as _;

use crate::policy::AgentPolicy;
use crate::sandbox::Sandbox;

fn gauge(out: &mut String, name: &str, help: &str, value: Option<u64>) {
    if let Some(v) = value {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
    }
}

/// A `kB` field of /proc/self/status, in bytes.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.get(field.len()..)?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

fn status_count(status: &str, field: &str) -> Option<u64> {
    status.lines().find(|l| l.starts_with(field))?.get(field.len()..)?.trim().parse().ok()
}

/// The whole exposition.
pub fn prometheus(sandbox: &Sandbox, policy: &AgentPolicy) -> String {
    let mut out = String::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    gauge(&mut out, "cvm_agent_resident_bytes", "Resident memory of the agent.", status_kib(&status, "VmRSS:"));
    gauge(&mut out, "cvm_agent_threads", "Threads of the agent.", status_count(&status, "Threads:"));
    let fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
    gauge(&mut out, "cvm_agent_open_fds", "Open file descriptors of the agent.", fds);
    gauge(&mut out, "cvm_agent_containers", "Containers in the sandbox.", Some(sandbox.container_count() as u64));
    sandbox.pull_counters().prometheus(&mut out);
    policy.counters().prometheus(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_bytes_and_counts() {
        let status = "Name:\tcvm-agent\nVmRSS:\t   12476 kB\nThreads:\t3\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(12476 * 1024));
        assert_eq!(status_count(status, "Threads:"), Some(3));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        assert_eq!(status_count("Threads:\tmany\n", "Threads:"), None);
    }
}
