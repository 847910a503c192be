//! Resource limits against hostile layers: a gzip "tar bomb" declaring a 10 GiB file, the
//! cumulative byte budget, and the free-space check. Run as root (mounts a small tmpfs).

#[path = "unpack_support.rs"]
mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use image_rs::unpack::{unpack_layer, Limits, UnpackError, UnpackOptions};
use support::*;
use tar::EntryType;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A multi-member gzip stream that decompresses to a tar holding one file `bomb` of 10 GiB of
/// zeros: member 1 is the header, then one pre-compressed member of 64 MiB of zeros repeated 160
/// times, then the end-of-archive blocks (10 GiB needs no padding). About 10 MB compressed.
fn gzip_tar_bomb() -> Vec<u8> {
    let size = 10 * GIB;
    let mut h = header(EntryType::Regular, 0o644, size);
    h.set_path("bomb").unwrap();
    h.set_cksum();
    let zeros = gzip(&vec![0u8; 64 << 20]);
    let mut out = gzip(h.as_bytes());
    for _ in 0..size / (64 * MIB) {
        out.extend_from_slice(&zeros);
    }
    out.extend_from_slice(&gzip(&[0u8; 1024]));
    out
}

/// Bytes of data in files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).unwrap() {
        let m = fs::symlink_metadata(e.unwrap().path()).unwrap();
        total += if m.is_dir() { 0 } else { m.len() };
    }
    total
}

#[test]
fn refuses_gzip_tar_bomb_with_10gb_file_quickly() {
    let s = Sandbox::new();
    let bomb = gzip_tar_bomb();
    assert!(bomb.len() < 32 << 20, "compressed bomb is {} bytes", bomb.len());
    let started = Instant::now();
    let mut decompressed = Counting { inner: MultiGzDecoder::new(&bomb[..]), count: 0 };
    let limits = Limits { max_bytes: GIB, ..Limits::default() };
    let err = unpack_layer(&mut decompressed, &s.root, &UnpackOptions { limits, ..Default::default() }).unwrap_err();
    let elapsed = started.elapsed();
    match err {
        UnpackError::TooLarge { ref path, size, limit } => {
            assert_eq!((path.as_str(), size, limit), ("bomb", 10 * GIB, GIB));
        }
        ref other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("bomb"));
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(decompressed.count < 64 * MIB, "pulled {} decompressed bytes", decompressed.count);
    assert!(!s.exists("bomb"), "refused before anything was created");
    assert_eq!(bytes_under(&s.root), 0);
    s.assert_outside_untouched();
}

#[test]
fn refuses_sparse_file_whose_expanded_size_exceeds_the_budget() {
    let s = Sandbox::new();
    let tar = Tar::new().sparse("holes", 10 * GIB, 10 * GIB - 512, &[1u8; 512]).finish();
    assert!(tar.len() < 4096);
    let started = Instant::now();
    let err = s.unpack_with(&tar, Limits { max_bytes: GIB, ..Limits::default() }).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { ref path, size, limit } if path == "holes" && size == 10 * GIB && limit == GIB),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!s.exists("holes"));
}

#[test]
fn cumulative_byte_budget_stops_before_exceeding_the_limit() {
    let s = Sandbox::new();
    let chunk = vec![7u8; 4 * MIB as usize];
    let tar = Tar::new().file("a", &chunk).file("b", &chunk).file("c", &chunk).finish();
    let err = s.unpack_with(&tar, Limits { max_bytes: 10 * MIB, ..Limits::default() }).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { ref path, size, limit } if path == "c" && size == 4 * MIB && limit == 2 * MIB),
        "{err}"
    );
    assert_eq!(fs::read(s.root.join("a")).unwrap(), chunk);
    assert_eq!(fs::read(s.root.join("b")).unwrap(), chunk);
    assert!(!s.exists("c"));
    assert!(bytes_under(&s.root) <= 10 * MIB);
}

#[test]
fn stats_count_entries_bytes_and_whiteouts() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .dir("d")
        .file("d/a", b"12345")
        .file("b", b"678")
        .symlink("l", "b")
        .raw(b".wh.x", EntryType::Regular, b"", None)
        .raw(b"d/.wh..wh..opq", EntryType::Regular, b"", None)
        .finish();
    let stats = s.unpack_with(&tar, Limits { max_bytes: 8, max_entries: 6, ..Limits::default() }).unwrap();
    assert_eq!((stats.entries, stats.bytes, stats.whiteouts), (6, 8, 2));
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Self {
        fs::create_dir(&at).unwrap();
        let opts = std::ffi::CString::new(format!("size={size},mode=0755")).unwrap();
        rustix::mount::mount("tmpfs", &at, "tmpfs", rustix::mount::MountFlags::empty(), opts.as_c_str())
            .expect("mounting a tmpfs needs root (these tests run as root)");
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn refuses_files_larger_than_free_space_minus_reserve() {
    let s = Sandbox::new();
    let fs_ = Tmpfs::mount(s.tmp.path().join("small"), "64m");
    let root = fs_.0.join("root");
    fs::create_dir(&root).unwrap();

    // Default limits (no byte budget): the 10 GiB bomb is refused by the free-space check (the
    // default reserve is 5% of the 64 MiB filesystem).
    let bomb = gzip_tar_bomb();
    let started = Instant::now();
    let err = unpack_layer(MultiGzDecoder::new(&bomb[..]), &root, &UnpackOptions::default()).unwrap_err();
    assert!(
        matches!(err, UnpackError::NoSpace { ref path, size, free, reserve, .. } if path == "bomb" && size == 10 * GIB && free < 64 * MIB && reserve == 64 * MIB / 100 * 5),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!root.join("bomb").exists());

    // With a 5% reserve: 40 MiB fits in 64 MiB; a second 40 MiB does not (and leaves the
    // reserve alone).
    let small_reserve = UnpackOptions {
        limits: Limits { free_space_reserve_bytes: u64::MAX, free_space_reserve_percent: 5, ..Limits::default() },
        ..UnpackOptions::default()
    };
    let chunk = vec![1u8; 40 * MIB as usize];
    let tar = Tar::new().file("a", &chunk).file("b", &chunk).finish();
    let err = unpack_layer(&tar[..], &root, &small_reserve).unwrap_err();
    match err {
        UnpackError::NoSpace { ref path, size, free, .. } => {
            assert_eq!((path.as_str(), size), ("b", 40 * MIB));
            assert!(free < 24 * MIB, "free {free}");
        }
        ref other => panic!("unexpected {other}"),
    }
    assert_eq!(fs::metadata(root.join("a")).unwrap().len(), 40 * MIB);
    assert!(!root.join("b").exists());
    let vfs = rustix::fs::statvfs(&root).unwrap();
    assert!(vfs.f_bavail * vfs.f_frsize >= 64 * MIB / 20);
    drop(fs_);
    s.assert_outside_untouched();
}

/// Fills the filesystem behind the unpacker's back once `after` bytes were read (a concurrent
/// layer unpack, or anything else writing there).
struct FillsTheFsMidway<'a> {
    inner: &'a [u8],
    read: u64,
    after: u64,
    filler: Option<(PathBuf, usize)>,
}

impl std::io::Read for FillsTheFsMidway<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read >= self.after {
            if let Some((path, len)) = self.filler.take() {
                fs::write(path, vec![9u8; len]).unwrap();
            }
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[test]
fn free_space_is_checked_again_while_a_file_is_written() {
    let s = Sandbox::new();
    let fs_ = Tmpfs::mount(s.tmp.path().join("small"), "64m");
    let root = fs_.0.join("root");
    fs::create_dir(&root).unwrap();
    let limits = Limits { free_space_reserve_bytes: 4 * MIB, free_space_reserve_percent: 100, ..Limits::default() };
    // 40 MiB fit when the file starts; 30 MiB written elsewhere after its first 4 MiB leave no
    // room for the rest: the unpack stops there, above the reserve, not at ENOSPC.
    let data = vec![1u8; 40 * MIB as usize];
    let tar = Tar::new().file("big", &data).finish();
    let reader = FillsTheFsMidway {
        inner: &tar,
        read: 0,
        after: 4 * MIB,
        filler: Some((fs_.0.join("filler"), 30 * MIB as usize)),
    };
    let err = unpack_layer(reader, &root, &UnpackOptions { limits, ..UnpackOptions::default() }).unwrap_err();
    assert!(
        matches!(err, UnpackError::NoSpace { ref path, what, reserve, .. } if path == "big" && what == "the rest of this file" && reserve == 4 * MIB),
        "{err}"
    );
    let vfs = rustix::fs::statvfs(&root).unwrap();
    assert!(
        vfs.f_bavail * vfs.f_frsize >= 4 * MIB - MIB,
        "the reserve was eaten: {} bytes free",
        vfs.f_bavail * vfs.f_frsize
    );
    drop(fs_);
    s.assert_outside_untouched();
}
