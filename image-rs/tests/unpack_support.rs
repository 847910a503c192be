//! Helpers shared by the `unpack_*` integration tests (included with `#[path]`; as a test target
//! of its own it has no tests).
#![allow(dead_code, clippy::new_without_default)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use image_rs::unpack::{unpack_layer, Limits, UnpackError, UnpackOptions, UnpackStats};
use tar::{Builder, EntryType, Header};

pub const MTIME: u64 = 1_600_000_000;

/// A valid VFS capability (v2, effective) granting CAP_NET_BIND_SERVICE.
pub const CAP_NET_BIND_SERVICE: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// A temporary directory with an empty layer root and, next to it, a sentinel directory that no
/// archive may touch.
pub struct Sandbox {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub outside: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

impl Sandbox {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("passwd"), "sentinel passwd\n").unwrap();
        fs::write(outside.join("sub/keep"), "keep me\n").unwrap();
        std::os::unix::fs::symlink("passwd", outside.join("link")).unwrap();
        let before = snapshot(tmp.path(), Some(&root));
        Sandbox { tmp, root, outside, before }
    }

    /// Another empty directory next to the root (a second layer, a flatten target).
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        fs::create_dir(&p).unwrap();
        p
    }

    pub fn unpack(&self, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
        unpack_layer(tar, &self.root, &UnpackOptions::default())
    }

    pub fn unpack_with(&self, tar: &[u8], limits: Limits) -> Result<UnpackStats, UnpackError> {
        unpack_layer(tar, &self.root, &UnpackOptions { limits, ..UnpackOptions::default() })
    }

    /// The sentinel is byte-for-byte as before, and nothing new appeared next to the root (other
    /// than directories made with [`Sandbox::dir`], which are excluded by name).
    pub fn assert_outside_untouched(&self) {
        let now = snapshot(self.tmp.path(), Some(&self.root));
        let now: BTreeMap<_, _> =
            now.into_iter().filter(|(p, _)| p.starts_with("outside") || p.components().count() == 1).collect();
        let before: BTreeMap<_, _> = self
            .before
            .iter()
            .filter(|(p, _)| p.starts_with("outside") || p.components().count() == 1)
            .map(|(p, s)| (p.clone(), s.clone()))
            .collect();
        let extra: Vec<_> = now.keys().filter(|p| !before.contains_key(*p) && !is_test_dir(p)).collect();
        assert!(extra.is_empty(), "new files outside the root: {extra:?}");
        for (p, s) in &before {
            assert_eq!(now.get(p), Some(s), "{} changed outside the root", p.display());
        }
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root.join(rel)).unwrap()
    }

    pub fn lstat(&self, rel: &str) -> fs::Metadata {
        fs::symlink_metadata(self.root.join(rel)).unwrap()
    }

    pub fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.root.join(rel)).is_ok()
    }
}

fn is_test_dir(p: &Path) -> bool {
    p.components().count() == 1 && p != Path::new("outside") && p != Path::new("root")
}

/// Path → description (type, mode, owner, size, inode, nlink, mtime, content or target) of
/// everything under `dir`, skipping `skip`.
pub fn snapshot(dir: &Path, skip: Option<&Path>) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    walk(dir, dir, skip, &mut out);
    out
}

fn walk(base: &Path, dir: &Path, skip: Option<&Path>, out: &mut BTreeMap<PathBuf, String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if Some(p.as_path()) == skip {
            continue;
        }
        let m = fs::symlink_metadata(&p).unwrap();
        let content = if m.file_type().is_symlink() {
            format!("-> {:?}", fs::read_link(&p).unwrap())
        } else if m.is_file() {
            format!("{:?}", fs::read(&p).unwrap())
        } else {
            String::new()
        };
        let desc = format!(
            "mode={:o} uid={} gid={} size={} ino={} nlink={} mtime={} {}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.ino(),
            m.nlink(),
            m.mtime(),
            content
        );
        out.insert(p.strip_prefix(base).unwrap().to_path_buf(), desc);
        if m.is_dir() {
            walk(base, &p, skip, out);
        }
    }
}

/// State of a host file that must not change (content, inode, link count, mtime).
pub fn host_file_state(p: &str) -> String {
    let m = fs::symlink_metadata(p).unwrap();
    format!("{:?} ino={} nlink={} mtime={} {:o}", fs::read(p).unwrap(), m.ino(), m.nlink(), m.mtime(), m.mode())
}

pub fn dir_listing(p: &str) -> Vec<String> {
    let mut v: Vec<_> =
        fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A header with sane defaults: root-owned, `MTIME`, the given type, mode and size.
pub fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h
}

pub struct Tar {
    pub b: Builder<Vec<u8>>,
}

impl Tar {
    pub fn new() -> Self {
        Tar { b: Builder::new(Vec::new()) }
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_with(path, data, 0o644, 0, 0, MTIME)
    }

    pub fn file_with(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64, mtime: u64) -> &mut Self {
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.dir_with(path, 0o755, 0, 0, MTIME)
    }

    pub fn dir_with(&mut self, path: &str, mode: u32, uid: u64, gid: u64, mtime: u64) -> &mut Self {
        let mut h = header(EntryType::Directory, mode, 0);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn node(&mut self, path: &str, kind: EntryType, mode: u32, major: u32, minor: u32) -> &mut Self {
        let mut h = header(kind, mode, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    /// An entry whose name (and link name) bytes are written verbatim into the old header
    /// fields, bypassing the builder's checks (`../x`, `/abs`, `.`, empty ...). At most 100 bytes.
    pub fn raw(&mut self, name: &[u8], kind: EntryType, data: &[u8], link: Option<&[u8]>) -> &mut Self {
        let mut h = header(kind, 0o644, data.len() as u64);
        h.as_old_mut().name = [0; 100];
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            h.as_old_mut().linkname = [0; 100];
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    /// A GNU sparse file of `real_size` bytes whose only data is `data` (a multiple of 512 bytes)
    /// at `offset`; the rest reads as zeros.
    pub fn sparse(&mut self, path: &str, real_size: u64, offset: u64, data: &[u8]) -> &mut Self {
        let mut h = header(EntryType::GNUSparse, 0o644, data.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(real_size);
        gnu.sparse[0].set_offset(offset);
        gnu.sparse[0].set_length(data.len() as u64);
        gnu.sparse[1].set_offset(real_size);
        gnu.sparse[1].set_length(0);
        gnu.set_is_extended(false);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    /// PAX records for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.b.append_pax_extensions(records.iter().map(|(k, v)| (*k, *v))).unwrap();
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        self.b.finish().unwrap();
        self.b.get_ref().clone()
    }
}

/// Unpacks `tar` as a new layer directory `name` above `lowers` (top-most first).
pub fn layer(s: &Sandbox, name: &str, tar: Vec<u8>, lowers: &[PathBuf]) -> PathBuf {
    let dir = s.dir(name);
    unpack_into(&tar, &dir, lowers).unwrap();
    dir
}

/// Unpacks a finished archive into `root` with the given lower layers.
pub fn unpack_into(tar: &[u8], root: &Path, lowers: &[PathBuf]) -> Result<UnpackStats, UnpackError> {
    unpack_layer(tar, root, &UnpackOptions { lower_roots: lowers, ..UnpackOptions::default() })
}

pub fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("getxattr {name} on {}: {e}", p.display()),
    }
}

pub fn is_whiteout(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let m = fs::symlink_metadata(p).unwrap();
    m.file_type().is_char_device() && m.rdev() == 0
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| String::from_utf8_lossy(e.unwrap().file_name().as_bytes()).into_owned())
        .collect();
    v.sort();
    v
}

/// A reader counting the bytes read through it.
pub struct Counting<R> {
    pub inner: R,
    pub count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
