//! Per-recipient key management (RFC 7518 §4): wrap/unwrap the 256-bit content
//! encryption key (CEK) with RSA-OAEP, RSA-OAEP-256, ECDH-ES+A256KW, and the
//! opt-in, decrypt-only RSA1_5.
//!
//! Never returns a CEK of the wrong length, never accepts an `epk` off the curve.

use aes_kw::KwAes256;
use p256::elliptic_curve::Generate;
use rsa::traits::PublicKeyParts;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keys::{p256_from_xy, p256_xy, KeyAlg, RSA_MAX_BITS};
use crate::{b64, rng, CryptoError, Result};

/// CEK length for A256GCM.
pub(crate) const CEK_LEN: usize = 32;
/// AES key wrap of a 32-byte key yields 40 bytes.
const KW_LEN: usize = CEK_LEN + 8;
/// Largest `apu`/`apv` accepted.
const MAX_PARTY_INFO: usize = 1024;

/// Concat KDF (NIST SP 800-56A §5.8.1) as profiled by RFC 7518 §4.6.2 for a
/// 256-bit key: a single SHA-256 round over
/// `counter(1) || Z || len(alg)||alg || len(apu)||apu || len(apv)||apv || keydatalen`.
pub(crate) fn concat_kdf_256(z: &[u8], alg: &str, apu: &[u8], apv: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    for field in [alg.as_bytes(), apu, apv] {
        h.update((field.len() as u32).to_be_bytes());
        h.update(field);
    }
    h.update(256u32.to_be_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&h.finalize());
    out
}

fn unwrap_failed(alg: KeyAlg) -> CryptoError {
    CryptoError::KeyUnwrap { alg: alg.as_str().into() }
}

fn kek_cipher(kek: &[u8; 32]) -> KwAes256 {
    use aes_kw::cipher::KeyInit;
    KwAes256::new(kek.into())
}

fn party_info(header: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>> {
    match header.get(name) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => b64::decode(name, s, MAX_PARTY_INFO),
        Some(_) => Err(CryptoError::MalformedJwe(format!("{name} must be a string"))),
    }
}

/// Parse and validate an `epk` header member (EC P-256 only).
fn epk_from_header(header: &Map<String, Value>) -> Result<p256::PublicKey> {
    let epk = header
        .get("epk")
        .and_then(Value::as_object)
        .ok_or_else(|| CryptoError::MalformedJwe("ECDH-ES+A256KW recipient without epk object".into()))?;
    let s = |k: &str| epk.get(k).and_then(Value::as_str);
    if s("kty") != Some("EC") || s("crv") != Some("P-256") {
        return Err(CryptoError::UnsupportedHeader(format!(
            "epk kty/crv {:?}/{:?} (only EC P-256)",
            s("kty").unwrap_or(""),
            s("crv").unwrap_or("")
        )));
    }
    let (Some(x), Some(y)) = (s("x"), s("y")) else {
        return Err(CryptoError::MalformedJwe("epk without x/y".into()));
    };
    p256_from_xy(x, y, "epk")
}

/// Unwrap the CEK with an RSA key. For RSA1_5 a padding failure yields a random
/// CEK (RFC 7516 §11.5) so that the outcome is indistinguishable from a GCM tag
/// failure, removing the cheap padding oracle.
pub(crate) fn unwrap_rsa(key: &rsa::PrivateKey, alg: KeyAlg, encrypted_key: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if encrypted_key.len() != key.size() {
        if alg == KeyAlg::Rsa1_5 {
            return Ok(Zeroizing::new(rng::array::<CEK_LEN>()?.to_vec()));
        }
        return Err(unwrap_failed(alg));
    }
    let res = match alg {
        KeyAlg::RsaOaep => key.oaep_decrypt::<sha1::Sha1>(encrypted_key),
        KeyAlg::RsaOaep256 => key.oaep_decrypt::<Sha256>(encrypted_key),
        KeyAlg::Rsa1_5 => {
            let fallback = Zeroizing::new(rng::array::<CEK_LEN>()?.to_vec());
            return Ok(match key.pkcs1v15_decrypt(encrypted_key) {
                Ok(cek) if cek.len() == CEK_LEN => Zeroizing::new(cek),
                Ok(mut other) => {
                    zeroize::Zeroize::zeroize(&mut other);
                    fallback
                }
                Err(_) => fallback,
            });
        }
        KeyAlg::EcdhEsA256kw => return Err(unwrap_failed(alg)),
    };
    match res {
        Ok(cek) if cek.len() == CEK_LEN => Ok(Zeroizing::new(cek)),
        Ok(mut other) => {
            zeroize::Zeroize::zeroize(&mut other);
            Err(unwrap_failed(alg))
        }
        Err(_) => Err(unwrap_failed(alg)),
    }
}

/// Unwrap the CEK for ECDH-ES+A256KW with the recipient's P-256 key.
pub(crate) fn unwrap_ecdh(
    key: &p256::SecretKey,
    header: &Map<String, Value>,
    encrypted_key: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let alg = KeyAlg::EcdhEsA256kw;
    if encrypted_key.len() != KW_LEN {
        return Err(CryptoError::BadLength {
            what: "ECDH-ES+A256KW encrypted_key",
            len: encrypted_key.len(),
            expected: KW_LEN,
        });
    }
    let epk = epk_from_header(header)?;
    let apu = party_info(header, "apu")?;
    let apv = party_info(header, "apv")?;
    let shared = key.diffie_hellman(&epk);
    let kek = concat_kdf_256(shared.raw_secret_bytes(), alg.as_str(), &apu, &apv);
    let mut cek = Zeroizing::new(vec![0u8; CEK_LEN]);
    kek_cipher(&kek).unwrap_key(encrypted_key, &mut cek).map_err(|_| unwrap_failed(alg))?;
    Ok(cek)
}

/// Wrap `cek` for one recipient. Returns the `encrypted_key` and the header
/// members that must travel with it (`alg`, and `epk` for ECDH-ES).
pub(crate) fn wrap(key: &crate::PublicKey, alg: KeyAlg, cek: &[u8; CEK_LEN]) -> Result<(Vec<u8>, Map<String, Value>)> {
    let mut header = Map::new();
    header.insert("alg".into(), Value::String(alg.as_str().into()));
    let wrong_key = || CryptoError::InvalidKey(format!("{} key cannot be used with alg {}", key.describe(), alg));
    let encrypted_key = match (key, alg) {
        (crate::PublicKey::Rsa(k), KeyAlg::RsaOaep) => {
            k.oaep_encrypt::<sha1::Sha1>(cek).map_err(|e| CryptoError::InvalidKey(format!("RSA-OAEP: {e}")))?
        }
        (crate::PublicKey::Rsa(k), KeyAlg::RsaOaep256) => {
            k.oaep_encrypt::<Sha256>(cek).map_err(|e| CryptoError::InvalidKey(format!("RSA-OAEP-256: {e}")))?
        }
        (_, KeyAlg::Rsa1_5) => return Err(CryptoError::UnsupportedAlg("RSA1_5 (never used for encryption)".into())),
        (crate::PublicKey::P256(pk), KeyAlg::EcdhEsA256kw) => {
            let esk = p256::SecretKey::try_generate_from_rng(&mut getrandom::SysRng).map_err(|_| CryptoError::Rng)?;
            let shared = esk.diffie_hellman(pk);
            let kek = concat_kdf_256(shared.raw_secret_bytes(), alg.as_str(), b"", b"");
            let mut out = vec![0u8; KW_LEN];
            kek_cipher(&kek).wrap_key(cek, &mut out).map_err(|_| CryptoError::InvalidKey("AES key wrap".into()))?;
            let (x, y) = p256_xy(&esk.public_key());
            let epk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
            header.insert("epk".into(), epk);
            out
        }
        _ => return Err(wrong_key()),
    };
    debug_assert!(encrypted_key.len() <= RSA_MAX_BITS / 8);
    Ok((encrypted_key, header))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The OtherInfo layout of RFC 7518 §4.6.2, spelled out byte by byte.
    #[test]
    fn concat_kdf_layout_matches_rfc7518_section_4_6_2() {
        let z = [0x11u8; 32];
        let got = concat_kdf_256(&z, "ECDH-ES+A256KW", b"Alice", b"Bob");
        let mut m = Vec::new();
        m.extend_from_slice(&[0, 0, 0, 1]);
        m.extend_from_slice(&z);
        m.extend_from_slice(&[0, 0, 0, 14]);
        m.extend_from_slice(b"ECDH-ES+A256KW");
        m.extend_from_slice(&[0, 0, 0, 5]);
        m.extend_from_slice(b"Alice");
        m.extend_from_slice(&[0, 0, 0, 3]);
        m.extend_from_slice(b"Bob");
        m.extend_from_slice(&[0, 0, 1, 0]);
        assert_eq!(&got[..], &Sha256::digest(&m)[..]);
    }

    // RFC 7518 Appendix C, with the KDF output length as a parameter: the
    // published Z and OtherInfo for A128GCM give VqqN6vgjbSBcIijNcacQGg
    // (the first 16 bytes of the single SHA-256 round).
    #[test]
    fn rfc7518_appendix_c_derived_key() {
        let bob_d = b64::decode("d", "VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw", 64).unwrap();
        let alice_epk = p256_from_xy(
            "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
            "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps",
            "epk",
        )
        .unwrap();
        let bob = p256::SecretKey::from_slice(&bob_d).unwrap();
        let shared = bob.diffie_hellman(&alice_epk);
        let mut m = Vec::new();
        m.extend_from_slice(&[0, 0, 0, 1]);
        m.extend_from_slice(shared.raw_secret_bytes());
        for f in [&b"A128GCM"[..], b"Alice", b"Bob"] {
            m.extend_from_slice(&(f.len() as u32).to_be_bytes());
            m.extend_from_slice(f);
        }
        m.extend_from_slice(&128u32.to_be_bytes());
        let k = Sha256::digest(&m);
        assert_eq!(b64::encode(&k[..16]), "VqqN6vgjbSBcIijNcacQGg");
    }
}
