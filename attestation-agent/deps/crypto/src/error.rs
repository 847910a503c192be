//! The one error type of this crate. Messages name the cause (which field, which
//! algorithm) but never include secret bytes.

/// Everything that can go wrong while parsing keys or JWEs, or en/decrypting.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The JWE is not valid JSON/compact form, or a required member is missing.
    #[error("malformed JWE: {0}")]
    MalformedJwe(String),
    /// An input exceeds a size limit (checked before decoding/allocating).
    #[error("{what} is too large: {len} bytes, limit {limit}")]
    TooLarge {
        /// Which field or input.
        what: &'static str,
        /// Observed length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A field is not valid base64url.
    #[error("invalid base64url in {0}")]
    Base64(&'static str),
    /// A field decoded to the wrong length (e.g. a 13-byte GCM IV).
    #[error("{what} has length {len}, expected {expected}")]
    BadLength {
        /// Which field.
        what: &'static str,
        /// Observed length.
        len: usize,
        /// Required length.
        expected: usize,
    },
    /// `alg` is unknown or not supported by this crate.
    #[error("unsupported JWE key management algorithm {0:?}")]
    UnsupportedAlg(String),
    /// `enc` is unknown or not supported by this crate.
    #[error("unsupported JWE content encryption {0:?} (only A256GCM)")]
    UnsupportedEnc(String),
    /// A header carries something we must not ignore (`zip`, `crit`, duplicate names).
    #[error("unsupported or conflicting JWE header: {0}")]
    UnsupportedHeader(String),
    /// RSA1_5 is padding-oracle prone and refused unless explicitly allowed.
    #[error("JWE alg RSA1_5 refused (RSAES-PKCS1-v1_5 is padding-oracle prone); the caller must allow it explicitly")]
    Rsa15Refused,
    /// No recipient of the JWE uses an algorithm that fits the given key.
    #[error("no JWE recipient can be decrypted with a {key} key (recipient algorithms: {recipients})")]
    NoMatchingRecipient {
        /// The key type offered.
        key: &'static str,
        /// The algorithms found in the JWE.
        recipients: String,
    },
    /// Key unwrap failed: wrong key, or the encrypted key was altered.
    #[error("JWE key unwrap failed ({alg}): wrong key or corrupted encrypted_key")]
    KeyUnwrap {
        /// Algorithm of the recipient(s) tried.
        alg: String,
    },
    /// The AEAD tag did not verify: wrong key or tampered data.
    #[error("AES-GCM authentication failed: wrong key, or ciphertext/tag/header was tampered with")]
    Authentication,
    /// A key could not be parsed or is unusable.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// An EC public key (e.g. a JWE `epk`) is not a valid point on the curve.
    #[error("invalid EC public key in {0}: not a point on P-256")]
    InvalidPoint(&'static str),
    /// The operating system random number generator failed.
    #[error("random number generator failed")]
    Rng,
}
