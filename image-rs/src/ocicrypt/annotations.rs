//! Reading the encryption annotations of a layer descriptor. The registry is
//! untrusted: every annotation value, every decoded packet and every JSON
//! document has a size limit that is checked before it is decoded.
//!
//! Wrapped-key annotations hold a comma-separated list of base64 packets
//! (ocicrypt appends one per wrap); `pubopts` holds base64 JSON
//! `{"cipher","hmac","cipheroptions"}`.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

use super::cipher::HMAC_LEN;
use super::{OcicryptError, ANN_KEYS_PREFIX, ANN_PUBOPTS, CIPHER_AES_CTR_HMAC};

/// Largest value of one `enc.keys.*` annotation.
pub const MAX_KEYS_ANNOTATION: usize = 64 * 1024;
/// Largest sum of all `enc.keys.*` annotation values of one layer.
pub const MAX_KEYS_TOTAL: usize = 256 * 1024;
/// Most wrapped-key packets examined per layer.
pub const MAX_PACKETS: usize = 32;
/// Largest `pubopts` annotation.
pub const MAX_PUBOPTS: usize = 4 * 1024;

/// A key-wrapping scheme, from the annotation name suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scheme {
    Jwe,
    Pkcs7,
    Pgp,
    Pkcs11,
    /// `provider.<name>`: a key-provider annotation packet.
    Provider(String),
    Other(String),
}

impl Scheme {
    fn from_suffix(s: &str) -> Scheme {
        match s {
            "jwe" => Scheme::Jwe,
            "pkcs7" => Scheme::Pkcs7,
            "pgp" => Scheme::Pgp,
            "pkcs11" => Scheme::Pkcs11,
            _ => match s.strip_prefix("provider.") {
                Some(name) => Scheme::Provider(name.to_owned()),
                None => Scheme::Other(s.to_owned()),
            },
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scheme::Jwe => f.write_str("jwe"),
            Scheme::Pkcs7 => f.write_str("pkcs7"),
            Scheme::Pgp => f.write_str("pgp"),
            Scheme::Pkcs11 => f.write_str("pkcs11"),
            Scheme::Provider(n) => write!(f, "provider.{n}"),
            Scheme::Other(n) => f.write_str(n),
        }
    }
}

/// One wrapped copy of the layer key.
#[derive(Debug, Clone)]
pub struct KeyPacket {
    pub scheme: Scheme,
    /// The decoded packet (a JWE, a provider JSON packet, …).
    pub data: Vec<u8>,
}

/// What a layer descriptor says about its encryption.
#[derive(Debug, Clone)]
pub struct EncryptedLayerInfo {
    pub packets: Vec<KeyPacket>,
    /// HMAC-SHA256 of the encrypted blob, from `pubopts`.
    pub hmac: [u8; HMAC_LEN],
}

#[derive(Deserialize)]
struct PubOpts {
    cipher: String,
    hmac: String,
}

fn malformed(layer: &str, what: impl Into<String>, reason: impl Into<String>) -> OcicryptError {
    OcicryptError::Malformed { layer: layer.to_owned(), what: what.into(), reason: reason.into() }
}

fn check_len(layer: &str, name: &str, len: usize, limit: usize) -> Result<(), OcicryptError> {
    if len > limit {
        return Err(OcicryptError::AnnotationTooLarge { layer: layer.to_owned(), name: name.to_owned(), len, limit });
    }
    Ok(())
}

impl EncryptedLayerInfo {
    /// Parses the annotations of encrypted layer `layer` (its blob digest).
    pub fn parse(layer: &str, annotations: Option<&HashMap<String, String>>) -> Result<Self, OcicryptError> {
        let empty = HashMap::new();
        let annotations = annotations.unwrap_or(&empty);

        let pubopts = annotations
            .get(ANN_PUBOPTS)
            .ok_or_else(|| malformed(layer, ANN_PUBOPTS, "missing (needed for the layer HMAC)"))?;
        check_len(layer, ANN_PUBOPTS, pubopts.len(), MAX_PUBOPTS)?;
        let raw = STANDARD.decode(pubopts.trim()).map_err(|e| malformed(layer, ANN_PUBOPTS, format!("base64: {e}")))?;
        let opts: PubOpts =
            serde_json::from_slice(&raw).map_err(|e| malformed(layer, ANN_PUBOPTS, format!("JSON: {e}")))?;
        if opts.cipher != CIPHER_AES_CTR_HMAC {
            return Err(OcicryptError::UnsupportedCipher { layer: layer.to_owned(), cipher: opts.cipher });
        }
        let hmac =
            STANDARD.decode(opts.hmac.trim()).map_err(|e| malformed(layer, "pubopts hmac", format!("base64: {e}")))?;
        let hmac: [u8; HMAC_LEN] = hmac
            .as_slice()
            .try_into()
            .map_err(|_| malformed(layer, "pubopts hmac", format!("{} bytes, expected {HMAC_LEN}", hmac.len())))?;

        // Deterministic order (jwe before providers etc.), whatever the map order.
        let mut names: Vec<&String> = annotations.keys().filter(|k| k.starts_with(ANN_KEYS_PREFIX)).collect();
        names.sort();
        let mut total = 0usize;
        let mut packets = Vec::new();
        for name in names {
            let value = &annotations[name];
            check_len(layer, name, value.len(), MAX_KEYS_ANNOTATION)?;
            total += value.len();
            check_len(layer, "all org.opencontainers.image.enc.keys.* annotations", total, MAX_KEYS_TOTAL)?;
            let scheme = Scheme::from_suffix(&name[ANN_KEYS_PREFIX.len()..]);
            for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if packets.len() == MAX_PACKETS {
                    return Err(malformed(layer, "key annotations", format!("more than {MAX_PACKETS} wrapped keys")));
                }
                let data =
                    STANDARD.decode(part).map_err(|e| malformed(layer, name.as_str(), format!("base64: {e}")))?;
                packets.push(KeyPacket { scheme: scheme.clone(), data });
            }
        }
        if packets.is_empty() {
            return Err(OcicryptError::NoRecipients { layer: layer.to_owned() });
        }
        Ok(EncryptedLayerInfo { packets, hmac })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pubopts(cipher: &str, hmac: &[u8]) -> String {
        STANDARD.encode(
            serde_json::json!({"cipher": cipher, "hmac": STANDARD.encode(hmac), "cipheroptions": {}}).to_string(),
        )
    }

    fn ann(pairs: &[(&str, String)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn parses_packets_of_every_scheme_in_name_order() {
        let a = ann(&[
            (ANN_PUBOPTS, pubopts(CIPHER_AES_CTR_HMAC, &[7; 32])),
            ("org.opencontainers.image.enc.keys.jwe", format!("{},{}", STANDARD.encode("j1"), STANDARD.encode("j2"))),
            ("org.opencontainers.image.enc.keys.provider.attestation-agent", STANDARD.encode("p")),
            ("org.opencontainers.image.enc.keys.pkcs7", STANDARD.encode("c")),
            ("org.opencontainers.image.title", "ignored".into()),
        ]);
        let info = EncryptedLayerInfo::parse("sha256:l", Some(&a)).unwrap();
        assert_eq!(info.hmac, [7; 32]);
        let got: Vec<(String, Vec<u8>)> = info.packets.iter().map(|p| (p.scheme.to_string(), p.data.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("jwe".into(), b"j1".to_vec()),
                ("jwe".into(), b"j2".to_vec()),
                ("pkcs7".into(), b"c".to_vec()),
                ("provider.attestation-agent".into(), b"p".to_vec()),
            ]
        );
    }

    #[test]
    fn rejects_missing_or_bad_pubopts() {
        let jwe = ("org.opencontainers.image.enc.keys.jwe", STANDARD.encode("j"));
        let e = EncryptedLayerInfo::parse("L", Some(&ann(std::slice::from_ref(&jwe)))).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e =
            EncryptedLayerInfo::parse("L", Some(&ann(&[jwe.clone(), (ANN_PUBOPTS, pubopts("AES_128_GCM", &[0; 32]))])))
                .unwrap_err();
        assert!(matches!(e, OcicryptError::UnsupportedCipher { .. }), "{e}");
        let e = EncryptedLayerInfo::parse(
            "L",
            Some(&ann(&[jwe.clone(), (ANN_PUBOPTS, pubopts(CIPHER_AES_CTR_HMAC, &[0; 31]))])),
        )
        .unwrap_err();
        assert!(e.to_string().contains("31 bytes"), "{e}");
        let e = EncryptedLayerInfo::parse("L", Some(&ann(&[jwe.clone(), (ANN_PUBOPTS, "%%%".into())]))).unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
        let e = EncryptedLayerInfo::parse("L", Some(&ann(&[jwe, (ANN_PUBOPTS, STANDARD.encode("[1,2"))]))).unwrap_err();
        assert!(e.to_string().contains("JSON"), "{e}");
    }

    #[test]
    fn rejects_no_recipients() {
        let a = ann(&[(ANN_PUBOPTS, pubopts(CIPHER_AES_CTR_HMAC, &[0; 32]))]);
        assert!(matches!(EncryptedLayerInfo::parse("L", Some(&a)), Err(OcicryptError::NoRecipients { .. })));
        assert!(EncryptedLayerInfo::parse("L", None).is_err());
    }

    #[test]
    fn rejects_oversized_and_too_many_packets_and_garbage() {
        let p = (ANN_PUBOPTS, pubopts(CIPHER_AES_CTR_HMAC, &[0; 32]));
        let big = ("org.opencontainers.image.enc.keys.jwe", "A".repeat(MAX_KEYS_ANNOTATION + 4));
        assert!(matches!(
            EncryptedLayerInfo::parse("L", Some(&ann(&[p.clone(), big]))),
            Err(OcicryptError::AnnotationTooLarge { .. })
        ));
        let many = vec![STANDARD.encode("x"); MAX_PACKETS + 1].join(",");
        let e =
            EncryptedLayerInfo::parse("L", Some(&ann(&[p.clone(), ("org.opencontainers.image.enc.keys.jwe", many)])))
                .unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        let total: Vec<(String, String)> = (0..5)
            .map(|i| (format!("org.opencontainers.image.enc.keys.provider.p{i}"), "A".repeat(60 * 1024)))
            .collect();
        let mut a: HashMap<String, String> = total.into_iter().collect();
        a.insert(p.0.into(), p.1.clone());
        assert!(matches!(EncryptedLayerInfo::parse("L", Some(&a)), Err(OcicryptError::AnnotationTooLarge { .. })));
        let e =
            EncryptedLayerInfo::parse("L", Some(&ann(&[p, ("org.opencontainers.image.enc.keys.jwe", "!!".into())])))
                .unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
        let huge_pub = (ANN_PUBOPTS, "A".repeat(MAX_PUBOPTS + 1));
        assert!(matches!(
            EncryptedLayerInfo::parse("L", Some(&ann(&[huge_pub]))),
            Err(OcicryptError::AnnotationTooLarge { .. })
        ));
    }
}
