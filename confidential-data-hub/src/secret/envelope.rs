//! Envelope sealed secrets (guest-components' `type: "envelope"` payload):
//! `{Enc(KEK, DEK), Enc(DEK, secret)}` with the fields `key_id`,
//! `encrypted_key`, `encrypted_data`, `wrap_type`, `iv`, `provider`,
//! `provider_settings` and `annotations` (byte fields base64, standard
//! alphabet with padding). `encrypted_data` is AES-256-GCM of the secret under
//! the DEK with the 12-byte `iv`, tag appended (`wrap_type` `"A256GCM"`).
//!
//! Provider `kbs` (ours: guest-components' kbs plugin only reads vault
//! secrets): `key_id` is a `kbs:///` URI naming a 32-byte AES-256 KEK that the
//! KBS releases through the attestation-agent (the TEE key stays in the
//! agent); `encrypted_key` is AES-256-GCM of the 32-byte DEK under that KEK,
//! tag appended, with its 12-byte IV in `annotations.iv` (base64, as
//! guest-components' aliyun provider carries its IV).
//!
//! Never returns plaintext whose GCM tag did not verify, never fetches the
//! KEK before every field has been decoded and checked, and never logs or
//! formats key or secret bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cvm_crypto::aead::{self, IV_LEN, KEY_LEN, TAG_LEN};
use cvm_crypto::CryptoError;
use image_rs::keysource::{KeySource, ResourceUri, Secret};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::SealedError;

/// The one provider served: the KEK is a KBS resource.
pub const PROVIDER_KBS: &str = "kbs";
/// guest-components' `WrapType::Aes256Gcm` (RFC 7518 5.2.6 name).
pub const WRAP_A256GCM: &str = "A256GCM";

/// The envelope fields of a sealed secret's payload, as guest-components
/// names them. Unknown fields are ignored, as serde does upstream.
#[derive(Deserialize)]
pub(super) struct EnvelopeSecret {
    key_id: String,
    encrypted_key: String,
    encrypted_data: String,
    wrap_type: String,
    iv: String,
    provider: String,
    #[serde(default)]
    #[allow(dead_code)] // read by other providers upstream; nothing for kbs
    provider_settings: Map<String, Value>,
    #[serde(default)]
    annotations: Map<String, Value>,
}

/// Everything decoded and checked, before any key is fetched.
struct Decoded {
    kek_uri: ResourceUri,
    wrapped_dek: Vec<u8>,
    dek_iv: Vec<u8>,
    ciphertext: Vec<u8>,
    data_iv: Vec<u8>,
}

impl EnvelopeSecret {
    /// Fetches the KEK, unwraps the DEK and decrypts the secret.
    pub(super) async fn unseal(&self, keys: &dyn KeySource) -> Result<Secret, SealedError> {
        let d = self.decode()?;
        let kek = keys
            .get_resource(&d.kek_uri)
            .await
            .map_err(|source| SealedError::Fetch { name: self.key_id.clone(), source })?;
        if kek.len() != KEY_LEN {
            return Err(SealedError::Decrypt(format!(
                "key {} is {} bytes, not an AES-256 key ({KEY_LEN} bytes)",
                self.key_id,
                kek.len()
            )));
        }
        let dek = aead::open_combined(&kek, &d.dek_iv, &d.wrapped_dek, b"").map_err(|e| match e {
            CryptoError::Authentication => SealedError::Decrypt(format!(
                "encrypted_key does not open under {} (a different key, or tampered)",
                self.key_id
            )),
            other => SealedError::Decrypt(format!("encrypted_key: {other}")),
        })?;
        if dek.len() != KEY_LEN {
            return Err(SealedError::Decrypt(format!(
                "the unwrapped data key is {} bytes, not an AES-256 key ({KEY_LEN} bytes)",
                dek.len()
            )));
        }
        aead::open_combined(&dek, &d.data_iv, &d.ciphertext, b"").map_err(|e| match e {
            CryptoError::Authentication => {
                SealedError::Decrypt("encrypted_data does not open with its data key (tampered or truncated)".into())
            }
            other => SealedError::Decrypt(format!("encrypted_data: {other}")),
        })
    }

    fn decode(&self) -> Result<Decoded, SealedError> {
        if self.provider != PROVIDER_KBS {
            return Err(SealedError::Unsupported(format!(
                "envelope provider {:?} is not supported (only \"kbs\")",
                self.provider
            )));
        }
        if self.wrap_type != WRAP_A256GCM {
            return Err(SealedError::Unsupported(format!(
                "envelope wrap_type {:?} is not supported (only \"A256GCM\")",
                self.wrap_type
            )));
        }
        let kek_uri: ResourceUri = self
            .key_id
            .parse()
            .map_err(|e| SealedError::Malformed(format!("key_id {:?} is not a kbs:/// URI: {e}", self.key_id)))?;
        let dek_iv = match self.annotations.get("iv") {
            Some(Value::String(s)) => base64_field("annotations.iv", s)?,
            Some(_) => return Err(SealedError::Malformed("annotations.iv is not a string".into())),
            None => {
                return Err(SealedError::Malformed(
                    "annotations.iv (the IV of encrypted_key) is missing for provider \"kbs\"".into(),
                ))
            }
        };
        let decoded = Decoded {
            kek_uri,
            wrapped_dek: base64_field("encrypted_key", &self.encrypted_key)?,
            dek_iv,
            ciphertext: base64_field("encrypted_data", &self.encrypted_data)?,
            data_iv: base64_field("iv", &self.iv)?,
        };
        for (what, iv) in [("iv", &decoded.data_iv), ("annotations.iv", &decoded.dek_iv)] {
            if iv.len() != IV_LEN {
                return Err(SealedError::Malformed(format!("{what} is {} bytes, A256GCM needs {IV_LEN}", iv.len())));
            }
        }
        if decoded.wrapped_dek.len() != KEY_LEN + TAG_LEN {
            return Err(SealedError::Malformed(format!(
                "encrypted_key is {} bytes, a wrapped AES-256 key with its tag is {}",
                decoded.wrapped_dek.len(),
                KEY_LEN + TAG_LEN
            )));
        }
        if decoded.ciphertext.len() < TAG_LEN {
            return Err(SealedError::Malformed(format!(
                "encrypted_data is {} bytes, shorter than its {TAG_LEN}-byte tag (truncated)",
                decoded.ciphertext.len()
            )));
        }
        Ok(decoded)
    }
}

fn base64_field(what: &str, value: &str) -> Result<Vec<u8>, SealedError> {
    STANDARD.decode(value).map_err(|e| SealedError::Malformed(format!("{what} is not base64: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::super::tests::{public_jwk, seal, signing_key, MapKeys};
    use super::super::unseal;
    use super::*;

    /// An envelope payload sealing `secret` under a fresh DEK wrapped by `kek`,
    /// as a guest-components client would write it for provider kbs.
    pub(crate) fn envelope(kek: &[u8], key_id: &str, secret: &[u8]) -> Value {
        let dek = [0x5au8; 32];
        let data = aead::seal(&dek, secret, b"").unwrap();
        let wrapped = aead::seal(kek, &dek, b"").unwrap();
        serde_json::json!({
            "version": "0.1.0", "type": "envelope",
            "key_id": key_id,
            "encrypted_key": STANDARD.encode(wrapped.combined()),
            "encrypted_data": STANDARD.encode(data.combined()),
            "wrap_type": "A256GCM",
            "iv": STANDARD.encode(data.iv),
            "provider": "kbs",
            "provider_settings": {},
            "annotations": {"iv": STANDARD.encode(wrapped.iv)},
        })
    }

    const KID: &str = "kbs:///default/sealed-secret-key/1";
    const KEK_ID: &str = "kbs:///default/kek/1";
    const KEK: [u8; 32] = [0x42; 32];

    fn kbs() -> MapKeys {
        MapKeys(HashMap::from([
            ("default/sealed-secret-key/1".into(), public_jwk(&signing_key(7))),
            ("default/kek/1".into(), KEK.to_vec()),
            ("default/kek/short".into(), vec![1; 16]),
            ("default/kek/other".into(), vec![0x43; 32]),
        ]))
    }

    async fn unseal_payload(payload: &Value) -> Result<Secret, SealedError> {
        unseal(&seal(&signing_key(7), KID, payload), &kbs()).await
    }

    #[tokio::test]
    async fn envelope_opens_with_the_kek_from_the_kbs() {
        let got = unseal_payload(&envelope(&KEK, KEK_ID, b"db password: hunter2")).await.unwrap();
        assert_eq!(got.as_slice(), b"db password: hunter2");
        let empty = unseal_payload(&envelope(&KEK, KEK_ID, b"")).await.unwrap();
        assert!(empty.is_empty());
    }

    #[tokio::test]
    async fn envelope_signature_is_checked_before_any_key_is_used() {
        let sealed = seal(&signing_key(8), KID, &envelope(&KEK, KEK_ID, b"x"));
        let e = unseal(&sealed, &kbs()).await.unwrap_err().to_string();
        assert!(e.contains("does not verify with"), "{e}");
    }

    /// Edits one field of a good envelope; the refusal must name `want`.
    async fn refusal(edit: impl FnOnce(&mut Map<String, Value>)) -> SealedError {
        let mut payload = envelope(&KEK, KEK_ID, b"top secret");
        edit(payload.as_object_mut().unwrap());
        let err = unseal_payload(&payload).await.expect_err("a mangled envelope must be refused");
        assert!(!err.to_string().contains("top secret"));
        err
    }

    type Edit = Box<dyn FnOnce(&mut Map<String, Value>)>;

    /// Sets `field` to `value`.
    fn set(field: &'static str, value: impl Into<Value>) -> Edit {
        let value = value.into();
        Box::new(move |m| drop(m.insert(field.into(), value)))
    }

    /// Edits the decoded bytes of the base64 `field` (a re-signed tampering).
    fn bytes(field: &'static str, edit: fn(&mut Vec<u8>)) -> Edit {
        Box::new(move |m| {
            let mut b = STANDARD.decode(m[field].as_str().unwrap()).unwrap();
            edit(&mut b);
            m.insert(field.into(), STANDARD.encode(b).into());
        })
    }

    #[tokio::test]
    async fn mangled_envelopes_are_refused_naming_the_cause() {
        let b64 = |b: &[u8]| STANDARD.encode(b);
        let cases: Vec<(&str, Edit, &str)> = vec![
            ("bad base64 key", set("encrypted_key", "!!!"), "encrypted_key is not base64"),
            ("bad base64 data", set("encrypted_data", "a=b"), "encrypted_data is not base64"),
            ("bad base64 iv", set("iv", "@@@@"), "iv is not base64"),
            ("short iv", set("iv", b64(&[0; 8])), "iv is 8 bytes, A256GCM needs 12"),
            ("no key iv", set("annotations", serde_json::json!({})), "annotations.iv"),
            ("key iv not a string", set("annotations", serde_json::json!({"iv": 5})), "annotations.iv is not a string"),
            (
                "short key iv",
                set("annotations", serde_json::json!({"iv": b64(&[0; 16])})),
                "annotations.iv is 16 bytes",
            ),
            ("truncated data", bytes("encrypted_data", |d| d.truncate(d.len() - 3)), "encrypted_data does not open"),
            ("data shorter than a tag", set("encrypted_data", b64(&[1; 5])), "shorter than its 16-byte tag"),
            ("wrong tag", bytes("encrypted_data", |d| *d.last_mut().unwrap() ^= 1), "encrypted_data does not open"),
            (
                "flipped wrapped key",
                bytes("encrypted_key", |k| k[0] ^= 0x80),
                "encrypted_key does not open under kbs:///default/kek/1",
            ),
            ("truncated wrapped key", set("encrypted_key", b64(&[0; 40])), "encrypted_key is 40 bytes"),
            (
                "wrong kek",
                set("key_id", "kbs:///default/kek/other"),
                "encrypted_key does not open under kbs:///default/kek/other",
            ),
            ("short kek", set("key_id", "kbs:///default/kek/short"), "kbs:///default/kek/short is 16 bytes"),
            ("missing kek", set("key_id", "kbs:///default/kek/none"), "kbs:///default/kek/none"),
            ("local key id", set("key_id", "/etc/kek"), "key_id \"/etc/kek\" is not a kbs:/// URI"),
            ("ctr", set("wrap_type", "A256CTR"), "wrap_type \"A256CTR\" is not supported"),
            ("aliyun", set("provider", "aliyun"), "provider \"aliyun\" is not supported"),
            ("ehsm", set("provider", "ehsm"), "provider \"ehsm\" is not supported"),
            ("no key_id", Box::new(|m| drop(m.remove("key_id"))), "missing field `key_id`"),
            ("wrap_type a number", set("wrap_type", 1), "envelope payload: invalid type"),
        ];
        for (what, edit, want) in cases {
            let e = refusal(edit).await.to_string();
            assert!(e.contains(want), "{what}: {e}");
        }
    }

    #[tokio::test]
    async fn refusals_map_to_distinct_kinds() {
        let e = refusal(|m| drop(m.insert("provider".into(), "sev".into()))).await;
        assert!(matches!(e, SealedError::Unsupported(_)), "{e}");
        let e = refusal(|m| drop(m.insert("iv".into(), "??".into()))).await;
        assert!(matches!(e, SealedError::Malformed(_)), "{e}");
        let e = refusal(|m| drop(m.insert("key_id".into(), "kbs:///default/kek/other".into()))).await;
        assert!(matches!(e, SealedError::Decrypt(_)), "{e}");
        let e = refusal(|m| drop(m.insert("key_id".into(), "kbs:///default/kek/none".into()))).await;
        assert!(matches!(e, SealedError::Fetch { .. }), "{e}");
    }
}
