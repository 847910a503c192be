//! Key material for JWE: RSA and EC P-256 private/public keys loaded from PEM
//! (PKCS#1, PKCS#8, SEC1, SPKI), DER or JWK, generated fresh, and exported as the
//! minimal public JWK the KBS hashes (`kty`/`crv`/`alg`/`x`/`y` or `kty`/`alg`/`n`/`e`).
//!
//! Never loads a weak key (RSA < 2048 bits), never accepts an EC point that is not
//! on P-256, and never writes private key material anywhere but into zeroizing
//! buffers handed back to the caller.

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::BoxedUint;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{b64, CryptoError, Result};

/// Smallest RSA modulus accepted, in bits.
pub const RSA_MIN_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits.
pub const RSA_MAX_BITS: usize = 8192;
/// Largest key file (PEM or JWK) accepted, in bytes.
pub const MAX_KEY_FILE: usize = 64 * 1024;

/// JWE key management algorithms (RFC 7518 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    /// RSAES-OAEP with SHA-1 and MGF1-SHA-1 (what skopeo/ocicrypt emit).
    RsaOaep,
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256.
    RsaOaep256,
    /// ECDH-ES (P-256) + Concat KDF + AES-256 key wrap.
    EcdhEsA256kw,
    /// RSAES-PKCS1-v1_5: decrypt-only and opt-in (padding-oracle prone).
    Rsa1_5,
}

impl KeyAlg {
    /// The registered `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::RsaOaep => "RSA-OAEP",
            KeyAlg::RsaOaep256 => "RSA-OAEP-256",
            KeyAlg::EcdhEsA256kw => "ECDH-ES+A256KW",
            KeyAlg::Rsa1_5 => "RSA1_5",
        }
    }

    /// Parse a registered `alg` name this crate supports.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RSA-OAEP" => KeyAlg::RsaOaep,
            "RSA-OAEP-256" => KeyAlg::RsaOaep256,
            "ECDH-ES+A256KW" => KeyAlg::EcdhEsA256kw,
            "RSA1_5" => KeyAlg::Rsa1_5,
            _ => return None,
        })
    }

    /// Whether this algorithm needs an RSA key (else an EC P-256 key).
    pub fn is_rsa(self) -> bool {
        !matches!(self, KeyAlg::EcdhEsA256kw)
    }
}

impl std::fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A private key usable for JWE key unwrap.
#[derive(Clone)]
pub enum PrivateKey {
    /// RSA (2048–8192 bits).
    Rsa(Box<rsa::PrivateKey>),
    /// EC on NIST P-256.
    P256(p256::SecretKey),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({})", self.describe())
    }
}

/// A public key usable for JWE key wrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA.
    Rsa(rsa::PublicKey),
    /// EC on NIST P-256.
    P256(p256::PublicKey),
}

/// A public JWK with exactly the members the KBS keeps before hashing:
/// `kty`,`crv`,`alg`,`x`,`y` (EC) or `kty`,`alg`,`n`,`e` (RSA), in that order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    /// `EC` or `RSA`.
    pub kty: String,
    /// `P-256` for EC.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crv: Option<String>,
    /// The JWE `alg` this key is meant for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alg: Option<String>,
    /// EC x coordinate (base64url, 32 bytes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x: Option<String>,
    /// EC y coordinate (base64url, 32 bytes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub y: Option<String>,
    /// RSA modulus (base64url, big-endian, no leading zeros).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n: Option<String>,
    /// RSA public exponent (base64url).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub e: Option<String>,
}

/// Every JWK member we read; unknown members are ignored (RFC 7517 §4).
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    d: Option<String>,
    n: Option<String>,
    e: Option<String>,
    p: Option<String>,
    q: Option<String>,
}

impl Drop for RawJwk {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.d.zeroize();
        self.p.zeroize();
        self.q.zeroize();
    }
}

fn bad(msg: impl Into<String>) -> CryptoError {
    CryptoError::InvalidKey(msg.into())
}

fn check_size(data: &[u8]) -> Result<()> {
    if data.len() > MAX_KEY_FILE {
        return Err(CryptoError::TooLarge { what: "key file", len: data.len(), limit: MAX_KEY_FILE });
    }
    Ok(())
}

fn check_rsa_bits(bits: usize) -> Result<()> {
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(bad(format!("RSA modulus of {bits} bits (accepted: {RSA_MIN_BITS}..={RSA_MAX_BITS})")));
    }
    Ok(())
}

/// One PEM block: its label and the full text from BEGIN to END.
fn pem_blocks(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let Some(label_end) = after.find("-----") else { break };
        let label = &after[..label_end];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = rest[start..].find(&end_marker) else { break };
        let block_end = start + end + end_marker.len();
        out.push((label, &rest[start..block_end]));
        rest = &rest[block_end..];
    }
    out
}

fn p256_point(x: &[u8], y: &[u8], what: &'static str) -> Result<p256::PublicKey> {
    if x.len() != 32 || y.len() != 32 {
        return Err(CryptoError::InvalidPoint(what));
    }
    let mut sec1 = [0u8; 65];
    sec1[0] = 0x04;
    sec1[1..33].copy_from_slice(x);
    sec1[33..].copy_from_slice(y);
    p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| CryptoError::InvalidPoint(what))
}

/// Parse a P-256 public key given as JWK-style base64url `x`/`y` (e.g. a JWE `epk`).
pub(crate) fn p256_from_xy(x: &str, y: &str, what: &'static str) -> Result<p256::PublicKey> {
    let x = b64::decode(what, x, 66)?;
    let y = b64::decode(what, y, 66)?;
    p256_point(&x, &y, what)
}

/// Affine coordinates of a P-256 public key, base64url.
pub(crate) fn p256_xy(pk: &p256::PublicKey) -> (String, String) {
    use p256::elliptic_curve::point::AffineCoordinates;
    let point = pk.as_affine(); // big-endian 32-byte field elements, as in SEC1 and RFC 7518
    (b64::encode(&point.x()), b64::encode(&point.y()))
}

fn rsa_uint(what: &'static str, s: &str, bits: u32) -> Result<BoxedUint> {
    let bytes = Zeroizing::new(b64::decode(what, s, RSA_MAX_BITS / 8)?);
    BoxedUint::from_be_slice(&bytes, bits).map_err(|_| bad(format!("RSA JWK member {what}")))
}

impl PrivateKey {
    /// Generate a fresh EC P-256 key from the OS RNG.
    pub fn generate_p256() -> Result<Self> {
        use p256::elliptic_curve::Generate;
        let sk = p256::SecretKey::try_generate_from_rng(&mut getrandom::SysRng).map_err(|_| CryptoError::Rng)?;
        Ok(PrivateKey::P256(sk))
    }

    /// Generate a fresh RSA key (`bits` between 2048 and 8192; 3072 or 4096 are typical).
    pub fn generate_rsa(bits: usize) -> Result<Self> {
        check_rsa_bits(bits)?;
        let k =
            rsa::PrivateKey::new(&mut getrandom::SysRng, bits).map_err(|e| bad(format!("RSA key generation: {e}")))?;
        Ok(PrivateKey::Rsa(Box::new(k)))
    }

    /// Load from a key file: PEM, a JWK (JSON object) or DER (PKCS#8, PKCS#1, SEC1).
    pub fn from_bytes(data: &[u8]) -> Result<Self> {
        check_size(data)?;
        let trimmed = data.trim_ascii_start();
        if trimmed.starts_with(b"{") {
            return Self::from_jwk(data);
        }
        if let Ok(text) = std::str::from_utf8(data) {
            if text.contains("-----BEGIN ") {
                return Self::from_pem(text);
            }
        }
        Self::from_der(data)
    }

    /// Load from PEM: `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1) or
    /// `EC PRIVATE KEY` (SEC1). Other blocks (e.g. `EC PARAMETERS`) are skipped.
    pub fn from_pem(text: &str) -> Result<Self> {
        check_size(text.as_bytes())?;
        for (label, block) in pem_blocks(text) {
            return match label {
                "PRIVATE KEY" => {
                    if let Ok(k) = rsa::PrivateKey::from_pkcs8_pem(block) {
                        Self::from_rsa(k)
                    } else {
                        p256::SecretKey::from_pkcs8_pem(block)
                            .map(PrivateKey::P256)
                            .map_err(|_| bad("PKCS#8 key is neither RSA nor EC P-256 (other curves are not supported)"))
                    }
                }
                "RSA PRIVATE KEY" => rsa::PrivateKey::from_pkcs1_pem(block)
                    .map_err(|e| bad(format!("PKCS#1 RSA key: {e}")))
                    .and_then(Self::from_rsa),
                "EC PRIVATE KEY" => p256::SecretKey::from_sec1_pem(block)
                    .map(PrivateKey::P256)
                    .map_err(|_| bad("SEC1 EC key is not a valid P-256 key")),
                "ENCRYPTED PRIVATE KEY" => {
                    Err(bad("password-protected PEM keys are not supported; export the key unencrypted"))
                }
                _ => continue,
            };
        }
        Err(bad("no PEM private key block (PRIVATE KEY, RSA PRIVATE KEY, EC PRIVATE KEY) found"))
    }

    /// Load from DER: PKCS#8, then PKCS#1 (RSA), then SEC1 (EC).
    pub fn from_der(der: &[u8]) -> Result<Self> {
        check_size(der)?;
        if let Ok(k) = rsa::PrivateKey::from_pkcs8_der(der) {
            return Self::from_rsa(k);
        }
        if let Ok(k) = p256::SecretKey::from_pkcs8_der(der) {
            return Ok(PrivateKey::P256(k));
        }
        if let Ok(k) = rsa::PrivateKey::from_pkcs1_der(der) {
            return Self::from_rsa(k);
        }
        if let Ok(k) = p256::SecretKey::from_sec1_der(der) {
            return Ok(PrivateKey::P256(k));
        }
        Err(bad("not a PEM, JWK, or DER (PKCS#8/PKCS#1/SEC1) RSA or EC P-256 private key"))
    }

    /// Load a private JWK: `kty` `EC` (`crv` `P-256`, `x`, `y`, `d`) or `RSA`
    /// (`n`, `e`, `d`, `p`, `q`; the CRT members are recomputed).
    pub fn from_jwk(json: &[u8]) -> Result<Self> {
        check_size(json)?;
        let jwk: RawJwk = serde_json::from_slice(json).map_err(|e| bad(format!("JWK: {e}")))?;
        match jwk.kty.as_str() {
            "EC" => {
                if jwk.crv.as_deref() != Some("P-256") {
                    return Err(bad(format!(
                        "EC JWK curve {:?} (only P-256 is supported)",
                        jwk.crv.as_deref().unwrap_or("")
                    )));
                }
                let d = jwk.d.as_deref().ok_or_else(|| bad("EC JWK has no private member d"))?;
                let d = Zeroizing::new(b64::decode("JWK d", d, 66)?);
                let sk = p256::SecretKey::from_slice(&d).map_err(|_| bad("EC JWK d is not a valid P-256 scalar"))?;
                if let (Some(x), Some(y)) = (&jwk.x, &jwk.y) {
                    let pk = p256_from_xy(x, y, "JWK x/y")?;
                    if pk != sk.public_key() {
                        return Err(bad("EC JWK x/y do not match d"));
                    }
                }
                Ok(PrivateKey::P256(sk))
            }
            "RSA" => {
                let (Some(n), Some(e), Some(d), Some(p), Some(q)) = (&jwk.n, &jwk.e, &jwk.d, &jwk.p, &jwk.q) else {
                    return Err(bad("RSA JWK must carry n, e, d, p and q"));
                };
                let n_len = b64::decode("JWK n", n, RSA_MAX_BITS / 8)?.len();
                check_rsa_bits(n_len * 8)?;
                let bits = (n_len * 8) as u32;
                let k = rsa::PrivateKey::from_components(
                    rsa_uint("n", n, bits)?,
                    rsa_uint("e", e, 64)?,
                    rsa_uint("d", d, bits)?,
                    vec![rsa_uint("p", p, bits)?, rsa_uint("q", q, bits)?],
                )
                .map_err(|e| bad(format!("RSA JWK: {e}")))?;
                Self::from_rsa(k)
            }
            other => Err(bad(format!("JWK kty {other:?} (supported: RSA, EC)"))),
        }
    }

    fn from_rsa(k: rsa::PrivateKey) -> Result<Self> {
        check_rsa_bits(k.size() * 8)?;
        Ok(PrivateKey::Rsa(Box::new(k)))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            PrivateKey::Rsa(k) => PublicKey::Rsa(k.to_public_key()),
            PrivateKey::P256(k) => PublicKey::P256(k.public_key()),
        }
    }

    /// Short human description, e.g. `RSA-3072` or `EC P-256` (no secret data).
    pub fn describe(&self) -> String {
        self.public_key().describe()
    }

    /// PKCS#8 PEM of the private key (zeroized on drop).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>> {
        let le = rsa::pkcs8::LineEnding::LF;
        match self {
            PrivateKey::Rsa(k) => k.to_pkcs8_pem(le),
            PrivateKey::P256(k) => k.to_pkcs8_pem(le),
        }
        .map_err(|e| bad(format!("PKCS#8 encoding: {e}")))
    }
}

impl PublicKey {
    /// Load from a key file: PEM (`PUBLIC KEY` SPKI or `RSA PUBLIC KEY`), a public
    /// JWK, or DER (SPKI, PKCS#1). A private key file also yields its public key.
    pub fn from_bytes(data: &[u8]) -> Result<Self> {
        check_size(data)?;
        let trimmed = data.trim_ascii_start();
        if trimmed.starts_with(b"{") {
            return Self::from_jwk(data);
        }
        if let Ok(text) = std::str::from_utf8(data) {
            if text.contains("-----BEGIN ") {
                return Self::from_pem(text);
            }
        }
        if let Ok(k) = rsa::PublicKey::from_public_key_der(data) {
            return Self::from_rsa(k);
        }
        if let Ok(k) = p256::PublicKey::from_public_key_der(data) {
            return Ok(PublicKey::P256(k));
        }
        if let Ok(k) = rsa::PublicKey::from_pkcs1_der(data) {
            return Self::from_rsa(k);
        }
        PrivateKey::from_der(data).map(|k| k.public_key())
    }

    /// Load from PEM; a private key block also works (its public half is used).
    pub fn from_pem(text: &str) -> Result<Self> {
        check_size(text.as_bytes())?;
        for (label, block) in pem_blocks(text) {
            return match label {
                "PUBLIC KEY" => {
                    if let Ok(k) = rsa::PublicKey::from_public_key_pem(block) {
                        Self::from_rsa(k)
                    } else {
                        p256::PublicKey::from_public_key_pem(block)
                            .map(PublicKey::P256)
                            .map_err(|_| bad("SPKI key is neither RSA nor EC P-256 (other curves are not supported)"))
                    }
                }
                "RSA PUBLIC KEY" => rsa::PublicKey::from_pkcs1_pem(block)
                    .map_err(|e| bad(format!("PKCS#1 RSA public key: {e}")))
                    .and_then(Self::from_rsa),
                "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
                    PrivateKey::from_pem(block).map(|k| k.public_key())
                }
                _ => continue,
            };
        }
        Err(bad("no PEM public key block (PUBLIC KEY, RSA PUBLIC KEY) found"))
    }

    /// Load a public JWK (`EC` P-256 with `x`/`y`, or `RSA` with `n`/`e`).
    pub fn from_jwk(json: &[u8]) -> Result<Self> {
        check_size(json)?;
        let jwk: RawJwk = serde_json::from_slice(json).map_err(|e| bad(format!("JWK: {e}")))?;
        match jwk.kty.as_str() {
            "EC" => {
                if jwk.crv.as_deref() != Some("P-256") {
                    return Err(bad("EC JWK curve must be P-256"));
                }
                let (Some(x), Some(y)) = (&jwk.x, &jwk.y) else {
                    return Err(bad("EC JWK must carry x and y"));
                };
                Ok(PublicKey::P256(p256_from_xy(x, y, "JWK x/y")?))
            }
            "RSA" => {
                let (Some(n), Some(e)) = (&jwk.n, &jwk.e) else {
                    return Err(bad("RSA JWK must carry n and e"));
                };
                let n_len = b64::decode("JWK n", n, RSA_MAX_BITS / 8)?.len();
                check_rsa_bits(n_len * 8)?;
                let k = rsa::PublicKey::new(rsa_uint("n", n, (n_len * 8) as u32)?, rsa_uint("e", e, 64)?)
                    .map_err(|e| bad(format!("RSA JWK: {e}")))?;
                Self::from_rsa(k)
            }
            other => Err(bad(format!("JWK kty {other:?} (supported: RSA, EC)"))),
        }
    }

    fn from_rsa(k: rsa::PublicKey) -> Result<Self> {
        check_rsa_bits(k.size() * 8)?;
        Ok(PublicKey::Rsa(k))
    }

    /// The algorithm we use by default when wrapping for this key:
    /// `RSA-OAEP-256` for RSA, `ECDH-ES+A256KW` for P-256.
    pub fn default_alg(&self) -> KeyAlg {
        match self {
            PublicKey::Rsa(_) => KeyAlg::RsaOaep256,
            PublicKey::P256(_) => KeyAlg::EcdhEsA256kw,
        }
    }

    /// Short human description, e.g. `RSA-3072` or `EC P-256`.
    pub fn describe(&self) -> String {
        match self {
            PublicKey::Rsa(k) => format!("RSA-{}", k.n().bit_width()),
            PublicKey::P256(_) => "EC P-256".to_string(),
        }
    }

    /// The minimal public JWK (see [`PublicJwk`]) with `alg` set.
    pub fn to_jwk(&self, alg: KeyAlg) -> PublicJwk {
        match self {
            PublicKey::Rsa(k) => PublicJwk {
                kty: "RSA".into(),
                crv: None,
                alg: Some(alg.as_str().into()),
                x: None,
                y: None,
                n: Some(b64::encode(&k.n_bytes())),
                e: Some(b64::encode(&k.e_bytes())),
            },
            PublicKey::P256(k) => {
                let (x, y) = p256_xy(k);
                PublicJwk {
                    kty: "EC".into(),
                    crv: Some("P-256".into()),
                    alg: Some(alg.as_str().into()),
                    x: Some(x),
                    y: Some(y),
                    n: None,
                    e: None,
                }
            }
        }
    }

    /// SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn to_spki_pem(&self) -> Result<String> {
        let le = rsa::pkcs8::LineEnding::LF;
        match self {
            PublicKey::Rsa(k) => k.to_public_key_pem(le),
            PublicKey::P256(k) => k.to_public_key_pem(le),
        }
        .map_err(|e| bad(format!("SPKI encoding: {e}")))
    }
}

impl PublicJwk {
    /// Parse back into a usable public key (validates the point / modulus).
    pub fn to_public_key(&self) -> Result<PublicKey> {
        let json = serde_json::to_vec(self).map_err(|e| bad(format!("JWK: {e}")))?;
        PublicKey::from_jwk(&json)
    }
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
