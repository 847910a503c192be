//! `image-pull` over TLS to a real `docker-registry` serving the certificate
//! operators make with `openssl req -x509 -newkey rsa:2048 -nodes -subj
//! /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1` (self-signed, CA:TRUE).
//! Given as `--ca-file` or in the registry config's `ca-files`, it is
//! accepted as the registry's exact certificate (webpki alone refused it
//! with "CaUsedAsEndEntity"); another certificate, or the right one for
//! another name, is still refused with a clear error.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::layout::{Compression, ImageBuilder, LayerSpec, TarEntry};
use support::registry::{make_self_signed, Registry, RegistryOptions};

const PULL: &str = env!("CARGO_BIN_EXE_image-pull");

fn pull(work: &Path, extra: &[&str], reference: &str) -> Output {
    let bundle = work.join("bundle");
    let mut args = vec!["--work-dir", work.to_str().unwrap(), "--rootfs", "flatten"];
    args.extend_from_slice(extra);
    args.push(reference);
    args.push(bundle.to_str().unwrap());
    Command::new(PULL).args(&args).output().expect("run image-pull")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn marker(work: &Path) -> String {
    std::fs::read_to_string(work.join("bundle/rootfs/marker")).unwrap()
}

#[test]
fn self_signed_ca_true_registry_certificate_is_pinned_by_ca_file_and_registry_config() {
    if !support::require_tools(&["docker-registry", "skopeo", "openssl"]) {
        return;
    }
    let reg = Registry::start(RegistryOptions::tls_self_signed());
    let cert = reg.ca_pem_path().to_str().unwrap().to_owned();
    let text = Command::new("openssl").args(["x509", "-noout", "-text", "-in", &cert]).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"), "the case under test is CA:TRUE");
    let layout = tempfile::tempdir().unwrap();
    ImageBuilder::new()
        .layer(LayerSpec::entries(vec![TarEntry::file("marker", "pinned")], Compression::Gzip))
        .cmd(&["/marker"])
        .build()
        .write_to_layout(layout.path(), "t");
    reg.push_oci_layout(layout.path(), "t", "pinned:1");
    let reference = reg.reference("pinned:1");

    // --ca-file with the registry's own certificate.
    let work = tempfile::tempdir().unwrap();
    let out = pull(work.path(), &["--ca-file", &cert], &reference);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(marker(work.path()), "pinned");

    // The same certificate from the registry config's `ca-files`.
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("registries.toml");
    std::fs::write(&conf, format!("ca-files = [\"{cert}\"]\n")).unwrap();
    let out = pull(work.path(), &["--registry-config", conf.to_str().unwrap()], &reference);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(marker(work.path()), "pinned");

    // Without it: refused (no root knows it).
    let work = tempfile::tempdir().unwrap();
    let out = pull(work.path(), &[], &reference);
    assert!(!out.status.success());
    assert!(stderr(&out).to_lowercase().contains("certificate"), "{}", stderr(&out));

    // Another self-signed certificate pinned: refused, naming the fingerprint it saw.
    let certs = tempfile::tempdir().unwrap();
    let (other, _) = make_self_signed(certs.path(), "other");
    let work = tempfile::tempdir().unwrap();
    let out = pull(work.path(), &["--ca-file", other.to_str().unwrap()], &reference);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not a pinned certificate"), "{}", stderr(&out));
    assert!(!work.path().join("bundle/config.json").exists());

    // The right certificate, but asked for by another name (localhost is not in its SAN).
    let work = tempfile::tempdir().unwrap();
    let by_name = format!("localhost:{}/pinned:1", reg.port());
    let out = pull(work.path(), &["--ca-file", &cert], &by_name);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not valid for name"), "{}", stderr(&out));
}
