//! The audit trail of policy decisions: one log line per decision under the
//! `policy_audit` target, which the logging setup keeps at INFO whatever level
//! the host asks for (`agent.log=error` must not hide denials), and lock-free
//! counters per method and verdict for GetMetrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The tracing target of decision lines; logging keeps it at INFO or finer.
pub const TARGET: &str = "policy_audit";

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// The policy could not decide (evaluation error): the request is refused.
    Error,
}

impl Verdict {
    const ALL: [Verdict; 3] = [Verdict::Allow, Verdict::Deny, Verdict::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Error => "error",
        }
    }
}

macro_rules! method_names {
    ($($name:ident $snake:ident $req:path => $resp:path;)*) => {
        /// Every AgentService method, in the order of the service definition.
        pub const METHODS: &[&str] = &[$(stringify!($name),)*];
    };
}
protos::with_agent_rpcs!(method_names);

/// Decision counters, one slot per (method, verdict); never locked.
pub struct Counters {
    slots: Vec<[AtomicU64; 3]>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters { slots: METHODS.iter().map(|_| Default::default()).collect() }
    }
}

impl Counters {
    pub fn record(&self, method: &str, verdict: Verdict) {
        if let Some(slot) = METHODS.iter().position(|m| *m == method).and_then(|i| self.slots.get(i)) {
            if let Some(c) = slot.get(verdict as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn get(&self, method: &str, verdict: Verdict) -> u64 {
        METHODS
            .iter()
            .position(|m| *m == method)
            .and_then(|i| self.slots.get(i))
            .and_then(|slot| slot.get(verdict as usize))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Prometheus text exposition of every non-zero counter.
    pub fn prometheus(&self, out: &mut String) {
        out.push_str("# HELP cvm_agent_policy_decisions_total Agent API requests checked by the policy, by method and verdict.\n");
        out.push_str("# TYPE cvm_agent_policy_decisions_total counter\n");
        for (method, slot) in METHODS.iter().zip(&self.slots) {
            for v in Verdict::ALL {
                let n = slot.get(v as usize).map_or(0, |c| c.load(Ordering::Relaxed));
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "cvm_agent_policy_decisions_total{{method=\"{method}\",decision=\"{}\"}} {n}",
                        v.as_str()
                    );
                }
            }
        }
    }
}

/// The container a request is about, when it names one.
pub fn container_id(input: &serde_json::Value) -> &str {
    input.get("container_id").and_then(|v| v.as_str()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_per_method_and_verdict_and_exported_once_non_zero() {
        let c = Counters::default();
        c.record("ExecProcess", Verdict::Deny);
        c.record("ExecProcess", Verdict::Deny);
        c.record("CreateContainer", Verdict::Allow);
        c.record("NoSuchMethod", Verdict::Allow);
        assert_eq!(c.get("ExecProcess", Verdict::Deny), 2);
        assert_eq!(c.get("ExecProcess", Verdict::Allow), 0);
        let mut text = String::new();
        c.prometheus(&mut text);
        assert!(
            text.contains("cvm_agent_policy_decisions_total{method=\"ExecProcess\",decision=\"deny\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("{method=\"CreateContainer\",decision=\"allow\"} 1\n"));
        assert!(!text.contains("NoSuchMethod") && !text.contains("decision=\"error\""));
        assert_eq!(METHODS.len(), 42);
    }
}
