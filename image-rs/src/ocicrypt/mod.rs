//! ocicrypt: encrypted image layers (containers/ocicrypt format), decrypted only
//! inside the guest.
//!
//! A layer with media type `…+encrypted` is the compressed layer blob encrypted
//! with AES-256-CTR under a fresh 256-bit key; `org.opencontainers.image.enc.pubopts`
//! carries the HMAC-SHA256 of the ciphertext, and each
//! `org.opencontainers.image.enc.keys.<scheme>` annotation carries that layer key
//! wrapped for recipients (`jwe`, `provider.<name>`). The wrapped plaintext is
//! `{"symkey","digest","cipheroptions":{"nonce"}}`.
//!
//! - [`annotations`] parses what the (untrusted) registry sent, with size limits.
//! - [`unwrap`] recovers layer keys from private keys (JWE) or a key-encryption
//!   key released through [`crate::keysource::KeySource`] (provider packets).
//! - [`cipher`] decrypts a blob as it streams, verifying the HMAC at the end.
//! - [`encrypt`] makes encrypted images from an OCI layout (tests, demos).
//!
//! Never: hand out plaintext of a layer whose HMAC has not been verified as
//! committed data (the pipeline commits only after [`cipher::LayerDecryptor::finish`]),
//! log or format key bytes, or let a cached plain layer satisfy an encrypted one
//! without that layer's key having been unwrapped in the same pull.

pub mod annotations;
pub mod cipher;
pub mod encrypt;
pub mod unwrap;

pub use annotations::{EncryptedLayerInfo, Scheme};
pub use cipher::{LayerDecryptor, LayerEncryptor};
pub use unwrap::{unwrap_layer_keys, DecryptConfig, DecryptionKey, LayerKey};

/// Prefix of the wrapped-key annotations.
pub const ANN_KEYS_PREFIX: &str = "org.opencontainers.image.enc.keys.";
/// The public layer-cipher options annotation.
pub const ANN_PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
/// The only layer cipher ocicrypt defines.
pub const CIPHER_AES_CTR_HMAC: &str = "AES_256_CTR_HMAC_SHA256";
/// The provider name the CoCo attestation-agent uses.
pub const PROVIDER_ATTESTATION_AGENT: &str = "attestation-agent";

/// Why an encrypted layer cannot be decrypted. Messages name the layer and the
/// recipients, never key bytes.
#[derive(Debug, thiserror::Error)]
pub enum OcicryptError {
    #[error("layer {layer}: annotation {name} is {len} bytes, more than the {limit}-byte limit")]
    AnnotationTooLarge { layer: String, name: String, len: usize, limit: usize },
    #[error("layer {layer}: {what} is malformed: {reason}")]
    Malformed { layer: String, what: String, reason: String },
    #[error("layer {layer}: unsupported layer cipher {cipher:?} (only {CIPHER_AES_CTR_HMAC})")]
    UnsupportedCipher { layer: String, cipher: String },
    #[error(
        "layer {layer} is encrypted but has no org.opencontainers.image.enc.keys.* annotation to unwrap its key from"
    )]
    NoRecipients { layer: String },
    #[error("layer {layer} is encrypted and no usable decryption key was found. It was encrypted for: {recipients}. Tried: {tried}")]
    NoUsableKey { layer: String, recipients: String, tried: String },
    #[error(
        "layer {layer}: HMAC-SHA256 of the encrypted blob does not match its pubopts: the ciphertext was tampered with"
    )]
    Hmac { layer: String },
    #[error("encrypting: {0}")]
    Encrypt(String),
}
