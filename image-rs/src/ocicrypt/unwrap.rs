//! Recovering layer keys: each wrapped-key packet of a layer is tried against
//! what this pull may use — private keys (`--decryption-key`, scheme `jwe`) and
//! key-encryption keys released by the [`KeySource`] (`provider.<name>` packets
//! whose `kid` is a `kbs:///` URI). The first packet that opens decides.
//!
//! Never logs key bytes; a failure lists the layer's recipients and why each
//! key we have did not fit, so an operator knows which key is missing.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cvm_crypto::{jwe, PrivateKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::annotations::{EncryptedLayerInfo, KeyPacket, Scheme};
use super::cipher::{LayerDecryptor, HMAC_LEN, NONCE_LEN, SYMKEY_LEN};
use super::OcicryptError;
use crate::digest::Digest;
use crate::keysource::{KeySource, NoKeySource, ResourceUri, Secret};

/// Largest provider packet or unwrapped options document.
const MAX_PACKET_JSON: usize = 16 * 1024;

/// A private key offered for unwrapping, with a name for messages (its file).
pub struct DecryptionKey {
    pub name: String,
    pub key: PrivateKey,
}

impl DecryptionKey {
    /// Loads a PEM (PKCS#1/PKCS#8/SEC1) or JWK private key file.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let data = Zeroizing::new(std::fs::read(path).map_err(|e| format!("decryption key {}: {e}", path.display()))?);
        let key = PrivateKey::from_bytes(&data).map_err(|e| format!("decryption key {}: {e}", path.display()))?;
        Ok(DecryptionKey { name: path.display().to_string(), key })
    }
}

/// What a pull may use to unwrap layer keys.
#[derive(Clone)]
pub struct DecryptConfig {
    pub keys: Arc<Vec<DecryptionKey>>,
    pub key_source: Arc<dyn KeySource>,
}

impl Default for DecryptConfig {
    fn default() -> Self {
        DecryptConfig { keys: Arc::new(Vec::new()), key_source: Arc::new(NoKeySource) }
    }
}

/// An unwrapped layer key with what it must verify. Debug output is redacted.
pub struct LayerKey {
    layer: String,
    symkey: Zeroizing<[u8; SYMKEY_LEN]>,
    nonce: [u8; NONCE_LEN],
    hmac: [u8; HMAC_LEN],
    plain_digest: Digest,
}

impl std::fmt::Debug for LayerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerKey").field("layer", &self.layer).field("plain_digest", &self.plain_digest).finish()
    }
}

impl LayerKey {
    /// A fresh streaming decryptor for the layer blob.
    pub fn decryptor(&self) -> LayerDecryptor {
        LayerDecryptor::new(self.layer.clone(), &self.symkey, &self.nonce, self.hmac, self.plain_digest.clone())
    }

    /// Digest of the unencrypted (compressed) layer blob.
    pub fn plain_digest(&self) -> &Digest {
        &self.plain_digest
    }
}

/// ocicrypt's private layer options, as wrapped (Go `[]byte` fields are base64).
#[derive(Deserialize, Serialize)]
pub(crate) struct PrivateOpts {
    pub symkey: String,
    pub digest: String,
    #[serde(default)]
    pub cipheroptions: HashMap<String, String>,
}

impl Drop for PrivateOpts {
    fn drop(&mut self) {
        self.symkey.zeroize();
    }
}

/// The `provider.attestation-agent` packet (CoCo key provider format).
#[derive(Deserialize, Serialize)]
pub(crate) struct ProviderPacket {
    pub kid: String,
    pub wrapped_data: String,
    pub iv: String,
    pub wrap_type: String,
}

fn layer_key(layer: &str, info: &EncryptedLayerInfo, opts_json: &[u8]) -> Result<LayerKey, String> {
    if opts_json.len() > MAX_PACKET_JSON {
        return Err(format!("unwrapped options are {} bytes", opts_json.len()));
    }
    let opts: PrivateOpts =
        serde_json::from_slice(opts_json).map_err(|e| format!("unwrapped options are not ocicrypt JSON: {e}"))?;
    let symkey = Zeroizing::new(STANDARD.decode(&opts.symkey).map_err(|_| "symkey is not base64".to_string())?);
    let symkey: [u8; SYMKEY_LEN] =
        symkey.as_slice().try_into().map_err(|_| format!("symkey is {} bytes, expected {SYMKEY_LEN}", symkey.len()))?;
    let nonce = opts.cipheroptions.get("nonce").ok_or("cipheroptions.nonce missing")?;
    let nonce = STANDARD.decode(nonce).map_err(|_| "nonce is not base64".to_string())?;
    let nonce: [u8; NONCE_LEN] =
        nonce.as_slice().try_into().map_err(|_| format!("nonce is {} bytes, expected {NONCE_LEN}", nonce.len()))?;
    let plain_digest: Digest = opts.digest.parse().map_err(|e| format!("digest {:?}: {e}", opts.digest))?;
    Ok(LayerKey { layer: layer.to_owned(), symkey: Zeroizing::new(symkey), nonce, hmac: info.hmac, plain_digest })
}

/// Tries one packet; `Ok(Some)` when it opened, `Ok(None)` plus notes otherwise.
struct Attempt<'a> {
    cfg: &'a DecryptConfig,
    keks: &'a mut HashMap<String, Result<Secret, String>>,
    recipients: Vec<String>,
    tried: Vec<String>,
}

impl Attempt<'_> {
    async fn open(&mut self, packet: &KeyPacket) -> Option<Zeroizing<Vec<u8>>> {
        match &packet.scheme {
            Scheme::Jwe => self.open_jwe(&packet.data),
            Scheme::Provider(name) => self.open_provider(name, &packet.data).await,
            other => {
                self.recipients.push(format!("{other} (not supported here)"));
                None
            }
        }
    }

    fn open_jwe(&mut self, data: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        match jwe::recipients(data) {
            Ok(r) => {
                let algs: Vec<String> = r.into_iter().map(|r| r.alg).collect();
                self.recipients.push(format!("jwe [{}]", algs.join(", ")));
            }
            Err(e) => {
                self.recipients.push(format!("jwe (unreadable: {e})"));
                return None;
            }
        }
        if self.cfg.keys.is_empty() {
            self.tried.push("no --decryption-key was given".into());
        }
        for k in self.cfg.keys.iter() {
            match jwe::decrypt(data, &k.key) {
                Ok(pt) => return Some(pt),
                Err(e) => self.tried.push(format!("{} ({}): {e}", k.name, k.key.describe())),
            }
        }
        None
    }

    async fn open_provider(&mut self, name: &str, data: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let packet: ProviderPacket = match (data.len() <= MAX_PACKET_JSON).then(|| serde_json::from_slice(data)) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                self.recipients.push(format!("provider.{name} (unreadable packet: {e})"));
                return None;
            }
            None => {
                self.recipients.push(format!("provider.{name} (packet of {} bytes refused)", data.len()));
                return None;
            }
        };
        self.recipients.push(format!("provider.{name} [kid {}]", packet.kid));
        let uri: ResourceUri = match packet.kid.parse() {
            Ok(u) => u,
            Err(e) => {
                self.tried.push(format!("provider.{name}: {e}"));
                return None;
            }
        };
        if packet.wrap_type != "A256GCM" {
            self.tried.push(format!("provider.{name}: wrap_type {:?} (only A256GCM)", packet.wrap_type));
            return None;
        }
        let key = packet.kid.clone();
        if !self.keks.contains_key(&key) {
            let got = self.cfg.key_source.get_resource(&uri).await.map_err(|e| e.to_string());
            self.keks.insert(key.clone(), got);
        }
        let kek = match &self.keks[&key] {
            Ok(k) => k,
            Err(e) => {
                self.tried.push(format!("provider.{name}: {e}"));
                return None;
            }
        };
        let (Ok(iv), Ok(wrapped)) = (STANDARD.decode(&packet.iv), STANDARD.decode(&packet.wrapped_data)) else {
            self.tried.push(format!("provider.{name}: iv or wrapped_data is not base64"));
            return None;
        };
        match cvm_crypto::aead::open_combined(kek, &iv, &wrapped, b"") {
            Ok(pt) => Some(pt),
            Err(e) => {
                self.tried.push(format!("provider.{name}: key {} did not open the packet: {e}", packet.kid));
                None
            }
        }
    }
}

/// Unwraps the keys of the encrypted layers `layers` (blob digest, annotations),
/// in order. Every layer must yield a key: this runs before any layer — cached
/// or not — is used, which is what keeps key release the gate.
pub async fn unwrap_layer_keys(
    layers: &[(Digest, Option<&HashMap<String, String>>)],
    cfg: &DecryptConfig,
) -> Result<Vec<LayerKey>, OcicryptError> {
    let mut keks = HashMap::new();
    let mut out = Vec::with_capacity(layers.len());
    for (digest, annotations) in layers {
        let layer = digest.to_string();
        let info = EncryptedLayerInfo::parse(&layer, *annotations)?;
        let mut attempt = Attempt { cfg, keks: &mut keks, recipients: Vec::new(), tried: Vec::new() };
        let mut found = None;
        for packet in &info.packets {
            if let Some(opts) = attempt.open(packet).await {
                match layer_key(&layer, &info, &opts) {
                    Ok(k) => {
                        found = Some(k);
                        break;
                    }
                    Err(reason) => {
                        return Err(OcicryptError::Malformed { layer, what: "unwrapped layer key".into(), reason })
                    }
                }
            }
        }
        match found {
            Some(k) => {
                tracing::info!(layer = %layer, "layer key unwrapped");
                out.push(k);
            }
            None => {
                return Err(OcicryptError::NoUsableKey {
                    layer,
                    recipients: attempt.recipients.join("; "),
                    tried: if attempt.tried.is_empty() {
                        "nothing applicable".into()
                    } else {
                        attempt.tried.join("; ")
                    },
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "unwrap_tests.rs"]
mod tests;
