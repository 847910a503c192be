//! End to end: the KBS client against the test KBS on loopback, speaking the
//! real protocol over real sockets (HTTP and HTTPS).

mod support;

use std::sync::Arc;
use std::time::Duration;

use attestation_agent::attester::sample::SampleAttester;
use attestation_agent::attester::{Attester, AttesterError, EvidenceRequest, TeeKind};
use attestation_agent::kbs::{KbsClient, KbsError};
use support::{config, resources};
use test_kbs::{Faults, KbsConfig, Policy, TestKbs};

fn sample() -> Arc<dyn Attester> {
    Arc::new(SampleAttester::default())
}

async fn kbs(n: usize) -> TestKbs {
    TestKbs::start(KbsConfig { resources: resources(n), ..KbsConfig::default() }).await.unwrap()
}

#[tokio::test]
async fn handshake_then_five_resources_with_exactly_one_attestation() {
    let kbs = kbs(5).await;
    let client = KbsClient::new(&config(&kbs.url(), ""), sample(), None).unwrap();
    for i in 0..5 {
        let bytes = client.get_resource(&format!("kbs:///default/key/{i}")).await.unwrap();
        assert_eq!(&bytes[..], format!("secret-{i}").as_bytes());
    }
    assert_eq!(kbs.stats().attestations(), 1, "one RCAR handshake for five resources");
    assert_eq!(kbs.stats().auth.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(client.handshakes(), 1);
}

#[tokio::test]
async fn concurrent_first_requests_share_one_attestation() {
    let kbs = kbs(8).await;
    let client = Arc::new(KbsClient::new(&config(&kbs.url(), ""), sample(), None).unwrap());
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.get_resource(&format!("kbs:///default/key/{i}")).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(&t.await.unwrap().unwrap()[..], format!("secret-{i}").as_bytes());
    }
    assert_eq!(kbs.stats().attestations(), 1);
}

#[tokio::test]
async fn expired_token_leads_to_a_new_attestation() {
    let kbs = TestKbs::start(KbsConfig {
        resources: resources(2),
        token_ttl: Duration::from_secs(1),
        ..KbsConfig::default()
    })
    .await
    .unwrap();
    let client = KbsClient::new(&config(&kbs.url(), "token_skew_secs = 0"), sample(), None).unwrap();
    client.get_resource("kbs:///default/key/0").await.unwrap();
    assert_eq!(kbs.stats().attestations(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    client.get_resource("kbs:///default/key/1").await.unwrap();
    assert_eq!(kbs.stats().attestations(), 2, "the expired token was not reused");
}

#[tokio::test]
async fn unauthorized_leads_to_a_new_attestation() {
    let kbs = kbs(2).await;
    let client = KbsClient::new(&config(&kbs.url(), ""), sample(), None).unwrap();
    client.get_resource("kbs:///default/key/0").await.unwrap();
    kbs.revoke_sessions();
    let bytes = client.get_resource("kbs:///default/key/1").await.unwrap();
    assert_eq!(&bytes[..], b"secret-1");
    assert_eq!(kbs.stats().attestations(), 2);
}

#[tokio::test]
async fn kbs_down_gives_bounded_retries_then_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = KbsClient::new(&config(&format!("http://127.0.0.1:{port}"), ""), sample(), None).unwrap();
    let started = std::time::Instant::now();
    let err = client.get_resource("kbs:///default/key/0").await.unwrap_err();
    match &err {
        KbsError::Unreachable { attempts, url, .. } => {
            assert_eq!(*attempts, 3);
            assert!(url.ends_with("/kbs/v0/auth"), "{url}");
        }
        other => panic!("expected Unreachable, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("unreachable after 3 attempt(s)") && msg.contains(&port.to_string()), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5), "retries are bounded");
}

#[tokio::test]
async fn transient_503s_are_retried() {
    let kbs = TestKbs::start(KbsConfig {
        resources: resources(1),
        faults: Faults { unavailable_for: 2, ..Faults::default() },
        ..KbsConfig::default()
    })
    .await
    .unwrap();
    let client = KbsClient::new(&config(&kbs.url(), ""), sample(), None).unwrap();
    assert_eq!(&client.get_resource("kbs:///default/key/0").await.unwrap()[..], b"secret-0");
}

#[tokio::test]
async fn tampered_jwe_is_an_error() {
    let kbs = TestKbs::start(KbsConfig {
        resources: resources(1),
        faults: Faults { tamper_jwe: true, ..Faults::default() },
        ..KbsConfig::default()
    })
    .await
    .unwrap();
    let client = KbsClient::new(&config(&kbs.url(), ""), sample(), None).unwrap();
    let err = client.get_resource("kbs:///default/key/0").await.unwrap_err();
    assert!(matches!(err, KbsError::Key(_)), "{err}");
    assert!(err.to_string().contains("decrypt"), "{err}");
}

/// An attester that binds the wrong report_data (a man in the middle
/// replaying evidence for another key would look like this).
#[derive(Debug)]
struct WrongBinding(SampleAttester);

impl Attester for WrongBinding {
    fn tee(&self) -> TeeKind {
        TeeKind::Sample
    }
    fn evidence(&self, req: &EvidenceRequest<'_>) -> Result<serde_json::Value, AttesterError> {
        let mut data = req.report_data.to_vec();
        data[0] ^= 0xff;
        self.0.evidence(&EvidenceRequest { report_data: &data, ..*req })
    }
}

#[tokio::test]
async fn report_data_binding_mismatch_is_refused_by_the_kbs() {
    let kbs = kbs(1).await;
    let client =
        KbsClient::new(&config(&kbs.url(), ""), Arc::new(WrongBinding(SampleAttester::default())), None).unwrap();
    let err = client.get_resource("kbs:///default/key/0").await.unwrap_err();
    match &err {
        KbsError::Refused { status: 401, variant, detail } => {
            assert_eq!(variant, "AttestationFailed");
            assert!(detail.contains("binding"), "{detail}");
        }
        other => panic!("expected a 401 refusal, got {other}"),
    }
    assert_eq!(kbs.stats().attestations(), 0);
    assert_eq!(kbs.stats().resource_ok.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn policy_denial_and_missing_resources_are_named() {
    let kbs = TestKbs::start(KbsConfig {
        resources: resources(2),
        policy: Policy::Deny(["default/key/1".to_string()].into()),
        ..KbsConfig::default()
    })
    .await
    .unwrap();
    let client = KbsClient::new(&config(&kbs.url(), ""), sample(), None).unwrap();
    client.get_resource("kbs:///default/key/0").await.unwrap();
    let denied = client.get_resource("kbs:///default/key/1").await.unwrap_err();
    assert!(matches!(&denied, KbsError::Refused { variant, .. } if variant == "PolicyDeny"), "{denied}");
    let missing = client.get_resource("kbs:///default/key/404").await.unwrap_err();
    assert!(matches!(&missing, KbsError::Refused { variant, .. } if variant == "ResourceNotFound"), "{missing}");
    assert_eq!(kbs.stats().attestations(), 1, "a policy verdict does not trigger re-attestation");
    let traversal = client.get_resource("kbs:///default/../secret").await.unwrap_err();
    assert!(matches!(traversal, KbsError::Uri(_)), "{traversal}");
}

#[tokio::test]
async fn rsa_tee_key_receives_rsa_oaep_256_resources() {
    let kbs = kbs(1).await;
    let client = KbsClient::new(&config(&kbs.url(), "tee_key = \"rsa-2048\""), sample(), None).unwrap();
    assert_eq!(&client.get_resource("kbs:///default/key/0").await.unwrap()[..], b"secret-0");
}

#[tokio::test]
async fn attest_carries_init_data() {
    let kbs = kbs(1).await;
    let initdata = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"policy.rego\" = \"package agent_policy\"\n";
    let client = KbsClient::new(&config(&kbs.url(), ""), sample(), Some(initdata.into())).unwrap();
    client.get_resource("kbs:///default/key/0").await.unwrap();
    assert_eq!(kbs.stats().last_init_data.lock().unwrap().as_deref(), Some(initdata));
}

#[tokio::test]
async fn passport_mode_presents_the_token_as_bearer() {
    let kbs = kbs(3).await;
    let client = KbsClient::new(&config(&kbs.url(), "mode = \"passport\""), sample(), None).unwrap();
    for i in 0..3 {
        client.get_resource(&format!("kbs:///default/key/{i}")).await.unwrap();
    }
    // The token alone authorizes: sessions can be forgotten by the KBS.
    kbs.revoke_sessions();
    client.get_resource("kbs:///default/key/0").await.unwrap();
    assert_eq!(kbs.stats().attestations(), 1);
    let token = client.token().await.unwrap();
    assert_eq!(token.split('.').count(), 3);
}

#[tokio::test]
async fn https_with_a_pinned_certificate() {
    if !support::require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::self_signed(dir.path(), "kbs");
    let (other_cert, _) = support::self_signed(dir.path(), "other");
    let kbs =
        TestKbs::start(KbsConfig { resources: resources(1), tls: Some((cert.clone(), key)), ..KbsConfig::default() })
            .await
            .unwrap();
    assert!(kbs.url().starts_with("https://"));
    let mut cfg = config(&kbs.url(), "");
    cfg.token_configs.kbs.as_mut().unwrap().cert = Some(cert.clone());
    let client = KbsClient::new(&cfg, sample(), None).unwrap();
    assert_eq!(&client.get_resource("kbs:///default/key/0").await.unwrap()[..], b"secret-0");

    let requests = kbs.stats().requests.load(std::sync::atomic::Ordering::SeqCst);
    let mut wrong = config(&kbs.url(), "");
    wrong.token_configs.kbs.as_mut().unwrap().cert = Some(other_cert);
    let client = KbsClient::new(&wrong, sample(), None).unwrap();
    let err = client.get_resource("kbs:///default/key/0").await.unwrap_err();
    assert!(matches!(err, KbsError::Tls { .. }), "a certificate failure is not retried: {err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_eq!(kbs.stats().requests.load(std::sync::atomic::Ordering::SeqCst), requests, "no request reached the KBS");
}

/// The certificate `openssl req -x509 -newkey rsa:2048 -nodes -subj
/// /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1` makes is CA:TRUE; as the
/// pinned KBS certificate it was refused with CaUsedAsEndEntity before
/// exact-match pinning. A different certificate, or the right one for another
/// name, is still refused, before any request reaches the KBS.
#[tokio::test]
async fn https_with_a_pinned_openssl_ca_true_certificate_and_its_refusals() {
    if !support::require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::openssl_default_x509(dir.path(), "kbs", "127.0.0.1", "IP:127.0.0.1");
    let (other, _) = support::openssl_default_x509(dir.path(), "other", "127.0.0.1", "IP:127.0.0.1");
    let (elsewhere, elsewhere_key) =
        support::openssl_default_x509(dir.path(), "kbs2", "kbs.example", "DNS:kbs.example");
    let kbs =
        TestKbs::start(KbsConfig { resources: resources(1), tls: Some((cert.clone(), key)), ..KbsConfig::default() })
            .await
            .unwrap();
    let client_pinning = |pem: &str, url: &str| {
        let mut cfg = config(url, "");
        cfg.token_configs.kbs.as_mut().unwrap().cert = Some(pem.to_owned());
        KbsClient::new(&cfg, sample(), None).unwrap()
    };
    let client = client_pinning(&cert, &kbs.url());
    assert_eq!(&client.get_resource("kbs:///default/key/0").await.unwrap()[..], b"secret-0");

    let requests = || kbs.stats().requests.load(std::sync::atomic::Ordering::SeqCst);
    let before = requests();
    let err = client_pinning(&other, &kbs.url()).get_resource("kbs:///default/key/0").await.unwrap_err();
    assert!(matches!(err, KbsError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("is not a pinned certificate"), "{err}");
    assert_eq!(requests(), before, "no request reached the KBS");

    // The pinned certificate is presented, but it names kbs.example, not 127.0.0.1.
    let wrong_name = TestKbs::start(KbsConfig {
        resources: resources(1),
        tls: Some((elsewhere.clone(), elsewhere_key)),
        ..KbsConfig::default()
    })
    .await
    .unwrap();
    let err = client_pinning(&elsewhere, &wrong_name.url()).get_resource("kbs:///default/key/0").await.unwrap_err();
    assert!(matches!(err, KbsError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("not valid for name"), "{err}");
    assert_eq!(wrong_name.stats().requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn hostile_kbs_answers_are_clear_errors() {
    let kbs = kbs(1).await;
    let cfg = config(&kbs.url(), "max_response_bytes = 65536");
    let client = KbsClient::new(&cfg, sample(), None).unwrap();

    kbs.update(|c| c.faults = Faults { oversized_resource: Some(1 << 20), ..Faults::default() });
    let err = client.get_resource("kbs:///default/key/0").await.unwrap_err();
    assert!(matches!(err, KbsError::TooLarge { limit: 65536, .. }), "{err}");

    kbs.update(|c| c.faults = Faults { garbage_resource: true, ..Faults::default() });
    let err = client.get_resource("kbs:///default/key/0").await.unwrap_err();
    assert!(matches!(err, KbsError::Key(_)), "{err}");

    let fresh = KbsClient::new(&cfg, sample(), None).unwrap();
    kbs.update(|c| c.faults = Faults { bad_cookie: Some("a b;c".into()), ..Faults::default() });
    let err = fresh.get_resource("kbs:///default/key/0").await.unwrap_err();
    assert!(matches!(&err, KbsError::Protocol(m) if m.contains("cookie")), "{err}");

    kbs.update(|c| c.faults = Faults { malformed_challenge: true, ..Faults::default() });
    let err = fresh.get_resource("kbs:///default/key/0").await.unwrap_err();
    assert!(matches!(&err, KbsError::Protocol(m) if m.contains("challenge")), "{err}");

    kbs.update(|c| c.faults = Faults::default());
    assert_eq!(&fresh.get_resource("kbs:///default/key/0").await.unwrap()[..], b"secret-0");
}

#[tokio::test]
async fn default_deny_policy_refuses_sample_evidence_resources() {
    let kbs = TestKbs::start(KbsConfig { resources: resources(1), policy: Policy::DenyAll, ..KbsConfig::default() })
        .await
        .unwrap();
    let client = KbsClient::new(&config(&kbs.url(), ""), sample(), None).unwrap();
    let err = client.get_resource("kbs:///default/key/0").await.unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
}
