//! Proves the test fixtures in `tests/support` work against real peers: Distribution
//! (`docker-registry`), skopeo, umoci, and raw HTTP.

mod support;

use serde_json::{json, Value};
use std::time::Instant;
use support::http::{basic_auth, http_get};
use support::layout::{noise, MT_INDEX, MT_LAYER_GZIP, MT_LAYER_ZSTD, MT_MANIFEST};
use support::{
    require_tools, sha256_digest, write_index_layout, Compression, CutAction, CutProxy, ImageBuilder, LayerSpec,
    Platform, Registry, RegistryOptions, TarEntry, TokenOptions, TokenServer,
};

fn two_layer_image() -> ImageBuilder {
    ImageBuilder::new()
        .layer(
            LayerSpec::new(Compression::Gzip)
                .entry(TarEntry::dir("etc"))
                .entry(TarEntry::file("etc/hello", "hello\n").owner(1000, 1000))
                .entry(TarEntry::symlink("etc/link", "hello"))
                .entry(TarEntry::dir("gone"))
                .entry(TarEntry::file("gone/x", "x")),
        )
        .layer(
            LayerSpec::new(Compression::Zstd)
                .entry(TarEntry::whiteout("gone"))
                .entry(TarEntry::file("etc/hello", "hello again\n"))
                .entry(TarEntry::file("bin/tool", noise(1, 4096)).mode(0o755)),
        )
        .entrypoint(&["/bin/tool"])
        .cmd(&["--flag"])
        .env("PATH=/bin")
        .working_dir("/etc")
}

fn ts_creds() -> Option<(String, String)> {
    Some(("bob".into(), "hunter2".into()))
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("json")
}

/// (a) Plain registry: what skopeo pushed is byte-for-byte what the builder computed.
#[test]
fn plain_registry_push_preserves_builder_digests() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let img = two_layer_image().write_layout(&layout, "v1");
    assert_eq!(img.layers[0].media_type, MT_LAYER_GZIP);
    assert_eq!(img.layers[1].media_type, MT_LAYER_ZSTD);
    assert_ne!(img.layers[0].digest, img.layers[0].diff_id, "gzip blob digest differs from diff_id");

    // skopeo reads our layout back unchanged.
    let out = support::run_ok(
        std::process::Command::new("skopeo").args(["inspect", "--raw"]).arg(format!("oci:{}:v1", layout.display())),
    );
    assert_eq!(out.stdout, img.manifest, "skopeo reads the manifest we wrote");

    let reg = Registry::start(RegistryOptions::plain());
    eprintln!("TIMING: plain registry start {:?}", reg.startup);
    let push = reg.push_oci_layout(&layout, "v1", "smoke/app:v1");
    eprintln!("TIMING: push 2-layer image (plain) {push:?}");

    let raw = reg.inspect_raw("smoke/app:v1");
    assert_eq!(sha256_digest(&raw), img.manifest_digest);
    let m = json(&raw);
    assert_eq!(m["mediaType"], MT_MANIFEST);
    let pushed: Vec<&str> = m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    assert_eq!(pushed, img.layer_digests());
    assert_eq!(m["config"]["digest"], img.config_digest.as_str());

    // Blobs are stored where blob_path says, and served intact.
    for l in &img.layers {
        assert_eq!(std::fs::read(reg.blob_path(&l.digest)).unwrap(), l.blob);
        let r = http_get(&reg.host(), &format!("/v2/smoke/app/blobs/{}", l.digest), &[]).unwrap();
        assert_eq!((r.status, r.complete), (200, true));
        assert_eq!(sha256_digest(&r.body), l.digest);
    }
    let cfg = json(&img.config);
    assert_eq!(cfg["rootfs"]["diff_ids"], json!(img.diff_ids()));
    assert_eq!(cfg["config"]["Entrypoint"], json!(["/bin/tool"]));
}

/// (b) TLS + htpasswd: creds and the test CA are required; raw HTTP shows 401/200 on a plain
/// basic-auth registry.
#[test]
fn tls_and_basic_auth() {
    if !require_tools(&["docker-registry", "skopeo", "openssl", "htpasswd"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    two_layer_image().write_layout(tmp.path(), "v1");
    let reg = Registry::start(RegistryOptions::tls().with_basic("alice", "s3cret"));
    eprintln!("TIMING: tls+htpasswd registry start {:?}", reg.startup);
    assert!(reg.url().starts_with("https://127.0.0.1:"));
    let ca_dir: Vec<_> = std::fs::read_dir(reg.cert_dir().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(ca_dir, ["ca.crt"]);
    assert!(std::fs::read_to_string(reg.ca_pem_path()).unwrap().contains("BEGIN CERTIFICATE"));

    // A non-Go TLS stack verifies the chain and the IP SAN against the test CA too.
    let s_client = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &reg.host(), "-verify_return_error", "-verify_ip", "127.0.0.1", "-CAfile"])
        .arg(reg.ca_pem_path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(s_client.status.success(), "{}", String::from_utf8_lossy(&s_client.stderr));
    assert!(String::from_utf8_lossy(&s_client.stdout).contains("Verify return code: 0 (ok)"));

    let push = reg.push_oci_layout(tmp.path(), "v1", "smoke/tls:v1");
    eprintln!("TIMING: push 2-layer image (tls+basic) {push:?}");
    assert!(reg.try_inspect_raw("smoke/tls:v1", &[]).is_ok(), "creds + CA dir work");
    let anon = reg.try_inspect_raw("smoke/tls:v1", &["--no-creds"]).unwrap_err();
    assert!(anon.contains("unauthorized") || anon.contains("authentication required"), "{anon}");
    let wrong = reg.try_inspect_raw("smoke/tls:v1", &["--creds", "alice:wrong"]).unwrap_err();
    assert!(wrong.contains("unauthorized") || wrong.contains("authentication required"), "{wrong}");
    let no_ca = reg.try_inspect_raw("smoke/tls:v1", &["--tls-verify=true"]).unwrap_err();
    assert!(no_ca.contains("certificate"), "without the CA the certificate is rejected: {no_ca}");
    let push_wrong = reg.push_with_skopeo_args(tmp.path(), "v1", "smoke/tls:v2", &["--dest-creds", "alice:nope"]);
    assert!(push_wrong.is_err());

    let plain = Registry::start(RegistryOptions::plain().with_basic("alice", "s3cret"));
    let anon = http_get(&plain.host(), "/v2/", &[]).unwrap();
    assert_eq!(anon.status, 401);
    assert!(anon.header("www-authenticate").unwrap().starts_with("Basic "));
    let auth = basic_auth("alice", "s3cret");
    assert_eq!(http_get(&plain.host(), "/v2/", &[("Authorization", &auth)]).unwrap().status, 200);
    let bad = basic_auth("alice", "x");
    assert_eq!(http_get(&plain.host(), "/v2/", &[("Authorization", &bad)]).unwrap().status, 401);
}

/// (c) Bearer tokens: Distribution accepts our JWTs; skopeo's push/inspect go through the token
/// server; a wrong password is refused.
#[test]
fn token_auth_flow() {
    if !require_tools(&["docker-registry", "skopeo", "openssl"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = two_layer_image().write_layout(tmp.path(), "v1");
    let reg = Registry::start(RegistryOptions::plain().with_token("bob", "hunter2"));
    eprintln!("TIMING: token-auth registry start {:?}", reg.startup);
    let ts = reg.token_server().unwrap();

    let challenge = http_get(&reg.host(), "/v2/", &[]).unwrap();
    assert_eq!(challenge.status, 401);
    let www = challenge.header("www-authenticate").unwrap().to_string();
    assert!(www.starts_with("Bearer ") && www.contains(&ts.realm()), "{www}");

    let push = reg.push_oci_layout(tmp.path(), "v1", "smoke/tok:v1");
    eprintln!("TIMING: push 2-layer image (token) {push:?}");
    let raw = reg.inspect_raw("smoke/tok:v1");
    assert_eq!(sha256_digest(&raw), img.manifest_digest);
    let reqs = ts.requests();
    assert!(reqs.iter().any(|r| r.status == 200
        && r.user.as_deref() == Some("bob")
        && r.scopes.iter().any(|s| s.starts_with("repository:smoke/tok:") && s.contains("push"))));
    assert!(ts.tokens_issued() >= 2, "push and inspect each got a token: {reqs:?}");

    let before = ts.requests().len();
    let err = reg.try_inspect_raw("smoke/tok:v1", &["--creds", "bob:wrong"]).unwrap_err();
    assert!(err.contains("401") || err.contains("unauthorized") || err.contains("authentication"), "{err}");
    assert!(ts.requests()[before..].iter().any(|r| r.status == 401));

    // A raw token round trip: token endpoint → Bearer → manifest.
    let scope = "repository:smoke/tok:pull";
    let q = format!("/token?service={}&scope={scope}", ts.service());
    let t = http_get(&ts.addr().to_string(), &q, &[("Authorization", &basic_auth("bob", "hunter2"))]).unwrap();
    assert_eq!(t.status, 200);
    let body = json(&t.body);
    assert_eq!(body["expires_in"], 300);
    let bearer = format!("Bearer {}", body["token"].as_str().unwrap());
    let accept = ("Accept", MT_MANIFEST);
    let m = http_get(&reg.host(), "/v2/smoke/tok/manifests/v1", &[("Authorization", &bearer), accept]).unwrap();
    assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
    assert_eq!(m.body, img.manifest);
    let claims = support::token::jwt_claims(body["token"].as_str().unwrap());
    assert_eq!(
        (&claims["iss"], &claims["aud"], &claims["sub"]),
        (&json!(ts.issuer()), &json!(ts.service()), &json!("bob"))
    );
    assert_eq!(claims["access"], json!([{"type": "repository", "name": "smoke/tok", "actions": ["pull"]}]));
    let denied = http_get(&ts.addr().to_string(), &q, &[]).unwrap();
    assert_eq!(denied.status, 401, "no credentials, no token");
    // anonymous_pull: a request without credentials gets pull only.
    let anon_ts = TokenServer::start(TokenOptions { creds: ts_creds(), anonymous_pull: true, ..Default::default() });
    let q = "/token?service=x&scope=repository%3Aa%2Fb%3Apull%2Cpush&scope=repository:c:push";
    let t = http_get(&anon_ts.addr().to_string(), q, &[]).unwrap();
    assert_eq!(t.status, 200);
    let access = &support::token::jwt_claims(json(&t.body)["token"].as_str().unwrap())["access"];
    assert_eq!(
        access,
        &json!([{"type": "repository", "name": "a/b", "actions": ["pull"]},
        {"type": "repository", "name": "c", "actions": []}])
    );
    assert_eq!(anon_ts.requests()[0].scopes, ["repository:a/b:pull,push", "repository:c:push"]);
    // A token minted for another repository does not open this one.
    let other = format!("Bearer {}", ts.issue_token("bob", &[("repository:other", &["pull"])]));
    let m = http_get(&reg.host(), "/v2/smoke/tok/manifests/v1", &[("Authorization", &other), accept]).unwrap();
    assert_eq!(m.status, 401);
    // Distribution really checks the signature: a token with a foreign signature is refused.
    let good = body["token"].as_str().unwrap();
    let foreign_sig = other.rsplit('.').next().unwrap();
    let forged = format!("Bearer {}.{foreign_sig}", good.rsplit_once('.').unwrap().0);
    let m = http_get(&reg.host(), "/v2/smoke/tok/manifests/v1", &[("Authorization", &forged), accept]).unwrap();
    assert_eq!(m.status, 401);
}

/// (d) An image index with two platforms survives the push whole.
#[test]
fn multi_platform_index() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let amd = ImageBuilder::new().layer(LayerSpec::new(Compression::Gzip).entry(TarEntry::file("arch", "amd64\n")));
    let arm = ImageBuilder::new()
        .layer(LayerSpec::new(Compression::GzipMultiMember).entry(TarEntry::file("arch", "arm64\n")));
    let (p_amd, p_arm) = (Platform::parse("linux/amd64"), Platform::parse("linux/arm64/v8"));
    let built = write_index_layout(tmp.path(), "multi", &[(p_amd.clone(), amd), (p_arm.clone(), arm)]);

    let reg = Registry::start(RegistryOptions::plain());
    let push = reg.push_oci_layout(tmp.path(), "multi", "smoke/multi:v1");
    eprintln!("TIMING: push 2-platform index {push:?}");
    let raw = reg.inspect_raw("smoke/multi:v1");
    assert_eq!(sha256_digest(&raw), built.index_digest);
    let idx = json(&raw);
    assert_eq!(idx["mediaType"], MT_INDEX);
    let ms = idx["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    for (m, (img, p)) in ms.iter().zip(built.images.iter().zip([p_amd, p_arm])) {
        assert_eq!(m["digest"], img.manifest_digest.as_str());
        assert_eq!(m["platform"], p.json());
        let child = reg.inspect_raw(&format!("smoke/multi@{}", img.manifest_digest));
        assert_eq!(child, img.manifest);
        assert_eq!(json(&img.config)["architecture"], p.architecture.as_str());
    }
    assert_eq!(built.images[1].platform.variant.as_deref(), Some("v8"));
}

/// (e) The proxy cuts a blob download once; a `Range: bytes=N-` request completes it.
#[test]
fn proxy_cuts_blob_and_range_resumes() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = ImageBuilder::new()
        .layer(LayerSpec::new(Compression::Gzip).entry(TarEntry::file("big", noise(7, 300 * 1024))))
        .write_layout(tmp.path(), "v1");
    let reg = Registry::start(RegistryOptions::plain());
    reg.push_oci_layout(tmp.path(), "v1", "smoke/cut:v1");
    let proxy = CutProxy::start(&reg.host());
    let layer = &img.layers[0];
    let path = format!("/v2/smoke/cut/blobs/{}", layer.digest);
    const N: u64 = 100_000;
    proxy.cut_after(&layer.digest, N, 1);

    let first = http_get(&proxy.host(), &path, &[]).unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.content_length(), Some(layer.size));
    assert!(!first.complete);
    assert_eq!(first.body.len() as u64, N);
    assert_eq!(proxy.cuts(), 1);

    let range = format!("bytes={N}-");
    let second = http_get(&proxy.host(), &path, &[("Range", &range)]).unwrap();
    assert_eq!(second.status, 206);
    assert!(second.complete);
    let whole = [first.body, second.body].concat();
    assert_eq!(sha256_digest(&whole), layer.digest);
    assert_eq!(proxy.cuts(), 1, "only the first request is cut");
    assert_eq!(proxy.range_requests(&layer.digest), [range]);
    let reqs = proxy.requests_for(&layer.digest);
    assert_eq!(reqs.len(), 2);
    assert!(reqs[0].cut && !reqs[1].cut);

    // Once the rule is used up, downloads pass whole; a Reset rule aborts mid-body.
    let third = http_get(&proxy.host(), &path, &[]).unwrap();
    assert!(third.complete && sha256_digest(&third.body) == layer.digest);
    proxy.cut_with(&layer.digest, 10, 1, CutAction::Reset);
    match http_get(&proxy.host(), &path, &[]) {
        Ok(r) => assert!(!r.complete && r.body.len() <= 10),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert_eq!(proxy.cuts(), 2);

    // A real Go HTTP client (skopeo) pulls through the relay.
    let pulled = tmp.path().join("pulled");
    support::run_ok(
        std::process::Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
            .arg(format!("docker://{}/smoke/cut:v1", proxy.host()))
            .arg(format!("oci:{}:p", pulled.display())),
    );
    assert_eq!(std::fs::read(pulled.join("blobs/sha256").join(&layer.digest[7..])).unwrap(), layer.blob);
    assert!(proxy.requests().iter().any(|r| r.path().contains("/manifests/v1")));
}

/// (f) umoci unpacks our layout and applies whiteouts, opaque dirs, links and ownership.
#[test]
fn layout_unpacks_with_umoci() {
    if !require_tools(&["umoci"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    ImageBuilder::new()
        .layer(
            LayerSpec::new(Compression::Gzip)
                .entry(TarEntry::dir("etc"))
                .entry(TarEntry::file("etc/hello", "v1\n"))
                .entry(TarEntry::file("etc/owned", "o").owner(1000, 1001).mode(0o600))
                .entry(TarEntry::hardlink("etc/hard", "etc/owned"))
                .entry(TarEntry::symlink("etc/sym", "hello"))
                .entry(TarEntry::dir("gone"))
                .entry(TarEntry::file("gone/x", "x"))
                .entry(TarEntry::dir("opq"))
                .entry(TarEntry::file("opq/old", "old")),
        )
        .layer(
            LayerSpec::new(Compression::GzipMultiMember)
                .entry(TarEntry::whiteout("gone"))
                .entry(TarEntry::opaque("opq"))
                .entry(TarEntry::file("opq/new", "new"))
                .entry(TarEntry::file("etc/hello", "v2\n")),
        )
        .layer(LayerSpec::new(Compression::None).entry(TarEntry::file("data/blob", noise(3, 70_000))))
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo hi"])
        .env("FOO=bar")
        .user("1000:1000")
        .working_dir("/data")
        .write_layout(&layout, "t");
    let bundle = tmp.path().join("bundle");
    let t0 = Instant::now();
    support::run_ok(
        std::process::Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:t", layout.display()))
            .arg(&bundle),
    );
    eprintln!("TIMING: umoci unpack 3 layers {:?}", t0.elapsed());
    let root = bundle.join("rootfs");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::read_to_string(root.join("etc/hello")).unwrap(), "v2\n");
    assert_eq!(std::fs::read_link(root.join("etc/sym")).unwrap().to_str(), Some("hello"));
    let (owned, hard) = (root.join("etc/owned").metadata().unwrap(), root.join("etc/hard").metadata().unwrap());
    assert_eq!((owned.uid(), owned.gid(), owned.mode() & 0o7777), (1000, 1001, 0o600));
    assert_eq!(owned.ino(), hard.ino(), "hardlink shares the inode");
    assert!(!root.join("gone").exists(), "whiteout removed the directory");
    assert!(!root.join("opq/old").exists() && root.join("opq/new").exists(), "opaque dir hid lower entries");
    assert_eq!(std::fs::read(root.join("data/blob")).unwrap(), noise(3, 70_000));
    let cfg = json(&std::fs::read(bundle.join("config.json")).unwrap());
    assert_eq!(cfg["process"]["args"], json!(["/bin/sh", "-c", "echo hi"]));
    assert_eq!(cfg["process"]["cwd"], "/data");
    assert_eq!(cfg["process"]["user"]["uid"], 1000);
    assert!(cfg["process"]["env"].as_array().unwrap().iter().any(|e| e == "FOO=bar"));
}

/// The busybox rootfs layer holds a static busybox and its applet links.
#[test]
fn busybox_layer_is_runnable_rootfs() {
    if !require_tools(&["busybox"]) {
        return;
    }
    let l = support::busybox_rootfs_layer(Compression::Gzip).build();
    let mut ar = tar::Archive::new(l.tar.as_slice());
    let names: Vec<String> =
        ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
    for want in ["bin/busybox", "bin/sh", "bin/echo", "bin/cat", "bin/ls", "bin/true", "etc/passwd"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    assert_eq!(l.media_type, MT_LAYER_GZIP);
    assert_eq!(l.diff_id, sha256_digest(&l.tar));
}

/// Tar entries come out as written: devices, xattrs (PAX), long names, and hostile paths verbatim.
#[test]
fn tar_entries_round_trip() {
    let long = format!("deep/{}/file", "d".repeat(120));
    let tar = support::layout::tar_bytes(&[
        TarEntry::char_device("dev/null", 1, 3),
        TarEntry::block_device("dev/sda", 8, 0),
        TarEntry::fifo("run/fifo"),
        TarEntry::file("cap", "x").xattr("security.capability", vec![1u8, 2, 3]).mtime(42),
        TarEntry::file(&long, "long"),
        TarEntry::file("../evil", "e"),
        TarEntry::symlink("abs", "/etc/passwd"),
        TarEntry::whiteout("a/b"),
        TarEntry::opaque("c/"),
    ]);
    let mut ar = tar::Archive::new(tar.as_slice());
    let mut seen = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        match path.as_str() {
            "dev/null" => {
                assert_eq!((e.header().device_major().unwrap(), e.header().device_minor().unwrap()), (Some(1), Some(3)))
            }
            "dev/sda" => assert_eq!(e.header().entry_type(), tar::EntryType::Block),
            "run/fifo" => assert_eq!(e.header().entry_type(), tar::EntryType::Fifo),
            "cap" => {
                let x: Vec<_> =
                    e.pax_extensions().unwrap().unwrap().map(|x| x.unwrap().key().unwrap().to_string()).collect();
                assert_eq!(x, ["SCHILY.xattr.security.capability"]);
                assert_eq!(e.header().mtime().unwrap(), 42);
            }
            "abs" => assert_eq!(e.link_name_bytes().unwrap().as_ref(), b"/etc/passwd"),
            _ => {}
        }
        seen.push(path);
    }
    assert_eq!(
        seen,
        ["dev/null", "dev/sda", "run/fifo", "cap", long.as_str(), "../evil", "abs", "a/.wh.b", "c/.wh..wh..opq"]
    );
}
