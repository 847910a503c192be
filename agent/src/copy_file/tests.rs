//! CopyFile against a temporary storage base: kata's semantics and the
//! attacks kata's CVEs came from (traversal, symlinked parents, symlinks
//! swapped in between chunks).

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use protos::agent::CopyFileRequest;

use super::*;

/// Go's os.ModeDir | 0750, exactly as kata's shim sends `dir_mode`.
const GO_DIR_MODE: u32 = 0x8000_0000 | 0o750;

struct Env {
    _tmp: tempfile::TempDir,
    copies: CopyFiles,
    shared: PathBuf,
    outside: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("kata");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let copies = CopyFiles::new(&base);
    let shared = copies.shared_dir();
    std::fs::create_dir_all(&shared).unwrap();
    Env { _tmp: tmp, copies, shared, outside }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A request as kata's shim builds it; uid/gid -1 (unchanged) unless root.
fn req(path: &Path, file_mode: u32, data: &[u8], file_size: i64, offset: i64) -> CopyFileRequest {
    CopyFileRequest {
        path: path.display().to_string(),
        file_size,
        file_mode,
        dir_mode: GO_DIR_MODE,
        uid: -1,
        gid: -1,
        offset,
        data: data.to_vec(),
        ..Default::default()
    }
}

fn file(path: &Path, data: &[u8]) -> CopyFileRequest {
    req(path, libc::S_IFREG | 0o644, data, data.len() as i64, 0)
}

fn invalid_naming(r: Result<(), RuntimeError>, needle: &str) {
    match r {
        Err(RuntimeError::InvalidArgument(m)) => assert!(m.contains(needle), "{m:?} should name {needle:?}"),
        other => panic!("expected INVALID_ARGUMENT naming {needle:?}, got {other:?}"),
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn rejects_dot_dot_traversal_and_unclean_paths() {
    let e = env();
    let evil = format!("{}/../../outside/pwned", e.shared.display());
    invalid_naming(e.copies.copy(&file(Path::new(&evil), b"x")), "'..'");
    for bad in ["a/./b", "a//b", "a/"] {
        let p = format!("{}/{bad}", e.shared.display());
        invalid_naming(e.copies.copy(&file(Path::new(&p), b"x")), "clean path");
    }
    assert!(!e.outside.join("pwned").exists());
    // Names that merely start with dots are fine (kubelet's `..data`).
    e.copies.copy(&file(&e.shared.join("..data_tmp"), b"ok")).unwrap();
    assert_eq!(std::fs::read(e.shared.join("..data_tmp")).unwrap(), b"ok");
}

#[test]
fn rejects_absolute_paths_outside_the_shared_directory() {
    let e = env();
    invalid_naming(e.copies.copy(&file(&e.outside.join("f"), b"x")), "is not under");
    invalid_naming(e.copies.copy(&file(Path::new("/etc/cvm-agent-test"), b"x")), "is not under");
    invalid_naming(e.copies.copy(&file(&e.shared, b"x")), "is not under");
    invalid_naming(e.copies.copy(&file(Path::new("relative/f"), b"x")), "not an absolute path");
    // A sibling whose name extends the shared directory's is outside too.
    let sibling = PathBuf::from(format!("{}X/f", e.shared.display()));
    invalid_naming(e.copies.copy(&file(&sibling, b"x")), "is not under");
    assert!(!e.outside.join("f").exists());
}

#[test]
fn rejects_a_symlinked_parent_directory() {
    let e = env();
    symlink(&e.outside, e.shared.join("pod")).unwrap();
    invalid_naming(e.copies.copy(&file(&e.shared.join("pod/f"), b"x")), "symlink");
    invalid_naming(e.copies.copy(&file(&e.shared.join("pod/sub/f"), b"x")), "symlink");
    let dir = req(&e.shared.join("pod/d"), libc::S_IFDIR | 0o755, b"", 0, 0);
    invalid_naming(e.copies.copy(&dir), "symlink");
    assert!(entries(&e.outside).is_empty(), "wrote through the symlink: {:?}", entries(&e.outside));
    // The storage base's own components are resolved without symlinks too.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("kata")).unwrap();
    symlink(&e.outside, tmp.path().join("kata/shared")).unwrap();
    let copies = CopyFiles::new(&tmp.path().join("kata"));
    let target = copies.shared_dir().join("f");
    assert!(copies.copy(&file(&target, b"x")).is_err());
    assert!(entries(&e.outside).is_empty());
}

#[test]
fn a_symlink_planted_between_two_chunks_is_not_followed() {
    let e = env();
    let dir = e.shared.join("sb/vol");
    let target = dir.join("token");
    e.copies.copy(&req(&target, libc::S_IFREG | 0o600, b"abcd", 8, 0)).unwrap();
    // Between the chunks: the directory is swapped for a symlink out, and
    // the final name in the original directory becomes a symlink out too.
    std::fs::rename(&dir, e.shared.join("sb/vol.moved")).unwrap();
    symlink(&e.outside, &dir).unwrap();
    symlink(e.outside.join("victim"), e.shared.join("sb/vol.moved/token")).unwrap();
    std::fs::write(e.outside.join("victim"), b"precious").unwrap();
    e.copies.copy(&req(&target, libc::S_IFREG | 0o600, b"efgh", 8, 4)).unwrap();
    assert_eq!(std::fs::read(e.outside.join("victim")).unwrap(), b"precious");
    assert_eq!(entries(&e.outside), ["victim"]);
    // The file landed in the directory the first chunk resolved, replacing
    // the planted symlink (not following it).
    let landed = e.shared.join("sb/vol.moved/token");
    assert!(std::fs::symlink_metadata(&landed).unwrap().is_file());
    assert_eq!(std::fs::read(&landed).unwrap(), b"abcdefgh");
    assert_eq!(e.copies.pending_count(), 0);
}

#[test]
fn a_symlink_at_the_final_name_is_replaced_by_the_regular_file() {
    let e = env();
    std::fs::write(e.outside.join("passwd"), b"root:x:0:0").unwrap();
    symlink(e.outside.join("passwd"), e.shared.join("hosts")).unwrap();
    e.copies.copy(&file(&e.shared.join("hosts"), b"127.0.0.1 localhost\n")).unwrap();
    let meta = std::fs::symlink_metadata(e.shared.join("hosts")).unwrap();
    assert!(meta.is_file(), "still a symlink");
    assert_eq!(std::fs::read(e.shared.join("hosts")).unwrap(), b"127.0.0.1 localhost\n");
    assert_eq!(std::fs::read(e.outside.join("passwd")).unwrap(), b"root:x:0:0");
    // A symlink to a directory is replaced the same way by a directory.
    symlink(&e.outside, e.shared.join("d")).unwrap();
    e.copies.copy(&req(&e.shared.join("d"), libc::S_IFDIR | 0o755, b"", 0, 0)).unwrap();
    assert!(std::fs::symlink_metadata(e.shared.join("d")).unwrap().is_dir());
}

#[test]
fn offsets_and_sizes_out_of_bounds_are_refused_by_name() {
    let e = env();
    let p = e.shared.join("f");
    let mode = libc::S_IFREG | 0o644;
    invalid_naming(e.copies.copy(&req(&p, mode, b"abcdef", 4, 0)), "beyond file_size 4");
    invalid_naming(e.copies.copy(&req(&p, mode, b"ab", 4, 3)), "beyond file_size 4");
    invalid_naming(e.copies.copy(&req(&p, mode, b"ab", 4, i64::MAX)), "beyond file_size");
    invalid_naming(e.copies.copy(&req(&p, mode, b"ab", 4, -1)), "negative offset");
    invalid_naming(e.copies.copy(&req(&p, mode, b"ab", -4, 0)), "file_size -4");
    let too_big = MAX_FILE_SIZE as i64 + 1;
    invalid_naming(e.copies.copy(&req(&p, mode, b"ab", too_big, 0)), &format!("0..={MAX_FILE_SIZE}"));
    invalid_naming(e.copies.copy(&req(&p, mode, &vec![0; MAX_CHUNK + 1], MAX_FILE_SIZE as i64, 0)), "limit");
    // A later chunk with no first chunk, or out of order.
    invalid_naming(e.copies.copy(&req(&p, mode, b"ab", 4, 2)), "no copy of this file is in progress");
    e.copies.copy(&req(&p, mode, b"a", 4, 0)).unwrap();
    invalid_naming(e.copies.copy(&req(&p, mode, b"cd", 4, 2)), "expected offset 1");
    assert!(!p.exists(), "a file appeared after refused chunks");
    assert_eq!(entries(&e.shared), Vec::<String>::new(), "temporary file left behind");
    // Too deep, too long, unsupported types.
    let deep = (0..=MAX_DEPTH).fold(e.shared.clone(), |p, i| p.join(format!("d{i}")));
    invalid_naming(e.copies.copy(&file(&deep, b"x")), "deeper");
    invalid_naming(e.copies.copy(&file(&e.shared.join("n".repeat(256)), b"x")), "255");
    invalid_naming(e.copies.copy(&file(&e.shared.join("x".repeat(MAX_PATH_LEN)), b"x")), "longer than");
    invalid_naming(e.copies.copy(&req(&p, libc::S_IFIFO | 0o644, b"", 0, 0)), "file type");
    invalid_naming(e.copies.copy(&req(&p, libc::S_IFLNK | 0o777, b"", 0, 0)), "symlink target");
    invalid_naming(e.copies.copy(&req(&p, libc::S_IFLNK | 0o777, b"a\0b", 0, 0)), "NUL");
}

#[test]
fn chunks_are_reassembled_and_never_visible_half_written() {
    let e = env();
    let p = e.shared.join("sb/big");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let chunk = 1 << 20;
    for (i, part) in data.chunks(chunk).enumerate() {
        assert!(!p.exists(), "final name visible before the last chunk");
        let r = req(&p, libc::S_IFREG | 0o640, part, data.len() as i64, (i * chunk) as i64);
        e.copies.copy(&r).unwrap();
    }
    assert_eq!(std::fs::read(&p).unwrap(), data);
    assert_eq!(entries(&e.shared.join("sb")), ["big"], "temporary file left behind");
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o640);
    // Copying again replaces the content; an empty file is one request.
    e.copies.copy(&file(&p, b"v2")).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"v2");
    e.copies.copy(&file(&e.shared.join("sb/empty"), b"")).unwrap();
    assert_eq!(std::fs::read(e.shared.join("sb/empty")).unwrap(), b"");
    // A first chunk again restarts an unfinished copy.
    e.copies.copy(&req(&p, libc::S_IFREG | 0o644, b"xx", 4, 0)).unwrap();
    e.copies.copy(&req(&p, libc::S_IFREG | 0o644, b"ab", 4, 0)).unwrap();
    e.copies.copy(&req(&p, libc::S_IFREG | 0o644, b"cd", 4, 2)).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"abcd");
    assert_eq!(entries(&e.shared.join("sb")), ["big", "empty"]);
}

#[test]
fn directories_symlinks_modes_and_owners_as_kata() {
    let e = env();
    let (uid, gid) = if is_root() { (1234, 5678) } else { (-1, -1) };
    let with_owner = |mut r: CopyFileRequest| {
        r.uid = uid;
        r.gid = gid;
        r
    };
    // A directory with set-gid, under parents created with dir_mode.
    let d = e.shared.join("sb/cm/..2024_01_01");
    e.copies.copy(&with_owner(req(&d, libc::S_IFDIR | 0o2775, b"", 0, 0))).unwrap();
    let meta = std::fs::symlink_metadata(&d).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o2775);
    assert_eq!(std::fs::metadata(e.shared.join("sb")).unwrap().mode() & 0o7777, 0o750, "dir_mode of parents");
    // An existing directory is kept (its content too).
    std::fs::write(d.join("keep"), b"k").unwrap();
    e.copies.copy(&with_owner(req(&d, libc::S_IFDIR | 0o755, b"", 0, 0))).unwrap();
    assert!(d.join("keep").exists());
    assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o7777, 0o755);
    // A symlink stores `data` as its target, whatever it names.
    let link = e.shared.join("sb/cm/..data");
    e.copies.copy(&with_owner(req(&link, libc::S_IFLNK | 0o777, b"..2024_01_01", 0, 0))).unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("..2024_01_01"));
    // A regular file: mode without set-id bits.
    let f = d.join("key");
    e.copies.copy(&with_owner(req(&f, libc::S_IFREG | libc::S_ISUID | 0o640, b"v", 1, 0))).unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    // A non-empty directory is not replaced by a file; an empty one is.
    invalid_naming(e.copies.copy(&file(&d, b"x")), "non-empty directory");
    std::fs::create_dir(e.shared.join("sb/emptydir")).unwrap();
    e.copies.copy(&file(&e.shared.join("sb/emptydir"), b"x")).unwrap();
    assert!(e.shared.join("sb/emptydir").is_file());
    if !is_root() {
        eprintln!("skipping owner checks: not root");
        return;
    }
    for p in [&d, &link, &f, &e.shared.join("sb/cm")] {
        let m = std::fs::symlink_metadata(p).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678), "{}", p.display());
    }
    // Kata chowns only the immediate parent; never the shared directory.
    let sb = std::fs::metadata(e.shared.join("sb")).unwrap();
    assert_eq!((sb.uid(), sb.gid()), (0, 0));
    e.copies.copy(&with_owner(file(&e.shared.join("top"), b"t"))).unwrap();
    assert_eq!(std::fs::metadata(&e.shared).unwrap().uid(), 0);
}

#[test]
fn a_temporary_file_swapped_between_chunks_is_never_renamed_into_place() {
    let e = env();
    let target = e.shared.join("sb/secret");
    e.copies.copy(&req(&target, libc::S_IFREG | 0o600, b"abcd", 8, 0)).unwrap();
    let dir = e.shared.join("sb");
    let tmp = entries(&dir).into_iter().find(|n| n.starts_with(".cvm-copy-")).expect("temporary file");
    std::fs::remove_file(dir.join(&tmp)).unwrap();
    symlink("/etc/shadow", dir.join(&tmp)).unwrap();
    invalid_naming(e.copies.copy(&req(&target, libc::S_IFREG | 0o600, b"efgh", 8, 4)), "temporary file was replaced");
    assert!(std::fs::symlink_metadata(&target).is_err(), "something was renamed into place");
    assert_eq!(e.copies.pending_count(), 0);
}
