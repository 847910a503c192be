//! Key loading/export tests, including hostile key files.

use std::sync::OnceLock;

use super::*;

const RFC7516_A1: &str = include_str!("../tests/data/rfc7516-a1.json");

fn rsa_jwk() -> String {
    let v: serde_json::Value = serde_json::from_str(RFC7516_A1).unwrap();
    v["jwk"].to_string()
}

fn rsa_key() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| PrivateKey::from_jwk(rsa_jwk().as_bytes()).unwrap())
}

#[test]
fn public_jwk_has_exactly_the_hashed_members_in_order() {
    let ec = PrivateKey::generate_p256().unwrap().public_key();
    let s = serde_json::to_string(&ec.to_jwk(KeyAlg::EcdhEsA256kw)).unwrap();
    let keys: Vec<String> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&s).unwrap().keys().cloned().collect();
    assert!(s.starts_with(r#"{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":""#), "{s}");
    assert_eq!(keys.len(), 5);
    let s = serde_json::to_string(&rsa_key().public_key().to_jwk(KeyAlg::RsaOaep256)).unwrap();
    assert!(s.starts_with(r#"{"kty":"RSA","alg":"RSA-OAEP-256","n":"oahUIoWw0K0u"#), "{s}");
    assert!(s.ends_with(r#","e":"AQAB"}"#), "{s}");
}

#[test]
fn public_jwk_round_trips() {
    for k in [PrivateKey::generate_p256().unwrap(), rsa_key().clone()] {
        let pk = k.public_key();
        let jwk = pk.to_jwk(pk.default_alg());
        assert_eq!(jwk.to_public_key().unwrap(), pk);
        assert_eq!(PublicKey::from_bytes(serde_json::to_string(&jwk).unwrap().as_bytes()).unwrap(), pk);
    }
}

#[test]
fn pem_round_trips_pkcs8_spki_sec1_pkcs1() {
    use p256::pkcs8::LineEnding;
    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};

    let ec = PrivateKey::generate_p256().unwrap();
    let pem = ec.to_pkcs8_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(PrivateKey::from_bytes(pem.as_bytes()).unwrap().public_key(), ec.public_key());
    let PrivateKey::P256(sk) = &ec else { unreachable!() };
    // SEC1, preceded by an EC PARAMETERS block as `openssl ecparam -genkey` writes it.
    let sec1 = format!(
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
        &*sk.to_sec1_pem(LineEnding::LF).unwrap()
    );
    assert_eq!(PrivateKey::from_pem(&sec1).unwrap().public_key(), ec.public_key());
    let spki = ec.public_key().to_spki_pem().unwrap();
    assert_eq!(PublicKey::from_bytes(spki.as_bytes()).unwrap(), ec.public_key());
    // A private key file also yields its public key.
    assert_eq!(PublicKey::from_bytes(pem.as_bytes()).unwrap(), ec.public_key());

    let PrivateKey::Rsa(rk) = rsa_key() else { unreachable!() };
    let pkcs1 = rk.to_pkcs1_pem(LineEnding::LF).unwrap();
    assert_eq!(PrivateKey::from_bytes(pkcs1.as_bytes()).unwrap().public_key(), rsa_key().public_key());
    let pkcs1_pub = rk.to_public_key().to_pkcs1_pem(LineEnding::LF).unwrap();
    assert_eq!(PublicKey::from_bytes(pkcs1_pub.as_bytes()).unwrap(), rsa_key().public_key());
    let der = rk.to_pkcs8_der().unwrap();
    assert_eq!(PrivateKey::from_bytes(der.as_bytes()).unwrap().public_key(), rsa_key().public_key());
}

#[test]
fn p256_xy_is_the_big_endian_affine_coordinates() {
    // The P-256 base point G (SEC 2, section 2.4.2).
    let x = hex::decode("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296").unwrap();
    let y = hex::decode("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5").unwrap();
    let g = p256_point(&x, &y, "test").unwrap();
    assert_eq!(p256_xy(&g), (b64::encode(&x), b64::encode(&y)));
}

#[test]
fn ec_jwk_private_round_trip_and_mismatch() {
    let PrivateKey::P256(sk) = PrivateKey::generate_p256().unwrap() else { unreachable!() };
    let (x, y) = p256_xy(&sk.public_key());
    let d = b64::encode(&sk.to_bytes());
    let jwk = serde_json::json!({"kty":"EC","crv":"P-256","x":x,"y":y,"d":d});
    let k = PrivateKey::from_bytes(jwk.to_string().as_bytes()).unwrap();
    assert_eq!(k.public_key(), PublicKey::P256(sk.public_key()));
    let other = PrivateKey::generate_p256().unwrap().public_key().to_jwk(KeyAlg::EcdhEsA256kw);
    let bad = serde_json::json!({"kty":"EC","crv":"P-256","x":other.x,"y":other.y,"d":d});
    assert!(
        matches!(PrivateKey::from_jwk(bad.to_string().as_bytes()), Err(CryptoError::InvalidKey(m)) if m.contains("do not match"))
    );
}

#[test]
fn rejects_hostile_key_files() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("garbage", b"\x00\x01\x02garbage".to_vec()),
        ("oct jwk", br#"{"kty":"oct","k":"AAAA"}"#.to_vec()),
        ("P-384 jwk", br#"{"kty":"EC","crv":"P-384","x":"AA","y":"AA","d":"AA"}"#.to_vec()),
        ("zero d", format!(r#"{{"kty":"EC","crv":"P-256","d":"{}"}}"#, b64::encode(&[0u8; 32])).into_bytes()),
        ("rsa without primes", br#"{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQAB"}"#.to_vec()),
        ("truncated pem", b"-----BEGIN PRIVATE KEY-----\nMIIB\n".to_vec()),
        ("bad pem body", b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n".to_vec()),
        (
            "encrypted pem",
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n".to_vec(),
        ),
        ("not json", b"{not json".to_vec()),
    ];
    for (name, data) in cases {
        match PrivateKey::from_bytes(&data) {
            Err(CryptoError::InvalidKey(_) | CryptoError::Base64(_)) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(matches!(
        PrivateKey::from_bytes(&vec![b' '; MAX_KEY_FILE + 1]),
        Err(CryptoError::TooLarge { what: "key file", .. })
    ));
    // Off-curve public JWK.
    let off = serde_json::json!({"kty":"EC","crv":"P-256","x":b64::encode(&[1;32]),"y":b64::encode(&[2;32])});
    assert!(matches!(PublicKey::from_jwk(off.to_string().as_bytes()), Err(CryptoError::InvalidPoint(_))));
}

#[test]
fn rejects_weak_rsa() {
    assert!(matches!(PrivateKey::generate_rsa(1024), Err(CryptoError::InvalidKey(_))));
    // A 1024-bit public modulus (128 bytes) in a JWK.
    let jwk = serde_json::json!({"kty":"RSA","n": b64::encode(&[0xc5; 128]),"e":"AQAB"});
    assert!(
        matches!(PublicKey::from_jwk(jwk.to_string().as_bytes()), Err(CryptoError::InvalidKey(m)) if m.contains("1024"))
    );
}

#[test]
fn generated_rsa_key_works_for_oaep() {
    let k = PrivateKey::generate_rsa(2048).unwrap();
    assert_eq!(k.describe(), "RSA-2048");
    let pk = k.public_key();
    let jwe = crate::jwe::encrypt(b"k", &[crate::jwe::Recipient::new(&pk)], crate::jwe::Serialization::Compact, None)
        .unwrap();
    assert_eq!(&crate::jwe::decrypt(jwe.as_bytes(), &k).unwrap()[..], b"k");
}
