//! Known-answer, round-trip and hostile-input tests for JWE.

use std::sync::OnceLock;

use serde_json::{json, Value};

use super::*;
use crate::keys::KeyAlg;

const RFC7516_A1: &str = include_str!("../../tests/data/rfc7516-a1.json");

fn a1() -> Value {
    serde_json::from_str(RFC7516_A1).unwrap()
}

/// The RFC 7516 A.1 RSA-2048 key (no key generation in every test).
fn rsa_key() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| PrivateKey::from_jwk(a1()["jwk"].to_string().as_bytes()).unwrap())
}

fn ec_key() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| PrivateKey::generate_p256().unwrap())
}

fn other_ec_key() -> PrivateKey {
    PrivateKey::generate_p256().unwrap()
}

fn enc(pt: &[u8], key: &PrivateKey, alg: KeyAlg, ser: Serialization) -> String {
    let pk = key.public_key();
    encrypt(pt, &[Recipient { key: &pk, alg }], ser, None).unwrap()
}

fn flattened(key: &PrivateKey, alg: KeyAlg) -> Value {
    serde_json::from_str(&enc(b"hello", key, alg, Serialization::Flattened)).unwrap()
}

fn dec(v: &Value, key: &PrivateKey) -> Result<Zeroizing<Vec<u8>>> {
    decrypt(v.to_string().as_bytes(), key)
}

/// Re-encode the protected header of a flattened JWE after editing it.
fn with_protected(mut v: Value, edit: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let raw = b64::decode("p", v["protected"].as_str().unwrap(), 1 << 16).unwrap();
    let mut h: Map<String, Value> = serde_json::from_slice(&raw).unwrap();
    edit(&mut h);
    v["protected"] = b64::encode(&serde_json::to_vec(&h).unwrap()).into();
    v
}

#[test]
fn rfc7516_appendix_a1_compact_decrypts() {
    let v = a1();
    let pt = decrypt(v["compact"].as_str().unwrap().as_bytes(), rsa_key()).unwrap();
    assert_eq!(&pt[..], v["plaintext"].as_str().unwrap().as_bytes());
}

#[test]
fn rfc7516_appendix_a1_as_flattened_and_general_json() {
    let v = a1();
    let parts: Vec<&str> = v["compact"].as_str().unwrap().split('.').collect();
    let flat = json!({"protected": parts[0], "encrypted_key": parts[1], "iv": parts[2],
                      "ciphertext": parts[3], "tag": parts[4]});
    assert_eq!(&dec(&flat, rsa_key()).unwrap()[..], v["plaintext"].as_str().unwrap().as_bytes());
    let general = json!({"protected": parts[0], "recipients": [{"encrypted_key": parts[1]}],
                         "iv": parts[2], "ciphertext": parts[3], "tag": parts[4]});
    assert_eq!(&dec(&general, rsa_key()).unwrap()[..], v["plaintext"].as_str().unwrap().as_bytes());
}

#[test]
fn round_trips_every_alg_and_serialization() {
    for (key, alg) in [(rsa_key(), KeyAlg::RsaOaep), (rsa_key(), KeyAlg::RsaOaep256), (ec_key(), KeyAlg::EcdhEsA256kw)]
    {
        for ser in [Serialization::Compact, Serialization::Flattened, Serialization::General] {
            let jwe = enc(b"layer key material", key, alg, ser);
            assert_eq!(&decrypt(jwe.as_bytes(), key).unwrap()[..], b"layer key material", "{alg} {ser:?}");
        }
    }
}

#[test]
fn single_recipient_protects_alg_and_epk() {
    let v = flattened(ec_key(), KeyAlg::EcdhEsA256kw);
    let raw = b64::decode("p", v["protected"].as_str().unwrap(), 4096).unwrap();
    let h: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(h["alg"], "ECDH-ES+A256KW");
    assert_eq!(h["enc"], "A256GCM");
    assert_eq!(h["epk"]["crv"], "P-256");
    assert!(v.get("header").is_none() && v.get("unprotected").is_none());
}

#[test]
fn general_json_two_recipients_each_key_decrypts() {
    let (rsa_pub, ec_pub) = (rsa_key().public_key(), ec_key().public_key());
    let jwe = encrypt(
        b"shared",
        &[Recipient { key: &rsa_pub, alg: KeyAlg::RsaOaep }, Recipient::new(&ec_pub)],
        Serialization::General,
        None,
    )
    .unwrap();
    assert_eq!(&decrypt(jwe.as_bytes(), rsa_key()).unwrap()[..], b"shared");
    assert_eq!(&decrypt(jwe.as_bytes(), ec_key()).unwrap()[..], b"shared");
    let r = recipients(jwe.as_bytes()).unwrap();
    assert_eq!(r.iter().map(|r| r.alg.as_str()).collect::<Vec<_>>(), ["RSA-OAEP", "ECDH-ES+A256KW"]);
    // A third key is neither recipient.
    assert!(matches!(decrypt(jwe.as_bytes(), &other_ec_key()), Err(CryptoError::KeyUnwrap { .. })));
}

#[test]
fn aad_member_is_authenticated() {
    let pk = ec_key().public_key();
    let jwe = encrypt(b"x", &[Recipient::new(&pk)], Serialization::Flattened, Some(b"context")).unwrap();
    let mut v: Value = serde_json::from_str(&jwe).unwrap();
    assert_eq!(&dec(&v, ec_key()).unwrap()[..], b"x");
    v["aad"] = b64::encode(b"kontext").into();
    assert!(matches!(dec(&v, ec_key()), Err(CryptoError::Authentication)));
    v.as_object_mut().unwrap().remove("aad");
    assert!(matches!(dec(&v, ec_key()), Err(CryptoError::Authentication)));
}

#[test]
fn wrong_key_is_a_key_unwrap_error() {
    let v = flattened(ec_key(), KeyAlg::EcdhEsA256kw);
    assert!(matches!(dec(&v, &other_ec_key()), Err(CryptoError::KeyUnwrap { alg }) if alg == "ECDH-ES+A256KW"));
}

#[test]
fn key_type_without_recipient_names_the_algorithms() {
    let v = flattened(rsa_key(), KeyAlg::RsaOaep);
    match dec(&v, ec_key()) {
        Err(e @ CryptoError::NoMatchingRecipient { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("EC P-256") && msg.contains("RSA-OAEP"), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn tampered_ciphertext_tag_or_header_fails_authentication() {
    let v = flattened(ec_key(), KeyAlg::EcdhEsA256kw);
    let mut ct = b64::decode("c", v["ciphertext"].as_str().unwrap(), 1024).unwrap();
    ct[0] ^= 1;
    let mut t = v.clone();
    t["ciphertext"] = b64::encode(&ct).into();
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::Authentication)));

    let mut tag = b64::decode("t", v["tag"].as_str().unwrap(), 64).unwrap();
    tag[3] ^= 0x40;
    let mut t = v.clone();
    t["tag"] = b64::encode(&tag).into();
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::Authentication)));

    // An added harmless-looking protected member changes the AAD.
    let t = with_protected(v, |h| {
        h.insert("kid".into(), "x".into());
    });
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::Authentication)));
}

#[test]
fn tampered_rsa_encrypted_key_fails_unwrap() {
    let v = flattened(rsa_key(), KeyAlg::RsaOaep256);
    let mut ek = b64::decode("k", v["encrypted_key"].as_str().unwrap(), 1024).unwrap();
    ek[10] ^= 1;
    let mut t = v.clone();
    t["encrypted_key"] = b64::encode(&ek).into();
    assert!(matches!(dec(&t, rsa_key()), Err(CryptoError::KeyUnwrap { .. })));
    // Truncated.
    t["encrypted_key"] = b64::encode(&ek[..100]).into();
    assert!(matches!(dec(&t, rsa_key()), Err(CryptoError::KeyUnwrap { .. })));
}

#[test]
fn oaep_sha1_and_sha256_are_not_interchangeable() {
    let v = flattened(rsa_key(), KeyAlg::RsaOaep);
    let t = with_protected(v, |h| {
        h.insert("alg".into(), "RSA-OAEP-256".into());
    });
    assert!(matches!(dec(&t, rsa_key()), Err(CryptoError::KeyUnwrap { .. })));
}

#[test]
fn rejects_unsupported_enc_alg_zip_crit() {
    let v = flattened(ec_key(), KeyAlg::EcdhEsA256kw);
    let t = with_protected(v.clone(), |h| {
        h.insert("enc".into(), "A128CBC-HS256".into());
    });
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::UnsupportedEnc(e)) if e == "A128CBC-HS256"));
    let t = with_protected(v.clone(), |h| {
        h.insert("alg".into(), "dir".into());
    });
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::UnsupportedAlg(a)) if a == "dir"));
    let t = with_protected(v.clone(), |h| {
        h.insert("zip".into(), "DEF".into());
    });
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::UnsupportedHeader(_))));
    let t = with_protected(v.clone(), |h| {
        h.insert("crit".into(), json!(["exp"]));
    });
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::UnsupportedHeader(_))));
    let t = with_protected(v, |h| {
        h.remove("enc");
    });
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::MalformedJwe(_))));
}

#[test]
fn rejects_header_member_in_two_headers() {
    let mut v = flattened(ec_key(), KeyAlg::EcdhEsA256kw);
    v["unprotected"] = json!({"enc": "A256GCM"});
    assert!(matches!(dec(&v, ec_key()), Err(CryptoError::UnsupportedHeader(m)) if m.contains("enc")));
}

fn rsa1_5_jwe(cek: &[u8]) -> String {
    let PublicKey::Rsa(pk) = rsa_key().public_key() else { unreachable!() };
    let protected = b64::encode(br#"{"alg":"RSA1_5","enc":"A256GCM"}"#);
    let ek = pk.pkcs1v15_encrypt(cek).unwrap();
    let key: [u8; 32] = if cek.len() == 32 { cek.try_into().unwrap() } else { [0; 32] };
    let s = aead::seal(&key, b"legacy", protected.as_bytes()).unwrap();
    format!(
        "{protected}.{}.{}.{}.{}",
        b64::encode(&ek),
        b64::encode(&s.iv),
        b64::encode(&s.ciphertext),
        b64::encode(&s.tag)
    )
}

#[test]
fn rsa1_5_refused_unless_allowed() {
    let jwe = rsa1_5_jwe(&[9u8; 32]);
    assert!(matches!(decrypt(jwe.as_bytes(), rsa_key()), Err(CryptoError::Rsa15Refused)));
    let opts = DecryptOptions { allow_rsa1_5: true, ..Default::default() };
    assert_eq!(&decrypt_with(jwe.as_bytes(), rsa_key(), &opts).unwrap()[..], b"legacy");
    // A CEK of the wrong length is replaced by a random one: same error as a bad tag.
    let bad = rsa1_5_jwe(&[9u8; 16]);
    assert!(matches!(decrypt_with(bad.as_bytes(), rsa_key(), &opts), Err(CryptoError::Authentication)));
}

#[test]
fn rejects_epk_off_curve_or_wrong_curve() {
    let v = flattened(ec_key(), KeyAlg::EcdhEsA256kw);
    let t = with_protected(v.clone(), |h| {
        h["epk"]["y"] = b64::encode(&[1u8; 32]).into();
    });
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::InvalidPoint("epk"))));
    let t = with_protected(v.clone(), |h| {
        h["epk"]["x"] = b64::encode(&[1u8; 31]).into();
    });
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::InvalidPoint("epk"))));
    let t = with_protected(v.clone(), |h| {
        h["epk"]["crv"] = "P-384".into();
    });
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::UnsupportedHeader(_))));
    let t = with_protected(v, |h| {
        h.remove("epk");
    });
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::MalformedJwe(_))));
}

#[test]
fn rejects_truncated_and_wrong_length_fields() {
    let v = flattened(ec_key(), KeyAlg::EcdhEsA256kw);
    let mut t = v.clone();
    t["iv"] = b64::encode(&[0u8; 13]).into();
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::BadLength { what: "iv", .. })));
    let mut t = v.clone();
    t["tag"] = b64::encode(&[0u8; 15]).into();
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::BadLength { what: "tag", .. })));
    let mut t = v.clone();
    t["encrypted_key"] = b64::encode(&[0u8; 39]).into();
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::BadLength { .. })));
    let mut t = v.clone();
    t.as_object_mut().unwrap().remove("iv");
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::MalformedJwe(_))));
    let compact = enc(b"x", ec_key(), KeyAlg::EcdhEsA256kw, Serialization::Compact);
    let four: Vec<&str> = compact.split('.').take(4).collect();
    assert!(matches!(decrypt(four.join(".").as_bytes(), ec_key()), Err(CryptoError::MalformedJwe(_))));
    for hostile in [format!("{compact}."), format!("{compact}.x"), ".".into(), "...".into(), ".....".into(), "x".into()]
    {
        match decrypt(hostile.as_bytes(), ec_key()) {
            Err(CryptoError::MalformedJwe(m)) => assert!(m.contains("expected 5"), "{hostile:?}: {m}"),
            other => panic!("{hostile:?}: {other:?}"),
        }
    }
    assert!(matches!(decrypt(b"{\"protected\":", ec_key()), Err(CryptoError::MalformedJwe(_))));
    assert!(matches!(decrypt(&[0xff, 0xfe, 0x00], ec_key()), Err(CryptoError::MalformedJwe(_))));
}

#[test]
fn rejects_base64_garbage() {
    let v = flattened(ec_key(), KeyAlg::EcdhEsA256kw);
    for field in ["ciphertext", "iv", "tag", "encrypted_key", "protected"] {
        let mut t = v.clone();
        t[field] = "not*base64!".into();
        match dec(&t, ec_key()) {
            Err(CryptoError::Base64(_)) => {}
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn rejects_oversized_inputs_before_work() {
    let v = flattened(ec_key(), KeyAlg::EcdhEsA256kw);
    let opts = DecryptOptions { max_len: 256, ..Default::default() };
    assert!(matches!(
        decrypt_with(v.to_string().as_bytes(), ec_key(), &opts),
        Err(CryptoError::TooLarge { what: "JWE", .. })
    ));
    let mut t = v.clone();
    t["protected"] = "A".repeat(20_000).into();
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::TooLarge { .. })));
    let mut t = v.clone();
    t.as_object_mut().unwrap().remove("encrypted_key");
    t["recipients"] = Value::Array(vec![json!({"encrypted_key": "AA"}); 65]);
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::TooLarge { what: "JWE recipients", .. })));
    let mut t = v;
    t["recipients"] = json!([]);
    t.as_object_mut().unwrap().remove("encrypted_key");
    assert!(matches!(dec(&t, ec_key()), Err(CryptoError::MalformedJwe(_))));
}

#[test]
fn encrypt_refuses_bad_requests() {
    let (rsa_pub, ec_pub) = (rsa_key().public_key(), ec_key().public_key());
    let two = [Recipient::new(&rsa_pub), Recipient::new(&ec_pub)];
    for ser in [Serialization::Flattened, Serialization::Compact] {
        match encrypt(b"x", &two, ser, None) {
            Err(CryptoError::MalformedJwe(m)) => assert!(m.contains("exactly one recipient, got 2"), "{m}"),
            other => panic!("{ser:?}: {other:?}"),
        }
    }
    assert!(encrypt(b"x", &two[..1], Serialization::Compact, Some(b"a")).is_err());
    assert!(encrypt(b"x", &[], Serialization::General, None).is_err());
    let mismatched = Recipient { key: &ec_pub, alg: KeyAlg::RsaOaep };
    assert!(matches!(encrypt(b"x", &[mismatched], Serialization::General, None), Err(CryptoError::InvalidKey(_))));
    let legacy = Recipient { key: &rsa_pub, alg: KeyAlg::Rsa1_5 };
    assert!(matches!(encrypt(b"x", &[legacy], Serialization::General, None), Err(CryptoError::UnsupportedAlg(_))));
}

#[test]
fn go_jose_general_json_with_first_recipient_repeated_top_level() {
    let (rsa_pub, ec_pub) = (rsa_key().public_key(), ec_key().public_key());
    let jwe = encrypt(
        b"shared",
        &[Recipient { key: &rsa_pub, alg: KeyAlg::RsaOaep }, Recipient::new(&ec_pub)],
        Serialization::General,
        None,
    )
    .unwrap();
    let mut v: Value = serde_json::from_str(&jwe).unwrap();
    // The shape go-jose's FullSerialize writes (seen in skopeo-encrypted layers).
    v["encrypted_key"] = v["recipients"][0]["encrypted_key"].clone();
    assert_eq!(&dec(&v, ec_key()).unwrap()[..], b"shared");
    v["header"] = v["recipients"][0]["header"].clone();
    assert_eq!(&dec(&v, rsa_key()).unwrap()[..], b"shared");
    // A top-level copy that differs is refused.
    v["header"] = json!({"alg": "RSA-OAEP", "kid": "x"});
    assert!(matches!(dec(&v, rsa_key()), Err(CryptoError::MalformedJwe(_))));
    let mut w: Value = serde_json::from_str(&jwe).unwrap();
    w["encrypted_key"] = "AAAA".into();
    assert!(matches!(dec(&w, rsa_key()), Err(CryptoError::MalformedJwe(_))));
}
