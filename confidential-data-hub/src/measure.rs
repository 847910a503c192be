//! Records each successful pull in the TEE's runtime measurements: the
//! attestation-agent's ExtendRuntimeMeasurement with guest-components' event
//! (domain "github.com/confidential-containers", operation "PullImage",
//! content `{"image":"<url>", "digest":"<manifest digest>"}`), so a verifier
//! replaying the event log sees which images this guest runs.
//!
//! A platform or agent without runtime measurement is tolerated (logged);
//! any other failure is an error, so an unmeasured image is never reported
//! as pulled. No attestation-agent socket at all: skipped with a warning, as
//! guest-components does.

use std::path::PathBuf;
use std::time::Duration;

use protos::attestation_agent::ExtendRuntimeMeasurementRequest;
use protos::attestation_agent_ttrpc::AttestationAgentServiceClient;

pub const DOMAIN: &str = "github.com/confidential-containers";
pub const OPERATION: &str = "PullImage";
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("attestation-agent at {socket} is unreachable: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("attestation-agent refused to extend the runtime measurement: {0}")]
    Refused(String),
}

/// What happened to one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    Extended,
    /// The platform, agent or its configuration has no runtime measurement.
    NotSupported,
    /// No attestation-agent socket exists.
    NoAgent,
}

/// guest-components' event content for a pull, byte for byte (their format
/// string, with the values JSON-escaped).
pub fn pull_event_content(image: &str, digest: &str) -> String {
    // A JSON string value displays as its escaped, quoted serialization.
    let (image, digest) = (serde_json::Value::from(image), serde_json::Value::from(digest));
    format!(r#"{{"image":{image}, "digest":{digest}}}"#)
}

pub struct Measurer {
    socket: String,
}

impl Measurer {
    pub fn new(socket: impl Into<String>) -> Self {
        Measurer { socket: socket.into() }
    }

    pub async fn pull_image(&self, image: &str, digest: &str) -> Result<Measured, MeasureError> {
        let path = PathBuf::from(self.socket.strip_prefix("unix://").unwrap_or(&self.socket));
        if !path.exists() {
            return Ok(Measured::NoAgent);
        }
        let unreachable = |reason: String| MeasureError::Unreachable { socket: self.socket.clone(), reason };
        let client = match tokio::time::timeout(TIMEOUT, ttrpc::r#async::Client::connect(&self.socket)).await {
            Ok(Ok(c)) => AttestationAgentServiceClient::new(c),
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable(format!("no answer within {TIMEOUT:?}"))),
        };
        let req = ExtendRuntimeMeasurementRequest {
            Domain: DOMAIN.into(),
            Operation: OPERATION.into(),
            Content: pull_event_content(image, digest),
            ..Default::default()
        };
        let ctx = ttrpc::context::with_timeout(TIMEOUT.as_nanos() as i64);
        match client.extend_runtime_measurement(ctx, &req).await {
            Ok(_) => Ok(Measured::Extended),
            Err(ttrpc::Error::RpcStatus(s)) if is_not_supported(s.code(), s.message()) => Ok(Measured::NotSupported),
            Err(ttrpc::Error::RpcStatus(s)) => Err(MeasureError::Refused(format!("{:?}: {}", s.code(), s.message()))),
            Err(e) => Err(unreachable(e.to_string())),
        }
    }
}

/// UNIMPLEMENTED (platform without registers), NOT_FOUND (an agent without
/// the method), or our agent started without its event log.
fn is_not_supported(code: ttrpc::Code, message: &str) -> bool {
    matches!(code, ttrpc::Code::UNIMPLEMENTED | ttrpc::Code::NOT_FOUND)
        || (code == ttrpc::Code::INVALID_ARGUMENT && message.contains("needs the daemon's event log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_content_is_guest_components_shape() {
        assert_eq!(
            pull_event_content("quay.io/x/y:1", "sha256:ab"),
            r#"{"image":"quay.io/x/y:1", "digest":"sha256:ab"}"#
        );
        assert_eq!(pull_event_content("a\"b", "d"), r#"{"image":"a\"b", "digest":"d"}"#);
    }

    #[test]
    fn only_missing_measurement_is_tolerated() {
        assert!(is_not_supported(ttrpc::Code::UNIMPLEMENTED, "sample: extending runtime measurement registers"));
        assert!(is_not_supported(ttrpc::Code::NOT_FOUND, "method not found"));
        assert!(is_not_supported(
            ttrpc::Code::INVALID_ARGUMENT,
            "ExtendRuntimeMeasurement: runtime measurement needs the daemon's event log"
        ));
        assert!(!is_not_supported(ttrpc::Code::INVALID_ARGUMENT, "content contains control characters"));
        assert!(!is_not_supported(ttrpc::Code::INTERNAL, "event log corrupt"));
    }

    #[tokio::test]
    async fn no_agent_socket_is_skipped() {
        let m = Measurer::new("unix:///nonexistent/cdh-test/aa.sock");
        assert_eq!(m.pull_image("a/b:1", "sha256:00").await.unwrap(), Measured::NoAgent);
    }
}
