//! AES-256-GCM seal/open with a 96-bit IV and a 128-bit tag.
//!
//! Used for the attestation-agent key-provider `wrapped_data` (Go `cipher.AEAD.Seal`
//! layout: ciphertext with the tag appended, IV carried separately) and by the KBS
//! client. Never returns plaintext whose tag did not verify; IVs for sealing come
//! from the OS RNG only.

use aes_gcm::aead::{Nonce, Tag};
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};
use zeroize::Zeroizing;

use crate::{rng, CryptoError, Result};

/// AES-256 key length in bytes.
pub const KEY_LEN: usize = 32;
/// GCM IV (nonce) length in bytes.
pub const IV_LEN: usize = 12;
/// GCM tag length in bytes.
pub const TAG_LEN: usize = 16;

/// Output of [`seal`]: a fresh random IV, the ciphertext, and the detached tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Random 96-bit IV.
    pub iv: [u8; IV_LEN],
    /// Ciphertext, same length as the plaintext.
    pub ciphertext: Vec<u8>,
    /// Authentication tag.
    pub tag: [u8; TAG_LEN],
}

impl Sealed {
    /// Ciphertext with the tag appended (the layout Go's `Seal` produces).
    pub fn combined(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.ciphertext.len() + TAG_LEN);
        v.extend_from_slice(&self.ciphertext);
        v.extend_from_slice(&self.tag);
        v
    }
}

fn cipher(key: &[u8]) -> Result<Aes256Gcm> {
    if key.len() != KEY_LEN {
        return Err(CryptoError::BadLength { what: "AES-256-GCM key", len: key.len(), expected: KEY_LEN });
    }
    Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::InvalidKey("AES-256-GCM key".into()))
}

fn nonce(iv: &[u8]) -> Result<Nonce<Aes256Gcm>> {
    let iv: [u8; IV_LEN] =
        iv.try_into().map_err(|_| CryptoError::BadLength { what: "AES-GCM IV", len: iv.len(), expected: IV_LEN })?;
    Ok(iv.into())
}

/// Encrypt `plaintext` under `key` (32 bytes) with a fresh random IV and `aad`.
pub fn seal(key: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<Sealed> {
    let iv = rng::array::<IV_LEN>()?;
    let (ciphertext, tag) = seal_with_iv(key, &iv, plaintext, aad)?;
    Ok(Sealed { iv, ciphertext, tag })
}

/// Encrypt with a caller-chosen IV. An IV must never repeat under one key: only
/// use this for known-answer tests or when the IV is itself fresh randomness.
pub fn seal_with_iv(key: &[u8], iv: &[u8; IV_LEN], plaintext: &[u8], aad: &[u8]) -> Result<(Vec<u8>, [u8; TAG_LEN])> {
    let c = cipher(key)?;
    let mut buf = plaintext.to_vec();
    let tag = c
        .encrypt_inout_detached(&nonce(iv)?, aad, buf.as_mut_slice().into())
        .map_err(|_| CryptoError::TooLarge { what: "AES-GCM plaintext", len: plaintext.len(), limit: 1 << 36 })?;
    Ok((buf, tag.into()))
}

/// Decrypt and authenticate. `iv` must be 12 bytes and `tag` 16 bytes; on any
/// mismatch nothing is returned.
pub fn open(key: &[u8], iv: &[u8], ciphertext: &[u8], tag: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let c = cipher(key)?;
    let n = nonce(iv)?;
    let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| CryptoError::BadLength {
        what: "AES-GCM tag",
        len: tag.len(),
        expected: TAG_LEN,
    })?;
    let tag: Tag<Aes256Gcm> = tag.into();
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    c.decrypt_inout_detached(&n, aad, buf.as_mut_slice().into(), &tag).map_err(|_| CryptoError::Authentication)?;
    Ok(buf)
}

/// Decrypt Go-style sealed data (ciphertext with the 16-byte tag appended).
pub fn open_combined(key: &[u8], iv: &[u8], ciphertext_and_tag: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if ciphertext_and_tag.len() < TAG_LEN {
        return Err(CryptoError::BadLength {
            what: "AES-GCM sealed data",
            len: ciphertext_and_tag.len(),
            expected: TAG_LEN,
        });
    }
    let (ct, tag) = ciphertext_and_tag.split_at(ciphertext_and_tag.len() - TAG_LEN);
    open(key, iv, ct, tag, aad)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test Case 14 of the GCM specification (McGrew & Viega): zero key, IV, plaintext.
    #[test]
    fn gcm_spec_test_case_14_zero_key() {
        let key = [0u8; 32];
        let iv = [0u8; 12];
        let pt = [0u8; 16];
        let (ct, tag) = seal_with_iv(&key, &iv, &pt, b"").unwrap();
        assert_eq!(hex::encode(&ct), "cea7403d4d606b6e074ec5d3baf39d18");
        assert_eq!(hex::encode(tag), "d0d1c8a799996bf0265b98b5d48ab919");
        assert_eq!(&*open(&key, &iv, &ct, &tag, b"").unwrap(), &pt);
    }

    #[test]
    fn round_trip_with_aad_and_combined_layout() {
        let key = [7u8; 32];
        let s = seal(&key, b"secret kek", b"hdr").unwrap();
        assert_eq!(&*open(&key, &s.iv, &s.ciphertext, &s.tag, b"hdr").unwrap(), b"secret kek");
        assert_eq!(&*open_combined(&key, &s.iv, &s.combined(), b"hdr").unwrap(), b"secret kek");
    }

    #[test]
    fn fresh_iv_each_seal() {
        let key = [1u8; 32];
        assert_ne!(seal(&key, b"x", b"").unwrap().iv, seal(&key, b"x", b"").unwrap().iv);
    }

    #[test]
    fn rejects_tampering_wrong_key_wrong_aad() {
        let key = [7u8; 32];
        let s = seal(&key, b"payload", b"a").unwrap();
        let mut ct = s.ciphertext.clone();
        ct[0] ^= 1;
        assert!(matches!(open(&key, &s.iv, &ct, &s.tag, b"a"), Err(CryptoError::Authentication)));
        let mut tag = s.tag;
        tag[15] ^= 0x80;
        assert!(matches!(open(&key, &s.iv, &s.ciphertext, &tag, b"a"), Err(CryptoError::Authentication)));
        assert!(matches!(open(&[8u8; 32], &s.iv, &s.ciphertext, &s.tag, b"a"), Err(CryptoError::Authentication)));
        assert!(matches!(open(&key, &s.iv, &s.ciphertext, &s.tag, b"b"), Err(CryptoError::Authentication)));
    }

    #[test]
    fn rejects_bad_lengths() {
        let key = [7u8; 32];
        assert!(matches!(
            open(&key[..16], &[0; 12], b"", &[0; 16], b""),
            Err(CryptoError::BadLength { what: "AES-256-GCM key", .. })
        ));
        assert!(matches!(
            open(&key, &[0; 16], b"", &[0; 16], b""),
            Err(CryptoError::BadLength { what: "AES-GCM IV", .. })
        ));
        assert!(matches!(
            open(&key, &[0; 12], b"", &[0; 15], b""),
            Err(CryptoError::BadLength { what: "AES-GCM tag", .. })
        ));
        assert!(matches!(open_combined(&key, &[0; 12], &[0; 5], b""), Err(CryptoError::BadLength { .. })));
    }
}
