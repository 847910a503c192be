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
    guest_components(&mut out, &crate::components::status::global().snapshot());
    out
}

/// `cvm_agent_guest_component_up{name}` (1 while running) and
/// `cvm_agent_guest_component_restarts_total{name}`, one line per supervised
/// component (kata's GuestDetailsResponse has no field for them).
pub fn guest_components(out: &mut String, components: &[crate::components::status::ComponentStatus]) {
    use crate::components::status::State;
    if components.is_empty() {
        return;
    }
    out.push_str("# HELP cvm_agent_guest_component_up Guest component running (1) or not (0).\n");
    out.push_str("# TYPE cvm_agent_guest_component_up gauge\n");
    for c in components {
        let up = u8::from(c.state == State::Running);
        let _ = writeln!(out, "cvm_agent_guest_component_up{{name=\"{}\"}} {up}", c.component.name());
    }
    out.push_str("# HELP cvm_agent_guest_component_restarts_total Relaunches of a guest component.\n");
    out.push_str("# TYPE cvm_agent_guest_component_restarts_total counter\n");
    for c in components {
        let _ =
            writeln!(out, "cvm_agent_guest_component_restarts_total{{name=\"{}\"}} {}", c.component.name(), c.restarts);
    }
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

    #[test]
    fn guest_components_are_one_labelled_line_each() {
        use crate::components::status::{ComponentStatus, State};
        use crate::components::Component;
        let mut out = String::new();
        guest_components(&mut out, &[]);
        assert!(out.is_empty());
        let aa = ComponentStatus {
            component: Component::AttestationAgent,
            state: State::Running,
            pid: Some(7),
            restarts: 2,
        };
        let cdh = ComponentStatus {
            component: Component::ConfidentialDataHub,
            state: State::Restarting,
            pid: None,
            restarts: 5,
        };
        guest_components(&mut out, &[aa, cdh]);
        assert!(out.contains("cvm_agent_guest_component_up{name=\"attestation-agent\"} 1\n"), "{out}");
        assert!(out.contains("cvm_agent_guest_component_up{name=\"confidential-data-hub\"} 0\n"), "{out}");
        assert!(out.contains("cvm_agent_guest_component_restarts_total{name=\"attestation-agent\"} 2\n"), "{out}");
        assert!(out.contains("cvm_agent_guest_component_restarts_total{name=\"confidential-data-hub\"} 5\n"), "{out}");
        assert_eq!(out.matches("# TYPE").count(), 2);
    }
}
