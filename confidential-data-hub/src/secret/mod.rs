//! Sealed secrets (guest-components' format): `sealed.<header>.<payload>.<signature>`,
//! a JWS (base64url, no padding) signed ES256 by the key named by the
//! header's `kid`, whose payload is `{"version":"0.1.0","type":…}`. Served
//! with provider `kbs`: the `vault` type (the secret named by `name`, a
//! `kbs:///` URI, is fetched from the KBS through the attestation-agent) and
//! the `envelope` type ([`envelope`]: the data key is unwrapped with a KEK the
//! KBS releases through the attestation-agent). Other providers are refused.
//!
//! The signature is always checked, against a P-256 JWK fetched from the KBS
//! (`kid` must be a `kbs:///` URI), before anything of the payload is used;
//! `skip_sealed_secret_verification` is not honoured. Never logs a secret.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use image_rs::keysource::{KeySource, KeySourceError, ResourceUri, Secret};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::Deserialize;

mod envelope;

/// Longest sealed secret accepted (they travel in pod specs).
pub const MAX_SEALED_LEN: usize = 64 * 1024;
pub const VERSION: &str = "0.1.0";

#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error("sealed secret is malformed: {0}")]
    Malformed(String),
    #[error("sealed secret signature: {0}")]
    Signature(String),
    #[error("sealed secret verification key {kid}: {source}")]
    Key { kid: String, source: KeySourceError },
    #[error("sealed secret: {0}")]
    Unsupported(String),
    #[error("sealed secret envelope: {0}")]
    Decrypt(String),
    #[error("sealed secret {name}: {source}")]
    Fetch { name: String, source: KeySourceError },
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: String,
}

/// What every payload carries; the rest depends on `type`.
#[derive(Deserialize)]
struct Payload {
    version: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    provider: String,
}

#[derive(Deserialize)]
struct VaultSecret {
    name: String,
}

#[derive(Deserialize)]
struct EcJwk {
    kty: String,
    crv: String,
    x: String,
    y: String,
}

/// Verifies `sealed` and returns the secret it points to.
pub async fn unseal(sealed: &[u8], keys: &dyn KeySource) -> Result<Secret, SealedError> {
    let malformed = |why: &str| SealedError::Malformed(why.to_owned());
    if sealed.len() > MAX_SEALED_LEN {
        return Err(malformed("longer than 64 KiB"));
    }
    let text = std::str::from_utf8(sealed).map_err(|_| malformed("not UTF-8"))?;
    let jws = text.strip_prefix("sealed.").ok_or_else(|| malformed("does not start with \"sealed.\""))?;
    let parts: Vec<&str> = jws.split('.').collect();
    let [header_b64, payload_b64, sig_b64] = parts[..] else {
        return Err(malformed("expected sealed.<header>.<payload>.<signature>"));
    };
    let decode = |what: &str, s: &str| {
        URL_SAFE_NO_PAD.decode(s).map_err(|_| SealedError::Malformed(format!("{what} is not base64url")))
    };
    let header: Header = serde_json::from_slice(&decode("header", header_b64)?)
        .map_err(|e| SealedError::Malformed(format!("header: {e}")))?;
    if header.alg != "ES256" {
        return Err(SealedError::Signature(format!("algorithm {:?} (only ES256)", header.alg)));
    }
    let key = verification_key(&header.kid, keys).await?;
    let sig = Signature::from_slice(&decode("signature", sig_b64)?)
        .map_err(|_| SealedError::Signature("not a 64-byte ES256 signature".into()))?;
    key.verify(format!("{header_b64}.{payload_b64}").as_bytes(), &sig)
        .map_err(|_| SealedError::Signature(format!("does not verify with {}", header.kid)))?;

    let payload: serde_json::Value = serde_json::from_slice(&decode("payload", payload_b64)?)
        .map_err(|e| SealedError::Malformed(format!("payload: {e}")))?;
    let common: Payload =
        Payload::deserialize(&payload).map_err(|e| SealedError::Malformed(format!("payload: {e}")))?;
    if common.version != VERSION {
        return Err(SealedError::Unsupported(format!(
            "version {:?} is not supported (only {VERSION})",
            common.version
        )));
    }
    match common.kind.as_str() {
        "vault" if common.provider == envelope::PROVIDER_KBS => {
            let vault = VaultSecret::deserialize(&payload)
                .map_err(|e| SealedError::Malformed(format!("vault payload: {e}")))?;
            let uri: ResourceUri = vault.name.parse().map_err(|e| SealedError::Malformed(format!("name: {e}")))?;
            keys.get_resource(&uri).await.map_err(|source| SealedError::Fetch { name: vault.name.clone(), source })
        }
        "envelope" if common.provider == envelope::PROVIDER_KBS => {
            let sealed = envelope::EnvelopeSecret::deserialize(&payload)
                .map_err(|e| SealedError::Malformed(format!("envelope payload: {e}")))?;
            sealed.unseal(keys).await
        }
        kind @ ("vault" | "envelope") => Err(SealedError::Unsupported(format!(
            "{kind} provider {:?} is not supported (only \"kbs\")",
            common.provider
        ))),
        other => Err(SealedError::Unsupported(format!("type {other:?} is not supported (only vault and envelope)"))),
    }
}

async fn verification_key(kid: &str, keys: &dyn KeySource) -> Result<VerifyingKey, SealedError> {
    let uri: ResourceUri = kid.parse().map_err(|_| {
        SealedError::Signature(format!("kid {kid:?} is not a kbs:/// URI (local keys are not supported)"))
    })?;
    let bytes = keys.get_resource(&uri).await.map_err(|source| SealedError::Key { kid: kid.to_owned(), source })?;
    let bad = |why: &str| SealedError::Signature(format!("verification key {kid}: {why}"));
    let jwk: EcJwk = serde_json::from_slice(&bytes).map_err(|_| bad("not an EC JWK"))?;
    if jwk.kty != "EC" || jwk.crv != "P-256" {
        return Err(bad("not a P-256 key"));
    }
    let (x, y) = (
        URL_SAFE_NO_PAD.decode(&jwk.x).map_err(|_| bad("x is not base64url"))?,
        URL_SAFE_NO_PAD.decode(&jwk.y).map_err(|_| bad("y is not base64url"))?,
    );
    if x.len() != 32 || y.len() != 32 {
        return Err(bad("coordinates are not 32 bytes"));
    }
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(4);
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| bad("not a point on P-256"))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::SigningKey;

    use super::*;

    /// Resources from a map (the KBS as the tests see it).
    pub(crate) struct MapKeys(pub HashMap<String, Vec<u8>>);

    #[async_trait::async_trait]
    impl KeySource for MapKeys {
        async fn get_resource(&self, uri: &ResourceUri) -> Result<Secret, KeySourceError> {
            self.0
                .get(&uri.resource_path())
                .map(|b| zeroize::Zeroizing::new(b.clone()))
                .ok_or_else(|| KeySourceError::NotFound { uri: uri.to_string(), detail: "no such resource".into() })
        }
    }

    pub(crate) fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    pub(crate) fn public_jwk(key: &SigningKey) -> Vec<u8> {
        let point = key.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        serde_json::to_vec(&serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&bytes[1..33]), "y": URL_SAFE_NO_PAD.encode(&bytes[33..65]),
        }))
        .unwrap()
    }

    pub(crate) fn seal(key: &SigningKey, kid: &str, payload: &serde_json::Value) -> Vec<u8> {
        let header =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&serde_json::json!({"alg": "ES256", "kid": kid})).unwrap());
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).unwrap());
        let sig: Signature = key.sign(format!("{header}.{body}").as_bytes());
        format!("sealed.{header}.{body}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes())).into_bytes()
    }

    fn vault(name: &str) -> serde_json::Value {
        serde_json::json!({"version": "0.1.0", "type": "vault", "name": name, "provider": "kbs",
                           "provider_settings": {}, "annotations": {}})
    }

    fn kbs() -> MapKeys {
        MapKeys(HashMap::from([
            ("default/sealed-secret-key/1".into(), public_jwk(&signing_key(7))),
            ("default/secret/db".into(), b"hunter2".to_vec()),
        ]))
    }

    const KID: &str = "kbs:///default/sealed-secret-key/1";

    #[tokio::test]
    async fn vault_secret_signed_by_the_kbs_key_unseals() {
        let sealed = seal(&signing_key(7), KID, &vault("kbs:///default/secret/db"));
        assert_eq!(unseal(&sealed, &kbs()).await.unwrap().as_slice(), b"hunter2");
    }

    #[tokio::test]
    async fn refusals_name_the_cause() {
        let keys = kbs();
        let err = |s: Vec<u8>| {
            let keys = &keys;
            async move { unseal(&s, keys).await.unwrap_err().to_string() }
        };
        let e = err(seal(&signing_key(8), KID, &vault("kbs:///default/secret/db"))).await;
        assert!(e.contains("does not verify with kbs:///default/sealed-secret-key/1"), "{e}");
        let mut tampered = seal(&signing_key(7), KID, &vault("kbs:///default/secret/db"));
        let body_at = tampered.iter().position(|b| *b == b'.').unwrap() + 1;
        let body_at = body_at + tampered[body_at..].iter().position(|b| *b == b'.').unwrap() + 2;
        tampered[body_at] ^= 1;
        assert!(err(tampered).await.contains("sealed secret"), "tampered payload");
        let e = err(seal(&signing_key(7), "/etc/key.jwk", &vault("kbs:///default/secret/db"))).await;
        assert!(e.contains("not a kbs:/// URI"), "{e}");
        let e = err(seal(&signing_key(7), "kbs:///default/sealed-secret-key/9", &vault("x"))).await;
        assert!(e.contains("verification key kbs:///default/sealed-secret-key/9") && e.contains("not found"), "{e}");
        let envelope = serde_json::json!({"version": "0.1.0", "type": "envelope", "provider": "aliyun"});
        let e = err(seal(&signing_key(7), KID, &envelope)).await;
        assert!(e.contains("not supported") && e.contains("envelope"), "{e}");
        let e = err(seal(&signing_key(7), KID, &vault("kbs:///default/secret/none"))).await;
        assert!(e.contains("kbs:///default/secret/none") && e.contains("not found"), "{e}");
        for (bad, want) in [
            (b"plain.a.b.c".to_vec(), "sealed."),
            (b"sealed.a.b".to_vec(), "expected sealed."),
            (b"sealed.!!.b.c".to_vec(), "header is not base64url"),
            (vec![b'x'; MAX_SEALED_LEN + 1], "64 KiB"),
        ] {
            let e = err(bad).await;
            assert!(e.contains(want), "{e}");
        }
    }
}
