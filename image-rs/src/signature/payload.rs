//! The signed payload of containers-signature(5), shared by simple signing
//! (`"atomic container signature"`) and cosign (`"cosign container image
//! signature"`):
//!
//! ```text
//! {"critical": {"type": …, "image": {"docker-manifest-digest": "sha256:…"},
//!               "identity": {"docker-reference": "host/repo:tag"}},
//!  "optional": {…}}
//! ```
//!
//! `critical` is parsed strictly (an unknown member there means the signer
//! meant something we do not understand, so the signature is refused);
//! `optional` is free-form and ignored.

use serde::Deserialize;

use super::reference::DockerRef;
use crate::digest::Digest;

/// Largest payload we parse.
pub const PAYLOAD_LIMIT: usize = 64 * 1024;

pub const SIMPLE_SIGNING_TYPE: &str = "atomic container signature";
pub const COSIGN_TYPE: &str = "cosign container image signature";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    critical: Critical,
    #[serde(default)]
    #[allow(dead_code)]
    optional: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    #[serde(rename = "type")]
    kind: String,
    image: Image,
    identity: Identity,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    manifest_digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

/// What a verified signature claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedClaim {
    pub manifest_digest: Digest,
    pub identity: DockerRef,
}

/// Parses a payload whose cryptographic signature has already been checked.
pub fn parse_payload(bytes: &[u8], expected_type: &str) -> Result<SignedClaim, String> {
    if bytes.len() > PAYLOAD_LIMIT {
        return Err(format!("payload is {} bytes, over the {PAYLOAD_LIMIT}-byte limit", bytes.len()));
    }
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| format!("payload is not a valid signature payload: {e}"))?;
    if raw.critical.kind != expected_type {
        return Err(format!("payload type is {:?}, expected {expected_type:?}", raw.critical.kind));
    }
    let manifest_digest =
        raw.critical.image.manifest_digest.parse().map_err(|e| format!("payload manifest digest: {e}"))?;
    let identity =
        DockerRef::parse(&raw.critical.identity.docker_reference).map_err(|e| format!("payload identity: {e}"))?;
    Ok(SignedClaim { manifest_digest, identity })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn parses_simple_signing_and_cosign_payloads() {
        let p = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"h:5000/app:1"}},"image":{{"docker-manifest-digest":"{D}"}},"type":"atomic container signature"}},"optional":{{"creator":"x","timestamp":1}}}}"#
        );
        let c = parse_payload(p.as_bytes(), SIMPLE_SIGNING_TYPE).unwrap();
        assert_eq!((c.identity.to_string().as_str(), c.manifest_digest.to_string().as_str()), ("h:5000/app:1", D));
        let p = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"h:5000/app"}},"image":{{"docker-manifest-digest":"{D}"}},"type":"cosign container image signature"}},"optional":null}}"#
        );
        assert!(parse_payload(p.as_bytes(), COSIGN_TYPE).unwrap().identity.is_name_only());
        let err = parse_payload(p.as_bytes(), SIMPLE_SIGNING_TYPE).unwrap_err();
        assert!(err.contains("payload type"), "{err}");
    }

    #[test]
    fn refuses_unknown_critical_members_and_garbage() {
        let extra = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"h/app:1"}},"image":{{"docker-manifest-digest":"{D}"}},"type":"atomic container signature","extra":1}}}}"#
        );
        assert!(parse_payload(extra.as_bytes(), SIMPLE_SIGNING_TYPE).unwrap_err().contains("unknown field"));
        let md5 = r#"{"critical":{"identity":{"docker-reference":"h/app:1"},"image":{"docker-manifest-digest":"md5:00"},"type":"atomic container signature"}}"#;
        assert!(parse_payload(md5.as_bytes(), SIMPLE_SIGNING_TYPE).unwrap_err().contains("digest"));
        for garbage in [&b"\xff\xfe"[..], b"[]", b"{}", b"null", b"{\"critical\":1}"] {
            assert!(parse_payload(garbage, SIMPLE_SIGNING_TYPE).is_err());
        }
        let big = vec![b' '; PAYLOAD_LIMIT + 1];
        assert!(parse_payload(&big, SIMPLE_SIGNING_TYPE).unwrap_err().contains("limit"));
    }
}
