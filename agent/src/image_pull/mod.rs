//! Guest image pull for kata's `image_guest_pull` storages: the agent asks the
//! confidential data hub (guest-components' `api.ImagePullService`, over
//! ttrpc on a unix socket) to pull an image into a bundle directory, as kata's
//! agent does. The data hub verifies, decrypts and mounts `<bundle>/rootfs`;
//! the agent never fetches or unpacks anything itself.
//!
//! [`ImagePuller`] is the seam: the storage driver (`sandbox::guest_pull`) is
//! tested with a recording double, the real client is [`cdh::CdhPuller`].
//! A refusal keeps the data hub's status code and message: the host must be
//! able to tell a signature refusal from a registry or key-broker outage.

pub mod cdh;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use cdh::CdhPuller;

/// kata's default socket of the confidential data hub.
pub const DEFAULT_CDH_ADDR: &str = "unix:///run/confidential-containers/cdh.sock";
/// kata's default `agent.image_pull_timeout` (1200 s).
pub const DEFAULT_IMAGE_PULL_TIMEOUT: Duration = Duration::from_secs(1200);

/// A pull that did not produce a bundle: the status code as the data hub (or
/// the connection to it) gave it, and a message naming the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PullError {
    pub code: ttrpc::Code,
    pub message: String,
}

/// Pulls `image_url` into `bundle_path` (which then holds `rootfs/` and
/// `config.json`); answers the manifest digest.
#[async_trait::async_trait]
pub trait ImagePuller: Send + Sync {
    async fn pull_image(&self, image_url: &str, bundle_path: &str) -> Result<String, PullError>;
}

/// Outcomes counted by GetMetrics, one counter per ttrpc code that a pull can
/// end with (`ok` for a pulled image).
const OUTCOMES: [(&str, ttrpc::Code); 9] = [
    ("ok", ttrpc::Code::OK),
    ("invalid_argument", ttrpc::Code::INVALID_ARGUMENT),
    ("not_found", ttrpc::Code::NOT_FOUND),
    ("permission_denied", ttrpc::Code::PERMISSION_DENIED),
    ("unavailable", ttrpc::Code::UNAVAILABLE),
    ("deadline_exceeded", ttrpc::Code::DEADLINE_EXCEEDED),
    ("already_exists", ttrpc::Code::ALREADY_EXISTS),
    ("failed_precondition", ttrpc::Code::FAILED_PRECONDITION),
    ("internal", ttrpc::Code::INTERNAL),
];

/// Guest pull counters: pulls by outcome and the time spent pulling. The
/// data hub's PullImage answers no byte count, so none is kept.
#[derive(Debug, Default)]
pub struct PullCounters {
    /// Indexed as [`OUTCOMES`]; other codes count as `internal`.
    by_outcome: [AtomicU64; OUTCOMES.len()],
    duration_micros: AtomicU64,
}

impl PullCounters {
    pub fn record(&self, result: &Result<String, PullError>, took: Duration) {
        let code = result.as_ref().map_or_else(|e| e.code, |_| ttrpc::Code::OK);
        let slot = OUTCOMES.iter().position(|(_, c)| *c == code).and_then(|i| self.by_outcome.get(i));
        if let Some(count) = slot.or(self.by_outcome.last()) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.duration_micros.fetch_add(took.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    pub fn pulls(&self, outcome: &str) -> u64 {
        OUTCOMES
            .iter()
            .position(|(n, _)| *n == outcome)
            .and_then(|i| self.by_outcome.get(i))
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    /// Appends the counters in Prometheus text format.
    pub fn prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let name = "cvm_agent_guest_pulls_total";
        let _ = write!(
            out,
            "# HELP {name} Guest image pulls (image_guest_pull storages) by outcome.\n# TYPE {name} counter\n"
        );
        for ((outcome, _), count) in OUTCOMES.iter().zip(&self.by_outcome) {
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {}", count.load(Ordering::Relaxed));
        }
        let name = "cvm_agent_guest_pull_duration_seconds_sum";
        let secs = self.duration_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = write!(
            out,
            "# HELP {name} Time spent in guest image pulls, all outcomes.\n# TYPE {name} counter\n{name} {secs:.6}\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_by_code_and_unknown_codes_as_internal() {
        let c = PullCounters::default();
        c.record(&Ok("sha256:x".into()), Duration::from_millis(1500));
        let refused = PullError { code: ttrpc::Code::PERMISSION_DENIED, message: "signature".into() };
        c.record(&Err(refused), Duration::from_millis(500));
        c.record(&Err(PullError { code: ttrpc::Code::DATA_LOSS, message: String::new() }), Duration::ZERO);
        assert_eq!((c.pulls("ok"), c.pulls("permission_denied"), c.pulls("internal")), (1, 1, 1));
        let mut out = String::new();
        c.prometheus(&mut out);
        assert!(out.contains("cvm_agent_guest_pulls_total{outcome=\"ok\"} 1\n"), "{out}");
        assert!(out.contains("cvm_agent_guest_pull_duration_seconds_sum 2.000000\n"), "{out}");
    }
}
