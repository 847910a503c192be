//! Making encrypted images: read an image from an OCI layout, encrypt every
//! layer with a fresh key (AES_256_CTR_HMAC_SHA256), wrap that key for each
//! recipient, and write the result to another (or the same) OCI layout under a
//! new tag. The config and diff_ids are unchanged, as with skopeo.
//!
//! Recipients: `jwe` public keys (RSA → RSA-OAEP, as ocicrypt does, so skopeo
//! can decrypt; EC P-256 → ECDH-ES+A256KW) and key-provider packets
//! (`provider.<name>`, KEK + `kbs:///` kid, AES-256-GCM). Layers stream through
//! a 1 MiB buffer; source blobs are verified against their digests.
//! Never writes outside the destination layout; never prints key bytes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cvm_crypto::{jwe, KeyAlg, PublicKey};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::cipher::{LayerEncryptor, NONCE_LEN, SYMKEY_LEN};
use super::unwrap::{PrivateOpts, ProviderPacket};
use super::{OcicryptError, ANN_KEYS_PREFIX, ANN_PUBOPTS, CIPHER_AES_CTR_HMAC};
use crate::digest::{Digest, Hasher};
use crate::keysource::ResourceUri;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MAX_JSON: u64 = 4 * 1024 * 1024;

/// Who can decrypt the layers.
pub enum Recipient {
    /// A JWE recipient (public key).
    Jwe(PublicKey),
    /// A key-provider packet: the layer key sealed with `kek` (AES-256-GCM),
    /// `kid` naming the KBS resource that releases `kek`.
    Provider { name: String, kid: ResourceUri, kek: Zeroizing<Vec<u8>> },
}

impl Recipient {
    /// Parses a CLI recipient: `jwe:PUBKEY_FILE` or
    /// `provider:NAME:kbs:///repo/type/tag:KEK_FILE` (KEK file: 32 raw bytes).
    pub fn parse(spec: &str) -> Result<Recipient, String> {
        if let Some(path) = spec.strip_prefix("jwe:") {
            let data = fs::read(path).map_err(|e| format!("recipient key {path}: {e}"))?;
            let key = PublicKey::from_bytes(&data).map_err(|e| format!("recipient key {path}: {e}"))?;
            return Ok(Recipient::Jwe(key));
        }
        if let Some(rest) = spec.strip_prefix("provider:") {
            let (name, rest) = rest.split_once(':').ok_or("provider recipient: expected provider:NAME:KID:KEK_FILE")?;
            let (kid, kek_path) =
                rest.rsplit_once(':').ok_or("provider recipient: expected provider:NAME:KID:KEK_FILE")?;
            if name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(format!("provider name {name:?} is not valid"));
            }
            let kid: ResourceUri = kid.parse().map_err(|e| format!("provider recipient kid: {e}"))?;
            let kek = Zeroizing::new(fs::read(kek_path).map_err(|e| format!("KEK file {kek_path}: {e}"))?);
            if kek.len() != 32 {
                return Err(format!("KEK file {kek_path} holds {} bytes; an AES-256 key is 32 raw bytes", kek.len()));
            }
            return Ok(Recipient::Provider { name: name.to_owned(), kid, kek });
        }
        Err(format!("recipient {spec:?}: expected jwe:PUBKEY_FILE or provider:NAME:KID:KEK_FILE"))
    }
}

fn err(msg: impl Into<String>) -> OcicryptError {
    OcicryptError::Encrypt(msg.into())
}

/// Media type of the encrypted form of a layer media type.
pub fn encrypted_media_type(mt: &str) -> Result<String, OcicryptError> {
    match mt {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(format!("{mt}+encrypted")),
        m if m.ends_with("+encrypted") => Err(err(format!("layer is already encrypted ({m})"))),
        m => Err(err(format!("cannot encrypt layer media type {m:?}"))),
    }
}

/// Wraps the private layer options for every recipient; returns the
/// `org.opencontainers.image.enc.keys.*` annotations.
pub(crate) fn wrap_for(opts_json: &[u8], recipients: &[Recipient]) -> Result<BTreeMap<String, String>, OcicryptError> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let jwe_keys: Vec<&PublicKey> =
        recipients.iter().filter_map(|r| if let Recipient::Jwe(k) = r { Some(k) } else { None }).collect();
    if !jwe_keys.is_empty() {
        let rs: Vec<jwe::Recipient> = jwe_keys
            .iter()
            .map(|k| jwe::Recipient {
                key: k,
                alg: match k {
                    PublicKey::Rsa(_) => KeyAlg::RsaOaep,
                    PublicKey::P256(_) => KeyAlg::EcdhEsA256kw,
                },
            })
            .collect();
        let ser = if rs.len() == 1 { jwe::Serialization::Flattened } else { jwe::Serialization::General };
        let token = jwe::encrypt(opts_json, &rs, ser, None).map_err(|e| err(format!("JWE: {e}")))?;
        out.insert(format!("{ANN_KEYS_PREFIX}jwe"), STANDARD.encode(token));
    }
    for r in recipients {
        if let Recipient::Provider { name, kid, kek } = r {
            let sealed =
                cvm_crypto::aead::seal(kek, opts_json, b"").map_err(|e| err(format!("provider {name}: {e}")))?;
            let packet = ProviderPacket {
                kid: kid.to_string(),
                wrapped_data: STANDARD.encode(sealed.combined()),
                iv: STANDARD.encode(sealed.iv),
                wrap_type: "A256GCM".into(),
            };
            let b64 = STANDARD.encode(serde_json::to_vec(&packet).map_err(|e| err(e.to_string()))?);
            out.entry(format!("{ANN_KEYS_PREFIX}provider.{name}"))
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(&b64);
                })
                .or_insert(b64);
        }
    }
    Ok(out)
}

/// The `org.opencontainers.image.ref.name` annotation of an index entry.
fn ref_name(entry: &Value) -> Option<&str> {
    entry.get("annotations")?.get(REF_NAME)?.as_str()
}

/// String member `name` of a JSON object (`None` when absent, not a string, or
/// `v` is not an object).
fn str_member<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, OcicryptError> {
    let d: Digest = digest.parse().map_err(|e| err(format!("digest {digest:?}: {e}")))?;
    Ok(layout.join("blobs/sha256").join(d.hex()))
}

fn read_json(path: &Path) -> Result<Value, OcicryptError> {
    let f = fs::File::open(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.take(MAX_JSON + 1).read_to_end(&mut buf).map_err(|e| err(format!("{}: {e}", path.display())))?;
    if buf.len() as u64 > MAX_JSON {
        return Err(err(format!("{} is larger than {MAX_JSON} bytes", path.display())));
    }
    serde_json::from_slice(&buf).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// Copies blob `digest` from `src` to `dst`, verifying it.
fn copy_blob(src: &Path, dst: &Path, digest: &str) -> Result<(), OcicryptError> {
    let from = blob_path(src, digest)?;
    let to = blob_path(dst, digest)?;
    if to.exists() {
        return Ok(());
    }
    let data = fs::read(&from).map_err(|e| err(format!("{}: {e}", from.display())))?;
    if Digest::of(&data).to_string() != digest {
        return Err(err(format!("blob {digest} in the source layout does not match its digest")));
    }
    write_atomic(&to, &data)
}

fn write_atomic(to: &Path, data: &[u8]) -> Result<(), OcicryptError> {
    let tmp = to.with_extension("tmp");
    fs::write(&tmp, data).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    fs::rename(&tmp, to).map_err(|e| err(format!("{}: {e}", to.display())))
}

/// Writes `data` as a blob of `dst`; returns its digest.
fn put_blob(dst: &Path, data: &[u8]) -> Result<String, OcicryptError> {
    let d = Digest::of(data).to_string();
    write_atomic(&blob_path(dst, &d)?, data)?;
    Ok(d)
}

/// Encrypts one layer blob from `src` into `dst`; returns the new descriptor.
fn encrypt_layer(src: &Path, dst: &Path, desc: &Value, recipients: &[Recipient]) -> Result<Value, OcicryptError> {
    let digest = str_member(desc, "digest").ok_or_else(|| err("layer descriptor without digest"))?;
    let media_type = str_member(desc, "mediaType").ok_or_else(|| err("layer descriptor without mediaType"))?;
    let mut out = desc.as_object().ok_or_else(|| err("layer descriptor is not a JSON object"))?.clone();
    let enc_mt = encrypted_media_type(media_type)?;
    let mut symkey = Zeroizing::new([0u8; SYMKEY_LEN]);
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut symkey[..]).map_err(|e| err(format!("random: {e}")))?;
    getrandom::fill(&mut nonce).map_err(|e| err(format!("random: {e}")))?;

    let from = blob_path(src, digest)?;
    let mut input = fs::File::open(&from).map_err(|e| err(format!("{}: {e}", from.display())))?;
    let tmp = dst.join("blobs/sha256").join(format!(".encrypting-{}", std::process::id()));
    let mut writer =
        std::io::BufWriter::new(fs::File::create(&tmp).map_err(|e| err(format!("{}: {e}", tmp.display())))?);
    let mut enc = LayerEncryptor::new(&symkey, &nonce);
    let (mut plain, mut cipher) = (Hasher::default(), Hasher::default());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).map_err(|e| err(format!("{}: {e}", from.display())))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get_mut(..n).ok_or_else(|| err(format!("{}: read past the buffer", from.display())))?;
        plain.update(chunk);
        enc.update(chunk);
        cipher.update(chunk);
        writer.write_all(chunk).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    }
    writer.flush().map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    drop(writer);
    let size = cipher.len();
    if plain.finish().to_string() != digest {
        let _ = fs::remove_file(&tmp);
        return Err(err(format!("layer {digest} in the source layout does not match its digest")));
    }
    let enc_digest = cipher.finish();
    fs::rename(&tmp, dst.join("blobs/sha256").join(enc_digest.hex())).map_err(|e| err(e.to_string()))?;
    let hmac = enc.finish();

    let opts = PrivateOpts {
        symkey: STANDARD.encode(&symkey[..]),
        digest: digest.to_owned(),
        cipheroptions: [("nonce".to_string(), STANDARD.encode(nonce))].into_iter().collect(),
    };
    let opts_json = Zeroizing::new(serde_json::to_vec(&opts).map_err(|e| err(e.to_string()))?);
    let mut annotations = match desc.get("annotations") {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    for (k, v) in wrap_for(&opts_json, recipients)? {
        annotations.insert(k, v.into());
    }
    let pubopts = json!({"cipher": CIPHER_AES_CTR_HMAC, "hmac": STANDARD.encode(hmac), "cipheroptions": {}});
    annotations.insert(ANN_PUBOPTS.into(), STANDARD.encode(pubopts.to_string()).into());
    out.insert("mediaType".into(), enc_mt.into());
    out.insert("digest".into(), enc_digest.to_string().into());
    out.insert("size".into(), size.into());
    out.insert("annotations".into(), Value::Object(annotations));
    Ok(Value::Object(out))
}

/// The result of [`encrypt_layout`].
#[derive(Debug, Clone)]
pub struct EncryptedImage {
    pub manifest_digest: String,
    pub layers: usize,
}

/// Encrypts image `src_tag` of OCI layout `src` into layout `dst` as `dst_tag`.
pub fn encrypt_layout(
    src: &Path,
    src_tag: &str,
    dst: &Path,
    dst_tag: &str,
    recipients: &[Recipient],
) -> Result<EncryptedImage, OcicryptError> {
    if recipients.is_empty() {
        return Err(err("no recipients"));
    }
    let index = read_json(&src.join("index.json"))?;
    let entry = index
        .get("manifests")
        .and_then(Value::as_array)
        .and_then(|list| list.iter().find(|m| ref_name(m) == Some(src_tag)))
        .ok_or_else(|| err(format!("no image tagged {src_tag:?} in {}", src.display())))?;
    if str_member(entry, "mediaType") != Some(MT_OCI_MANIFEST) {
        let media_type = entry.get("mediaType").unwrap_or(&Value::Null);
        return Err(err(format!("{src_tag:?} is {media_type} (only single-platform OCI manifests)")));
    }
    let manifest_digest = str_member(entry, "digest").ok_or_else(|| err("index entry without digest"))?;
    let mpath = blob_path(src, manifest_digest)?;
    let Value::Object(mut manifest) = read_json(&mpath)? else {
        return Err(err(format!("manifest {manifest_digest} is not a JSON object")));
    };
    if Digest::of(&fs::read(&mpath).map_err(|e| err(e.to_string()))?).to_string() != manifest_digest {
        return Err(err(format!("manifest {manifest_digest} does not match its digest")));
    }
    fs::create_dir_all(dst.join("blobs/sha256")).map_err(|e| err(format!("{}: {e}", dst.display())))?;
    fs::write(dst.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(|e| err(e.to_string()))?;

    let config_digest = manifest
        .get("config")
        .and_then(|c| str_member(c, "digest"))
        .ok_or_else(|| err("manifest without config"))?
        .to_owned();
    copy_blob(src, dst, &config_digest)?;
    let layers = manifest.get("layers").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut new_layers = Vec::with_capacity(layers.len());
    for desc in &layers {
        new_layers.push(encrypt_layer(src, dst, desc, recipients)?);
    }
    manifest.insert("layers".into(), Value::Array(new_layers));
    let bytes = serde_json::to_vec(&manifest).map_err(|e| err(e.to_string()))?;
    let digest = put_blob(dst, &bytes)?;

    let index_path = dst.join("index.json");
    let mut dst_index = if index_path.exists() {
        read_json(&index_path)?
    } else {
        json!({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": []})
    };
    let list = dst_index
        .get_mut("manifests")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| err("destination index.json has no manifests"))?;
    list.retain(|m| ref_name(m) != Some(dst_tag));
    list.push(json!({"mediaType": MT_OCI_MANIFEST, "digest": digest, "size": bytes.len(), "annotations": {REF_NAME: dst_tag}}));
    write_atomic(&index_path, &serde_json::to_vec(&dst_index).map_err(|e| err(e.to_string()))?)?;
    Ok(EncryptedImage { manifest_digest: digest, layers: layers.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Vec<Recipient> {
        vec![Recipient::Provider {
            name: "attestation-agent".into(),
            kid: "kbs:///default/key/1".parse().unwrap(),
            kek: Zeroizing::new(vec![7u8; 32]),
        }]
    }

    /// Writes `data` as a blob of `layout`; returns its digest.
    fn blob(layout: &Path, data: &[u8]) -> String {
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        put_blob(layout, data).unwrap()
    }

    fn index(layout: &Path, index: &Value) {
        fs::write(layout.join("index.json"), index.to_string()).unwrap();
    }

    fn tagged(media_type: Value, digest: &str) -> Value {
        json!({"manifests": [{"mediaType": media_type, "digest": digest, "annotations": {REF_NAME: "t"}}]})
    }

    fn encrypt_err(src: &Path) -> String {
        let dst = tempfile::tempdir().unwrap();
        encrypt_layout(src, "t", dst.path(), "t", &provider()).unwrap_err().to_string()
    }

    #[test]
    fn hostile_layouts_are_clear_errors() {
        let src = tempfile::tempdir().unwrap();
        let src = src.path();
        for bad in [json!([]), json!({"manifests": 5}), json!({"manifests": [7, {"annotations": "x"}]})] {
            index(src, &bad);
            let e = encrypt_err(src);
            assert!(e.contains("no image tagged \"t\""), "{bad}: {e}");
        }

        let digest = blob(src, b"[1]");
        index(src, &tagged(MT_OCI_INDEX.into(), &digest));
        let e = encrypt_err(src);
        assert!(e.contains(&format!("is \"{MT_OCI_INDEX}\" (only single-platform")), "{e}");
        index(src, &tagged(Value::Null, &digest));
        assert!(encrypt_err(src).contains("is null (only single-platform"));

        index(src, &tagged(MT_OCI_MANIFEST.into(), &digest));
        let e = encrypt_err(src);
        assert!(e.contains(&format!("manifest {digest} is not a JSON object")), "{e}");

        let config = blob(src, b"{}");
        let manifest = json!({"config": {"digest": config}, "layers": ["x"]}).to_string();
        index(src, &tagged(MT_OCI_MANIFEST.into(), &blob(src, manifest.as_bytes())));
        let e = encrypt_err(src);
        assert!(e.contains("layer descriptor without digest"), "{e}");

        let manifest = json!({"config": 1, "layers": []}).to_string();
        index(src, &tagged(MT_OCI_MANIFEST.into(), &blob(src, manifest.as_bytes())));
        assert!(encrypt_err(src).contains("manifest without config"));
    }
}
