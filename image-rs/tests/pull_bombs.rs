//! Decompression bombs pulled through the library from a scripted registry
//! (support/fake_registry.rs) into a store on a 64 MiB tmpfs, as the guest's store sits on a
//! tmpfs (its RAM): each is refused with its cause named, fast, and leaves no layer and no
//! staging behind. Needs root (mounts the tmpfs); skips otherwise (fails under CI=true).
//!
//! The bombs (each ~10 GiB of zeros, a few MB or KB compressed, gzip and zstd):
//! - many 8 MiB files of zeros: each fits the free space, and zeros are written as holes, so
//!   only counting a layer's file bytes, holes included, against the free space stops it;
//! - zeros after the tar end-of-archive marker: never unpacked, but decompressed and hashed
//!   for the diff_id unless the trailer is bounded.

// PullError carries digests; as in the library, its size does not matter here.
#![allow(clippy::result_large_err)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image_rs::pipeline::PipelineOptions;
use image_rs::pull::{parse_reference, PullError, PullOptions, PulledImage, Puller};
use image_rs::registry::config::RegistriesConfig;
use image_rs::registry::http::{Distribution, HttpOptions};
use image_rs::registry::{Platform, Registry};
use image_rs::store::LayerStore;
use image_rs::unpack::Limits;
use support::fake_registry::{FakeImage, FakeServer, Seen};
use support::layout::{compress, noise, tar_bytes, Compression, TarEntry, MT_LAYER_GZIP, MT_LAYER_ZSTD};

const MIB: u64 = 1 << 20;
const BOMB_BYTES: u64 = 10 << 30;

fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(!support::in_ci(), "CI=true but {test} needs root (mounts a tmpfs)");
    eprintln!("SKIP: {test} needs root (mounts a tmpfs)");
    false
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        std::fs::create_dir(&path).unwrap();
        rustix::mount::mount(
            "tmpfs",
            &path,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            &*std::ffi::CString::new(format!("size={size}")).unwrap(),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", path.display()));
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH);
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn file_header(name: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(0);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// ~10 GiB in 8 MiB files of zeros, one compressed member/frame per header and per file body.
fn many_files_bomb(pack: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let body = pack(&vec![0u8; 8 * MIB as usize]);
    let mut out = Vec::new();
    for i in 0..BOMB_BYTES / (8 * MIB) {
        out.extend(pack(&file_header(&format!("z{i}"), 8 * MIB)));
        out.extend_from_slice(&body);
    }
    out.extend(pack(&[0u8; 1024]));
    out
}

/// A valid small tar (end-of-archive marker included), then ~10 GiB of zeros.
fn trailer_bomb(pack: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut out = pack(&tar_bytes(&[TarEntry::file("marker", "x")]));
    let zeros = pack(&vec![0u8; 8 * MIB as usize]);
    for _ in 0..BOMB_BYTES / (8 * MIB) {
        out.extend_from_slice(&zeros);
    }
    out
}

/// Small reserve, so a 64 MiB tmpfs leaves room for a real image.
fn pipeline() -> PipelineOptions {
    PipelineOptions {
        limits: Limits { free_space_reserve_bytes: 4 * MIB, free_space_reserve_percent: 5, ..Limits::default() },
        max_retries: 0,
        ..PipelineOptions::default()
    }
}

fn serve(img: FakeImage) -> FakeServer {
    FakeServer::start("127.0.0.1", Arc::new(move |req: &Seen, conn: &mut std::net::TcpStream| img.serve(req, conn)))
}

fn pull(reg: &FakeServer, store: &Path) -> Result<PulledImage, PullError> {
    let http = HttpOptions { insecure_hosts: [reg.host()].into(), ..HttpOptions::default() };
    let registry = Registry::new(Distribution::new(http).unwrap(), RegistriesConfig::default(), Platform::host());
    let store = Arc::new(LayerStore::open(store).unwrap());
    let p = Puller::new(registry, store, PullOptions { pipeline: pipeline(), ..PullOptions::default() });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let r = parse_reference(&format!("{}/bomb:1", reg.host())).unwrap();
    rt.block_on(async {
        // The library has one way in, with the signature policy (here the
        // built-in accept-anything one: these tests are about the transfer).
        let verifier = image_rs::signature::ImageVerifier::builtin_accept_anything(
            Default::default(),
            std::sync::Arc::new(image_rs::keysource::NoKeySource),
        );
        p.pull_verified(&r, &verifier).await
    })
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn assert_nothing_left(store: &Path) {
    for sub in ["layers", "staging"] {
        let left: Vec<_> = std::fs::read_dir(store.join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "{sub} not empty after a refused pull: {left:?}");
    }
}

/// Pulls `blob` (placeholder diff_id: the pull must stop long before a diff_id check) into a
/// fresh 64 MiB tmpfs store and expects an error containing `cause`.
fn refused_fast(name: &str, blob: Vec<u8>, media_type: &str, cause: &str) {
    let fs = Tmpfs::mount("64m");
    let reg = serve(FakeImage::new(blob, media_type, &format!("sha256:{}", "0".repeat(64))));
    let (t0, cpu0) = (Instant::now(), cpu_seconds());
    let err = pull(&reg, &fs.path).expect_err("bomb accepted").to_string();
    let (wall, cpu) = (t0.elapsed(), cpu_seconds() - cpu0);
    eprintln!("{name}: refused in {:.2} s wall, {cpu:.2} CPU s: {err}", wall.as_secs_f64());
    assert!(err.contains(cause), "{name}: expected {cause:?} in: {err}");
    assert!(wall < Duration::from_secs(10), "{name}: took {wall:?}");
    assert_nothing_left(&fs.path);
}

#[test]
fn a_gzip_bomb_of_many_zero_files_is_refused_by_the_free_space_check() {
    if !root_or_skip("a_gzip_bomb_of_many_zero_files_is_refused_by_the_free_space_check") {
        return;
    }
    refused_fast("gzip many-files", many_files_bomb(gzip), MT_LAYER_GZIP, "free on the store's filesystem");
}

#[test]
fn a_zstd_bomb_of_many_zero_files_is_refused_by_the_free_space_check() {
    if !root_or_skip("a_zstd_bomb_of_many_zero_files_is_refused_by_the_free_space_check") {
        return;
    }
    refused_fast("zstd many-files", many_files_bomb(zstd), MT_LAYER_ZSTD, "free on the store's filesystem");
}

#[test]
fn a_gzip_bomb_after_the_end_of_archive_is_refused() {
    if !root_or_skip("a_gzip_bomb_after_the_end_of_archive_is_refused") {
        return;
    }
    refused_fast("gzip trailer", trailer_bomb(gzip), MT_LAYER_GZIP, "after the tar end-of-archive marker");
}

#[test]
fn a_zstd_bomb_after_the_end_of_archive_is_refused() {
    if !root_or_skip("a_zstd_bomb_after_the_end_of_archive_is_refused") {
        return;
    }
    refused_fast("zstd trailer", trailer_bomb(zstd), MT_LAYER_ZSTD, "after the tar end-of-archive marker");
}

#[test]
fn a_real_image_still_fits_the_small_store() {
    if !root_or_skip("a_real_image_still_fits_the_small_store") {
        return;
    }
    let fs = Tmpfs::mount("64m");
    let data = noise(3, 24 * MIB as usize);
    let tar = tar_bytes(&[TarEntry::file("data", data.clone())]);
    let img = FakeImage::new(compress(&tar, Compression::Zstd), MT_LAYER_ZSTD, &support::sha256_digest(&tar));
    let reg = serve(img);
    let pulled = pull(&reg, &fs.path).unwrap();
    assert_eq!(std::fs::read(pulled.layer_dirs[0].join("data")).unwrap(), data);
}
