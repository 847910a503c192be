//! Encrypted images (ocicrypt) end to end against real peers: images encrypted
//! by skopeo (`--encryption-key jwe:…`, RSA and EC keys from openssl) or by our
//! own `image-pull encrypt`, pushed to a real Distribution registry and pulled
//! by the real `image-pull` binary; skopeo decrypts what we encrypted.
//! Each case checks the tree on disk and the store, not just the exit code.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::cli::{manifest_of, our_encrypt, p, pull, stderr};
use support::layout::{BuiltImage, Compression, ImageBuilder, LayerSpec, TarEntry};
use support::registry::{Registry, RegistryOptions};

fn tools() -> bool {
    support::require_tools(&["docker-registry", "skopeo", "openssl"])
}

/// RSA-2048 and EC P-256 key pairs made by openssl: `rsa.pem`/`rsa.pub`, `ec.pem`/`ec.pub`.
fn openssl_keys(dir: &Path) {
    let run = |args: &[&str]| {
        support::run_ok(Command::new("openssl").args(args).current_dir(dir));
    };
    run(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa.pem"]);
    run(&["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub"]);
    run(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ec.pem"]);
    run(&["pkey", "-in", "ec.pem", "-pubout", "-out", "ec.pub"]);
}

/// Three layers, one per inner media type: tar+gzip, tar+zstd, plain tar.
fn image(docker_gzip: bool) -> BuiltImage {
    let mut first = LayerSpec::entries(
        vec![
            TarEntry::dir("etc"),
            TarEntry::file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
            TarEntry::dir("data"),
            TarEntry::file("data/keep", "base"),
            TarEntry::file("data/gone", "to be whited out"),
            TarEntry::file("bin/tool", "#!/bin/sh\n").mode(0o4755),
            TarEntry::file("data/big", support::layout::noise(7, 300_000)),
        ],
        Compression::Gzip,
    );
    if docker_gzip {
        first = first.media_type("application/vnd.docker.image.rootfs.diff.tar.gzip");
    }
    ImageBuilder::new()
        .layer(first)
        .layer(LayerSpec::entries(
            vec![
                TarEntry::whiteout("data/gone"),
                TarEntry::hardlink("data/keep-link", "data/keep"),
                TarEntry::symlink("data/abs", "/etc/passwd"),
            ],
            Compression::Zstd,
        ))
        .layer(LayerSpec::entries(vec![TarEntry::file("data/top", "top layer").owner(1000, 1000)], Compression::None))
        .cmd(&["/bin/tool"])
        .build()
}

/// Pushes `img` as `repo_tag`, optionally encrypted by skopeo on the way.
fn push(reg: &Registry, img: &BuiltImage, repo_tag: &str, skopeo_args: &[&str]) {
    let layout = tempfile::tempdir().unwrap();
    img.write_to_layout(layout.path(), "t");
    if skopeo_args.is_empty() {
        reg.push_oci_layout(layout.path(), "t", repo_tag);
    } else {
        reg.push_with_skopeo_args(layout.path(), "t", repo_tag, skopeo_args).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn skopeo_encrypted_images_unpack_to_the_plain_tree_with_rsa_or_ec_keys() {
    if !tools() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    openssl_keys(keys.path());
    let k = |f: &str| p(&keys.path().join(f)).to_owned();
    let reg = Registry::start(RegistryOptions::plain());
    let img = image(false);
    push(&reg, &img, "app:plain", &[]);
    push(&reg, &img, "app:rsa", &["--encryption-key", &format!("jwe:{}", k("rsa.pub"))]);
    push(&reg, &img, "app:ec", &["--encryption-key", &format!("jwe:{}", k("ec.pub"))]);
    let both =
        ["--encryption-key", &format!("jwe:{}", k("rsa.pub")), "--encryption-key", &format!("jwe:{}", k("ec.pub"))];
    push(&reg, &img, "app:both", &both);

    // What skopeo produced is what we parse: encrypted media types, jwe + pubopts annotations.
    let m: Value = serde_json::from_slice(&reg.inspect_raw("app:rsa")).unwrap();
    let mts: Vec<&str> = m["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].as_str().unwrap()).collect();
    assert_eq!(
        mts,
        [
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.oci.image.layer.v1.tar+zstd+encrypted",
            // skopeo compresses an uncompressed layer when it pushes without --preserve-digests.
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        ]
    );

    let plain = pull(&reg, tempfile::tempdir().unwrap().path(), "app:plain", &[]);
    let expected = plain.ok().rootfs();
    assert!(expected.contains_key(Path::new("data/top")) && !expected.contains_key(Path::new("data/gone")));
    for (tag, key) in [("app:rsa", "rsa.pem"), ("app:ec", "ec.pem"), ("app:both", "ec.pem"), ("app:both", "rsa.pem")] {
        let work = tempfile::tempdir().unwrap();
        let got = pull(&reg, work.path(), tag, &["--decryption-key", &k(key)]);
        assert_eq!(got.ok().rootfs(), expected, "{tag} with {key}");
        assert!(stderr(&got.out).contains("3 fetched"), "{}", stderr(&got.out));
    }
    // A JWK private key works as well as PEM (the EC key, converted by our crate).
    let ec = cvm_crypto::PrivateKey::from_bytes(&std::fs::read(k("ec.pem")).unwrap()).unwrap();
    let cvm_crypto::PrivateKey::P256(sk) = &ec else { unreachable!() };
    let pubjwk = ec.public_key().to_jwk(cvm_crypto::KeyAlg::EcdhEsA256kw);
    use base64::Engine;
    let d = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sk.to_bytes());
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": pubjwk.x, "y": pubjwk.y, "d": d});
    let jwk_path = keys.path().join("ec.jwk");
    std::fs::write(&jwk_path, jwk.to_string()).unwrap();
    let work = tempfile::tempdir().unwrap();
    assert_eq!(pull(&reg, work.path(), "app:ec", &["--decryption-key", p(&jwk_path)]).ok().rootfs(), expected);
}

#[test]
fn missing_or_wrong_key_fails_naming_layer_and_recipients_and_unpacks_nothing() {
    if !tools() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    openssl_keys(keys.path());
    let reg = Registry::start(RegistryOptions::plain());
    let img = image(false);
    push(&reg, &img, "app:rsa", &["--encryption-key", &format!("jwe:{}", p(&keys.path().join("rsa.pub")))]);
    let first_layer = manifest_of_registry(&reg, "app:rsa")["layers"][0]["digest"].as_str().unwrap().to_owned();

    let work = tempfile::tempdir().unwrap();
    let none = pull(&reg, work.path(), "app:rsa", &[]);
    let err = none.err();
    assert!(err.contains("no usable decryption key") && err.contains(&first_layer), "{err}");
    assert!(err.contains("jwe [RSA-OAEP]") && err.contains("no --decryption-key was given"), "{err}");
    assert_eq!(err.trim().lines().filter(|l| l.starts_with("image-pull:")).count(), 1, "one-line reason: {err}");

    let ec_key = keys.path().join("ec.pem");
    let err = pull(&reg, work.path(), "app:rsa", &["--decryption-key", p(&ec_key)]).refused_leaving_nothing();
    assert!(err.contains(p(&ec_key)) && err.contains("EC P-256") && err.contains("RSA-OAEP"), "{err}");

    // A public key is not a decryption key: said up front.
    let pubkey = pull(&reg, work.path(), "app:rsa", &["--decryption-key", p(&keys.path().join("rsa.pub"))]);
    assert!(pubkey.err().contains("no PEM private key"), "{}", stderr(&pubkey.out));
}

fn manifest_of_registry(reg: &Registry, repo_tag: &str) -> Value {
    serde_json::from_slice(&reg.inspect_raw(repo_tag)).unwrap()
}

#[test]
fn cached_plain_layers_do_not_satisfy_an_encrypted_image_without_its_key() {
    if !tools() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    openssl_keys(keys.path());
    let reg = Registry::start(RegistryOptions::plain());
    let img = image(false);
    push(&reg, &img, "app:plain", &[]);
    push(&reg, &img, "app:enc", &["--encryption-key", &format!("jwe:{}", p(&keys.path().join("ec.pub")))]);
    let work = tempfile::tempdir().unwrap();
    pull(&reg, work.path(), "app:plain", &[]).ok();
    // Same diff_ids, so every layer is in the store — but the key was never released.
    let no_key = pull(&reg, work.path(), "app:enc", &[]);
    assert!(no_key.err().contains("no usable decryption key"), "{}", stderr(&no_key.out));
    assert!(!no_key.bundle.exists(), "no bundle may be built from cached layers without the key");
    let wrong = pull(&reg, work.path(), "app:enc", &["--decryption-key", p(&keys.path().join("rsa.pem"))]);
    assert!(wrong.err().contains("no usable decryption key"));
    assert!(!wrong.bundle.exists());
    // With the key, the cached layers are used (nothing fetched).
    let ok = pull(&reg, work.path(), "app:enc", &["--decryption-key", p(&keys.path().join("ec.pem"))]);
    assert!(stderr(&ok.ok().out).contains("0 fetched"), "{}", stderr(&ok.out));
}

/// Rewrites layer `i` of layout `dir:t` with `edit` applied to its blob and/or
/// descriptor; the manifest and index follow (digests recomputed), as a hostile
/// registry could do.
fn tamper(dir: &Path, i: usize, edit_blob: impl Fn(&mut Vec<u8>), edit_desc: impl Fn(&mut Value)) -> String {
    let blobs = dir.join("blobs/sha256");
    let mut manifest = manifest_of(dir, "t");
    let desc = &mut manifest["layers"][i];
    let hex = desc["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_owned();
    let mut blob = std::fs::read(blobs.join(&hex)).unwrap();
    edit_blob(&mut blob);
    let digest = support::layout::write_blob(dir, &blob);
    desc["digest"] = digest.clone().into();
    desc["size"] = blob.len().into();
    edit_desc(desc);
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let mdigest = support::layout::write_blob(dir, &bytes);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    digest
}

#[test]
fn tampered_ciphertext_or_hmac_fails_the_hmac_check_and_nothing_becomes_visible() {
    if !tools() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    openssl_keys(keys.path());
    let reg = Registry::start(RegistryOptions::plain());
    let img = image(false);
    let plain = tempfile::tempdir().unwrap();
    img.write_to_layout(plain.path(), "t");
    let recipient = format!("jwe:{}", p(&keys.path().join("rsa.pub")));
    let key = p(&keys.path().join("rsa.pem")).to_owned();

    // 1: one flipped ciphertext byte in the middle of the gzip layer.
    let enc = tempfile::tempdir().unwrap();
    our_encrypt(plain.path(), enc.path(), std::slice::from_ref(&recipient));
    let bad = tamper(
        enc.path(),
        0,
        |b| {
            let m = b.len() / 2;
            b[m] ^= 0x01;
        },
        |_| {},
    );
    reg.push_oci_layout(enc.path(), "t", "app:flipped");
    // 2: intact ciphertext, but pubopts carries another HMAC: the layer unpacks
    // completely into staging and must still never be committed.
    let enc2 = tempfile::tempdir().unwrap();
    our_encrypt(plain.path(), enc2.path(), std::slice::from_ref(&recipient));
    let bad2 = tamper(
        enc2.path(),
        2,
        |_| {},
        |d| {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD;
            let pubopts = serde_json::json!({"cipher": "AES_256_CTR_HMAC_SHA256", "hmac": b64.encode([0u8; 32]), "cipheroptions": {}});
            d["annotations"]["org.opencontainers.image.enc.pubopts"] = b64.encode(pubopts.to_string()).into();
        },
    );
    reg.push_oci_layout(enc2.path(), "t", "app:badmac");

    for (tag, layer) in [("app:flipped", bad), ("app:badmac", bad2)] {
        let work = tempfile::tempdir().unwrap();
        let got = pull(&reg, work.path(), tag, &["--decryption-key", &key, "--max-concurrent-layers", "1"]);
        let err = got.err();
        assert!(err.contains("HMAC-SHA256") && err.contains("tampered") && err.contains(&layer), "{tag}: {err}");
        for e in std::fs::read_dir(work.path().join("layers")).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "json") {
                let rec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                assert_ne!(rec["blob_digest"], layer.as_str(), "{tag}: tampered layer committed");
            }
        }
        assert_eq!(got.staging_left(), 0, "{tag}: staging must be removed");
        assert!(!got.bundle.exists(), "{tag}");
    }
}

#[test]
fn our_provider_and_jwe_encrypted_images_pull_with_kek_from_the_key_source() {
    if !tools() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    openssl_keys(keys.path());
    let resources = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(resources.path().join("default/key")).unwrap();
    let kek = [0x5cu8; 32];
    std::fs::write(resources.path().join("default/key/1"), kek).unwrap();
    let kek_file = keys.path().join("kek.bin");
    std::fs::write(&kek_file, kek).unwrap();

    let reg = Registry::start(RegistryOptions::plain());
    let img = image(true);
    push(&reg, &img, "app:plain", &[]);
    let plain = tempfile::tempdir().unwrap();
    img.write_to_layout(plain.path(), "t");
    let enc = tempfile::tempdir().unwrap();
    our_encrypt(
        plain.path(),
        enc.path(),
        &[
            format!("provider:attestation-agent:kbs:///default/key/1:{}", p(&kek_file)),
            format!("jwe:{}", p(&keys.path().join("ec.pub"))),
        ],
    );
    let m = manifest_of(enc.path(), "t");
    assert_eq!(m["layers"][0]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted");
    let ann = &m["layers"][0]["annotations"];
    assert!(ann["org.opencontainers.image.enc.keys.provider.attestation-agent"].is_string());
    assert!(ann["org.opencontainers.image.enc.keys.jwe"].is_string());
    reg.push_oci_layout(enc.path(), "t", "app:enc");

    let expected = pull(&reg, tempfile::tempdir().unwrap().path(), "app:plain", &[]).ok().rootfs();
    let via_kbs =
        pull(&reg, tempfile::tempdir().unwrap().path(), "app:enc", &["--key-source-dir", p(resources.path())]);
    assert_eq!(via_kbs.ok().rootfs(), expected);
    let via_jwe = pull(
        &reg,
        tempfile::tempdir().unwrap().path(),
        "app:enc",
        &["--decryption-key", p(&keys.path().join("ec.pem"))],
    );
    assert_eq!(via_jwe.ok().rootfs(), expected);

    // No key source: the error names the KBS resource that was needed.
    let work = tempfile::tempdir().unwrap();
    let err = pull(&reg, work.path(), "app:enc", &[]).err();
    assert!(err.contains("provider.attestation-agent [kid kbs:///default/key/1]"), "{err}");
    assert!(err.contains("no key source is configured"), "{err}");
    // The KBS holds a different key: refused, nothing committed.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("default/key")).unwrap();
    std::fs::write(other.path().join("default/key/1"), [0x11u8; 32]).unwrap();
    let err = pull(&reg, work.path(), "app:enc", &["--key-source-dir", p(other.path())]).refused_leaving_nothing();
    assert!(err.contains("did not open"), "{err}");
}

#[test]
fn skopeo_decrypts_images_we_encrypted_for_jwe_recipients() {
    if !support::require_tools(&["skopeo", "openssl"]) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    openssl_keys(keys.path());
    let img = image(false);
    let plain = tempfile::tempdir().unwrap();
    img.write_to_layout(plain.path(), "t");
    let enc = tempfile::tempdir().unwrap();
    our_encrypt(
        plain.path(),
        enc.path(),
        &[format!("jwe:{}", p(&keys.path().join("rsa.pub"))), format!("jwe:{}", p(&keys.path().join("ec.pub")))],
    );
    let enc_layers: Vec<String> = manifest_of(enc.path(), "t")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().into())
        .collect();
    assert!(enc_layers.iter().all(|d| !img.layer_digests().contains(d)), "layers must be re-encrypted blobs");
    for key in ["rsa.pem", "ec.pem"] {
        let dec = tempfile::tempdir().unwrap();
        support::run_ok(Command::new("skopeo").args([
            "--insecure-policy",
            "copy",
            "--decryption-key",
            p(&keys.path().join(key)),
            &format!("oci:{}:t", p(enc.path())),
            &format!("oci:{}:t", p(dec.path())),
        ]));
        let m = manifest_of(dec.path(), "t");
        let got: Vec<(String, String)> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["mediaType"].as_str().unwrap().into(), l["digest"].as_str().unwrap().into()))
            .collect();
        let want: Vec<(String, String)> = img.layers.iter().map(|l| (l.media_type.clone(), l.digest.clone())).collect();
        assert_eq!(got, want, "skopeo with {key} must restore the original layers");
    }
}
