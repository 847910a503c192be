//! Pulls from the real Distribution registry through the seeded fault proxy
//! (support/fault_proxy.rs): resets, stalls, truncation, 5xx, 429, wrong
//! Content-Length (both ways), slow-loris trickle and redirects (to itself and
//! to another host), one kind at a time and all mixed, at random body offsets.
//!
//! Every pull either completes with layer trees equal to a clean pull's, or
//! fails within its deadline with an error naming the cause; it never hangs
//! (each pull is under a hard timeout), never leaves staging or a layer that
//! differs from the clean pull's in the store, and a clean pull into the same
//! store afterwards succeeds and re-verifies. pull_hostile_network.rs covers
//! credential leaks on redirects and the exact resume offsets; this suite is
//! about surviving (or clearly failing) any mix of faults.
//!
//! Replay a failure with the seed it prints: `FAULT_SEED=<seed> cargo test -p image-rs --test pull_faults`.

#![allow(clippy::result_large_err)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image_rs::pipeline::PipelineOptions;
use image_rs::pull::{parse_reference, PullOptions, Puller};
use image_rs::registry::config::RegistriesConfig;
use image_rs::registry::http::{Distribution, HttpOptions};
use image_rs::registry::{Platform, Registry as Client};
use image_rs::store::LayerStore;
use support::cli::tree;
use support::crash::{assert_layers_consistent, entries_of, held_locks};
use support::fault_proxy::{splitmix, Fault, FaultPlan, FaultProxy};
use support::layout::{noise, Compression, ImageBuilder, LayerSpec, TarEntry};
use support::registry::{Registry, RegistryOptions};

/// A pull's own limit (what the caller configures).
const DEADLINE: Duration = Duration::from_secs(20);
/// Past this the pull is hung: the test fails.
const HARD: Duration = Duration::from_secs(45);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Pushes the test image as app:1; returns its layer digests.
fn push_image(reg: &Registry) -> Vec<String> {
    let img = ImageBuilder::new()
        .layer(LayerSpec::entries(
            vec![TarEntry::dir("data"), TarEntry::file("data/big", noise(1, 192 * 1024))],
            Compression::Gzip,
        ))
        .layer(LayerSpec::entries(
            vec![
                TarEntry::file("data/small", "small"),
                TarEntry::symlink("data/link", "small"),
                TarEntry::file("data/mid", noise(2, 48 * 1024)),
            ],
            Compression::Zstd,
        ))
        .layer(LayerSpec::entries(vec![TarEntry::file("etc/app.conf", "x=1\n")], Compression::Gzip))
        .build();
    let layout = tempfile::tempdir().unwrap();
    img.write_to_layout(layout.path(), "t");
    reg.push_oci_layout(layout.path(), "t", "app:1");
    img.layer_digests()
}

fn puller(hosts: &[String], store: &Path) -> Puller {
    let http = HttpOptions {
        insecure_hosts: hosts.iter().cloned().collect(),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        body_timeout: Duration::from_secs(3),
        ..HttpOptions::default()
    };
    let registry = Client::new(Distribution::new(http).unwrap(), RegistriesConfig::default(), Platform::host());
    let pipeline = PipelineOptions {
        min_transfer_rate: 1024,
        rate_window: Duration::from_secs(1),
        max_retries: 4,
        retry_backoff: Duration::from_millis(10),
        ..PipelineOptions::default()
    };
    Puller::new(
        registry,
        Arc::new(LayerStore::open(store).unwrap()),
        PullOptions { pipeline, ..PullOptions::default() },
    )
}

/// Pulls `reference` into `store`: the layer trees by directory name, or the error text.
/// Panics if the pull outlives [`HARD`].
fn pull(rt: &tokio::runtime::Runtime, hosts: &[String], store: &Path, reference: &str) -> Result<Layers, String> {
    let p = puller(hosts, store);
    let r = parse_reference(reference).unwrap();
    let verifier = image_rs::signature::ImageVerifier::builtin_accept_anything(
        Default::default(),
        Arc::new(image_rs::keysource::NoKeySource),
    );
    let outcome = rt.block_on(async {
        tokio::time::timeout(HARD, tokio::time::timeout(DEADLINE, p.pull_verified(&r, &verifier))).await
    });
    match outcome {
        Err(_) => panic!("the pull of {reference} hung past {HARD:?}"),
        Ok(Err(_)) => Err(format!("pull did not finish within its {DEADLINE:?} deadline")),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Ok(Ok(pulled))) => Ok(layer_trees(&pulled.layer_dirs)),
    }
}

type Layers = BTreeMap<String, BTreeMap<PathBuf, String>>;

fn layer_trees(dirs: &[PathBuf]) -> Layers {
    dirs.iter().map(|d| (d.file_name().unwrap().to_string_lossy().into_owned(), tree(d))).collect()
}

/// No staging, no lock held, every committed layer has its record and equals the clean pull's layer.
fn assert_store_consistent(store: &Path, clean: &Layers, ctx: &str) {
    assert_eq!(entries_of(store, "staging"), Vec::<PathBuf>::new(), "{ctx}: staging left");
    assert_eq!(held_locks(store), Vec::<PathBuf>::new(), "{ctx}: locks held");
    assert_layers_consistent(store, clean, ctx);
}

/// Words one of which an error caused by `kinds` must contain (lowercased).
fn causes(kinds: &[Fault]) -> Vec<&'static str> {
    let mut out = vec!["deadline", "attempts"];
    for k in kinds {
        out.extend_from_slice(match k {
            Fault::Reset => &["reset", "connection", "error sending request", "error decoding"],
            Fault::Stall => &["timed out", "timeout", "transfer rate", "not received within"],
            Fault::Truncate => &["closed", "eof", "incomplete", "error decoding", "body"],
            Fault::LongLength => &["closed", "eof", "incomplete", "error decoding", "body", "larger than"],
            Fault::ServerError => &["500", "502", "503"],
            Fault::TooManyRequests => &["429"],
            Fault::ShortLength => &["digest", "size", "malformed", "eof", "length", "descriptor says", "ended at byte"],
            Fault::Trickle => &["transfer rate", "timed out", "not received within"],
            Fault::RedirectSelf | Fault::RedirectOther => &["redirect"],
        });
    }
    out
}

struct Outcome {
    ok: bool,
    faults: usize,
    elapsed: Duration,
}

/// One pull through a proxy with `plan`, checked, then a clean pull into the same store.
fn case(rt: &tokio::runtime::Runtime, reg: &Registry, repo: &str, clean: &Layers, plan: FaultPlan) -> Outcome {
    let kinds = plan.kinds.clone();
    let seed = plan.seed;
    let proxy = FaultProxy::start(&reg.host(), plan);
    let store = tempfile::tempdir().unwrap();
    let hosts = [proxy.host(), proxy.other_host(), reg.host()];
    let ctx = format!("{kinds:?} FAULT_SEED={seed}");
    let started = Instant::now();
    let result = pull(rt, &hosts, store.path(), &format!("{}/{repo}", proxy.host()));
    let elapsed = started.elapsed();
    let faults = proxy.injected();
    drop(proxy);
    match &result {
        Ok(layers) => assert_eq!(layers, clean, "{ctx}: pulled through faults {faults:?}, the trees differ"),
        Err(e) => {
            let lower = e.to_lowercase();
            let named = causes(&kinds).iter().any(|c| lower.contains(c));
            assert!(named, "{ctx}: the error does not name the cause (faults {faults:?}): {e}");
            assert!(elapsed < DEADLINE + Duration::from_secs(2), "{ctx}: failed only after {elapsed:?}: {e}");
        }
    }
    eprintln!("{ctx}: {} faults {:?} -> {:?} in {elapsed:.1?}", faults.len(), faults, result.as_ref().err());
    assert_store_consistent(store.path(), clean, &ctx);
    let again = pull(rt, &[reg.host()], store.path(), &reg.reference(repo))
        .unwrap_or_else(|e| panic!("{ctx}: the clean pull after the faults failed: {e}"));
    assert_eq!(&again, clean, "{ctx}: the clean pull after the faults differs");
    assert_store_consistent(store.path(), clean, &ctx);
    Outcome { ok: result.is_ok(), faults: faults.len(), elapsed }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    reg: Registry,
    repo: String,
    clean: Layers,
    layer_digests: Vec<String>,
}

fn setup() -> Option<Fixture> {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return None;
    }
    let rt = runtime();
    let reg = Registry::start(RegistryOptions::plain());
    let layer_digests = push_image(&reg);
    let repo = "app:1".to_owned();
    let store = tempfile::tempdir().unwrap();
    let clean = pull(&rt, &[reg.host()], store.path(), &reg.reference(&repo)).expect("clean pull");
    assert_eq!(clean.len(), 3);
    Some(Fixture { rt, reg, repo, clean, layer_digests })
}

#[test]
fn each_fault_kind_alone_is_survived_or_named() {
    let Some(Fixture { rt, reg, repo, clean, .. }) = setup() else { return };
    let base = support::fault_proxy::seed_from_env();
    let started = Instant::now();
    let (mut ok, mut faults) = (0, 0);
    for (i, kind) in Fault::ALL.into_iter().enumerate() {
        let plan = FaultPlan::new(&[kind], 0.5).seed(splitmix(base ^ i as u64));
        let o = case(&rt, &reg, &repo, &clean, plan);
        ok += usize::from(o.ok);
        faults += o.faults;
        assert!(o.elapsed < DEADLINE + Duration::from_secs(2));
    }
    eprintln!(
        "{} fault kinds: {ok} pulls completed, {} failed clearly; {faults} faults injected in {:.1?}",
        Fault::ALL.len(),
        Fault::ALL.len() - ok,
        started.elapsed()
    );
    assert!(faults >= Fault::ALL.len(), "too few faults were injected ({faults}) to mean anything");
}

#[test]
fn mixed_faults_at_random_offsets_are_survived_or_named() {
    let Some(Fixture { rt, reg, repo, clean, .. }) = setup() else { return };
    let base = support::fault_proxy::seed_from_env();
    let started = Instant::now();
    let (mut ok, mut faults) = (0, 0);
    const SEEDS: u64 = 6;
    for i in 0..SEEDS {
        // A bounded number of faults per pull: with retries it can still complete.
        let plan = FaultPlan::new(&Fault::ALL, 0.35).seed(splitmix(base.wrapping_add(100 + i))).max_faults(4);
        let o = case(&rt, &reg, &repo, &clean, plan);
        ok += usize::from(o.ok);
        faults += o.faults;
    }
    eprintln!("{SEEDS} mixed cases: {ok} completed; {faults} faults injected in {:.1?}", started.elapsed());
    assert!(faults > 0);
}

/// Faults only on layer blobs, few of them: the resume path must carry the pull through.
#[test]
fn a_few_blob_faults_of_the_resumable_kinds_do_not_fail_the_pull() {
    let Some(Fixture { rt, reg, repo, clean, layer_digests }) = setup() else { return };
    let base = support::fault_proxy::seed_from_env();
    let resumable = [Fault::Reset, Fault::Stall, Fault::Truncate, Fault::LongLength, Fault::Trickle];
    let layers: Vec<&str> = layer_digests.iter().map(String::as_str).collect();
    for i in 0..3u64 {
        let plan =
            FaultPlan::new(&resumable, 0.6).seed(splitmix(base.wrapping_add(200 + i))).paths(&layers).max_faults(3);
        let o = case(&rt, &reg, &repo, &clean, plan);
        assert!(o.ok, "a pull with {} resumable blob faults failed", o.faults);
    }
}

/// A manifest trickled one byte at a time (each within the read timeout) used
/// to hold the pull until an outer deadline, forever for `image-pull` (none
/// by default): small bodies are now read within `body_timeout`.
#[test]
fn a_trickled_manifest_is_cut_off_by_the_body_timeout() {
    let Some(Fixture { rt, reg, repo, clean, .. }) = setup() else { return };
    // 1.5 s per byte: each gap within the 2 s read timeout, and the at least 3
    // trickled bytes take longer than the 3 s body timeout wherever the trickle starts.
    let plan = FaultPlan::new(&[Fault::Trickle], 1.0).paths(&["/manifests/"]).trickle(Duration::from_millis(1500));
    let proxy = FaultProxy::start(&reg.host(), plan);
    let store = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = pull(&rt, &[proxy.host()], store.path(), &format!("{}/{repo}", proxy.host())).unwrap_err();
    let took = started.elapsed();
    assert!(err.contains("manifests/") && err.contains("not received within 3s"), "{err}");
    assert!(took < Duration::from_secs(10), "cut off only after {took:?}: {err}");
    drop(proxy);
    assert_store_consistent(store.path(), &clean, "trickled manifest");
}

/// Every layer response claims more bytes than the blob has and then closes
/// (the whole blob is there: it used to ask for the empty range after the
/// last byte and fail on the registry's 416), or claims fewer and ends there
/// (resumed after what arrived: it used to fail on the size).
#[test]
fn a_layer_whose_connection_fails_after_the_last_byte_completes() {
    let Some(Fixture { rt, reg, repo, clean, layer_digests }) = setup() else { return };
    let layers: Vec<&str> = layer_digests.iter().map(String::as_str).collect();
    // Every layer response, and at most 3 (each short one costs an attempt).
    for (kind, max) in [(Fault::LongLength, usize::MAX), (Fault::ShortLength, 3)] {
        let o = case(&rt, &reg, &repo, &clean, FaultPlan::new(&[kind], 1.0).paths(&layers).max_faults(max));
        assert!(o.ok && o.faults >= 3, "{kind:?}: {} faults", o.faults);
    }
}
