//! Simple signing (containers-signature(5)): OpenPGP-signed payloads kept in
//! a lookaside store (`BASE/<repo>@sha256=<hex>/signature-N`), verified in
//! pure Rust with rpgp.
//!
//! Everything here is hostile input: signatures are size-bounded before
//! parsing, the decompressed payload is bounded while it is read, and a
//! signature is only trusted when a key of the policy's keyring verifies it.
//! Never follows a lookaside redirect to another scheme (file:// stays local).

use std::io::Read;
use std::time::Duration;

use pgp::composed::{Deserializable, Message, SignedPublicKey};
use pgp::types::KeyDetails;
use reqwest::Url;

use super::payload::PAYLOAD_LIMIT;

/// Largest signature file we read (real ones are well under 1 KiB).
pub const SIGNATURE_LIMIT: usize = 64 * 1024;
/// Most signatures read for one image.
pub const MAX_SIGNATURES: usize = 16;

/// Trusted OpenPGP public keys from one or more keyrings.
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

impl Keyring {
    /// Parses binary or ASCII-armored keyrings; keys whose self-signatures do
    /// not verify are skipped; a keyring with no usable key is an error.
    pub fn parse(blobs: &[(String, Vec<u8>)]) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (name, bytes) in blobs {
            let (iter, _) = SignedPublicKey::from_reader_many(&bytes[..])
                .map_err(|e| format!("keyring {name}: not an OpenPGP public keyring: {e}"))?;
            let mut found = 0usize;
            for key in iter {
                let key = key.map_err(|e| format!("keyring {name}: malformed key: {e}"))?;
                match key.verify_bindings() {
                    Ok(()) => {
                        keys.push(key);
                        found += 1;
                    }
                    Err(e) => {
                        tracing::warn!(keyring = %name, key = %key.fingerprint(), error = %e, "skipping key with invalid self-signatures")
                    }
                }
            }
            if found == 0 {
                return Err(format!("keyring {name}: contains no usable OpenPGP public key"));
            }
        }
        Ok(Keyring { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Fingerprints of the primary keys, for messages.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(fingerprint).collect()
    }

    /// Verifies one signature blob; returns the signed payload and the
    /// fingerprint of the key that verified it.
    pub fn verify(&self, signature: &[u8]) -> Result<(Vec<u8>, String), String> {
        if signature.len() > SIGNATURE_LIMIT {
            return Err(format!("signature is {} bytes, over the {SIGNATURE_LIMIT}-byte limit", signature.len()));
        }
        let mut msg = Message::from_bytes(signature).map_err(|e| format!("not an OpenPGP message: {e}"))?;
        for _ in 0..2 {
            if msg.is_compressed() {
                msg = msg.decompress().map_err(|e| format!("cannot decompress the signature: {e}"))?;
            }
        }
        if !msg.is_signed() {
            return Err("OpenPGP message is not signed".into());
        }
        let mut payload = Vec::new();
        (&mut msg)
            .take(PAYLOAD_LIMIT as u64 + 1)
            .read_to_end(&mut payload)
            .map_err(|e| format!("malformed OpenPGP message: {e}"))?;
        if payload.len() > PAYLOAD_LIMIT {
            return Err(format!("signed payload is over the {PAYLOAD_LIMIT}-byte limit"));
        }
        for key in &self.keys {
            if msg.verify(key).is_ok() {
                return Ok((payload, fingerprint(key)));
            }
            for sub in &key.public_subkeys {
                if msg.verify(sub).is_ok() {
                    return Ok((payload, fingerprint(sub)));
                }
            }
        }
        Err(format!(
            "not signed by a trusted key (tried {} key{}: {})",
            self.keys.len(),
            if self.keys.len() == 1 { "" } else { "s" },
            self.fingerprints().join(", ")
        ))
    }
}

/// A key's fingerprint as gpg prints it (uppercase hex).
fn fingerprint(key: &impl KeyDetails) -> String {
    key.fingerprint().to_string().to_uppercase()
}

/// Reads lookaside signatures `signature-1..N`, stopping at the first one
/// that does not exist.
pub struct Lookaside {
    http: reqwest::Client,
}

impl Lookaside {
    pub fn new() -> Result<Self, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() > 3 || !matches!(attempt.url().scheme(), "http" | "https") {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(|e| format!("cannot build the lookaside HTTP client: {e}"))?;
        Ok(Lookaside { http })
    }

    /// One signature: `Ok(None)` when it does not exist.
    pub async fn fetch(&self, url: &Url) -> Result<Option<Vec<u8>>, String> {
        match url.scheme() {
            "file" => {
                let path = url.to_file_path().map_err(|_| format!("{url}: not a local file URL"))?;
                let file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                };
                let mut out = Vec::new();
                file.take(SIGNATURE_LIMIT as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if out.len() > SIGNATURE_LIMIT {
                    return Err(format!("{}: signature over the {SIGNATURE_LIMIT}-byte limit", path.display()));
                }
                Ok(Some(out))
            }
            "http" | "https" => {
                let mut resp = self.http.get(url.clone()).send().await.map_err(|e| format!("{url}: {e}"))?;
                if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                if !resp.status().is_success() {
                    return Err(format!("{url}: HTTP {}", resp.status()));
                }
                if resp.content_length().is_some_and(|l| l > SIGNATURE_LIMIT as u64) {
                    return Err(format!("{url}: signature over the {SIGNATURE_LIMIT}-byte limit"));
                }
                let mut out = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
                    if out.len() + chunk.len() > SIGNATURE_LIMIT {
                        return Err(format!("{url}: signature over the {SIGNATURE_LIMIT}-byte limit"));
                    }
                    out.extend_from_slice(&chunk);
                }
                Ok(Some(out))
            }
            other => Err(format!("{url}: unsupported lookaside scheme {other}")),
        }
    }

    /// All signatures under the per-image URLs produced by `url_for(n)`.
    pub async fn fetch_all(
        &self,
        url_for: impl Fn(usize) -> Result<Url, String>,
    ) -> Result<Vec<(Url, Vec<u8>)>, String> {
        let mut out = Vec::new();
        for n in 1..=MAX_SIGNATURES {
            let url = url_for(n)?;
            match self.fetch(&url).await? {
                Some(bytes) => out.push((url, bytes)),
                None => break,
            }
        }
        Ok(out)
    }
}
