//! Signature policy end to end: images pushed to a real Distribution registry,
//! signed two ways (GPG simple signing by `skopeo copy --sign-by` with a key
//! made here, into a file:// and an http:// lookaside; cosign signatures made
//! by this test's own signer with openssl's ECDSA P-256 and pushed as
//! `sha256-<hex>.sig` manifests), then pulled by the real `image-pull` binary.
//! A rejected pull must exit non-zero with the reason and leave BUNDLE_DIR absent.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use serde_json::json;
use support::cli::{p, pull, stderr, PULL};
use support::layout::{write_blob, Compression, ImageBuilder, LayerSpec, TarEntry};
use support::registry::{Registry, RegistryOptions};
use support::run_ok;

/// A throwaway GnuPG home with one ed25519 signing key.
struct Gpg {
    home: tempfile::TempDir,
    fpr: String,
}

impl Gpg {
    fn new(uid: &str) -> Gpg {
        let home = tempfile::Builder::new().prefix("gpg-").tempdir_in("/tmp").unwrap();
        let mut gpg = Gpg { home, fpr: String::new() };
        run_ok(gpg.cmd().args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""]).args([
            "--quick-gen-key",
            uid,
            "ed25519",
            "sign",
            "never",
        ]));
        let out = run_ok(gpg.cmd().args(["--with-colons", "--list-keys"]));
        let text = String::from_utf8(out.stdout).unwrap();
        gpg.fpr = text.lines().find_map(|l| l.strip_prefix("fpr:")).unwrap().trim_matches(':').to_owned();
        gpg
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.home.path());
        c
    }

    fn export(&self, armor: bool) -> Vec<u8> {
        let mut c = self.cmd();
        if armor {
            c.arg("--armor");
        }
        run_ok(c.args(["--export", &self.fpr])).stdout
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf").env("GNUPGHOME", self.home.path()).args(["--kill", "all"]).status();
    }
}

fn one_layer_image(content: &str) -> support::layout::BuiltImage {
    ImageBuilder::new()
        .layer(LayerSpec::entries(vec![TarEntry::file("hello.txt", content)], Compression::Gzip))
        .cmd(&["/hello"])
        .build()
}

/// Pushes `img` as `repo_tag`, signed by `gpg` into the lookaside `look` when given.
fn push(reg: &Registry, img: &support::layout::BuiltImage, repo_tag: &str, signer: Option<(&Gpg, &Path)>) {
    let layout = tempfile::tempdir().unwrap();
    img.write_to_layout(layout.path(), "t");
    let Some((gpg, look)) = signer else {
        reg.push_oci_layout(layout.path(), "t", repo_tag);
        return;
    };
    let rd = tempfile::tempdir().unwrap();
    let url = format!("file://{}", p(look));
    std::fs::write(
        rd.path().join("sign.yaml"),
        format!("docker:\n  {}:\n    lookaside: {url}\n    lookaside-staging: {url}\n", reg.host()),
    )
    .unwrap();
    run_ok(Command::new("skopeo").env("GNUPGHOME", gpg.home.path()).args([
        "--insecure-policy",
        "--registries.d",
        p(rd.path()),
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--sign-by",
        &gpg.fpr,
        &format!("oci:{}:t", p(layout.path())),
        &format!("docker://{}/{repo_tag}", reg.host()),
    ]));
}

/// Files of one pull attempt: the policy, registries.d, keys, work dir and bundle path.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case { dir: tempfile::tempdir().unwrap() }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn write(&self, name: &str, data: impl AsRef<[u8]>) -> String {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        p(&path).to_owned()
    }
    fn lookaside(&self, url: &str) -> String {
        self.write("registries.d/default.yaml", format!("default-docker:\n  lookaside: {url}\n"));
        p(&self.path("registries.d")).to_owned()
    }
    /// Runs `image-pull --policy POLICY [extra…] REF BUNDLE` with a shared store.
    fn pull(&self, work: &Path, policy: &serde_json::Value, extra: &[&str], reference: &str) -> (Output, PathBuf) {
        let policy_path = self.write("policy.json", serde_json::to_vec(policy).unwrap());
        let bundle = self.path("bundle");
        let out = Command::new(PULL)
            .args(["--work-dir", p(work), "--plain-http", "--rootfs", "flatten", "--policy", &policy_path])
            .args(extra)
            .args([reference, p(&bundle)])
            .output()
            .unwrap();
        (out, bundle)
    }
}

#[track_caller]
fn assert_accepted(out: &Output, bundle: &Path) {
    assert!(out.status.success(), "pull failed: {}", stderr(out));
    assert!(!std::fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap().is_empty());
}

#[track_caller]
fn assert_rejected(out: &Output, bundle: &Path, wants: &[&str]) {
    let err = stderr(out);
    assert!(!out.status.success(), "pull was accepted but should not be:\n{err}");
    assert!(err.contains("signature policy rejected"), "{err}");
    for want in wants {
        assert!(err.contains(want), "stderr lacks {want:?}:\n{err}");
    }
    assert!(!bundle.exists(), "a rejected pull wrote {}", bundle.display());
}

fn signed_by(key: serde_json::Value, identity: Option<serde_json::Value>) -> serde_json::Value {
    let mut req = json!({"type": "signedBy", "keyType": "GPGKeys"});
    for (k, v) in key.as_object().unwrap() {
        req[k] = v.clone();
    }
    if let Some(i) = identity {
        req["signedIdentity"] = i;
    }
    json!({"default": [{"type": "reject"}], "transports": {"docker": {"": [req]}}})
}

/// `BASE/<repo>@sha256=<hex>` of an image in the lookaside.
fn sig_dir(look: &Path, repo: &str, digest: &str) -> PathBuf {
    look.join(format!("{repo}@sha256={}", digest.strip_prefix("sha256:").unwrap()))
}

/// Serves `root` over HTTP/1.0 on 127.0.0.1 (GET only, files below root only) until dropped.
struct FileServer {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    fn start(root: PathBuf) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let path = path.replace("%40", "@").replace("%3D", "=");
                let file = (!path.contains("..")).then(|| root.join(path.trim_start_matches('/')));
                let _ = match file.and_then(|f| std::fs::read(f).ok()) {
                    Some(body) => s
                        .write_all(format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes())
                        .and_then(|_| s.write_all(&body)),
                    None => s.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                };
            }
        });
        FileServer { addr, stop, thread: Some(thread) }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn gpg_simple_signing_accepts_the_right_key_and_rejects_everything_else() {
    if !support::require_tools(&["docker-registry", "skopeo", "gpg"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::plain());
    let owner = Gpg::new("Image Owner <owner@x.test>");
    let stranger = Gpg::new("Stranger <stranger@x.test>");
    let look = tempfile::tempdir().unwrap();
    let app = one_layer_image("signed app");
    push(&reg, &app, "app:1", Some((&owner, look.path())));
    // The same manifest signed for another repository: only the identity differs.
    push(&reg, &app, "other:1", Some((&owner, look.path())));
    let unsigned = one_layer_image("unsigned app");
    push(&reg, &unsigned, "app:unsigned", None);
    let app_sig = sig_dir(look.path(), "app", &app.manifest_digest).join("signature-1");
    assert!(app_sig.is_file(), "skopeo did not write {}", app_sig.display());

    let work = tempfile::tempdir().unwrap();
    let look_url = format!("file://{}", p(look.path()));
    let reference = reg.reference("app:1");

    // Accepted: keyPath (binary keyring), default identity rule.
    let c = Case::new();
    let key = c.write("owner.gpg", owner.export(false));
    let rd = c.lookaside(&look_url);
    let (out, bundle) =
        c.pull(work.path(), &signed_by(json!({"keyPath": key}), None), &["--registries-d", &rd], &reference);
    assert_accepted(&out, &bundle);
    let _ = Command::new("umount").arg(bundle.join("rootfs")).status();

    // Accepted: armored keyData, and keyPaths with a kbs:/// URI through --key-source-dir.
    let c = Case::new();
    let rd = c.lookaside(&look_url);
    let data = base64::engine::general_purpose::STANDARD.encode(owner.export(true));
    let (out, bundle) =
        c.pull(work.path(), &signed_by(json!({"keyData": data}), None), &["--registries-d", &rd], &reference);
    assert_accepted(&out, &bundle);
    let c = Case::new();
    let rd = c.lookaside(&look_url);
    c.write("kbs/default/gpg-public-key/owner", owner.export(false));
    c.write("kbs/default/gpg-public-key/stranger", stranger.export(false));
    let policy = signed_by(
        json!({"keyPaths": ["kbs:///default/gpg-public-key/stranger", "kbs:///default/gpg-public-key/owner"]}),
        None,
    );
    c.write("kbs/default/policy/1", serde_json::to_vec(&policy).unwrap());
    let bundle = c.path("bundle");
    let out = Command::new(PULL)
        .args(["--work-dir", p(work.path()), "--plain-http", "--rootfs", "flatten"])
        .args(["--policy", "kbs:///default/policy/1", "--key-source-dir", p(&c.path("kbs")), "--registries-d", &rd])
        .args([&reference, p(&bundle)])
        .output()
        .unwrap();
    assert_accepted(&out, &bundle);

    // Accepted through an http:// lookaside served by this test.
    let server = FileServer::start(look.path().to_owned());
    let c = Case::new();
    let key = c.write("owner.gpg", owner.export(false));
    let rd = c.lookaside(&format!("http://{}", server.addr));
    let (out, bundle) =
        c.pull(work.path(), &signed_by(json!({"keyPath": key}), None), &["--registries-d", &rd], &reference);
    assert_accepted(&out, &bundle);
    drop(server);

    // Rejected: wrong key. The layers are in the store now: verification still runs.
    let c = Case::new();
    let key = c.write("stranger.gpg", stranger.export(false));
    let rd = c.lookaside(&look_url);
    let (out, bundle) =
        c.pull(work.path(), &signed_by(json!({"keyPath": key}), None), &["--registries-d", &rd], &reference);
    assert_rejected(&out, &bundle, &["requirement #0 signedBy", "not signed by a trusted key", &stranger.fpr]);

    // Rejected: unsigned image under signedBy.
    let c = Case::new();
    let key = c.write("owner.gpg", owner.export(false));
    let rd = c.lookaside(&look_url);
    let policy = signed_by(json!({"keyPath": key}), None);
    let (out, bundle) = c.pull(work.path(), &policy, &["--registries-d", &rd], &reg.reference("app:unsigned"));
    assert_rejected(&out, &bundle, &["image is not signed: no signature at", "signature-1"]);

    // Rejected: no lookaside configured at all.
    let (out, bundle) = c.pull(work.path(), &policy, &[], &reference);
    assert_rejected(&out, &bundle, &["no lookaside is configured"]);

    // Rejected: a valid signature by the right key, made for another image name.
    let c = Case::new();
    let key = c.write("owner.gpg", owner.export(false));
    let forged = c.path("look");
    let other_sig = std::fs::read(sig_dir(look.path(), "other", &app.manifest_digest).join("signature-1")).unwrap();
    c.write(
        &format!("look/app@sha256={}/signature-1", app.manifest_digest.strip_prefix("sha256:").unwrap()),
        &other_sig,
    );
    let rd = c.lookaside(&format!("file://{}", p(&forged)));
    let (out, bundle) =
        c.pull(work.path(), &signed_by(json!({"keyPath": key}), None), &["--registries-d", &rd], &reference);
    assert_rejected(&out, &bundle, &["claims identity", "/other:1", "matchRepoDigestOrExact"]);
    // … which exactRepository pointing at that name accepts (the digest still matches).
    let other_repo = reg.reference("other");
    let (out, bundle) = c.pull(
        work.path(),
        &signed_by(json!({"keyPath": key}), Some(json!({"type": "exactRepository", "dockerRepository": other_repo}))),
        &["--registries-d", &rd],
        &reference,
    );
    assert_accepted(&out, &bundle);

    // Rejected: the owner's signature of app:1 replayed for the unsigned image (digest mismatch).
    let c = Case::new();
    let key = c.write("owner.gpg", owner.export(false));
    let app_sig_bytes = std::fs::read(&app_sig).unwrap();
    c.write(
        &format!("look/app@sha256={}/signature-1", unsigned.manifest_digest.strip_prefix("sha256:").unwrap()),
        &app_sig_bytes,
    );
    let rd = c.lookaside(&format!("file://{}", p(&c.path("look"))));
    let (out, bundle) = c.pull(
        work.path(),
        &signed_by(json!({"keyPath": key}), None),
        &["--registries-d", &rd],
        &reg.reference("app:unsigned"),
    );
    assert_rejected(&out, &bundle, &["signature made for another image", &app.manifest_digest]);

    // Rejected: tampered signatures (a flipped byte anywhere; garbage; oversized).
    let mut tampered = app_sig_bytes.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    let hex = app.manifest_digest.strip_prefix("sha256:").unwrap();
    for (name, bytes, want) in [
        ("flipped", tampered, "requirement #0 signedBy"),
        ("garbage", b"\x99\x01\xffnot a packet".to_vec(), "not an OpenPGP message"),
        ("oversized", vec![0xa3; 100 * 1024], "over the 65536-byte limit"),
    ] {
        let c = Case::new();
        let key = c.write("owner.gpg", owner.export(false));
        c.write(&format!("look/app@sha256={hex}/signature-1"), &bytes);
        let rd = c.lookaside(&format!("file://{}", p(&c.path("look"))));
        let (out, bundle) =
            c.pull(work.path(), &signed_by(json!({"keyPath": key}), None), &["--registries-d", &rd], &reference);
        assert_rejected(&out, &bundle, &[want]);
        eprintln!("{name}: {}", stderr(&out).trim());
    }

    // Rejected: a reject scope, even with a valid signature available.
    let c = Case::new();
    let key = c.write("owner.gpg", owner.export(false));
    let rd = c.lookaside(&look_url);
    let mut policy = signed_by(json!({"keyPath": key}), None);
    policy["transports"]["docker"][reg.reference("app")] = json!([{"type": "reject"}]);
    let (out, bundle) = c.pull(work.path(), &policy, &["--registries-d", &rd], &reference);
    assert_rejected(
        &out,
        &bundle,
        &[&format!("docker scope \"{}\"", reg.reference("app")), "requirement #0 reject", "rejects every image"],
    );

    // Every requirement must pass: a second, failing requirement rejects.
    let c = Case::new();
    let good = c.write("owner.gpg", owner.export(false));
    let bad = c.write("stranger.gpg", stranger.export(false));
    let rd = c.lookaside(&look_url);
    let mut policy = signed_by(json!({"keyPath": good}), None);
    policy["transports"]["docker"][""]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "signedBy", "keyType": "GPGKeys", "keyPath": bad}));
    let (out, bundle) = c.pull(work.path(), &policy, &["--registries-d", &rd], &reference);
    assert_rejected(&out, &bundle, &["requirement #1 signedBy"]);
}

/// The tests' cosign signer: payload per the cosign spec, ECDSA P-256 SHA-256 by openssl (DER),
/// pushed as an OCI manifest tagged `sha256-<hex>.sig`. `upload_payload` lets a test upload
/// different bytes than were signed (tampering).
fn cosign_sign(
    reg: &Registry,
    repo: &str,
    target_digest: &str,
    signed_digest: &str,
    identity: &str,
    key: &Path,
    upload_payload: Option<Vec<u8>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": signed_digest},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .unwrap();
    let payload_path = dir.path().join("payload.json");
    std::fs::write(&payload_path, &payload).unwrap();
    let sig_path = dir.path().join("sig.der");
    run_ok(Command::new("openssl").args(["dgst", "-sha256", "-sign", p(key), "-out", p(&sig_path), p(&payload_path)]));
    let sig_b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&sig_path).unwrap());
    let layer = upload_payload.unwrap_or(payload);
    let layout = dir.path().join("layout");
    let layer_digest = write_blob(&layout, &layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    }))
    .unwrap();
    let config_digest = write_blob(&layout, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "size": layer.len(),
            "digest": layer_digest,
            "annotations": {"dev.cosignproject.cosign/signature": sig_b64}
        }]
    }))
    .unwrap();
    let manifest_digest = write_blob(&layout, &manifest);
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "sig"}}]}))
        .unwrap(),
    )
    .unwrap();
    let tag = format!("sha256-{}.sig", target_digest.strip_prefix("sha256:").unwrap());
    reg.push_oci_layout(&layout, "sig", &format!("{repo}:{tag}"));
}

fn ec_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, public) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")));
    run_ok(Command::new("openssl").args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p(&key)]));
    run_ok(Command::new("openssl").args(["ec", "-in", p(&key), "-pubout", "-out", p(&public)]));
    (key, public)
}

fn sigstore(key: &Path, identity: Option<serde_json::Value>) -> serde_json::Value {
    let mut req = json!({"type": "sigstoreSigned", "keyPath": p(key)});
    if let Some(i) = identity {
        req["signedIdentity"] = i;
    }
    json!({"default": [{"type": "reject"}], "transports": {"docker": {"": [req]}}})
}

#[test]
fn cosign_signatures_accept_the_right_key_and_reject_everything_else() {
    if !support::require_tools(&["docker-registry", "skopeo", "openssl"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::plain());
    let keys = tempfile::tempdir().unwrap();
    let (owner_key, owner_pub) = ec_key(keys.path(), "owner");
    let (_, stranger_pub) = ec_key(keys.path(), "stranger");
    let app = one_layer_image("cosigned app");
    let evil = one_layer_image("swapped in by the host");
    let unsigned = one_layer_image("never signed");
    for (img, tag) in [(&app, "app:1"), (&evil, "evil:1"), (&unsigned, "unsigned:1")] {
        push(&reg, img, tag, None);
    }
    let repo = |r: &str| reg.reference(r);
    // cosign signs the repository name (no tag) and the manifest digest.
    cosign_sign(&reg, "app", &app.manifest_digest, &app.manifest_digest, &repo("app"), &owner_key, None);
    // evil:1 carries a genuine signature of app's digest (replayed onto another image).
    cosign_sign(&reg, "evil", &evil.manifest_digest, &app.manifest_digest, &repo("evil"), &owner_key, None);
    let match_repo = Some(json!({"type": "matchRepository"}));
    let work = tempfile::tempdir().unwrap();

    let c = Case::new();
    let (out, bundle) = c.pull(work.path(), &sigstore(&owner_pub, match_repo.clone()), &[], &repo("app:1"));
    assert_accepted(&out, &bundle);

    // Inline keyData, and the key as a kbs:/// resource.
    let c = Case::new();
    let data = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&owner_pub).unwrap());
    let policy = json!({"default": [{"type": "sigstoreSigned", "keyData": data, "signedIdentity": {"type": "matchRepository"}}]});
    let (out, bundle) = c.pull(work.path(), &policy, &[], &repo("app:1"));
    assert_accepted(&out, &bundle);
    let c = Case::new();
    c.write("kbs/default/cosign-public-key/1", std::fs::read(&owner_pub).unwrap());
    let policy = json!({"default": [{"type": "sigstoreSigned", "keyPath": "kbs:///default/cosign-public-key/1", "signedIdentity": {"type": "matchRepository"}}]});
    let kbs = c.path("kbs");
    let (out, bundle) = c.pull(work.path(), &policy, &["--key-source-dir", p(&kbs)], &repo("app:1"));
    assert_accepted(&out, &bundle);

    // Wrong key (layers cached now: verification still runs).
    let c = Case::new();
    let (out, bundle) = c.pull(work.path(), &sigstore(&stranger_pub, match_repo.clone()), &[], &repo("app:1"));
    assert_rejected(&out, &bundle, &["requirement #0 sigstoreSigned", "does not verify"]);

    // Unsigned image.
    let c = Case::new();
    let (out, bundle) = c.pull(work.path(), &sigstore(&owner_pub, match_repo.clone()), &[], &repo("unsigned:1"));
    assert_rejected(
        &out,
        &bundle,
        &["image is not signed: no cosign signature", &format!("sha256-{}.sig", &unsigned.manifest_digest[7..])],
    );

    // A signature made for another image.
    let c = Case::new();
    let (out, bundle) = c.pull(work.path(), &sigstore(&owner_pub, match_repo.clone()), &[], &repo("evil:1"));
    assert_rejected(&out, &bundle, &["signature made for another image", &app.manifest_digest]);

    // cosign claims only a repository, which the default identity rule never accepts (as in
    // containers/image: a repository-only claim does not vouch for a tag), by tag or by digest.
    for reference in [repo("app:1"), format!("{}@{}", repo("app"), app.manifest_digest)] {
        let c = Case::new();
        let (out, bundle) = c.pull(work.path(), &sigstore(&owner_pub, None), &[], &reference);
        assert_rejected(&out, &bundle, &["claims identity", "matchRepoDigestOrExact"]);
    }
    // matchExact with a digest reference and exactReference do not accept it either.
    let c = Case::new();
    let rule = Some(json!({"type": "exactReference", "dockerReference": repo("app:1")}));
    let (out, bundle) = c.pull(work.path(), &sigstore(&owner_pub, rule), &[], &repo("app:1"));
    assert_rejected(&out, &bundle, &["exactReference"]);
    // By digest with matchRepository: accepted.
    let c = Case::new();
    let reference = format!("{}@{}", repo("app"), app.manifest_digest);
    let (out, bundle) = c.pull(work.path(), &sigstore(&owner_pub, match_repo.clone()), &[], &reference);
    assert_accepted(&out, &bundle);
    // exactRepository naming another repository rejects.
    let c = Case::new();
    let rule = Some(json!({"type": "exactRepository", "dockerRepository": repo("elsewhere")}));
    let (out, bundle) = c.pull(work.path(), &sigstore(&owner_pub, rule), &[], &repo("app:1"));
    assert_rejected(&out, &bundle, &["exactRepository"]);

    // Tampered: the uploaded payload differs from the signed one (identity rewritten).
    let tampered = serde_json::to_vec(&json!({"critical": {"identity": {"docker-reference": repo("app")},
        "image": {"docker-manifest-digest": app.manifest_digest}, "type": "cosign container image signature"},
        "optional": {"tampered": true}}))
    .unwrap();
    cosign_sign(&reg, "app", &app.manifest_digest, &app.manifest_digest, &repo("app"), &owner_key, Some(tampered));
    let c = Case::new();
    let (out, bundle) = c.pull(work.path(), &sigstore(&owner_pub, match_repo.clone()), &[], &repo("app:1"));
    assert_rejected(&out, &bundle, &["does not verify"]);

    // Reject scope.
    let c = Case::new();
    let mut policy = sigstore(&owner_pub, match_repo);
    policy["transports"]["docker"][reg.host()] = json!([{"type": "reject"}]);
    let (out, bundle) = c.pull(work.path(), &policy, &[], &repo("app:1"));
    assert_rejected(&out, &bundle, &["rejects every image"]);
}

#[test]
fn without_a_policy_unsigned_images_pull_with_a_warning_and_bad_policies_fail_closed() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::plain());
    let img = one_layer_image("plain");
    push(&reg, &img, "plain:1", None);
    let work = tempfile::tempdir().unwrap();
    let got = pull(&reg, work.path(), "plain:1", &[]);
    assert_accepted(&got.out, &got.bundle);
    assert!(stderr(&got.out).contains("no signature policy given"), "{}", stderr(&got.out));

    // A policy that does not load stops the pull before the registry is contacted.
    let c = Case::new();
    for (policy, want) in [
        (r#"{"default":[{"type":"insecureAcceptAnything","note":"x"}]}"#, "unknown field `note`"),
        ("not json", "policy"),
        ("kbs:///default/policy/1", "no key source is configured that can resolve kbs:///default/policy/1"),
    ] {
        let path = if policy.starts_with("kbs:") { policy.to_string() } else { c.write("policy.json", policy) };
        let got = pull(&reg, work.path(), "plain:1", &["--policy", &path]);
        assert!(got.err().contains(want), "{}", stderr(&got.out));
        assert!(!got.bundle.exists(), "a refused pull wrote {}", got.bundle.display());
    }
}
