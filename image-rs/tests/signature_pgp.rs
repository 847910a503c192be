//! OpenPGP simple-signing verification against hostile input, on fixtures made
//! by GnuPG (see tests/fixtures/pgp/README.md): the genuine signature verifies;
//! every single-byte corruption, truncation, garbage, oversized input and
//! decompression bomb is refused with an error, never a panic or an acceptance.

use image_rs::signature::payload::{parse_payload, SIMPLE_SIGNING_TYPE};
use image_rs::signature::simple::{Keyring, SIGNATURE_LIMIT};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/pgp/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn keyring(names: &[&str]) -> Result<Keyring, String> {
    Keyring::parse(&names.iter().map(|n| (n.to_string(), fixture(n))).collect::<Vec<_>>())
}

#[test]
fn genuine_gpg_signature_verifies_and_yields_the_payload() {
    let ring = keyring(&["other.asc", "owner.asc"]).unwrap();
    assert_eq!(ring.len(), 2);
    let (payload, fpr) = ring.verify(&fixture("signature-1")).unwrap();
    assert_eq!(payload, fixture("payload.json"));
    assert_eq!(fpr.len(), 40);
    let claim = parse_payload(&payload, SIMPLE_SIGNING_TYPE).unwrap();
    assert_eq!(claim.identity.to_string(), "registry.example/app:1");
}

#[test]
fn wrong_key_is_refused() {
    let err = keyring(&["other.asc"]).unwrap().verify(&fixture("signature-1")).unwrap_err();
    assert!(err.contains("not signed by a trusted key"), "{err}");
}

#[test]
fn every_single_byte_corruption_and_truncation_is_refused() {
    let ring = keyring(&["owner.asc"]).unwrap();
    let good = fixture("signature-1");
    let payload = fixture("payload.json");
    for i in 0..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] ^= flip;
            // A flip may land in bytes the signature does not cover (e.g. the literal
            // packet's file name); then the payload must still be exactly the signed one.
            if let Ok((p, _)) = ring.verify(&bad) {
                assert_eq!(p, payload, "byte {i} ^ {flip:#x} changed the payload and still verified");
            }
        }
    }
    for len in 0..good.len() {
        assert!(ring.verify(&good[..len]).is_err(), "truncated to {len} bytes accepted");
    }
}

#[test]
fn garbage_oversized_and_bombs_are_refused() {
    let ring = keyring(&["owner.asc"]).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), ""),
        (b"garbage".to_vec(), ""),
        (vec![0xa3; SIGNATURE_LIMIT + 1], "limit"),
        (fixture("owner.asc"), ""),
        (fixture("bomb.sig"), "over the 65536-byte limit"),
        // A literal-data packet without any signature.
        (vec![0xcb, 0x08, b'b', 0x00, 0, 0, 0, 0, b'h', b'i'], ""),
    ];
    for (bytes, want) in cases {
        let err = ring.verify(&bytes).unwrap_err();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn malformed_keyrings_are_refused() {
    for bad in
        [&b""[..], b"garbage", b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n"]
    {
        let err = Keyring::parse(&[("k".into(), bad.to_vec())]).err().expect("refused");
        assert!(err.starts_with("keyring k:"), "{err}");
    }
    let sig_as_key = Keyring::parse(&[("k".into(), fixture("signature-1"))]);
    assert!(sig_as_key.is_err());
}
