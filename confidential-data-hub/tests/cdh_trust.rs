//! What the confidential-data-hub daemon must trust only after checking,
//! driven over its socket as kata's agent drives it: envelope sealed secrets
//! whose key-encryption key is a test-KBS resource released through the real
//! attestation-agent; an image that is both GPG-signed and ocicrypt-encrypted,
//! pulled with the policy, signature key and KEK all from the KBS; and a
//! registry serving bytes that do not match their digests. Every refusal
//! names its cause; no refused pull leaves anything under bundle_path.

#[path = "../../image-rs/tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::gpg::Gpg;
use common::images::{app_image, assert_app_rootfs, assert_refused, random_kek, KID};
use common::{prerequisites, release_bundle, serial, Cdh, Guest};
use cvm_crypto::aead;
use p256::ecdsa::SigningKey;
use serde_json::{json, Value};
use support::cli::{our_encrypt, p};
use support::registry::{Registry, RegistryOptions};

const SEALER_KID: &str = "kbs:///default/sealed-secret-key/1";
const KEK_ID: &str = "kbs:///default/kek/1";

/// An envelope sealed secret for provider kbs (guest-components' payload
/// fields): `secret` under a fresh DEK, the DEK wrapped by `kek`.
fn envelope(kek: &[u8], secret: &[u8]) -> Value {
    let dek = random_kek();
    let data = aead::seal(&dek, secret, b"").unwrap();
    let wrapped = aead::seal(kek, &dek, b"").unwrap();
    json!({
        "version": "0.1.0", "type": "envelope", "key_id": KEK_ID,
        "encrypted_key": STANDARD.encode(wrapped.combined()),
        "encrypted_data": STANDARD.encode(data.combined()),
        "wrap_type": "A256GCM", "iv": STANDARD.encode(data.iv),
        "provider": "kbs", "provider_settings": {}, "annotations": {"iv": STANDARD.encode(wrapped.iv)},
    })
}

#[test]
fn envelope_secret_unseals_with_a_kek_released_by_the_kbs() {
    if !prerequisites(&[]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let sealer = SigningKey::from_slice(&[7; 32]).unwrap();
    let kek = random_kek();
    let guest = Guest::start(
        dir.path(),
        HashMap::from([
            ("default/sealed-secret-key/1".to_string(), common::public_jwk(&sealer)),
            ("default/kek/1".to_string(), kek.clone()),
        ]),
    );
    // No registry is used: the host name is never contacted.
    let cdh = Cdh::start(&dir.path().join("cdh"), &guest.aa_addr, "127.0.0.1:9", "");
    let rt = &guest.runtime;
    let unseal = |payload: &Value| rt.block_on(cdh.unseal(common::seal(&sealer, SEALER_KID, payload)));

    let released = guest.kbs().stats().resource_ok.load(Ordering::SeqCst);
    let got = unseal(&envelope(&kek, b"postgres://app:hunter2@db/app")).expect("UnsealSecret of an envelope");
    assert_eq!(got, b"postgres://app:hunter2@db/app");
    // The signature key and the KEK both came from the KBS.
    assert!(guest.kbs().stats().resource_ok.load(Ordering::SeqCst) >= released + 2, "the KEK came from the KBS");

    // Sealed for another KEK: the data key does not open.
    let (code, message) = unseal(&envelope(&random_kek(), b"x")).unwrap_err();
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{message}");
    assert!(message.contains("encrypted_key does not open under kbs:///default/kek/1"), "{message}");

    // Ciphertext edited and re-signed (the signer is trusted, the bytes are not).
    let mut tampered = envelope(&kek, b"x");
    let mut data = STANDARD.decode(tampered["encrypted_data"].as_str().unwrap()).unwrap();
    data[0] ^= 1;
    tampered["encrypted_data"] = STANDARD.encode(data).into();
    let (code, message) = unseal(&tampered).unwrap_err();
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{message}");
    assert!(message.contains("encrypted_data does not open"), "{message}");

    // Not base64, and another provider: refused by name, before any key is fetched.
    let mut mangled = envelope(&kek, b"x");
    mangled["iv"] = "not base64!".into();
    let (code, message) = unseal(&mangled).unwrap_err();
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("iv is not base64"), "{message}");
    let mut aliyun = envelope(&kek, b"x");
    aliyun["provider"] = "aliyun".into();
    let (code, message) = unseal(&aliyun).unwrap_err();
    assert_eq!(code, ttrpc::Code::UNIMPLEMENTED, "{message}");
    assert!(message.contains("provider \"aliyun\" is not supported"), "{message}");

    // A forged signature over a good envelope.
    let forger = SigningKey::from_slice(&[8; 32]).unwrap();
    let forged = rt.block_on(cdh.unseal(common::seal(&forger, SEALER_KID, &envelope(&kek, b"x"))));
    let (code, message) = forged.unwrap_err();
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{message}");
    assert!(message.contains("does not verify"), "{message}");

    // The KBS no longer holds the KEK.
    guest.kbs().update(|c| {
        c.resources.remove("default/kek/1");
    });
    let (code, message) = unseal(&envelope(&kek, b"x")).unwrap_err();
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{message}");
    assert!(message.contains(KEK_ID), "{message}");
    assert!(!cdh.log_text().contains("hunter2"), "the secret reached the log");
}

#[test]
fn signed_and_encrypted_image_pulls_with_policy_and_keys_from_the_kbs() {
    if !prerequisites(&["docker-registry", "skopeo", "gpg"]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let gpg = Gpg::new();
    let reg = Registry::start(RegistryOptions::plain());
    let look = dir.path().join("lookaside");
    std::fs::create_dir_all(&look).unwrap();
    let plain = dir.path().join("plain");
    app_image(11).write_to_layout(&plain, "t");
    let kek = random_kek();
    let kek_file = dir.path().join("kek.bin");
    std::fs::write(&kek_file, &kek).unwrap();
    let enc = dir.path().join("enc");
    our_encrypt(&plain, &enc, &[format!("provider:attestation-agent:{KID}:{}", p(&kek_file))]);
    gpg.push_signed(&reg, &enc, "app:signed-enc", &look);
    reg.push_oci_layout(&enc, "t", "other:enc");

    let policy = json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {(reg.host()): [
            {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "kbs:///default/gpg-public-key/1"}
        ]}}
    });
    let guest = Guest::start(
        dir.path(),
        HashMap::from([
            ("default/security-policy/test".to_string(), serde_json::to_vec(&policy).unwrap()),
            (
                "default/sigstore-config/test".to_string(),
                format!("default-docker:\n  lookaside: file://{}\n", p(&look)).into_bytes(),
            ),
            ("default/gpg-public-key/1".to_string(), gpg.public_key()),
            ("default/key/1".to_string(), kek.clone()),
        ]),
    );
    let keys = "image_security_policy_uri = \"kbs:///default/security-policy/test\"\n\
                sigstore_config_uri = \"kbs:///default/sigstore-config/test\"";
    let cdh = Cdh::start(&dir.path().join("cdh"), &guest.aa_addr, &reg.host(), keys);
    let rt = &guest.runtime;

    let released = guest.kbs().stats().resource_ok.load(Ordering::SeqCst);
    let bundle = dir.path().join("bundles/signed-enc");
    let digest = rt.block_on(cdh.pull(&reg.reference("app:signed-enc"), &bundle)).expect("signed+encrypted pull");
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_app_rootfs(&bundle);
    release_bundle(&bundle);
    // Policy, sigstore config, GPG key and KEK: four releases at least.
    assert!(guest.kbs().stats().resource_ok.load(Ordering::SeqCst) >= released + 4, "keys came from the KBS");
    assert!(!cdh.log_text().contains("without signature verification"), "{}", cdh.log_text());

    // The same encrypted image without a signature: the policy refuses it.
    let b = dir.path().join("bundles/unsigned-enc");
    let r = rt.block_on(cdh.pull(&reg.reference("other:enc"), &b));
    assert_refused(r, ttrpc::Code::PERMISSION_DENIED, &["signature policy", "other"], &b);

    // Signed, but the KBS no longer releases the KEK: a signature is not a key.
    guest.kbs().update(|c| {
        c.resources.remove("default/key/1");
    });
    let b = dir.path().join("bundles/no-kek");
    let r = rt.block_on(cdh.pull(&reg.reference("app:signed-enc"), &b));
    assert_refused(r, ttrpc::Code::PERMISSION_DENIED, &["decryption key", KID], &b);
}

#[test]
fn bytes_not_matching_their_digest_are_refused_naming_it() {
    if !prerequisites(&["docker-registry", "skopeo"]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let guest = Guest::start(dir.path(), HashMap::new());
    let reg = Registry::start(RegistryOptions::plain());
    let img = app_image(12);
    let layout = dir.path().join("layout");
    img.write_to_layout(&layout, "t");
    reg.push_oci_layout(&layout, "t", "app:1");
    let cdh = Cdh::start(&dir.path().join("cdh"), &guest.aa_addr, &reg.host(), "");
    let rt = &guest.runtime;

    // A layer blob flipped in the registry's storage (same length, served as is).
    let layer = img.layers[1].digest.clone();
    let path = reg.blob_path(&layer);
    let mut blob = std::fs::read(&path).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0xff;
    std::fs::write(&path, &blob).unwrap();
    let b = dir.path().join("bundles/tampered-layer");
    let r = rt.block_on(cdh.pull(&reg.reference("app:1"), &b));
    assert_refused(r, ttrpc::Code::DATA_LOSS, &["digest mismatch", &layer], &b);
    blob[mid] ^= 0xff;
    std::fs::write(&path, &blob).unwrap();

    // A manifest, asked for by digest, whose stored bytes now name another
    // layer digest: the served manifest is not the one asked for.
    let manifest_digest = img.manifest_digest.clone();
    let path = reg.blob_path(&manifest_digest);
    let original = std::fs::read_to_string(&path).unwrap();
    let swapped = original.replace(&layer["sha256:".len()..], &"0".repeat(64));
    assert_ne!(swapped, original, "the manifest names the layer");
    std::fs::write(&path, &swapped).unwrap();
    let b = dir.path().join("bundles/tampered-manifest");
    let r = rt.block_on(cdh.pull(&format!("{}/app@{manifest_digest}", reg.host()), &b));
    assert_refused(r, ttrpc::Code::DATA_LOSS, &["digest mismatch", &manifest_digest], &b);

    // The untouched image still pulls (nothing bad was cached).
    std::fs::write(&path, &original).unwrap();
    let b = dir.path().join("bundles/good");
    rt.block_on(cdh.pull(&reg.reference("app:1"), &b)).expect("the intact image pulls");
    assert_app_rootfs(&b);
    release_bundle(&b);
}
