//! The test images of the daemon tests (an app image of two layers, plain and
//! ocicrypt-encrypted for a KEK held by the test KBS as `KID`) and the checks
//! on a pull's outcome: the rootfs, or a refusal naming its cause that left
//! nothing under bundle_path.

use std::path::Path;

use crate::common::entries;
use crate::support::cli::{our_encrypt, p};
use crate::support::layout::{BuiltImage, Compression, ImageBuilder, LayerSpec, TarEntry};
use crate::support::registry::Registry;

pub const KID: &str = "kbs:///default/key/1";

pub fn app_image(seed: u64) -> BuiltImage {
    ImageBuilder::new()
        .layer(LayerSpec::entries(
            vec![
                TarEntry::dir("etc"),
                TarEntry::file("etc/app.conf", "secret configuration\n"),
                TarEntry::file("app/model.bin", crate::support::tarball::noise(seed, 300_000)),
            ],
            Compression::Gzip,
        ))
        .layer(LayerSpec::entries(vec![TarEntry::file("app/VERSION", "2\n").owner(1000, 1000)], Compression::Zstd))
        .cmd(&["/app/run"])
        .build()
}

pub fn random_kek() -> Vec<u8> {
    let mut kek = vec![0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut kek).unwrap();
    kek
}

/// Pushes `img` as `app:plain` and, encrypted for the KEK `kek` (provider
/// attestation-agent, kid KID), as `app:enc`.
pub fn push_plain_and_encrypted(reg: &Registry, img: &BuiltImage, kek: &[u8], scratch: &Path) {
    let plain = scratch.join("plain");
    img.write_to_layout(&plain, "t");
    reg.push_oci_layout(&plain, "t", "app:plain");
    let kek_file = scratch.join("kek.bin");
    std::fs::write(&kek_file, kek).unwrap();
    let enc = scratch.join("enc");
    our_encrypt(&plain, &enc, &[format!("provider:attestation-agent:{KID}:{}", p(&kek_file))]);
    reg.push_oci_layout(&enc, "t", "app:enc");
}

#[track_caller]
pub fn assert_app_rootfs(bundle: &Path) {
    assert_eq!(std::fs::read_to_string(bundle.join("rootfs/etc/app.conf")).unwrap(), "secret configuration\n");
    assert_eq!(std::fs::read_to_string(bundle.join("rootfs/app/VERSION")).unwrap(), "2\n");
    assert!(bundle.join("config.json").is_file());
}

#[track_caller]
pub fn assert_refused(result: Result<String, (ttrpc::Code, String)>, code: ttrpc::Code, wants: &[&str], bundle: &Path) {
    let (got, message) = result.expect_err("the pull should have been refused");
    println!("refused: {got:?}: {message}");
    assert_eq!(got, code, "{message}");
    for want in wants {
        assert!(message.contains(want), "status lacks {want:?}: {message}");
    }
    assert!(!bundle.exists(), "a refused pull left {:?}", entries(bundle));
}
