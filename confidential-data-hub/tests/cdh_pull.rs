//! The real `confidential-data-hub` binary driven over its unix socket with
//! the generated ttrpc clients, as kata's agent drives guest-components' CDH:
//! images from a real Distribution registry (plain, ocicrypt-encrypted with a
//! KEK only the test KBS holds, GPG-signed with the policy, sigstore config
//! and key in the KBS), keys and policies released by the test KBS through the
//! real attestation-agent, and each pull recorded in the agent's event log.
//! Every refusal must name its cause and leave nothing under bundle_path.

#[path = "../../image-rs/tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Instant;

use common::gpg::Gpg;
use common::images::{app_image, assert_app_rootfs, assert_refused, push_plain_and_encrypted, random_kek, KID};
use common::{entries, prerequisites, release_bundle, serial, Cdh, Guest};
use support::cli::{p, pull_bin};
use support::layout::{Compression, ImageBuilder, LayerSpec, TarEntry};
use support::registry::{Registry, RegistryOptions};

#[test]
fn plain_and_encrypted_images_pull_through_the_cdh_and_are_measured() {
    if !prerequisites(&["docker-registry", "skopeo"]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let kek = random_kek();
    let sealer = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
    let guest = Guest::start(
        dir.path(),
        HashMap::from([
            ("default/key/1".to_string(), kek.clone()),
            ("default/config/app".to_string(), b"{\"replicas\":3}".to_vec()),
            ("default/sealed-secret-key/1".to_string(), common::public_jwk(&sealer)),
            ("default/secret/db".to_string(), b"hunter2".to_vec()),
        ]),
    );
    let reg = Registry::start(RegistryOptions::plain());
    push_plain_and_encrypted(&reg, &app_image(1), &kek, dir.path());
    let cdh = Cdh::start(&dir.path().join("cdh"), &guest.aa_addr, &reg.host(), "");
    let rt = &guest.runtime;

    // Plain image, no policy configured: pulled, with a warning naming the image.
    let plain_ref = reg.reference("app:plain");
    let bundle = dir.path().join("bundles/plain");
    let digest = rt.block_on(cdh.pull(&plain_ref, &bundle)).expect("plain pull");
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    assert_app_rootfs(&bundle);
    release_bundle(&bundle);
    let log = cdh.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("without signature verification") && l.contains(&plain_ref)),
        "no warning naming the unverified image:\n{log}"
    );

    // Encrypted image: the KEK comes from the KBS through the attestation-agent.
    let released_before = guest.kbs().stats().resource_ok.load(Ordering::SeqCst);
    let enc_ref = reg.reference("app:enc");
    let bundle = dir.path().join("bundles/enc");
    let enc_digest = rt.block_on(cdh.pull(&enc_ref, &bundle)).expect("encrypted pull");
    assert_ne!(enc_digest, digest);
    assert_app_rootfs(&bundle);
    release_bundle(&bundle);
    assert!(guest.kbs().stats().resource_ok.load(Ordering::SeqCst) > released_before, "the KEK came from the KBS");

    // Both pulls are in the runtime event log, in guest-components' event shape.
    let events: Vec<serde_json::Value> = guest
        .events()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "event")
        .collect();
    let pulls: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| (e["domain"].as_str().unwrap(), e["operation"].as_str().unwrap(), e["content"].as_str().unwrap()))
        .collect();
    let expected = [
        format!(r#"{{"image":"{plain_ref}", "digest":"{digest}"}}"#),
        format!(r#"{{"image":"{enc_ref}", "digest":"{enc_digest}"}}"#),
    ];
    assert_eq!(
        pulls,
        expected.iter().map(|c| ("github.com/confidential-containers", "PullImage", c.as_str())).collect::<Vec<_>>()
    );

    // GetResource: a KBS resource through the attestation-agent.
    let got = rt.block_on(cdh.get_resource("kbs:///default/config/app")).expect("GetResource");
    assert_eq!(got, b"{\"replicas\":3}");
    let (code, message) = rt.block_on(cdh.get_resource("kbs:///default/config/missing")).unwrap_err();
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{message}");
    assert!(message.contains("kbs:///default/config/missing"), "{message}");
    let (code, message) = rt.block_on(cdh.get_resource("kbs:///../../etc/passwd")).unwrap_err();
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{message}");

    // UnsealSecret: a vault secret signed by the key the KBS holds as its kid.
    let vault = serde_json::json!({"version": "0.1.0", "type": "vault", "name": "kbs:///default/secret/db",
                                   "provider": "kbs", "provider_settings": {}, "annotations": {}});
    let kid = "kbs:///default/sealed-secret-key/1";
    let got = rt.block_on(cdh.unseal(common::seal(&sealer, kid, &vault))).expect("UnsealSecret");
    assert_eq!(got, b"hunter2");
    let forger = p256::ecdsa::SigningKey::from_slice(&[8; 32]).unwrap();
    let (code, message) = rt.block_on(cdh.unseal(common::seal(&forger, kid, &vault))).unwrap_err();
    assert_eq!(code, ttrpc::Code::PERMISSION_DENIED, "{message}");
    assert!(message.contains("does not verify"), "{message}");

    // Not yet served: UNIMPLEMENTED naming the method.
    let (code, message) = rt.block_on(cdh.call_raw(("api.SecureMountService", "SecureMount"), vec![])).unwrap_err();
    assert_eq!(code, ttrpc::Code::UNIMPLEMENTED, "{message}");
    assert!(message.contains("SecureMount"), "{message}");
}

#[test]
fn refusals_name_the_cause_and_leave_no_bundle() {
    if !prerequisites(&["docker-registry", "skopeo"]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let kek = random_kek();
    let mut guest = Guest::start(dir.path(), HashMap::from([("default/key/1".to_string(), kek.clone())]));
    let reg = Registry::start(RegistryOptions::plain());
    push_plain_and_encrypted(&reg, &app_image(2), &kek, dir.path());
    let cdh = Cdh::start(&dir.path().join("cdh"), &guest.aa_addr, &reg.host(), "");
    let enc_ref = reg.reference("app:enc");
    let bundles = dir.path().join("bundles");

    // The KBS has no such key.
    guest.kbs().update(|c| {
        c.resources.remove("default/key/1");
    });
    let b = bundles.join("no-key");
    let r = guest.runtime.block_on(cdh.pull(&enc_ref, &b));
    assert_refused(r, ttrpc::Code::PERMISSION_DENIED, &["decryption key", KID], &b);

    // The KBS refuses to release it (resource policy).
    guest.kbs().update(|c| {
        c.resources.insert("default/key/1".into(), kek.clone());
        c.policy = test_kbs::Policy::DenyAll;
    });
    let b = bundles.join("denied");
    let r = guest.runtime.block_on(cdh.pull(&enc_ref, &b));
    assert_refused(r, ttrpc::Code::PERMISSION_DENIED, &["decryption key", "refused by the key broker"], &b);

    // The KBS releases a different KEK: the layer key does not open.
    guest.kbs().update(|c| {
        c.policy = test_kbs::Policy::AllowAll;
        c.resources.insert("default/key/1".into(), vec![0x11; 32]);
    });
    let b = bundles.join("wrong-key");
    let r = guest.runtime.block_on(cdh.pull(&enc_ref, &b));
    assert_refused(r, ttrpc::Code::PERMISSION_DENIED, &["decryption key", "did not open"], &b);

    // An image that is not there.
    let b = bundles.join("missing");
    let r = guest.runtime.block_on(cdh.pull(&reg.reference("app:nope"), &b));
    assert_refused(r, ttrpc::Code::NOT_FOUND, &["app:nope"], &b);

    // A hostile bundle path.
    let r = guest.runtime.block_on(cdh.pull(&enc_ref, Path::new("/run/../etc/evil")));
    assert_eq!(r.unwrap_err().0, ttrpc::Code::INVALID_ARGUMENT);

    // The KBS is down (the attestation-agent is up): the key cannot be fetched.
    guest.kbs().update(|c| {
        c.resources.insert("default/key/1".into(), kek.clone());
    });
    guest.stop_kbs();
    let b = bundles.join("kbs-down");
    let r = guest.runtime.block_on(cdh.pull(&enc_ref, &b));
    assert_refused(r, ttrpc::Code::UNAVAILABLE, &["decryption key", "KBS at http://", "unreachable", KID], &b);

    // The attestation-agent is down: the key cannot be fetched.
    guest.stop_agent();
    let b = bundles.join("aa-down");
    let r = guest.runtime.block_on(cdh.pull(&enc_ref, &b));
    assert_refused(r, ttrpc::Code::UNAVAILABLE, &["KBS/attestation-agent unreachable", "attestation-agent"], &b);
    let (code, message) = guest.runtime.block_on(cdh.get_resource(KID)).unwrap_err();
    assert_eq!(code, ttrpc::Code::UNAVAILABLE, "{message}");
    assert!(message.contains("attestation-agent"), "{message}");

    // Nothing was committed to the store by any refused pull.
    let layers = entries(&cdh.work.join("layers"));
    assert!(layers.iter().all(|p| !p.join("rootfs").exists()), "refused pulls committed layers: {layers:?}");
}

#[test]
fn a_stalled_pull_ends_at_its_deadline_leaving_nothing() {
    if !prerequisites(&["docker-registry", "skopeo"]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let guest = Guest::start(dir.path(), HashMap::new());
    let reg = Registry::start(RegistryOptions::plain());
    let img = app_image(6);
    let layout = dir.path().join("plain");
    img.write_to_layout(&layout, "t");
    reg.push_oci_layout(&layout, "t", "app:plain");
    let proxy = support::CutProxy::start(&reg.host());
    // The big layer stalls once, after 1000 bytes, for longer than the deadline.
    proxy.cut_with(&img.layers[0].digest, 1000, 1, support::CutAction::Stall(std::time::Duration::from_secs(15)));
    let cdh = Cdh::start(&dir.path().join("cdh"), &guest.aa_addr, &proxy.host(), "pull_deadline_secs = 2");
    let image = format!("{}/app:plain", proxy.host());

    let b = dir.path().join("bundle");
    let t = Instant::now();
    let r = guest.runtime.block_on(cdh.pull(&image, &b));
    let took = t.elapsed();
    assert_refused(r, ttrpc::Code::DEADLINE_EXCEEDED, &["deadline", "2s"], &b);
    assert!(took < std::time::Duration::from_secs(10), "the deadline did not cut the pull: {took:?}");
    // The cancelled unpack thread drops its staging directory as it ends.
    let staging = support::wait_for(std::time::Duration::from_secs(5), || {
        entries(&cdh.work.join("staging")).is_empty().then_some(())
    });
    assert!(staging.is_some(), "staging left behind: {:?}", entries(&cdh.work.join("staging")));

    // The daemon is not wedged: the next pull (no stall now) succeeds.
    guest.runtime.block_on(cdh.pull(&image, &b)).expect("pull after the deadline");
    assert_app_rootfs(&b);
    release_bundle(&b);
}

#[test]
fn required_policy_refuses_unconfigured_pulls() {
    if !prerequisites(&["docker-registry", "skopeo"]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let guest = Guest::start(dir.path(), HashMap::new());
    let reg = Registry::start(RegistryOptions::plain());
    let layout = dir.path().join("plain");
    app_image(3).write_to_layout(&layout, "t");
    reg.push_oci_layout(&layout, "t", "app:plain");
    let cdh = Cdh::start(&dir.path().join("cdh"), &guest.aa_addr, &reg.host(), "require_signature_policy = true");
    let b = dir.path().join("bundle");
    let r = guest.runtime.block_on(cdh.pull(&reg.reference("app:plain"), &b));
    assert_refused(r, ttrpc::Code::FAILED_PRECONDITION, &["signature policy", "required"], &b);
}

#[test]
fn signed_image_is_checked_against_a_policy_from_the_kbs() {
    if !prerequisites(&["docker-registry", "skopeo", "gpg"]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let gpg = Gpg::new();
    let reg = Registry::start(RegistryOptions::plain());
    let look = dir.path().join("lookaside");
    std::fs::create_dir_all(&look).unwrap();
    let layout = dir.path().join("layout");
    app_image(4).write_to_layout(&layout, "t");
    gpg.push_signed(&reg, &layout, "app:signed", &look);
    reg.push_oci_layout(&layout, "t", "other:unsigned");

    let policy = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {(reg.host()): [
            {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "kbs:///default/gpg-public-key/1"}
        ]}}
    });
    let sigstore = format!("default-docker:\n  lookaside: file://{}\n", p(&look));
    let guest = Guest::start(
        dir.path(),
        HashMap::from([
            ("default/security-policy/test".to_string(), serde_json::to_vec(&policy).unwrap()),
            ("default/sigstore-config/test".to_string(), sigstore.into_bytes()),
            ("default/gpg-public-key/1".to_string(), gpg.public_key()),
        ]),
    );
    let keys = "image_security_policy_uri = \"kbs:///default/security-policy/test\"\n\
                sigstore_config_uri = \"kbs:///default/sigstore-config/test\"";
    let cdh = Cdh::start(&dir.path().join("cdh"), &guest.aa_addr, &reg.host(), keys);

    let bundle = dir.path().join("bundles/signed");
    let digest = guest.runtime.block_on(cdh.pull(&reg.reference("app:signed"), &bundle)).expect("signed pull");
    assert!(digest.starts_with("sha256:"));
    assert_app_rootfs(&bundle);
    release_bundle(&bundle);
    assert!(!cdh.log_text().contains("without signature verification"), "{}", cdh.log_text());

    // Same content, no signature: the policy from the KBS rejects it.
    let b = dir.path().join("bundles/unsigned");
    let r = guest.runtime.block_on(cdh.pull(&reg.reference("other:unsigned"), &b));
    assert_refused(r, ttrpc::Code::PERMISSION_DENIED, &["signature policy", "other"], &b);
}

#[test]
fn concurrent_pulls_sharing_a_layer_fetch_it_once() {
    if !prerequisites(&["docker-registry", "skopeo"]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let guest = Guest::start(dir.path(), HashMap::new());
    let reg = Registry::start(RegistryOptions::plain());
    let base =
        || LayerSpec::entries(vec![TarEntry::file("base.bin", support::tarball::noise(7, 4 << 20))], Compression::Gzip);
    let image = |name: &str| {
        ImageBuilder::new()
            .layer(base())
            .layer(LayerSpec::entries(vec![TarEntry::file(name, name)], Compression::Gzip))
            .cmd(&["/base.bin"])
            .build()
    };
    let (one, two) = (image("one.txt"), image("two.txt"));
    assert_eq!(one.layers[0].digest, two.layers[0].digest, "the images share their base layer");
    for (img, repo) in [(&one, "one:1"), (&two, "two:1")] {
        let layout = dir.path().join(repo.replace(':', "-"));
        img.write_to_layout(&layout, "t");
        reg.push_oci_layout(&layout, "t", repo);
    }
    let cdh = Cdh::start(&dir.path().join("cdh"), &guest.aa_addr, &reg.host(), "");
    let log_before = reg.log().len();
    let (b1, b2) = (dir.path().join("b1"), dir.path().join("b2"));
    let (ref1, ref2) = (reg.reference("one:1"), reg.reference("two:1"));
    let (r1, r2) = guest.runtime.block_on(async { tokio::join!(cdh.pull(&ref1, &b1), cdh.pull(&ref2, &b2)) });
    r1.expect("pull one");
    r2.expect("pull two");
    assert_eq!(std::fs::read_to_string(b1.join("rootfs/one.txt")).unwrap(), "one.txt");
    assert_eq!(std::fs::read_to_string(b2.join("rootfs/two.txt")).unwrap(), "two.txt");
    assert!(b1.join("rootfs/base.bin").exists() && b2.join("rootfs/base.bin").exists());
    release_bundle(&b1);
    release_bundle(&b2);
    let log = reg.log()[log_before..].to_owned();
    // One access-log line per request: `"GET /v2/<repo>/blobs/<digest> HTTP/1.1" 200 …`.
    let blob = format!("/blobs/{} HTTP", one.layers[0].digest);
    let base_gets = log.lines().filter(|l| l.contains("\"GET /v2/") && l.contains(&blob)).count();
    assert_eq!(base_gets, 1, "the shared layer was fetched {base_gets} times:\n{log}");
}

/// PullImage through the CDH against `image-pull` on the same image, cold
/// (empty store) and warm; prints the numbers for the report.
#[test]
fn pull_cost_cdh_vs_cli() {
    if !prerequisites(&["docker-registry", "skopeo"]) {
        return;
    }
    let cli = pull_bin();
    if !cli.exists() {
        println!("SKIP: {} not built (cargo build -p image-rs)", cli.display());
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let guest = Guest::start(dir.path(), HashMap::new());
    let reg = Registry::start(RegistryOptions::plain());
    let img = ImageBuilder::new()
        .layer(LayerSpec::entries(
            vec![TarEntry::file("a.bin", support::tarball::noise(5, 8 << 20))],
            Compression::Gzip,
        ))
        .layer(LayerSpec::entries(
            vec![TarEntry::file("b.bin", support::tarball::noise(6, 4 << 20))],
            Compression::Zstd,
        ))
        .layer(LayerSpec::entries(vec![TarEntry::file("c.txt", "c\n")], Compression::Gzip))
        .cmd(&["/a.bin"])
        .build();
    let layout = dir.path().join("layout");
    img.write_to_layout(&layout, "t");
    reg.push_oci_layout(&layout, "t", "bench:1");
    let image = reg.reference("bench:1");

    const RUNS: usize = 3;
    let (mut cdh_cold, mut cli_cold) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let cdh = Cdh::start(&dir.path().join(format!("cdh{run}")), &guest.aa_addr, &reg.host(), "");
        let bundle = dir.path().join(format!("b-cdh-{run}"));
        let t = Instant::now();
        guest.runtime.block_on(cdh.pull(&image, &bundle)).expect("cdh pull");
        cdh_cold.push(t.elapsed().as_secs_f64());
        release_bundle(&bundle);
        if run == RUNS - 1 {
            let bundle = dir.path().join("b-cdh-warm");
            let t = Instant::now();
            guest.runtime.block_on(cdh.pull(&image, &bundle)).expect("cdh warm pull");
            println!("cdh warm: {:.3}s", t.elapsed().as_secs_f64());
            release_bundle(&bundle);
        }

        let work = dir.path().join(format!("cli-work-{run}"));
        let bundle = dir.path().join(format!("b-cli-{run}"));
        let t = Instant::now();
        let out =
            Command::new(&cli).args(["--work-dir", p(&work), "--plain-http", &image, p(&bundle)]).output().unwrap();
        cli_cold.push(t.elapsed().as_secs_f64());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        release_bundle(&bundle);
        if run == RUNS - 1 {
            let bundle = dir.path().join("b-cli-warm");
            let t = Instant::now();
            let out =
                Command::new(&cli).args(["--work-dir", p(&work), "--plain-http", &image, p(&bundle)]).output().unwrap();
            assert!(out.status.success());
            println!("cli warm: {:.3}s", t.elapsed().as_secs_f64());
            release_bundle(&bundle);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("cold pull of 3 layers / 12 MiB, {RUNS} runs each: cdh {cdh_cold:.3?} (median {:.3}s), image-pull {cli_cold:.3?} (median {:.3}s)", median(&mut cdh_cold.clone()), median(&mut cli_cold.clone()));
}
