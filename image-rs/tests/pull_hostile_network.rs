//! Pulls through the library against scripted hostile servers (support/fake_registry.rs) on
//! two loopback hosts, 127.0.0.1 and 127.0.0.2:
//! - credentials never reach another host: not a plain-http token realm there, not a CDN a
//!   blob is redirected to (neither as an Authorization header nor in the query);
//! - a registry trickling bytes is cut off at the minimum transfer rate, resumed with Range, and
//!   the pull fails naming the rate when it never speeds up.

// PullError carries digests; as in the library, its size does not matter here.
#![allow(clippy::result_large_err)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use image_rs::pipeline::PipelineOptions;
use image_rs::pull::{parse_reference, PullError, PullOptions, PulledImage, Puller};
use image_rs::registry::auth::{AuthStore, Credentials};
use image_rs::registry::config::RegistriesConfig;
use image_rs::registry::http::{Distribution, HttpOptions};
use image_rs::registry::{Platform, Registry};
use image_rs::store::LayerStore;
use support::fake_registry::{respond, FakeImage, FakeServer, Seen};
use support::layout::{compress, noise, tar_bytes, Compression, TarEntry};

const USER: &str = "alice";
const PASS: &str = "s3cret-pw";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A small one-layer image whose layer is `len` bytes of incompressible data.
fn image(len: usize) -> FakeImage {
    let tar = tar_bytes(&[TarEntry::file("data", noise(7, len))]);
    let diff_id = support::sha256_digest(&tar);
    FakeImage::new(compress(&tar, Compression::Gzip), Compression::Gzip.media_type(), &diff_id)
}

fn http_options(registry_host: &str) -> HttpOptions {
    HttpOptions { insecure_hosts: [registry_host.to_owned()].into(), ..HttpOptions::default() }
}

fn puller(http: HttpOptions, store: &std::path::Path, pipeline: PipelineOptions) -> Puller {
    let registry = Registry::new(Distribution::new(http).unwrap(), RegistriesConfig::default(), Platform::host());
    let store = Arc::new(LayerStore::open(store).unwrap());
    Puller::new(registry, store, PullOptions { pipeline, ..PullOptions::default() })
}

async fn pull(p: &Puller, reference: &str) -> Result<PulledImage, PullError> {
    let r = parse_reference(reference).unwrap();
    // The library has one way in, with the signature policy (here the
    // built-in accept-anything one: these tests are about the transfer).
    let verifier = image_rs::signature::ImageVerifier::builtin_accept_anything(
        Default::default(),
        std::sync::Arc::new(image_rs::keysource::NoKeySource),
    );
    p.pull_verified(&r, &verifier).await
}

/// Every way the credentials could appear in a request.
fn leaks(req: &Seen) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    let mut found = Vec::new();
    if let Some(a) = req.header("authorization") {
        found.push(format!("Authorization: {a}"));
    }
    for needle in [PASS, b64.as_str(), USER] {
        if req.target.contains(needle) {
            found.push(format!("{needle:?} in the target {}", req.target));
        }
    }
    found
}

fn auth_file(dir: &std::path::Path, host: &str) -> AuthStore {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    let p = dir.join("auth.json");
    std::fs::write(&p, format!(r#"{{"auths": {{"{host}": {{"auth": "{b64}"}}}}}}"#)).unwrap();
    AuthStore::load(&p).unwrap()
}

/// A token server that grants any request (anonymous included) the token "granted".
fn token_server(ip: &str) -> FakeServer {
    FakeServer::start(
        ip,
        Arc::new(|_req: &Seen, conn: &mut std::net::TcpStream| {
            respond(conn, 200, &[("Content-Type", "application/json")], br#"{"token":"granted"}"#)
        }),
    )
}

/// A registry asking for a Bearer token from `realm`, serving `img` to "Bearer granted".
fn bearer_registry(img: FakeImage, realm: String) -> FakeServer {
    FakeServer::start(
        "127.0.0.1",
        Arc::new(move |req: &Seen, conn: &mut std::net::TcpStream| {
            if req.header("authorization") != Some("Bearer granted") {
                let challenge = format!(r#"Bearer realm="{realm}",service="fake",scope="repository:app:pull""#);
                return respond(conn, 401, &[("WWW-Authenticate", &challenge)], b"{}");
            }
            img.serve(req, conn)
        }),
    )
}

#[test]
fn credentials_never_go_to_a_plain_http_token_realm_on_another_host() {
    let rt = runtime();
    let tokens = token_server("127.0.0.2");
    let reg = bearer_registry(image(4096), format!("http://{}/token", tokens.host()));
    let work = tempfile::tempdir().unwrap();
    let reference = format!("{}/app:1", reg.host());
    // --creds and auth.json: the two ways credentials are given.
    let with_override = HttpOptions {
        creds_override: Some(Credentials { username: USER.into(), password: PASS.into() }),
        ..http_options(&reg.host())
    };
    let with_auth_file = HttpOptions { auth: auth_file(work.path(), &reg.host()), ..http_options(&reg.host()) };
    for (i, http) in [with_override, with_auth_file].into_iter().enumerate() {
        let p = puller(http, &work.path().join(format!("store{i}")), PipelineOptions::default());
        rt.block_on(pull(&p, &reference)).expect("anonymous token pull");
    }
    let seen = tokens.seen();
    assert!(seen.len() >= 2, "the token server on 127.0.0.2 was never asked: {seen:?}");
    for req in &seen {
        assert!(leaks(req).is_empty(), "credentials reached 127.0.0.2: {:?}", leaks(req));
    }
}

#[test]
fn a_withheld_credential_is_named_when_the_foreign_realm_refuses() {
    let rt = runtime();
    let tokens = FakeServer::start(
        "127.0.0.2",
        Arc::new(|_req: &Seen, conn: &mut std::net::TcpStream| respond(conn, 401, &[], b"{}")),
    );
    let reg = bearer_registry(image(4096), format!("http://{}/token", tokens.host()));
    let work = tempfile::tempdir().unwrap();
    let http = HttpOptions {
        creds_override: Some(Credentials { username: USER.into(), password: PASS.into() }),
        ..http_options(&reg.host())
    };
    let p = puller(http, work.path(), PipelineOptions::default());
    let err = rt.block_on(pull(&p, &format!("{}/app:1", reg.host()))).unwrap_err().to_string();
    assert!(err.contains("were not sent") && err.contains("plain http on another host"), "{err}");
    assert!(tokens.seen().iter().all(|r| leaks(r).is_empty()), "{:?}", tokens.seen());
}

/// The documented exception: an explicitly insecure registry's realm on its own host (another
/// port) gets the credentials, as the registry itself would over Basic.
#[test]
fn an_insecure_registry_s_own_host_realm_gets_the_credentials() {
    let rt = runtime();
    let tokens = token_server("127.0.0.1");
    let reg = bearer_registry(image(4096), format!("http://{}/token", tokens.host()));
    let work = tempfile::tempdir().unwrap();
    let http = HttpOptions { auth: auth_file(work.path(), &reg.host()), ..http_options(&reg.host()) };
    let p = puller(http, &work.path().join("store"), PipelineOptions::default());
    rt.block_on(pull(&p, &format!("{}/app:1", reg.host()))).unwrap();
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}")));
    assert!(tokens.seen().iter().any(|r| r.header("authorization") == Some(basic.as_str())), "{:?}", tokens.seen());
}

#[test]
fn a_blob_redirected_to_another_host_carries_no_authorization() {
    let rt = runtime();
    let img = image(64 * 1024);
    let cdn = {
        let img = img.clone();
        FakeServer::start(
            "127.0.0.2",
            Arc::new(move |_req: &Seen, conn: &mut std::net::TcpStream| respond(conn, 200, &[], &img.layer)),
        )
    };
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}")));
    let cdn_url = format!("http://{}/cdn/{}?sig=abc", cdn.host(), img.layer_digest);
    let reg = {
        let img = img.clone();
        FakeServer::start(
            "127.0.0.1",
            Arc::new(move |req: &Seen, conn: &mut std::net::TcpStream| {
                if req.header("authorization") != Some(basic.as_str()) {
                    return respond(conn, 401, &[("WWW-Authenticate", r#"Basic realm="fake""#)], b"{}");
                }
                if img.is_layer(req) {
                    return respond(conn, 307, &[("Location", &cdn_url)], b"");
                }
                img.serve(req, conn)
            }),
        )
    };
    let work = tempfile::tempdir().unwrap();
    let http = HttpOptions { auth: auth_file(work.path(), &reg.host()), ..http_options(&reg.host()) };
    let p = puller(http, work.path(), PipelineOptions::default());
    let pulled = rt.block_on(pull(&p, &format!("{}/app:1", reg.host()))).unwrap();
    assert_eq!(pulled.layers_fetched, 1);
    let seen = cdn.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(leaks(&seen[0]).is_empty(), "credentials followed the redirect: {:?}", leaks(&seen[0]));
    let authed = reg.seen().iter().filter(|r| r.header("authorization").is_some()).count();
    assert!(authed >= 3, "the registry itself got the credentials ({authed} requests)");
}

/// A registry whose first `slow` layer responses trickle one byte every 100 ms.
fn trickling_registry(img: FakeImage, slow: usize) -> (FakeServer, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let server = FakeServer::start(
        "127.0.0.1",
        Arc::new(move |req: &Seen, conn: &mut std::net::TcpStream| {
            if img.is_layer(req) && c.fetch_add(1, Ordering::SeqCst) < slow {
                return img.trickle_layer(req, conn, Duration::from_millis(100));
            }
            img.serve(req, conn)
        }),
    );
    (server, count)
}

fn rate_options(max_retries: u32) -> PipelineOptions {
    PipelineOptions {
        min_transfer_rate: 1024,
        rate_window: Duration::from_secs(1),
        max_retries,
        retry_backoff: Duration::from_millis(10),
        ..PipelineOptions::default()
    }
}

#[test]
fn a_trickling_fetch_is_abandoned_and_resumed_with_range() {
    let rt = runtime();
    let img = image(256 * 1024);
    let (reg, _) = trickling_registry(img.clone(), 2);
    let work = tempfile::tempdir().unwrap();
    let p = puller(http_options(&reg.host()), work.path(), rate_options(5));
    let started = Instant::now();
    let pulled = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(60), pull(&p, &format!("{}/app:1", reg.host()))).await
        })
        .expect("the trickle was never cut off")
        .unwrap();
    assert_eq!(pulled.layers_fetched, 1);
    let layer_requests: Vec<Seen> = reg.seen().into_iter().filter(|r| img.is_layer(r)).collect();
    assert_eq!(layer_requests.len(), 3, "{layer_requests:?}");
    let offsets: Vec<u64> = layer_requests.iter().map(|r| r.range_from().unwrap_or(0)).collect();
    assert!(offsets[1] > 0 && offsets[2] > offsets[1], "no resume after what arrived: {offsets:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn a_registry_that_always_trickles_fails_naming_the_rate() {
    let rt = runtime();
    let img = image(256 * 1024);
    let (reg, count) = trickling_registry(img, usize::MAX);
    let work = tempfile::tempdir().unwrap();
    let p = puller(http_options(&reg.host()), work.path(), rate_options(2));
    let started = Instant::now();
    let err = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(60), pull(&p, &format!("{}/app:1", reg.host()))).await
        })
        .expect("the trickle was never cut off")
        .unwrap_err()
        .to_string();
    assert!(err.contains("transfer rate below 1024 B/s") && err.contains("after 3 attempts"), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    // Nothing partial is left: no layer, no staging.
    for sub in ["layers", "staging"] {
        let left: Vec<_> = std::fs::read_dir(work.path().join(sub)).unwrap().collect();
        assert!(left.is_empty(), "{sub}: {left:?}");
    }
}
