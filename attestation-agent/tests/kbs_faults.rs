//! Key release from the test KBS through the seeded fault proxy of image-rs's
//! test support (resets, stalls, truncation, 5xx, 429 with Retry-After, wrong
//! Content-Length, trickle, redirects): the KBS client retries the retryable
//! faults within `max_attempts` and either releases the exact secret or fails
//! within its bound with an error naming the KBS and the cause; it never hangs.
//!
//! Replay a failure with the seed it prints: `FAULT_SEED=<seed> cargo test -p attestation-agent --test kbs_faults`.

#[path = "../../image-rs/tests/support/fault_proxy.rs"]
#[allow(dead_code)]
mod fault_proxy;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use attestation_agent::attester::sample::SampleAttester;
use attestation_agent::kbs::KbsClient;
use fault_proxy::{splitmix, Fault, FaultPlan, FaultProxy};
use support::{config, resources};
use test_kbs::{KbsConfig, TestKbs};

/// Past this a key release is hung: the test fails.
const HARD: Duration = Duration::from_secs(30);

/// max_attempts 4, backoff 10 ms, 2 s per request: the bound of one KBS call
/// is about 4 × (2 s + Retry-After 1 s).
fn client(url: &str) -> KbsClient {
    let mut cfg = config(url, "");
    cfg.kbs_client.max_attempts = 4;
    cfg.kbs_client.timeout_secs = 2;
    KbsClient::new(&cfg, Arc::new(SampleAttester::default()), None).unwrap()
}

/// Fetches three keys through a proxy with `plan`; returns (released, failed, faults injected).
async fn release(kbs: &TestKbs, plan: FaultPlan) -> (usize, usize, usize) {
    let ctx = format!("{:?} FAULT_SEED={}", plan.kinds, plan.seed);
    let kinds = plan.kinds.clone();
    let proxy = FaultProxy::start(kbs.url().trim_start_matches("http://"), plan);
    let client = client(&proxy.url());
    let (mut ok, mut failed) = (0, 0);
    for i in 0..3 {
        let started = Instant::now();
        let uri = format!("kbs:///default/key/{i}");
        let got = tokio::time::timeout(HARD, client.get_resource(&uri))
            .await
            .unwrap_or_else(|_| panic!("{ctx}: the release of {uri} hung past {HARD:?}"));
        let elapsed = started.elapsed();
        match got {
            Ok(bytes) => {
                assert_eq!(&bytes[..], format!("secret-{i}").as_bytes(), "{ctx}");
                ok += 1;
            }
            Err(e) => {
                let msg = e.to_string();
                let lower = msg.to_lowercase();
                let named = causes(&kinds).iter().any(|c| lower.contains(c));
                assert!(named, "{ctx}: the error does not name the cause: {msg}");
                // Each phase (auth, attest, resource) may use its 4 attempts.
                assert!(elapsed < Duration::from_secs(25), "{ctx}: failed only after {elapsed:?}: {msg}");
                eprintln!("{ctx}: {uri} failed clearly after {elapsed:.1?}: {msg}");
                failed += 1;
            }
        }
    }
    let faults = proxy.injected().len();
    eprintln!("{ctx}: {ok} released, {failed} failed, {faults} faults");
    // The KBS itself still works: a clean client gets every key.
    let clean = client_direct(kbs);
    for i in 0..3 {
        assert_eq!(
            &clean.get_resource(&format!("kbs:///default/key/{i}")).await.unwrap()[..],
            format!("secret-{i}").as_bytes()
        );
    }
    (ok, failed, faults)
}

fn client_direct(kbs: &TestKbs) -> KbsClient {
    client(&kbs.url())
}

fn causes(kinds: &[Fault]) -> Vec<&'static str> {
    let mut out = vec!["after 4 attempt"];
    for k in kinds {
        out.extend_from_slice(match k {
            Fault::Reset | Fault::Truncate | Fault::LongLength => &["unreachable", "protocol"],
            Fault::Stall | Fault::Trickle => &["unreachable", "timed out", "protocol"],
            Fault::ServerError => &["500", "502", "503"],
            Fault::TooManyRequests => &["429"],
            Fault::ShortLength => &["protocol", "json", "eof", "unreachable"],
            Fault::RedirectSelf | Fault::RedirectOther => &["307"],
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_faults_within_the_attempts_still_release_the_key() {
    let kbs = TestKbs::start(KbsConfig { resources: resources(3), ..KbsConfig::default() }).await.unwrap();
    let base = fault_proxy::seed_from_env();
    // At most 3 faults in all: each call has 4 attempts, so every key is released.
    for (i, kinds) in [
        vec![Fault::ServerError],
        vec![Fault::TooManyRequests],
        vec![Fault::Reset],
        vec![Fault::Truncate, Fault::LongLength],
        vec![Fault::Stall],
        vec![Fault::ServerError, Fault::TooManyRequests, Fault::Reset, Fault::Truncate],
    ]
    .into_iter()
    .enumerate()
    {
        let plan = FaultPlan::new(&kinds, 0.7).seed(splitmix(base ^ i as u64)).max_faults(3);
        let (ok, failed, faults) = release(&kbs, plan).await;
        assert_eq!((ok, failed), (3, 0), "{kinds:?}: {faults} faults");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_waited_for() {
    let kbs = TestKbs::start(KbsConfig { resources: resources(3), ..KbsConfig::default() }).await.unwrap();
    // Every request faulted once at most... here exactly the first one: a 429 asking for 1 s.
    let plan = FaultPlan::new(&[Fault::TooManyRequests], 1.0).max_faults(1);
    let proxy = FaultProxy::start(kbs.url().trim_start_matches("http://"), plan);
    let client = client(&proxy.url());
    let started = Instant::now();
    let got = client.get_resource("kbs:///default/key/0").await.unwrap();
    assert_eq!(&got[..], b"secret-0");
    assert_eq!(proxy.injected(), vec![Fault::TooManyRequests]);
    assert!(started.elapsed() >= Duration::from_millis(950), "Retry-After: 1 not honoured: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_faults_fail_clearly_within_the_bound() {
    let kbs = TestKbs::start(KbsConfig { resources: resources(3), ..KbsConfig::default() }).await.unwrap();
    let base = fault_proxy::seed_from_env();
    for (i, kind) in
        [Fault::ServerError, Fault::TooManyRequests, Fault::Reset, Fault::RedirectOther].into_iter().enumerate()
    {
        let plan = FaultPlan::new(&[kind], 1.0).seed(splitmix(base.wrapping_add(50 + i as u64)));
        let (ok, failed, _) = release(&kbs, plan).await;
        assert_eq!((ok, failed), (0, 3), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_faults_at_random_offsets_release_or_fail_clearly() {
    let kbs = TestKbs::start(KbsConfig { resources: resources(3), ..KbsConfig::default() }).await.unwrap();
    let base = fault_proxy::seed_from_env();
    let started = Instant::now();
    let mut totals = (0, 0, 0);
    for i in 0..4u64 {
        let plan = FaultPlan::new(&Fault::ALL, 0.3).seed(splitmix(base.wrapping_add(100 + i)));
        let (ok, failed, faults) = release(&kbs, plan).await;
        totals = (totals.0 + ok, totals.1 + failed, totals.2 + faults);
    }
    eprintln!(
        "mixed: {} released, {} failed clearly, {} faults in {:.1?}",
        totals.0,
        totals.1,
        totals.2,
        started.elapsed()
    );
}
