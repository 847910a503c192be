//! Unwrap tests: JWE recipients with real keys, provider packets with a
//! directory-backed key source, and the error an operator sees.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::keysource::{DirKeySource, KeySourceError};
use crate::ocicrypt::encrypt::{wrap_for, Recipient};
use crate::ocicrypt::{ANN_KEYS_PREFIX, ANN_PUBOPTS};

fn opts_json(symkey: &[u8], nonce: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "symkey": STANDARD.encode(symkey),
        "digest": Digest::of(b"plain").to_string(),
        "cipheroptions": {"nonce": STANDARD.encode(nonce)},
    }))
    .unwrap()
}

fn annotations(opts: &[u8], recipients: &[Recipient]) -> HashMap<String, String> {
    let mut a: HashMap<String, String> = wrap_for(opts, recipients).unwrap().into_iter().collect();
    let pubopts = serde_json::json!({"cipher": "AES_256_CTR_HMAC_SHA256", "hmac": STANDARD.encode([5u8; 32]), "cipheroptions": {}});
    a.insert(ANN_PUBOPTS.into(), STANDARD.encode(pubopts.to_string()));
    a
}

fn layer() -> Digest {
    Digest::of(b"encrypted blob")
}

fn cfg(keys: Vec<DecryptionKey>, source: Arc<dyn KeySource>) -> DecryptConfig {
    DecryptConfig { keys: Arc::new(keys), key_source: source }
}

fn named(name: &str, key: PrivateKey) -> DecryptionKey {
    DecryptionKey { name: name.into(), key }
}

#[tokio::test]
async fn jwe_rsa_and_ec_recipients_unwrap_with_either_key() {
    let rsa = PrivateKey::generate_rsa(2048).unwrap();
    let ec = PrivateKey::generate_p256().unwrap();
    let a = annotations(
        &opts_json(&[1; 32], &[2; 16]),
        &[Recipient::Jwe(rsa.public_key()), Recipient::Jwe(ec.public_key())],
    );
    for key in [rsa, ec] {
        let keys = unwrap_layer_keys(&[(layer(), Some(&a))], &cfg(vec![named("k", key)], Arc::new(NoKeySource)))
            .await
            .unwrap();
        assert_eq!(&keys[0].symkey[..], &[1; 32]);
        assert_eq!(keys[0].nonce, [2; 16]);
        assert_eq!(keys[0].hmac, [5; 32]);
        assert_eq!(keys[0].plain_digest, Digest::of(b"plain"));
        assert!(!format!("{:?}", keys[0]).contains("symkey"));
    }
}

#[tokio::test]
async fn no_or_wrong_key_names_layer_recipients_and_keys_tried() {
    let ec = PrivateKey::generate_p256().unwrap();
    let a = annotations(&opts_json(&[1; 32], &[2; 16]), &[Recipient::Jwe(ec.public_key())]);
    let e = unwrap_layer_keys(&[(layer(), Some(&a))], &DecryptConfig::default()).await.unwrap_err().to_string();
    assert!(
        e.contains(&layer().to_string()) && e.contains("jwe [ECDH-ES+A256KW]") && e.contains("no --decryption-key"),
        "{e}"
    );
    let wrong = named("/keys/other.pem", PrivateKey::generate_p256().unwrap());
    let e = unwrap_layer_keys(&[(layer(), Some(&a))], &cfg(vec![wrong], Arc::new(NoKeySource)))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("/keys/other.pem (EC P-256)") && e.contains("unwrap failed"), "{e}");
}

fn dir_source(kek: &[u8]) -> (tempfile::TempDir, Arc<dyn KeySource>) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("default/key")).unwrap();
    std::fs::write(d.path().join("default/key/1"), kek).unwrap();
    let s = Arc::new(DirKeySource::new(d.path()));
    (d, s)
}

fn provider(kek: &[u8], kid: &str) -> Recipient {
    Recipient::Provider {
        name: "attestation-agent".into(),
        kid: kid.parse().unwrap(),
        kek: Zeroizing::new(kek.to_vec()),
    }
}

#[tokio::test]
async fn provider_packet_unwraps_with_kek_from_key_source() {
    let (_d, source) = dir_source(&[7; 32]);
    let a = annotations(&opts_json(&[3; 32], &[4; 16]), &[provider(&[7; 32], "kbs:///default/key/1")]);
    let packet = &a[&format!("{ANN_KEYS_PREFIX}provider.attestation-agent")];
    let json: serde_json::Value = serde_json::from_slice(&STANDARD.decode(packet).unwrap()).unwrap();
    assert_eq!(json["kid"], "kbs:///default/key/1");
    assert_eq!(json["wrap_type"], "A256GCM");
    let keys = unwrap_layer_keys(&[(layer(), Some(&a))], &cfg(vec![], source)).await.unwrap();
    assert_eq!(&keys[0].symkey[..], &[3; 32]);
}

#[tokio::test]
async fn provider_failures_say_which_kid_and_why() {
    let (_d, source) = dir_source(&[8; 32]);
    let wrong_kek = annotations(&opts_json(&[3; 32], &[4; 16]), &[provider(&[7; 32], "kbs:///default/key/1")]);
    let e =
        unwrap_layer_keys(&[(layer(), Some(&wrong_kek))], &cfg(vec![], source.clone())).await.unwrap_err().to_string();
    assert!(e.contains("kbs:///default/key/1") && e.contains("did not open"), "{e}");
    let missing = annotations(&opts_json(&[3; 32], &[4; 16]), &[provider(&[7; 32], "kbs:///default/key/2")]);
    let e = unwrap_layer_keys(&[(layer(), Some(&missing))], &cfg(vec![], source)).await.unwrap_err().to_string();
    assert!(e.contains("kbs:///default/key/2 not found"), "{e}");
    let e = unwrap_layer_keys(&[(layer(), Some(&missing))], &DecryptConfig::default()).await.unwrap_err().to_string();
    assert!(e.contains("no key source is configured"), "{e}");
}

fn with_packet(json: serde_json::Value) -> HashMap<String, String> {
    let mut a = annotations(b"{}", &[provider(&[7; 32], "kbs:///default/key/1")]);
    a.insert(format!("{ANN_KEYS_PREFIX}provider.attestation-agent"), STANDARD.encode(json.to_string()));
    a
}

#[tokio::test]
async fn hostile_provider_packets_are_refused_with_reasons() {
    let (_d, source) = dir_source(&[7; 32]);
    let c = cfg(vec![], source);
    let cases = [
        (
            serde_json::json!({"kid": "kbs:///../etc/x", "wrapped_data": "", "iv": "", "wrap_type": "A256GCM"}),
            "invalid segment",
        ),
        (
            serde_json::json!({"kid": "kbs:///default/key/1", "wrapped_data": "AA==", "iv": "AA==", "wrap_type": "A128CBC"}),
            "wrap_type",
        ),
        (
            serde_json::json!({"kid": "kbs:///default/key/1", "wrapped_data": "!", "iv": "AA==", "wrap_type": "A256GCM"}),
            "not base64",
        ),
        (
            serde_json::json!({"kid": "kbs:///default/key/1", "wrapped_data": "AAAA", "iv": "AA==", "wrap_type": "A256GCM"}),
            "did not open",
        ),
        (serde_json::json!({"kid": 5}), "unreadable packet"),
    ];
    for (packet, want) in cases {
        let a = with_packet(packet);
        let e = unwrap_layer_keys(&[(layer(), Some(&a))], &c).await.unwrap_err().to_string();
        assert!(e.contains(want), "want {want:?} in {e}");
    }
}

#[tokio::test]
async fn unwrapped_garbage_is_malformed_not_a_key() {
    let (_d, source) = dir_source(&[7; 32]);
    for (opts, want) in [
        (br#"{"symkey":"AAAA","digest":"sha256:00","cipheroptions":{}}"#.to_vec(), "symkey is 3 bytes"),
        (opts_json(&[1; 32], &[2; 15]), "nonce is 15 bytes"),
        (b"not json".to_vec(), "not ocicrypt JSON"),
        (br#"{"symkey":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","digest":"md5:x","cipheroptions":{"nonce":"AgICAgICAgICAgICAgICAg=="}}"#.to_vec(), "digest"),
    ] {
        let a = annotations(&opts, &[provider(&[7; 32], "kbs:///default/key/1")]);
        let e = unwrap_layer_keys(&[(layer(), Some(&a))], &cfg(vec![], source.clone())).await.unwrap_err();
        assert!(matches!(e, OcicryptError::Malformed { .. }) && e.to_string().contains(want), "want {want:?} in {e}");
    }
}

/// Counts resource requests (a seam double around the real directory source).
struct Counting(Arc<dyn KeySource>, AtomicUsize);

#[async_trait::async_trait]
impl KeySource for Counting {
    async fn get_resource(&self, uri: &ResourceUri) -> Result<Secret, KeySourceError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.get_resource(uri).await
    }
}

#[tokio::test]
async fn kek_is_fetched_once_per_pull_for_layers_sharing_a_kid() {
    let (_d, source) = dir_source(&[7; 32]);
    let counting = Arc::new(Counting(source, AtomicUsize::new(0)));
    let a1 = annotations(&opts_json(&[1; 32], &[2; 16]), &[provider(&[7; 32], "kbs:///default/key/1")]);
    let a2 = annotations(&opts_json(&[3; 32], &[4; 16]), &[provider(&[7; 32], "kbs:///default/key/1")]);
    let layers = [(Digest::of(b"1"), Some(&a1)), (Digest::of(b"2"), Some(&a2))];
    let keys = unwrap_layer_keys(&layers, &cfg(vec![], counting.clone())).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(counting.1.load(Ordering::SeqCst), 1);
}
