//! Shared cryptography for the confidential guest: JWE (RFC 7516) with the JWA
//! algorithms of RFC 7518 that the KBS and ocicrypt use, key loading/export, and
//! AES-256-GCM helpers. Built only on RustCrypto crates (pure Rust, static-link
//! friendly).
//!
//! Used by the attestation-agent (TEE key pair, KBS resource JWE, provider
//! `wrapped_data`), its KBS client, and image-rs ocicrypt (layer key unwrap).
//! [`tls_pinning`] is the one rustls server-certificate verifier of every
//! HTTPS client in the guest (KBS, registries): exact-match pinning in front
//! of webpki.
//!
//! What this crate must never do:
//! - return plaintext that has not been authenticated (every AEAD tag is checked
//!   before a byte leaves [`jwe::decrypt`] or [`aead::open`]);
//! - accept a JWE algorithm the caller did not opt into (RSA1_5 is refused unless
//!   [`jwe::DecryptOptions::allow_rsa1_5`] is set), or `zip`/`crit` extensions;
//! - allocate without a bound on input it parses (sizes are checked first);
//! - panic on hostile input, or keep secret key material in memory it frees
//!   without zeroizing it.
//!
//! Supported: `alg` = `RSA-OAEP` (SHA-1), `RSA-OAEP-256`, `ECDH-ES+A256KW`
//! (P-256), `RSA1_5` (decrypt only, opt-in); `enc` = `A256GCM`; compact,
//! flattened and general JSON serializations.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

pub mod aead;
mod b64;
mod error;
pub mod jwe;
pub mod keys;
mod rng;
pub mod tls_pinning;

pub use error::CryptoError;
pub use keys::{KeyAlg, PrivateKey, PublicJwk, PublicKey};

/// Result alias of this crate.
pub type Result<T, E = CryptoError> = std::result::Result<T, E>;
