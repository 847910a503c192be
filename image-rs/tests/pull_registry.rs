//! `image-pull` end to end against a real Distribution registry: images built
//! by our OCI layout writer, pushed by skopeo, pulled and unpacked by the real
//! CLI binary. Each case checks the bundle on disk, not just the exit code.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

use support::layout::{Compression, ImageBuilder, LayerSpec, TarEntry};
use support::registry::{Registry, RegistryOptions};

const PULL: &str = env!("CARGO_BIN_EXE_image-pull");

fn image_pull(args: &[&str]) -> Output {
    Command::new(PULL).args(args).output().expect("run image-pull")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn push(reg: &Registry, img: &support::layout::BuiltImage, repo_tag: &str) {
    let layout = tempfile::tempdir().unwrap();
    img.write_to_layout(layout.path(), "t");
    reg.push_oci_layout(layout.path(), "t", repo_tag);
}

fn two_layer_image() -> support::layout::BuiltImage {
    ImageBuilder::new()
        .layer(LayerSpec::entries(
            vec![
                TarEntry::dir("etc"),
                TarEntry::file("etc/passwd", "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"),
                TarEntry::file("etc/group", "root:x:0:\napp:x:1000:\nwheel:x:10:app\n"),
                TarEntry::dir("data"),
                TarEntry::file("data/keep", "base"),
                TarEntry::file("data/gone", "to be whited out"),
                TarEntry::dir("opq"),
                TarEntry::file("opq/old", "hidden by opaque"),
                TarEntry::file("bin/tool", "#!/bin/sh\n").mode(0o4755),
            ],
            Compression::GzipMultiMember,
        ))
        .layer(LayerSpec::entries(
            vec![
                TarEntry::whiteout("data/gone"),
                TarEntry::opaque("opq"),
                TarEntry::file("opq/new", "fresh"),
                TarEntry::hardlink("data/keep-link", "data/keep"),
                TarEntry::symlink("data/abs", "/etc/passwd"),
            ],
            Compression::Zstd,
        ))
        .entrypoint(&["/bin/tool"])
        .cmd(&["--serve"])
        .env("FOO=bar")
        .working_dir("/data")
        .user("app")
        .label("team", "confidential")
        .stop_signal("SIGINT")
        .build()
}

fn check_bundle(bundle: &Path) {
    let root = bundle.join("rootfs");
    assert_eq!(std::fs::read_to_string(root.join("data/keep")).unwrap(), "base");
    assert!(!root.join("data/gone").exists(), "whiteout not applied");
    assert!(!root.join("opq/old").exists(), "opaque dir not applied");
    assert_eq!(std::fs::read_to_string(root.join("opq/new")).unwrap(), "fresh");
    assert_eq!(std::fs::read_to_string(root.join("data/keep-link")).unwrap(), "base");
    assert_eq!(
        std::fs::metadata(root.join("data/keep")).unwrap().ino(),
        std::fs::metadata(root.join("data/keep-link")).unwrap().ino(),
        "hardlink across layers must share the inode"
    );
    assert_eq!(std::fs::read_link(root.join("data/abs")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(std::fs::metadata(root.join("bin/tool")).unwrap().mode() & 0o7777, 0o4755);

    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"], serde_json::json!(["/bin/tool", "--serve"]));
    assert_eq!(spec["process"]["cwd"], "/data");
    assert_eq!(spec["process"]["user"]["uid"], 1000);
    assert_eq!(spec["process"]["user"]["gid"], 1000);
    assert_eq!(spec["process"]["user"]["additionalGids"], serde_json::json!([10]));
    assert!(spec["process"]["env"].as_array().unwrap().iter().any(|e| e == "FOO=bar"));
    assert_eq!(spec["annotations"]["team"], "confidential");
    assert_eq!(spec["annotations"]["org.opencontainers.image.stopSignal"], "SIGINT");
    assert_eq!(spec["root"]["path"], "rootfs");
}

fn unmount_bundle(bundle: &Path) {
    let _ = Command::new("umount").arg(bundle.join("rootfs")).status();
}

#[test]
fn pulls_a_gzip_and_zstd_image_into_a_bundle_and_reuses_layers() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::plain());
    let img = two_layer_image();
    push(&reg, &img, "app:1");
    let work = tempfile::tempdir().unwrap();
    let bundles = tempfile::tempdir().unwrap();
    let reference = reg.reference("app:1");
    let work_dir = work.path().to_str().unwrap();

    for (i, mode) in ["flatten", "auto"].iter().enumerate() {
        let bundle = bundles.path().join(format!("b{i}"));
        let out = image_pull(&[
            "--work-dir",
            work_dir,
            "--plain-http",
            "--rootfs",
            mode,
            &reference,
            bundle.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        check_bundle(&bundle);
        // The second pull verifies the manifest again but fetches no layer.
        let fetched = if i == 0 { "2 fetched" } else { "0 fetched" };
        assert!(stderr(&out).contains(fetched), "{mode}: {}", stderr(&out));
        unmount_bundle(&bundle);
    }
    let layers =
        std::fs::read_dir(work.path().join("layers")).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count();
    assert_eq!(layers, 2);
    assert_eq!(std::fs::read_dir(work.path().join("staging")).unwrap().count(), 0, "no staging left behind");
}

#[test]
fn a_corrupted_blob_is_refused_and_nothing_enters_the_store() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::plain());
    let img = two_layer_image();
    push(&reg, &img, "app:1");
    // Flip one byte of the zstd layer in the registry's storage.
    let digest = img.layer_digests()[1].clone();
    let path = reg.blob_path(&digest);
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&path, data).unwrap();

    let work = tempfile::tempdir().unwrap();
    let bundle = tempfile::tempdir().unwrap().path().join("b");
    let out = image_pull(&[
        "--work-dir",
        work.path().to_str().unwrap(),
        "--plain-http",
        &reg.reference("app:1"),
        bundle.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&digest), "the error must name the bad layer: {err}");
    assert_eq!(err.trim().lines().filter(|l| l.starts_with("image-pull:")).count(), 1, "one-line reason: {err}");
    // The good layer may be committed; the corrupted one must not be, and no bundle exists.
    for e in std::fs::read_dir(work.path().join("layers")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "json") {
            let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert_ne!(rec["blob_digest"], digest.as_str(), "corrupted layer committed: {}", path.display());
        }
    }
    assert!(!bundle.join("config.json").exists());
    assert_eq!(std::fs::read_dir(work.path().join("staging")).unwrap().count(), 0);
}

#[test]
fn a_digest_reference_must_match_the_manifest() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::plain());
    push(&reg, &two_layer_image(), "app:1");
    let wrong = format!("{}/app@sha256:{}", reg.host(), "0".repeat(64));
    let work = tempfile::tempdir().unwrap();
    let out =
        image_pull(&["--work-dir", work.path().to_str().unwrap(), "--plain-http", &wrong, "/tmp/never-created-bundle"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found") || stderr(&out).contains("digest mismatch"), "{}", stderr(&out));
    assert!(!Path::new("/tmp/never-created-bundle").exists());
}

/// The free-space reserve is a flag: reserving the whole filesystem refuses
/// the pull naming the reserve; the defaults (5%, at most 64 MiB) let it in.
#[test]
fn the_free_space_reserve_is_configurable_and_named_when_it_refuses() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::plain());
    push(&reg, &small_image("reserve"), "app:r");
    let reference = format!("{}/app:r", reg.host());
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    let w = work.path().join("store");
    let out = image_pull(&[
        "--work-dir",
        w.to_str().unwrap(),
        "--plain-http",
        "--free-space-reserve-percent",
        "100",
        "--free-space-reserve",
        "1T",
        &reference,
        bundle.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("reserve"), "{}", stderr(&out));
    assert!(!bundle.exists());
    let (_work, marker) = pull_ok(&["--plain-http"], &reference);
    assert_eq!(marker, "reserve");
}

fn small_image(marker: &str) -> support::layout::BuiltImage {
    ImageBuilder::new()
        .layer(LayerSpec::entries(vec![TarEntry::file("marker", marker.to_owned())], Compression::Gzip))
        .cmd(&["/marker"])
        .build()
}

fn pull_ok(extra: &[&str], reference: &str) -> (tempfile::TempDir, String) {
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    let mut args = vec!["--work-dir", work.path().to_str().unwrap(), "--rootfs", "flatten"];
    args.extend_from_slice(extra);
    args.push(reference);
    args.push(bundle.to_str().unwrap());
    let out = image_pull(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let marker = std::fs::read_to_string(bundle.join("rootfs/marker")).unwrap();
    (work, marker)
}

#[test]
fn tls_with_basic_auth_needs_the_ca_and_the_credentials() {
    if !support::require_tools(&["docker-registry", "skopeo", "openssl", "htpasswd"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::tls().with_basic("alice", "s3cret"));
    push(&reg, &small_image("tls"), "private:1");
    let ca = reg.ca_file().unwrap().to_str().unwrap().to_owned();
    let reference = reg.reference("private:1");
    let (_w, marker) = pull_ok(&["--ca-file", &ca, "--creds", "alice:s3cret"], &reference);
    assert_eq!(marker, "tls");

    let work = tempfile::tempdir().unwrap();
    let wd = work.path().to_str().unwrap();
    let b = work.path().join("b");
    let no_ca = image_pull(&["--work-dir", wd, "--creds", "alice:s3cret", &reference, b.to_str().unwrap()]);
    assert!(!no_ca.status.success());
    assert!(stderr(&no_ca).to_lowercase().contains("certificate"), "{}", stderr(&no_ca));
    let no_creds = image_pull(&["--work-dir", wd, "--ca-file", &ca, &reference, b.to_str().unwrap()]);
    assert!(!no_creds.status.success());
    assert!(stderr(&no_creds).contains("requires credentials"), "{}", stderr(&no_creds));
    let wrong =
        image_pull(&["--work-dir", wd, "--ca-file", &ca, "--creds", "alice:nope", &reference, b.to_str().unwrap()]);
    assert!(!wrong.status.success());
    assert!(stderr(&wrong).contains("not authorized"), "{}", stderr(&wrong));
    assert!(!b.join("config.json").exists());

    // The same credentials from an auth.json.
    let auth = work.path().join("auth.json");
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
    };
    std::fs::write(&auth, format!(r#"{{"auths": {{"{}": {{"auth": "{b64}"}}}}}}"#, reg.host())).unwrap();
    let (_w, marker) = pull_ok(&["--ca-file", &ca, "--auth-file", auth.to_str().unwrap()], &reference);
    assert_eq!(marker, "tls");
}

#[test]
fn bearer_token_flow_through_the_realm() {
    if !support::require_tools(&["docker-registry", "skopeo", "openssl"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::plain().with_token("bob", "pw"));
    push(&reg, &small_image("bearer"), "tok:1");
    let before = reg.token_server().unwrap().requests().len();
    let (_w, marker) = pull_ok(&["--plain-http", "--creds", "bob:pw"], &reg.reference("tok:1"));
    assert_eq!(marker, "bearer");
    let requests = reg.token_server().unwrap().requests();
    assert!(requests.len() > before, "the token server was never asked");
}

#[test]
fn an_index_resolves_to_the_requested_platform() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    use support::layout::{write_index_layout, Platform};
    let reg = Registry::start(RegistryOptions::plain());
    let layout = tempfile::tempdir().unwrap();
    let amd = ImageBuilder::new()
        .layer(LayerSpec::entries(vec![TarEntry::file("marker", "amd64")], Compression::Gzip))
        .cmd(&["/x"]);
    let arm = ImageBuilder::new()
        .layer(LayerSpec::entries(vec![TarEntry::file("marker", "arm64")], Compression::Zstd))
        .cmd(&["/x"]);
    write_index_layout(
        layout.path(),
        "t",
        &[(Platform::parse("linux/amd64"), amd), (Platform::parse("linux/arm64/v8"), arm)],
    );
    reg.push_with_skopeo_args(layout.path(), "t", "multi:1", &[]).unwrap();
    let reference = reg.reference("multi:1");
    assert_eq!(pull_ok(&["--plain-http", "--platform", "linux/amd64"], &reference).1, "amd64");
    assert_eq!(pull_ok(&["--plain-http", "--platform", "linux/arm64"], &reference).1, "arm64");
    let work = tempfile::tempdir().unwrap();
    let out = image_pull(&[
        "--work-dir",
        work.path().to_str().unwrap(),
        "--plain-http",
        "--platform",
        "linux/s390x",
        &reference,
        work.path().join("b").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("linux/amd64, linux/arm64/v8"), "{}", stderr(&out));
}

#[test]
fn a_connection_dropped_mid_layer_resumes_with_range() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    use support::proxy::CutProxy;
    let reg = Registry::start(RegistryOptions::plain());
    // Incompressible content so the blob is large enough to cut in the middle.
    let mut data = vec![0u8; 2 * 1024 * 1024];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let img = ImageBuilder::new()
        .layer(LayerSpec::entries(vec![TarEntry::file("big", data.clone())], Compression::Gzip))
        .cmd(&["/big"])
        .build();
    push(&reg, &img, "big:1");
    let proxy = CutProxy::start(&reg.host());
    let digest = img.layer_digests()[0].clone();
    proxy.cut_after(&digest, 700_000, 2);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("b");
    let reference = format!("{}/big:1", proxy.host());
    let out = image_pull(&[
        "--work-dir",
        work.path().to_str().unwrap(),
        "--plain-http",
        &reference,
        bundle.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(bundle.join("rootfs/big")).unwrap(), data);
    assert_eq!(proxy.cuts(), 2);
    let ranges = proxy.range_requests(&digest);
    assert!(ranges.iter().any(|r| r.starts_with("bytes=") && r != "bytes=0-"), "no resume request: {ranges:?}");
    unmount_bundle(&bundle);
}

#[test]
fn concurrent_pulls_of_one_image_fetch_each_layer_once() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    use support::proxy::CutProxy;
    let reg = Registry::start(RegistryOptions::plain());
    let img = two_layer_image();
    push(&reg, &img, "app:1");
    let proxy = CutProxy::start(&reg.host());
    let work = tempfile::tempdir().unwrap();
    let reference = format!("{}/app:1", proxy.host());
    let children: Vec<_> = (0..4)
        .map(|i| {
            let bundle = work.path().join(format!("b{i}"));
            Command::new(PULL)
                .args([
                    "--work-dir",
                    work.path().join("store").to_str().unwrap(),
                    "--plain-http",
                    "--rootfs",
                    "flatten",
                ])
                .args([reference.as_str(), bundle.to_str().unwrap()])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for i in 0..4 {
        check_bundle(&work.path().join(format!("b{i}")));
    }
    for digest in img.layer_digests() {
        let gets = proxy.requests_for(&digest).len();
        assert_eq!(gets, 1, "layer {digest} fetched {gets} times by 4 concurrent pulls");
    }
    // Every pull re-verifies the manifest.
    assert!(proxy.requests_for("/manifests/").len() >= 4);
}

#[test]
fn gc_removes_only_unreferenced_layers() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::plain());
    push(&reg, &small_image("kept"), "kept:1");
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let out = image_pull(&[
        "--work-dir",
        store.to_str().unwrap(),
        "--plain-http",
        "--rootfs",
        "flatten",
        &reg.reference("kept:1"),
        work.path().join("b").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // An orphan layer (as left by an image record removed by hand) and a dead staging dir.
    std::fs::create_dir_all(store.join("layers").join("a".repeat(64))).unwrap();
    std::fs::create_dir_all(store.join("staging").join(format!("{}.999999.0", "b".repeat(64)))).unwrap();
    let out = image_pull(&["gc", "--work-dir", store.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("removed 1 unreferenced layers"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(store.join("staging")).unwrap().count(), 0, "dead staging left behind");
    let left: Vec<_> =
        std::fs::read_dir(store.join("layers")).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).collect();
    assert_eq!(left.len(), 1);
}

#[test]
fn a_hostile_layer_is_refused_and_writes_nothing_outside() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::plain());
    let work = tempfile::tempdir().unwrap();
    let sentinel = work.path().join("outside");
    std::fs::create_dir(&sentinel).unwrap();
    // A symlink to the outside, then a write through it; then a hardlink to an outside file.
    let outside = sentinel.to_str().unwrap().to_owned();
    let img = ImageBuilder::new()
        .layer(LayerSpec::entries(
            vec![
                TarEntry::symlink("escape", &outside),
                TarEntry::file("escape/pwned", "x"),
                TarEntry::file("../../pwned-too", "x"),
            ],
            Compression::Gzip,
        ))
        .cmd(&["/x"])
        .build();
    push(&reg, &img, "evil:1");
    let store = work.path().join("store");
    let bundle = work.path().join("b");
    let out = image_pull(&[
        "--work-dir",
        store.to_str().unwrap(),
        "--plain-http",
        "--rootfs",
        "flatten",
        &reg.reference("evil:1"),
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_dir(&sentinel).unwrap().count(), 0, "wrote outside the layer root: {}", stderr(&out));
    assert!(!work.path().join("pwned-too").exists() && !Path::new("/pwned-too").exists());
    // The symlink's target does not exist inside the root, so the write through
    // it is refused (resolved in the root, never followed out), and the pull fails.
    assert!(!out.status.success(), "hostile layer accepted");
    assert!(stderr(&out).contains("escape/pwned"), "{}", stderr(&out));
    assert!(!bundle.join("config.json").exists());
}

#[test]
fn a_compressed_tar_bomb_is_bounded() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    use std::io::Write;
    let reg = Registry::start(RegistryOptions::plain());
    // tar header for one 10 GB file, then 10 GB of zeros as repeated gzip members.
    let size: u64 = 10 << 30;
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let chunk = 64u64 << 20;
    let zeros_member = gz(&vec![0u8; chunk as usize]);
    let mut blob = gz(header.as_bytes());
    for _ in 0..(size / chunk) {
        blob.extend_from_slice(&zeros_member);
    }
    blob.extend_from_slice(&gz(&[0u8; 1024]));
    // The pull must stop on the size limit long before a diff_id check could;
    // a placeholder diff_id keeps the test from hashing 10 GB itself.
    let diff_id = format!("sha256:{}", "0".repeat(64));
    let layout = tempfile::tempdir().unwrap();
    write_single_layer_layout(layout.path(), "t", &blob, &diff_id);
    reg.push_oci_layout(layout.path(), "t", "bomb:1");
    let work = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = image_pull(&[
        "--work-dir",
        work.path().join("store").to_str().unwrap(),
        "--plain-http",
        "--max-layer-bytes",
        "1G",
        &reg.reference("bomb:1"),
        work.path().join("b").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("exceed the limit"), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "took {:?}", started.elapsed());
    let used: u64 = walk_size(&work.path().join("store"));
    assert!(used < 64 << 20, "bomb wrote {used} bytes before being stopped");
}

fn walk_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() { walk_size(&e.path()) } else { m.len() };
        }
    }
    total
}

/// An OCI layout holding one image with one hand-made gzip layer blob.
fn write_single_layer_layout(dir: &Path, tag: &str, blob: &[u8], diff_id: &str) {
    use support::layout::write_blob;
    let layer = write_blob(dir, blob);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/x"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    }))
    .unwrap();
    let config_digest = write_blob(dir, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": blob.len()}]
    }))
    .unwrap();
    let manifest_digest = write_blob(dir, &manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}
    }]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn registry_config_remaps_and_falls_back_past_a_dead_mirror() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::plain());
    push(&reg, &small_image("remapped"), "team/app:1");
    let dead = format!("127.0.0.1:{}", support::free_port());
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("registries.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[[registry]]
prefix = "images.example.invalid/team"
location = "{host}/team"
insecure = true
[[registry.mirror]]
location = "{dead}/team"
insecure = true

[[registry]]
prefix = "blocked.example.invalid"
blocked = true
"#,
            host = reg.host()
        ),
    )
    .unwrap();
    let conf = conf.to_str().unwrap();
    let (_w, marker) = pull_ok(&["--registry-config", conf], "images.example.invalid/team/app:1");
    assert_eq!(marker, "remapped");

    let out = image_pull(&[
        "--work-dir",
        work.path().join("s").to_str().unwrap(),
        "--registry-config",
        conf,
        "blocked.example.invalid/x:1",
        work.path().join("b").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("blocked"), "{}", stderr(&out));
}
