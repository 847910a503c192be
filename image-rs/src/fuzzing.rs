//! Fuzz target bodies (the `fuzz/` crate's targets call these; the unit test
//! below replays every committed input under `fuzz/regressions/<target>/`).
//! Thin wrappers over image-rs' parsers, verifiers and the layer unpacker;
//! nothing here is used by a pull.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use crate::digest::Digest;
use crate::registry::{self, Compression};
use crate::signature::reference::DockerRef;

/// Splits a multi-part input at NUL bytes (never part of JSON, YAML or TOML
/// text); missing parts are empty.
fn parts<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&[][..]; N];
    let mut rest = data;
    for (i, slot) in out.iter_mut().enumerate() {
        if i == N - 1 {
            *slot = rest;
            break;
        }
        match rest.iter().position(|&b| b == 0) {
            Some(p) => {
                *slot = &rest[..p];
                rest = &rest[p + 1..];
            }
            None => {
                *slot = rest;
                rest = &[];
            }
        }
    }
    out
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

/// A scratch directory of this process and thread, emptied for each input.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(
        format!("cvm-fuzz-{name}-{}-{:?}", std::process::id(), std::thread::current().id()).replace(['(', ')'], ""),
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Target `tar_unpack`: bytes as a layer tar, unpacked into `<tmp>/root`
/// beside an empty `<tmp>/outside` and a lower layer `<tmp>/lower` (for hard
/// links). Nothing may appear outside `root`, and the lower layer is not
/// changed.
pub fn tar_unpack(data: &[u8]) {
    use crate::unpack::{unpack_layer, Limits, UnpackOptions};
    let dir = scratch("tar");
    let (root, outside, lower) = (dir.join("root"), dir.join("outside"), dir.join("lower"));
    for d in [&root, &outside, &lower] {
        std::fs::create_dir(d).expect("scratch");
    }
    std::fs::write(lower.join("etc-passwd"), b"root:x:0:0::/root:/bin/sh\n").expect("scratch");
    let lowers = [lower.clone()];
    let opts = UnpackOptions {
        lower_roots: &lowers,
        lower_gate: None,
        limits: Limits { max_bytes: 64 << 20, max_entries: 10_000, ..Limits::default() },
        // Ids from the archive are applied as in production (the fuzzer runs as root).
        preserve_ownership: true,
    };
    let result = unpack_layer(data, &root, &opts);
    assert_eq!(names_in(&dir), ["lower", "outside", "root"], "an entry landed beside the layer root");
    assert!(names_in(&outside).is_empty(), "an entry was written through a link to outside the root");
    assert_eq!(names_in(&lower), ["etc-passwd"], "the lower layer was changed");
    assert_eq!(std::fs::read(lower.join("etc-passwd")).expect("lower file"), b"root:x:0:0::/root:/bin/sh\n");
    // A second layer on top goes through what the first one left (symlinks
    // included): it must not escape either.
    if result.is_ok() {
        let _ = unpack_layer(data, &root, &opts);
        assert_eq!(names_in(&dir), ["lower", "outside", "root"]);
        assert!(names_in(&outside).is_empty(), "a second layer wrote through a link left by the first");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Most decompressed bytes read per input.
const DECOMPRESS_LIMIT: u64 = 16 << 20;

/// Target `decompress`: the layer decoders of the pipeline (gzip, zstd) over
/// a hostile stream, read up to 16 MiB. First byte picks the codec.
pub fn decompress(data: &[u8]) {
    let Some((&which, stream)) = data.split_first() else { return };
    let compression = if which & 1 == 0 { Compression::Gzip } else { Compression::Zstd };
    let Ok(decoder) = crate::pipeline::decoder(compression, stream) else { return };
    let mut sink = [0u8; 64 << 10];
    let mut total = 0u64;
    let mut limited = decoder.take(DECOMPRESS_LIMIT);
    loop {
        match limited.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                assert!(n <= sink.len());
                total += n as u64;
            }
        }
    }
    assert!(total <= DECOMPRESS_LIMIT);
}

/// Target `manifest`: a manifest, index or image config as image-rs reads
/// them (media type sniffing, oci-spec types, platform selection, layer
/// media types), and `registry::verify` of a blob against a descriptor:
/// accepted exactly when the size and the sha256 match.
pub fn manifest(data: &[u8]) {
    let [doc, desc_json, blob] = parts::<3>(data);
    let mt = registry::sniff_media_type(doc);
    match mt.as_str() {
        registry::MT_OCI_INDEX | registry::MT_DOCKER_LIST => {
            if let Ok(index) = registry::parse_json::<ImageIndex>("index", doc) {
                let platform = crate::registry::Platform::host();
                if let Some(d) = platform.select(&index) {
                    assert!(index.manifests().iter().any(|m| std::ptr::eq(m, d)));
                    let _ = registry::parse_digest("index entry", d.digest().as_ref());
                }
                let _ = crate::registry::Platform::list(&index);
            }
        }
        _ => {
            if let Ok(m) = registry::parse_json::<ImageManifest>("manifest", doc) {
                for layer in m.layers() {
                    let c = registry::layer_compression(layer.media_type());
                    let media = registry::layer_media(layer.media_type());
                    if let Ok(c) = c {
                        assert_eq!(media.as_ref().ok().map(|m| (m.compression, m.encrypted)), Some((c, false)));
                    }
                    if let Ok(m) = media {
                        assert!(m.encrypted == layer.media_type().to_string().ends_with("+encrypted"));
                    }
                }
            }
        }
    }
    let _ = registry::parse_json::<ImageConfiguration>("config", doc);

    // verify(): exact size and digest, nothing else.
    if let Ok(desc) = serde_json::from_slice::<Descriptor>(desc_json) {
        let accepted = registry::verify("blob", &desc, blob).is_ok();
        let digest = Digest::of(blob);
        let expected = format!("sha256:{}", digest.hex());
        let matches = desc.size() == blob.len() as u64 && desc.digest().to_string() == expected;
        assert_eq!(
            accepted,
            matches,
            "verify of {:?} (size {}) over {} bytes",
            desc.digest().to_string(),
            desc.size(),
            blob.len()
        );
    }
    // The honest descriptor of the blob always verifies.
    let honest = Descriptor::new(
        MediaType::ImageLayerGzip,
        blob.len() as u64,
        format!("sha256:{}", Digest::of(blob).hex()).parse::<oci_spec::image::Digest>().expect("sha256 digest"),
    );
    assert!(registry::verify("blob", &honest, blob).is_ok());
}

/// Target `sig_policy`: containers-policy.json, a registries.d file, the
/// registries.conf subset and a reference; then the requirement lookup,
/// lookaside URL and pull sources for that reference.
pub fn sig_policy(data: &[u8]) {
    use crate::signature::policy::{scope_candidates, Policy};
    use crate::signature::registries_d::{signature_url, RegistriesD};
    let [policy_json, registries_d, registries_conf, reference] = parts::<4>(data);
    let image = DockerRef::parse(text(reference)).ok();
    if let Some(img) = &image {
        // A parsed name parses again to itself.
        let again = DockerRef::parse(img.name()).expect("a normalized name parses");
        assert_eq!(again.name(), img.name());
        let scopes = scope_candidates(img);
        assert!(!scopes.is_empty());
    }
    if let Ok(policy) = Policy::from_json("fuzz", policy_json) {
        if let Some(img) = &image {
            let (_, reqs) = policy.requirements_for(img);
            assert!(!reqs.is_empty(), "an empty requirement list was accepted");
        }
    }
    let mut d = RegistriesD::default();
    if d.merge(registries_d).is_ok() {
        if let Some(img) = &image {
            let _ = d.use_sigstore_attachments(img);
            if let Some(base) = d.lookaside_for(img) {
                let digest = Digest::of(reference);
                if let Ok(url) = signature_url(&base, img, &digest, 1) {
                    let base = base.as_str().trim_end_matches('/');
                    assert!(url.as_str().starts_with(base), "signature URL {url} is not under {base}");
                }
            }
        }
    }
    let dir = scratch("registries");
    let conf = dir.join("registries.conf");
    std::fs::write(&conf, registries_conf).expect("scratch write");
    let loaded = crate::registry::config::RegistriesConfig::load(&conf);
    let _ = std::fs::remove_dir_all(&dir);
    if let (Ok(cfg), Some(img)) = (loaded, &image) {
        let (registry, repository) = img.name().split_once('/').unwrap_or((img.name(), ""));
        if let Ok(sources) = cfg.sources(registry, repository, img.digest().is_some()) {
            assert!(!sources.is_empty(), "no source and not blocked");
        }
        let _ = cfg.insecure_hosts();
    }
}

fn fixed_p256() -> &'static p256::ecdsa::SigningKey {
    static KEY: OnceLock<p256::ecdsa::SigningKey> = OnceLock::new();
    KEY.get_or_init(|| p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("a valid scalar"))
}

/// Target `signatures`: simple-signing and cosign payloads, cosign public
/// keys and signatures, GPG keyrings and `keyData`. A cosign signature made
/// by the fixed key over the input verifies; a fuzzed one never verifies
/// unless it is a valid signature over the payload.
pub fn signatures(data: &[u8]) {
    use crate::signature::{cosign, keys, payload, simple};
    use p256::ecdsa::signature::{Signer, Verifier};
    use p256::pkcs8::EncodePublicKey;
    let [payload_bytes, key_blob, sig_b64] = parts::<3>(data);
    for ty in [payload::SIMPLE_SIGNING_TYPE, payload::COSIGN_TYPE] {
        if let Ok(claim) = payload::parse_payload(payload_bytes, ty) {
            assert!(payload_bytes.len() <= payload::PAYLOAD_LIMIT);
            let _ = claim.identity.name();
        }
    }
    let _ = keys::decode_key_data(text(key_blob));
    let _ = cosign::parse_public_keys(&[("fuzz".into(), key_blob.to_vec())]);
    let _ = simple::Keyring::parse(&[("fuzz".into(), key_blob.to_vec())]);

    let sk = fixed_p256();
    let pem = sk.verifying_key().to_public_key_pem(Default::default()).expect("pem");
    let trusted = cosign::parse_public_keys(&[("fixed".into(), pem.into_bytes())]).expect("the fixed key parses");
    let fuzzed = cosign::CosignSignature {
        origin: "fuzz".into(),
        payload: payload_bytes.to_vec(),
        signature_b64: Some(text(sig_b64).to_owned()),
    };
    if fuzzed.verify(&trusted).is_ok() {
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD.decode(text(sig_b64).trim()).expect("accepted as base64");
        let sig = p256::ecdsa::Signature::from_der(&der).expect("accepted as DER");
        assert!(sk.verifying_key().verify(payload_bytes, &sig).is_ok(), "a signature the key did not make verified");
    }
    let sig: p256::ecdsa::Signature = sk.sign(payload_bytes);
    use base64::Engine;
    let honest = cosign::CosignSignature {
        origin: "fuzz".into(),
        payload: payload_bytes.to_vec(),
        signature_b64: Some(base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())),
    };
    assert_eq!(honest.verify(&trusted).as_deref(), Ok("fixed"));
}

fn jwe_keys() -> &'static [cvm_crypto::PrivateKey; 2] {
    static KEYS: OnceLock<[cvm_crypto::PrivateKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            cvm_crypto::PrivateKey::generate_p256().expect("P-256 key"),
            cvm_crypto::PrivateKey::generate_rsa(2048).expect("RSA key"),
        ]
    })
}

/// Target `ocicrypt`: the ocicrypt annotations of an encrypted layer, and
/// JWE decryption (compact and JSON) with a fixed P-256 and RSA key. A
/// plaintext is never longer than the JWE; a compact JWE never opens with
/// both keys; the input encrypted to either key decrypts to itself.
pub fn ocicrypt(data: &[u8]) {
    use crate::ocicrypt::annotations::EncryptedLayerInfo;
    let [keys_ann, pubopts_ann, jwe] = parts::<3>(data);
    let mut ann = HashMap::new();
    ann.insert("org.opencontainers.image.enc.keys.jwe".to_owned(), text(keys_ann).to_owned());
    ann.insert("org.opencontainers.image.enc.keys.provider.attestation-agent".to_owned(), text(keys_ann).to_owned());
    ann.insert("org.opencontainers.image.enc.pubopts".to_owned(), text(pubopts_ann).to_owned());
    if let Ok(info) = EncryptedLayerInfo::parse("fuzz", Some(&ann)) {
        for p in &info.packets {
            assert!(p.data.len() <= keys_ann.len());
        }
    }
    let keys = jwe_keys();
    let mut opened = 0;
    for key in keys {
        if let Ok(pt) = cvm_crypto::jwe::decrypt(jwe, key) {
            assert!(pt.len() <= jwe.len(), "{} plaintext bytes out of a {}-byte JWE", pt.len(), jwe.len());
            opened += 1;
        }
    }
    if !jwe.starts_with(b"{") {
        assert!(opened < 2, "a compact JWE opened with two different keys");
    }
    // The round trip costs a key agreement or an RSA operation: the P-256
    // key for short inputs, the RSA key for one in sixteen of them.
    if data.len() <= 1024 {
        let key = &keys[usize::from(data.len() % 16 == 0)];
        let sealed = cvm_crypto::jwe::encrypt(
            data,
            &[cvm_crypto::jwe::Recipient::new(&key.public_key())],
            cvm_crypto::jwe::Serialization::Flattened,
            None,
        )
        .expect("encrypt");
        assert_eq!(&cvm_crypto::jwe::decrypt(sealed.as_bytes(), key).expect("round trip")[..], data);
    }
}

#[cfg(test)]
mod tests {
    /// A target's name and body.
    type Target = (&'static str, fn(&[u8]));

    /// Replays the committed inputs of this crate's targets.
    #[test]
    fn fuzz_regressions_replay() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
        let targets: [Target; 6] = [
            ("tar_unpack", super::tar_unpack),
            ("decompress", super::decompress),
            ("manifest", super::manifest),
            ("sig_policy", super::sig_policy),
            ("signatures", super::signatures),
            ("ocicrypt", super::ocicrypt),
        ];
        for (name, body) in targets {
            let Ok(dir) = std::fs::read_dir(base.join(name)) else { continue };
            for entry in dir {
                let path = entry.unwrap().path();
                eprintln!("replaying {}", path.display());
                body(&std::fs::read(&path).unwrap());
            }
        }
    }
}
