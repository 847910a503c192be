//! AES_256_CTR_HMAC_SHA256, streamed: AES-256 in CTR mode with the 16-byte
//! nonce as the initial big-endian counter block (Go `cipher.NewCTR`), and
//! HMAC-SHA256 under the same key over the ciphertext.
//!
//! The decryptor sees each chunk once, in order: it MACs the ciphertext, then
//! decrypts in place, then hashes the plaintext (for the `digest` the wrapped
//! key names; see `finish`). Nothing is verified until [`LayerDecryptor::finish`]; callers must
//! not commit decrypted data before it returns `Ok`.

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::OcicryptError;
use crate::digest::{Digest, Hasher};

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// Layer key length.
pub const SYMKEY_LEN: usize = 32;
/// CTR nonce (initial counter block) length.
pub const NONCE_LEN: usize = 16;
/// HMAC-SHA256 length.
pub const HMAC_LEN: usize = 32;

fn cipher(symkey: &[u8; SYMKEY_LEN], nonce: &[u8; NONCE_LEN]) -> Aes256Ctr {
    Aes256Ctr::new(symkey.into(), nonce.into())
}

#[expect(clippy::expect_used, reason = "HMAC takes keys of any length: new_from_slice never fails")]
fn mac(symkey: &[u8; SYMKEY_LEN]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(symkey).expect("HMAC accepts any key length")
}

/// Decrypts one encrypted layer blob as it streams.
pub struct LayerDecryptor {
    layer: String,
    ctr: Aes256Ctr,
    mac: Hmac<Sha256>,
    plain: Hasher,
    expected_hmac: [u8; HMAC_LEN],
    expected_plain: Digest,
}

impl LayerDecryptor {
    pub(crate) fn new(
        layer: String,
        symkey: &Zeroizing<[u8; SYMKEY_LEN]>,
        nonce: &[u8; NONCE_LEN],
        expected_hmac: [u8; HMAC_LEN],
        expected_plain: Digest,
    ) -> Self {
        LayerDecryptor {
            layer,
            ctr: cipher(symkey, nonce),
            mac: mac(symkey),
            plain: Hasher::default(),
            expected_hmac,
            expected_plain,
        }
    }

    /// Feeds the next ciphertext chunk; it is decrypted in place.
    pub fn update(&mut self, chunk: &mut [u8]) {
        self.mac.update(chunk);
        self.ctr.apply_keystream(chunk);
        self.plain.update(chunk);
    }

    /// Verifies the HMAC over all ciphertext fed (constant time). Only after
    /// `Ok` may the decrypted layer be committed.
    ///
    /// The plaintext digest named in the wrapped key is compared too, but a
    /// mismatch is only logged: skopeo records the digest of the blob *before*
    /// it compresses an uncompressed layer on copy (seen with skopeo 1.9), so
    /// real images legitimately differ. Integrity does not rest on it: the HMAC
    /// authenticates the ciphertext and the diff_id (pinned by the manifest)
    /// the content.
    pub fn finish(self) -> Result<(), OcicryptError> {
        self.mac.verify_slice(&self.expected_hmac).map_err(|_| OcicryptError::Hmac { layer: self.layer.clone() })?;
        let actual = self.plain.finish();
        if actual != self.expected_plain {
            tracing::warn!(layer = %self.layer, named = %self.expected_plain, %actual, "decrypted blob digest differs from the one in the wrapped key (the encrypter recompressed the layer); diff_id is still verified");
        }
        Ok(())
    }
}

/// Encrypts one layer blob as it streams; yields the HMAC at the end.
pub struct LayerEncryptor {
    ctr: Aes256Ctr,
    mac: Hmac<Sha256>,
}

impl LayerEncryptor {
    pub fn new(symkey: &Zeroizing<[u8; SYMKEY_LEN]>, nonce: &[u8; NONCE_LEN]) -> Self {
        LayerEncryptor { ctr: cipher(symkey, nonce), mac: mac(symkey) }
    }

    /// Encrypts the next plaintext chunk in place.
    pub fn update(&mut self, chunk: &mut [u8]) {
        self.ctr.apply_keystream(chunk);
        self.mac.update(chunk);
    }

    /// HMAC-SHA256 of all ciphertext produced.
    pub fn finish(self) -> [u8; HMAC_LEN] {
        self.mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Zeroizing<[u8; 32]> {
        Zeroizing::new([0x42; 32])
    }

    #[test]
    fn ctr_matches_nist_sp800_38a_f5_5() {
        // NIST SP 800-38A F.5.5 CTR-AES256.Encrypt, first block.
        let k: [u8; 32] = hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
            .unwrap()
            .try_into()
            .unwrap();
        let iv: [u8; 16] = hex::decode("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").unwrap().try_into().unwrap();
        let mut block = hex::decode("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51").unwrap();
        let mut e = LayerEncryptor::new(&Zeroizing::new(k), &iv);
        e.update(&mut block);
        assert_eq!(hex::encode(&block), "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5");
    }

    #[test]
    fn round_trip_in_uneven_chunks_verifies() {
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let nonce = [9u8; 16];
        let mut ct = plain.clone();
        let mut e = LayerEncryptor::new(&key(), &nonce);
        for c in ct.chunks_mut(4097) {
            e.update(c);
        }
        let hmac = e.finish();
        let mut d = LayerDecryptor::new("l".into(), &key(), &nonce, hmac, Digest::of(&plain));
        let mut buf = ct.clone();
        for c in buf.chunks_mut(1000) {
            d.update(c);
        }
        assert_eq!(buf, plain);
        d.finish().unwrap();
    }

    #[test]
    fn flipped_ciphertext_bit_fails_hmac() {
        let nonce = [1u8; 16];
        let mut ct = b"some layer bytes".to_vec();
        let mut e = LayerEncryptor::new(&key(), &nonce);
        e.update(&mut ct);
        let hmac = e.finish();
        ct[3] ^= 1;
        let mut d = LayerDecryptor::new("l".into(), &key(), &nonce, hmac, Digest::of(b"some layer bytes"));
        d.update(&mut ct);
        assert!(matches!(d.finish(), Err(OcicryptError::Hmac { .. })));
    }

    #[test]
    fn truncated_ciphertext_fails_hmac() {
        let nonce = [1u8; 16];
        let mut ct = b"some layer bytes".to_vec();
        let mut e = LayerEncryptor::new(&key(), &nonce);
        e.update(&mut ct);
        let hmac = e.finish();
        let mut d = LayerDecryptor::new("l".into(), &key(), &nonce, hmac, Digest::of(b"some layer"));
        d.update(&mut ct[..10]);
        assert!(matches!(d.finish(), Err(OcicryptError::Hmac { .. })));
    }

    #[test]
    fn plain_digest_mismatch_is_not_fatal() {
        let nonce = [1u8; 16];
        let mut ct = b"abc".to_vec();
        let mut e = LayerEncryptor::new(&key(), &nonce);
        e.update(&mut ct);
        let hmac = e.finish();
        let mut d = LayerDecryptor::new("l".into(), &key(), &nonce, hmac, Digest::of(b"xyz"));
        d.update(&mut ct);
        assert!(d.finish().is_ok());
    }
}
