//! cosign signatures (the `sigstoreSigned` requirement with a public key):
//! an OCI manifest tagged `sha256-<manifest hex>.sig` in the image's
//! repository (or found through the OCI referrers API), whose layers are
//! simple-signing payloads (`application/vnd.dev.cosign.simplesigning.v1+json`)
//! with the ECDSA P-256 / SHA-256 signature, base64 DER, in the
//! `dev.cosignproject.cosign/signature` annotation.
//!
//! Fetched through our registry client with size limits and digest checks;
//! a signature is trusted only after a policy key verifies it over the exact
//! payload bytes. Never trusts anything in the manifest but those bytes.

use base64::Engine as _;
use oci_spec::image::{ImageIndex, ImageManifest};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

use super::payload::PAYLOAD_LIMIT;
use crate::digest::Digest;
use crate::registry::config::Source;
use crate::registry::{Registry, RegistryError, MANIFEST_LIMIT, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST};

pub const MT_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
/// artifactType of cosign signatures attached as OCI 1.1 referrers.
pub const ARTIFACT_TYPE_SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// Most signature layers / referrer manifests considered for one image.
pub const MAX_SIGNATURES: usize = 16;
/// Largest base64 signature annotation (a DER P-256 signature is ≤ 72 bytes).
const SIGNATURE_B64_LIMIT: usize = 1024;

/// A trusted cosign public key.
pub struct CosignKey {
    pub name: String,
    key: VerifyingKey,
}

/// Parses PEM SubjectPublicKeyInfo ECDSA P-256 public keys.
pub fn parse_public_keys(blobs: &[(String, Vec<u8>)]) -> Result<Vec<CosignKey>, String> {
    blobs
        .iter()
        .map(|(name, bytes)| {
            let text = std::str::from_utf8(bytes).map_err(|_| format!("public key {name} is not PEM text"))?;
            let key = VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| {
                format!("public key {name} is not an ECDSA P-256 public key in PEM SubjectPublicKeyInfo form: {e}")
            })?;
            Ok(CosignKey { name: name.clone(), key })
        })
        .collect()
}

/// One signature as found in the registry, not yet verified.
#[derive(Debug, Clone)]
pub struct CosignSignature {
    /// Where it came from (manifest and layer), for messages.
    pub origin: String,
    pub payload: Vec<u8>,
    pub signature_b64: Option<String>,
}

impl CosignSignature {
    /// Verifies the signature over the payload with one of `keys`; returns the key's name.
    pub fn verify(&self, keys: &[CosignKey]) -> Result<String, String> {
        let b64 = self.signature_b64.as_deref().ok_or_else(|| format!("no {ANNOTATION_SIGNATURE} annotation"))?;
        if b64.len() > SIGNATURE_B64_LIMIT {
            return Err("signature annotation is over the size limit".into());
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("signature annotation is not base64: {e}"))?;
        let sig = Signature::from_der(&der).map_err(|_| "signature is not a DER ECDSA P-256 signature".to_string())?;
        for k in keys {
            if k.key.verify(&self.payload, &sig).is_ok() {
                return Ok(k.name.clone());
            }
        }
        Err(format!(
            "signature does not verify with the trusted key{} {}",
            if keys.len() == 1 { "" } else { "s" },
            keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(", ")
        ))
    }
}

/// The `.sig` tag cosign uses for `digest`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// Finds the cosign signatures of `digest` in `source`: referrers first (where
/// the registry supports the API), then the `.sig` tag. A signature that
/// cannot be fetched or parsed is reported as such, never skipped silently.
pub async fn fetch_signatures(
    registry: &Registry,
    source: &Source,
    digest: &Digest,
) -> Result<Vec<CosignSignature>, String> {
    let mut manifests: Vec<(String, Vec<u8>)> = Vec::new();
    match registry.get_limited(source, &format!("referrers/{digest}"), &[MT_OCI_INDEX], MANIFEST_LIMIT).await {
        Ok((bytes, _)) => match serde_json::from_slice::<ImageIndex>(&bytes) {
            Ok(index) => {
                for desc in index
                    .manifests()
                    .iter()
                    .filter(|d| d.artifact_type().as_ref().is_some_and(|t| t.to_string() == ARTIFACT_TYPE_SIG))
                    .take(MAX_SIGNATURES)
                {
                    let d = desc.digest().to_string();
                    let bytes = fetch_manifest(registry, source, &d).await?;
                    if Digest::of(&bytes).to_string() != d {
                        return Err(format!("referrer manifest {d}: digest mismatch"));
                    }
                    manifests.push((format!("referrer {d}"), bytes));
                }
            }
            Err(e) => tracing::debug!(error = %e, "referrers answer is not an image index; using the .sig tag"),
        },
        Err(e) => tracing::debug!(error = %e, "referrers API unavailable; using the .sig tag"),
    }
    let tag = signature_tag(digest);
    match fetch_manifest(registry, source, &tag).await {
        Ok(bytes) => manifests.push((format!("tag {tag}"), bytes)),
        Err(e) if e.starts_with("not found") => {}
        Err(e) => return Err(format!("{tag}: {e}")),
    }
    let mut out = Vec::new();
    for (origin, bytes) in manifests {
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| format!("{origin}: not an image manifest: {e}"))?;
        for (i, layer) in manifest.layers().iter().enumerate().take(MAX_SIGNATURES) {
            let origin = format!("{origin} layer {i}");
            if layer.media_type().to_string() != MT_SIMPLE_SIGNING {
                out.push(CosignSignature {
                    origin: format!("{origin} (media type {})", layer.media_type()),
                    payload: Vec::new(),
                    signature_b64: None,
                });
                continue;
            }
            if layer.size() > PAYLOAD_LIMIT as u64 {
                return Err(format!(
                    "{origin}: payload of {} bytes is over the {PAYLOAD_LIMIT}-byte limit",
                    layer.size()
                ));
            }
            let digest: Digest =
                layer.digest().to_string().parse().map_err(|e| format!("{origin}: layer digest: {e}"))?;
            let (payload, _) = registry
                .get_limited(source, &format!("blobs/{digest}"), &[], layer.size())
                .await
                .map_err(|e| format!("{origin}: {e}"))?;
            if payload.len() as u64 != layer.size() || Digest::of(&payload) != digest {
                return Err(format!("{origin}: payload does not match its descriptor (size or digest)"));
            }
            let signature_b64 = layer.annotations().as_ref().and_then(|a| a.get(ANNOTATION_SIGNATURE)).cloned();
            out.push(CosignSignature { origin, payload, signature_b64 });
        }
    }
    Ok(out)
}

async fn fetch_manifest(registry: &Registry, source: &Source, reference: &str) -> Result<Vec<u8>, String> {
    match registry
        .get_limited(source, &format!("manifests/{reference}"), &[MT_OCI_MANIFEST, MT_DOCKER_MANIFEST], MANIFEST_LIMIT)
        .await
    {
        Ok((bytes, _)) => Ok(bytes),
        Err(RegistryError::NotFound { .. }) => Err("not found".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A fixed P-256 key pair (made with openssl for this test only).
    const PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9cFVLmifJOs9y5Yvhfk0+3ZaUIRu
/Yu5ysJBviCDiq4if7UTdmN9ou4zG/WX4DDZY+Hjb5xG/XiurDYqrm8JfQ==
-----END PUBLIC KEY-----";

    #[test]
    fn refuses_keys_that_are_not_p256_spki() {
        assert!(parse_public_keys(&[("k".into(), PUB.as_bytes().to_vec())]).is_ok());
        for bad in [&b"garbage"[..], b"\xff\xfe", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"] {
            let err = parse_public_keys(&[("k".into(), bad.to_vec())]).err().unwrap();
            assert!(err.contains("public key k"), "{err}");
        }
    }

    #[test]
    fn refuses_malformed_signature_annotations() {
        let keys = parse_public_keys(&[("k".into(), PUB.as_bytes().to_vec())]).unwrap();
        let sig = |b64: Option<&str>| CosignSignature {
            origin: "t".into(),
            payload: b"{}".to_vec(),
            signature_b64: b64.map(str::to_owned),
        };
        assert!(sig(None).verify(&keys).unwrap_err().contains("no dev.cosignproject.cosign/signature"));
        assert!(sig(Some("!!!")).verify(&keys).unwrap_err().contains("not base64"));
        assert!(sig(Some("AAAA")).verify(&keys).unwrap_err().contains("not a DER"));
        assert!(sig(Some(&"A".repeat(5000))).verify(&keys).unwrap_err().contains("size limit"));
        // A well-formed DER signature (r = s = 1) that does not verify.
        assert!(sig(Some("MAYCAQECAQE=")).verify(&keys).unwrap_err().contains("does not verify"));
    }
}
