//! The TEE key pair: generated in this process at start, its public half
//! bound into every attestation (tee-pubkey JWK), its private half used only
//! to decrypt resources the KBS wrapped for it.
//!
//! Must never export, log, serialize or hand out the private key: no API of
//! this module returns it.

use cvm_crypto::jwe::DecryptOptions;
use cvm_crypto::{KeyAlg, PrivateKey};
use kbs_types::TeePubKey;
use zeroize::Zeroizing;

use crate::config::TeeKeyAlgorithm;

#[derive(Debug, thiserror::Error)]
pub enum TeeKeyError {
    #[error("cannot generate the TEE key pair: {0}")]
    Generate(cvm_crypto::CryptoError),
    #[error("cannot decrypt the KBS response: {0}")]
    Decrypt(cvm_crypto::CryptoError),
    #[error("public key export produced an unexpected JWK: {0}")]
    Export(String),
}

pub struct TeeKey {
    private: PrivateKey,
    public: TeePubKey,
    decrypt: DecryptOptions,
}

impl std::fmt::Debug for TeeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl TeeKey {
    pub fn generate(alg: TeeKeyAlgorithm, allow_rsa1_5: bool, max_jwe: usize) -> Result<Self, TeeKeyError> {
        let (private, key_alg) = match alg {
            TeeKeyAlgorithm::EcP256 => {
                (PrivateKey::generate_p256().map_err(TeeKeyError::Generate)?, KeyAlg::EcdhEsA256kw)
            }
            TeeKeyAlgorithm::Rsa2048 => {
                (PrivateKey::generate_rsa(2048).map_err(TeeKeyError::Generate)?, KeyAlg::RsaOaep256)
            }
        };
        let jwk = private.public_key().to_jwk(key_alg);
        let alg = jwk.alg.clone().ok_or_else(|| TeeKeyError::Export("no alg".into()))?;
        let public = match jwk.kty.as_str() {
            "EC" => TeePubKey::EC {
                crv: jwk.crv.ok_or_else(|| TeeKeyError::Export("EC key without crv".into()))?,
                alg,
                x: jwk.x.ok_or_else(|| TeeKeyError::Export("EC key without x".into()))?,
                y: jwk.y.ok_or_else(|| TeeKeyError::Export("EC key without y".into()))?,
            },
            "RSA" => TeePubKey::RSA {
                alg,
                k_mod: jwk.n.ok_or_else(|| TeeKeyError::Export("RSA key without n".into()))?,
                k_exp: jwk.e.ok_or_else(|| TeeKeyError::Export("RSA key without e".into()))?,
            },
            other => return Err(TeeKeyError::Export(format!("kty {other}"))),
        };
        let decrypt = DecryptOptions { allow_rsa1_5, max_len: max_jwe, ..DecryptOptions::default() };
        Ok(Self { private, public, decrypt })
    }

    /// The tee-pubkey sent to the KBS: exactly kty/crv/alg/x/y or kty/alg/n/e.
    pub fn public_jwk(&self) -> &TeePubKey {
        &self.public
    }

    /// Decrypts a JWE the KBS wrapped for this key (tag checked first).
    pub fn decrypt(&self, jwe: &[u8]) -> Result<Zeroizing<Vec<u8>>, TeeKeyError> {
        cvm_crypto::jwe::decrypt_with(jwe, &self.private, &self.decrypt).map_err(TeeKeyError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_jwk_has_exactly_the_members_trustee_keeps() {
        let key = TeeKey::generate(TeeKeyAlgorithm::EcP256, false, 1 << 20).unwrap();
        let v = serde_json::to_value(key.public_jwk()).unwrap();
        let mut members: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        members.sort();
        assert_eq!(members, ["alg", "crv", "kty", "x", "y"]);
        assert_eq!(v["alg"], "ECDH-ES+A256KW");
        assert_eq!(v["crv"], "P-256");
    }

    #[test]
    fn rsa_jwk_has_exactly_the_members_trustee_keeps() {
        let key = TeeKey::generate(TeeKeyAlgorithm::Rsa2048, false, 1 << 20).unwrap();
        let v = serde_json::to_value(key.public_jwk()).unwrap();
        let mut members: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        members.sort();
        assert_eq!(members, ["alg", "e", "kty", "n"]);
        assert_eq!(v["alg"], "RSA-OAEP-256");
    }

    #[test]
    fn debug_never_prints_the_private_key() {
        let key = TeeKey::generate(TeeKeyAlgorithm::EcP256, false, 1 << 20).unwrap();
        let s = format!("{key:?}");
        assert!(!s.contains("\"d\"") && !s.contains("private"), "{s}");
    }
}
