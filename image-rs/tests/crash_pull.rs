//! The real `image-pull` SIGKILLed at random points of a pull (seeded; a slow
//! relay in front of the real registry makes the window wide), several times
//! into one store, with overlay rootfs (real mounts). After each kill: no
//! mount left under the test directory, no layer lock held, every committed
//! layer complete, with its record and equal to a clean pull's. Then a pull
//! into the same store succeeds, its rootfs equals a clean pull's, and the
//! dead pulls' staging and half-written records are gone.
//!
//! Replay with the printed seed: `FAULT_SEED=<seed> cargo test -p image-rs --test crash_pull`.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cli::{p, pull_bin, tree};
use support::crash::{
    assert_layers_consistent, committed_layers, entries_of, held_locks, mounts_under, sigkill, temp_records,
};
use support::fault_proxy::{seed_from_env, FaultPlan, FaultProxy, Rng};
use support::layout::{noise, Compression, ImageBuilder, LayerSpec, TarEntry};
use support::registry::{Registry, RegistryOptions};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn umount(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: umount2 on a path of this test; failure (not mounted) is fine.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

fn image_pull(work: &Path, reference: &str, bundle: &Path) -> Command {
    let mut cmd = Command::new(pull_bin());
    cmd.args(["--work-dir", p(work), "--plain-http", "--rootfs", "overlay", "--min-transfer-rate", "256"])
        .arg(reference)
        .arg(bundle)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn image_pull_killed_at_random_points_leaves_a_store_the_next_pull_completes() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    if !is_root() {
        assert!(!support::in_ci(), "CI=true: this test needs root (overlay mounts)");
        eprintln!("SKIP: not root (overlay rootfs mounts)");
        return;
    }
    let reg = Registry::start(RegistryOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    // Three images (two kill rounds each: a completed pull makes the next one of the same
    // image instant); the clean reference of each: layers and rootfs.
    let mut clean_layers = std::collections::BTreeMap::new();
    let mut clean_rootfs = Vec::new();
    for i in 0..3u64 {
        let img = ImageBuilder::new()
            .layer(LayerSpec::entries(
                vec![TarEntry::dir("data"), TarEntry::file("data/a", noise(10 * i + 1, 160 * 1024))],
                Compression::Gzip,
            ))
            .layer(LayerSpec::entries(vec![TarEntry::file("data/b", noise(10 * i + 2, 96 * 1024))], Compression::Zstd))
            .layer(LayerSpec::entries(vec![TarEntry::file("data/c", noise(10 * i + 3, 64 * 1024))], Compression::Gzip))
            .cmd(&["/data/c"])
            .build();
        let layout = tempfile::tempdir().unwrap();
        img.write_to_layout(layout.path(), "t");
        reg.push_oci_layout(layout.path(), "t", &format!("app:{i}"));
        let clean_work = dir.path().join(format!("clean{i}"));
        let clean_bundle = dir.path().join(format!("clean-bundle{i}"));
        let out = image_pull(&clean_work, &reg.reference(&format!("app:{i}")), &clean_bundle).output().unwrap();
        assert!(out.status.success(), "clean pull: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(committed_layers(&clean_work).len(), 3);
        clean_layers.extend(committed_layers(&clean_work));
        clean_rootfs.push(tree(&clean_bundle.join("rootfs")));
        umount(&clean_bundle.join("rootfs"));
    }

    // ~320 KiB in three layers fetched at once, each at 2 KiB per 25 ms: about 2 s per pull.
    let proxy = FaultProxy::start(&reg.host(), FaultPlan::slow(2 * 1024, Duration::from_millis(25)));
    let seed = seed_from_env();
    eprintln!("kill points: FAULT_SEED={seed}");
    let mut rng = Rng::new(seed);
    let work = dir.path().join("work");
    let (mut killed, mut finished) = (0, 0);
    let started = Instant::now();
    for round in 0..6 {
        let bundle = dir.path().join(format!("bundle{round}"));
        let image = round / 2;
        let reference = format!("{}/app:{image}", proxy.host());
        let after = Duration::from_millis(50 + rng.below(1400));
        let mut child = image_pull(&work, &reference, &bundle).spawn().unwrap();
        let spawned = Instant::now();
        while spawned.elapsed() < after && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let ctx = format!("round {round}, kill after {after:?} (FAULT_SEED={seed})");
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "{ctx}: the pull failed on its own: {status}");
                finished += 1;
                assert_eq!(tree(&bundle.join("rootfs")), clean_rootfs[image], "{ctx}");
                umount(&bundle.join("rootfs"));
            }
            None => {
                sigkill(child.id());
                let _ = child.wait();
                killed += 1;
                // The bundle of a killed pull is the caller's to remove (its rootfs may be mounted).
                umount(&bundle.join("rootfs"));
            }
        }
        assert_eq!(mounts_under(dir.path()), Vec::<std::path::PathBuf>::new(), "{ctx}: mounts left");
        assert_eq!(held_locks(&work), Vec::<std::path::PathBuf>::new(), "{ctx}: locks still held");
        assert_layers_consistent(&work, &clean_layers, &ctx);
    }
    eprintln!("{killed} pulls killed, {finished} finished, in {:.1?}", started.elapsed());
    assert!(killed >= 3, "the kill window missed: only {killed} of 6 pulls were killed");

    // The next pull of each image (straight from the registry) completes and re-verifies.
    for (i, rootfs) in clean_rootfs.iter().enumerate() {
        let bundle = dir.path().join(format!("final{i}"));
        let out = image_pull(&work, &reg.reference(&format!("app:{i}")), &bundle).output().unwrap();
        assert!(out.status.success(), "pull after the kills: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(&tree(&bundle.join("rootfs")), rootfs);
        umount(&bundle.join("rootfs"));
    }
    assert_eq!(committed_layers(&work), clean_layers);
    assert_eq!(entries_of(&work, "staging"), Vec::<std::path::PathBuf>::new(), "dead pulls' staging left");
    assert_eq!(temp_records(&work), Vec::<std::path::PathBuf>::new(), "dead pulls' half-written records left");
    assert!(mounts_under(dir.path()).is_empty());
}
