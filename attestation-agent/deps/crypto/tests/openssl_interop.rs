//! Interop with OpenSSL, the real peer for key files and RSA-OAEP/ECDH: keys that
//! `openssl` generates load here, OAEP ciphertexts made by `openssl pkeyutl`
//! unwrap here (and ours unwrap there), and `openssl pkeyutl -derive` agrees with
//! our ECDH. Skips with a reason when openssl is missing, fails under CI=true.

use std::path::Path;
use std::process::Command;

use cvm_crypto::{jwe, KeyAlg, PrivateKey, PublicKey};

fn have_openssl() -> bool {
    if Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    let msg = "openssl not installed (apt-get install -y openssl; `make test` installs it)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {msg}");
    }
    eprintln!("SKIP: {msg}");
    false
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn b64url(d: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d)
}

fn read(dir: &Path, f: &str) -> Vec<u8> {
    std::fs::read(dir.join(f)).unwrap()
}

/// A flattened JWE assembled by hand around an externally wrapped CEK.
fn jwe_around(alg: &str, cek: &[u8; 32], encrypted_key: &[u8], pt: &[u8]) -> String {
    let protected = b64url(format!(r#"{{"alg":"{alg}","enc":"A256GCM"}}"#).as_bytes());
    let s = cvm_crypto::aead::seal(cek, pt, protected.as_bytes()).unwrap();
    serde_json::json!({"protected": protected, "encrypted_key": b64url(encrypted_key),
        "iv": b64url(&s.iv), "ciphertext": b64url(&s.ciphertext), "tag": b64url(&s.tag)})
    .to_string()
}

#[test]
fn loads_every_openssl_key_format() {
    if !have_openssl() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    openssl(d, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa.pem"]);
    openssl(d, &["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub"]);
    openssl(d, &["rsa", "-in", "rsa.pem", "-traditional", "-out", "rsa1.pem"]);
    openssl(d, &["rsa", "-in", "rsa.pem", "-RSAPublicKey_out", "-out", "rsa1.pub"]);
    openssl(d, &["pkey", "-in", "rsa.pem", "-outform", "DER", "-out", "rsa.der"]);
    openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-out", "ec-sec1.pem"]);
    openssl(d, &["pkcs8", "-topk8", "-nocrypt", "-in", "ec-sec1.pem", "-out", "ec.pem"]);
    openssl(d, &["pkey", "-in", "ec.pem", "-pubout", "-out", "ec.pub"]);
    openssl(d, &["ecparam", "-name", "secp384r1", "-genkey", "-out", "p384.pem"]);

    let rsa = PrivateKey::from_bytes(&read(d, "rsa.pem")).unwrap();
    for f in ["rsa1.pem", "rsa.der"] {
        assert_eq!(PrivateKey::from_bytes(&read(d, f)).unwrap().public_key(), rsa.public_key(), "{f}");
    }
    for f in ["rsa.pub", "rsa1.pub"] {
        assert_eq!(PublicKey::from_bytes(&read(d, f)).unwrap(), rsa.public_key(), "{f}");
    }
    let ec = PrivateKey::from_bytes(&read(d, "ec.pem")).unwrap();
    assert_eq!(PrivateKey::from_bytes(&read(d, "ec-sec1.pem")).unwrap().public_key(), ec.public_key());
    assert_eq!(PublicKey::from_bytes(&read(d, "ec.pub")).unwrap(), ec.public_key());
    let err = PrivateKey::from_bytes(&read(d, "p384.pem")).unwrap_err().to_string();
    assert!(err.contains("P-256"), "{err}");
}

#[test]
fn rsa_oaep_interop_both_directions() {
    if !have_openssl() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    openssl(d, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "k.pem"]);
    let key = PrivateKey::from_bytes(&read(d, "k.pem")).unwrap();
    let cek = [0x5au8; 32];
    std::fs::write(d.join("cek"), cek).unwrap();
    for (alg, md) in [("RSA-OAEP", "sha1"), ("RSA-OAEP-256", "sha256")] {
        let oaep_md = format!("rsa_oaep_md:{md}");
        let mgf_md = format!("rsa_mgf1_md:{md}");
        // OpenSSL wraps, we unwrap.
        let ek = openssl(
            d,
            &[
                "pkeyutl",
                "-encrypt",
                "-inkey",
                "k.pem",
                "-in",
                "cek",
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                &oaep_md,
                "-pkeyopt",
                &mgf_md,
            ],
        );
        let jwe = jwe_around(alg, &cek, &ek, b"from openssl");
        assert_eq!(&jwe::decrypt(jwe.as_bytes(), &key).unwrap()[..], b"from openssl", "{alg}");
        // We wrap, OpenSSL unwraps.
        let pk = key.public_key();
        let ours = jwe::encrypt(
            b"x",
            &[jwe::Recipient { key: &pk, alg: KeyAlg::parse(alg).unwrap() }],
            jwe::Serialization::Flattened,
            None,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&ours).unwrap();
        use base64::Engine;
        let ek = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v["encrypted_key"].as_str().unwrap()).unwrap();
        std::fs::write(d.join("ek"), &ek).unwrap();
        let cek_out = openssl(
            d,
            &[
                "pkeyutl",
                "-decrypt",
                "-inkey",
                "k.pem",
                "-in",
                "ek",
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                &oaep_md,
                "-pkeyopt",
                &mgf_md,
            ],
        );
        assert_eq!(cek_out.len(), 32, "{alg}");
    }
}

#[test]
fn ecdh_shared_secret_matches_openssl_derive() {
    if !have_openssl() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    openssl(d, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "a.pem"]);
    openssl(d, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "b.pem"]);
    openssl(d, &["pkey", "-in", "b.pem", "-pubout", "-out", "b.pub"]);
    let z = openssl(d, &["pkeyutl", "-derive", "-inkey", "a.pem", "-peerkey", "b.pub"]);
    // Build an ECDH-ES+A256KW JWE to b from a's key pair (a acts as the epk).
    let a = PrivateKey::from_bytes(&read(d, "a.pem")).unwrap();
    let b = PrivateKey::from_bytes(&read(d, "b.pem")).unwrap();
    let epk = a.public_key().to_jwk(KeyAlg::EcdhEsA256kw);
    // KDF per RFC 7518 §4.6.2 over OpenSSL's Z, then RFC 3394 wrap via OpenSSL too.
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(&z);
    h.update(14u32.to_be_bytes());
    h.update(b"ECDH-ES+A256KW");
    h.update(0u32.to_be_bytes());
    h.update(0u32.to_be_bytes());
    h.update(256u32.to_be_bytes());
    let kek = hex_lower(&h.finalize());
    let cek = [0x33u8; 32];
    std::fs::write(d.join("cek"), cek).unwrap();
    let wrapped = openssl(d, &["enc", "-id-aes256-wrap", "-K", &kek, "-iv", "A6A6A6A6A6A6A6A6", "-in", "cek"]);
    let protected = b64url(
        serde_json::json!({"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"kty":"EC","crv":"P-256","x":epk.x,"y":epk.y}})
            .to_string()
            .as_bytes(),
    );
    let s = cvm_crypto::aead::seal(&cek, b"via openssl kdf inputs", protected.as_bytes()).unwrap();
    let jwe =
        format!("{protected}.{}.{}.{}.{}", b64url(&wrapped), b64url(&s.iv), b64url(&s.ciphertext), b64url(&s.tag));
    assert_eq!(&jwe::decrypt(jwe.as_bytes(), &b).unwrap()[..], b"via openssl kdf inputs");
}

fn hex_lower(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}
