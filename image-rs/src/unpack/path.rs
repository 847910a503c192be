//! Entry names and confined path resolution.
//!
//! Names are normalised lexically ([`EntryPath::parse`]): empty and `.` components are dropped,
//! `..` removes the previous component and is dropped at the top (clamped to the root), a leading
//! `/` is ignored. What remains is a list of plain components.
//!
//! Directories are then opened with `openat2(root, path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`:
//! the kernel resolves symlinks met on the way as if `root` were `/`, so no symlink, absolute or
//! relative, can lead outside it. The last component of an entry is never resolved this way: it
//! is created, removed or changed with `*at` calls on the parent's descriptor that do not follow
//! it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::error::{io_err, unsafe_path, UnpackError};

/// How every in-root lookup is confined.
pub(crate) const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// A tar entry name after lexical normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryPath {
    comps: Vec<Vec<u8>>,
    /// A `..` or a leading `/` tried to leave the root and was clamped.
    clamped: bool,
}

impl EntryPath {
    /// Normalises a raw name. Fails (with the reason) on an empty name or one containing NUL.
    pub(crate) fn parse(raw: &[u8]) -> Result<Self, &'static str> {
        if raw.is_empty() {
            return Err("empty name");
        }
        if raw.contains(&0) {
            return Err("name contains a NUL byte");
        }
        let mut clamped = raw.first() == Some(&b'/');
        let mut comps: Vec<Vec<u8>> = Vec::new();
        for c in raw.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    if comps.pop().is_none() {
                        clamped = true;
                    }
                }
                _ => comps.push(c.to_vec()),
            }
        }
        Ok(EntryPath { comps, clamped })
    }

    /// The normalised name is the root itself (`.`, `./`, `/`, `a/..`, ...).
    #[cfg(test)]
    pub(crate) fn is_root(&self) -> bool {
        self.comps.is_empty()
    }

    pub(crate) fn clamped(&self) -> bool {
        self.clamped
    }

    pub(crate) fn components(&self) -> &[Vec<u8>] {
        &self.comps
    }

    /// All components but the last (empty for the root and for top-level names).
    pub(crate) fn parent(&self) -> &[Vec<u8>] {
        self.comps.split_last().map(|(_, p)| p).unwrap_or(&[])
    }

    /// The last component; `None` for the root.
    pub(crate) fn name(&self) -> Option<&[u8]> {
        self.comps.last().map(Vec::as_slice)
    }

    /// The last component, or an [`UnpackError::UnsafePath`] saying the entry names the root.
    pub(crate) fn name_or_err(&self, shown: &str) -> Result<&[u8], UnpackError> {
        self.name().ok_or_else(|| unsafe_path(shown, "names the layer root, which only a directory entry may do"))
    }
}

/// Opens a directory given by the (trusted) caller: a layer root, a lower layer, a flatten target.
pub(crate) fn open_dir_path(p: &Path) -> Result<OwnedFd, UnpackError> {
    rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(io_err(&p.display().to_string(), "open directory"))
}

/// `a/b/c` for the components, `.` for none.
pub(crate) fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    if comps.is_empty() {
        return b".".to_vec();
    }
    let mut out = Vec::with_capacity(comps.iter().map(|c| c.len() + 1).sum());
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    out
}

/// Opens `comps` below `root` with the confined resolution, retrying the `EAGAIN` that
/// `RESOLVE_IN_ROOT` returns when a rename raced with the lookup.
pub(crate) fn open_in_root(root: BorrowedFd<'_>, comps: &[Vec<u8>], flags: OFlags) -> Result<OwnedFd, Errno> {
    let path = join(comps);
    let mut last = Errno::AGAIN;
    for _ in 0..16 {
        match rustix::fs::openat2(root, path.as_slice(), flags | OFlags::CLOEXEC, Mode::empty(), RESOLVE) {
            Err(Errno::AGAIN) => last = Errno::AGAIN,
            other => return other,
        }
    }
    Err(last)
}

/// Opens the directory `comps` below `root` (confined), readable so that xattrs can be set on it.
pub(crate) fn open_dir_in_root(root: BorrowedFd<'_>, comps: &[Vec<u8>]) -> Result<OwnedFd, Errno> {
    open_in_root(root, comps, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// Opens a child directory of `parent` without following a symlink in its place.
pub(crate) fn open_child_dir(parent: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens directory `comps` below `root`, creating missing components one by one with `mkdirat`
/// on the (confined) parent descriptor. `init` is called on every directory created, with the
/// components naming it, to set its owner, mode and times.
pub(crate) fn open_or_create_dir(
    root: BorrowedFd<'_>,
    comps: &[Vec<u8>],
    shown: &str,
    mut init: impl FnMut(&[Vec<u8>], BorrowedFd<'_>) -> Result<(), UnpackError>,
) -> Result<OwnedFd, UnpackError> {
    match open_dir_in_root(root, comps) {
        Ok(fd) => return Ok(fd),
        Err(Errno::NOENT) => {}
        Err(Errno::NOTDIR) => return Err(unsafe_path(shown, "a parent component is not a directory")),
        Err(e) => return Err(io_err(shown, "open parent directory of")(e)),
    }
    let mut cur = open_dir_in_root(root, &[]).map_err(io_err(shown, "open layer root for"))?;
    for (i, comp) in comps.iter().enumerate() {
        let prefix = comps.get(..=i).unwrap_or(comps);
        match open_dir_in_root(root, prefix) {
            Ok(fd) => {
                cur = fd;
                continue;
            }
            Err(Errno::NOENT) => {}
            Err(Errno::NOTDIR) => return Err(unsafe_path(shown, "a parent component is not a directory")),
            Err(e) => return Err(io_err(shown, "open parent directory of")(e)),
        }
        match rustix::fs::mkdirat(&cur, comp.as_slice(), Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                let fd = open_child_dir(cur.as_fd(), comp).map_err(io_err(shown, "open new parent directory of"))?;
                init(prefix, fd.as_fd())?;
                cur = fd;
            }
            Err(Errno::EXIST) => match open_dir_in_root(root, prefix) {
                Ok(fd) => cur = fd,
                Err(Errno::NOENT) => {
                    return Err(unsafe_path(
                        shown,
                        "a parent component is a symlink whose target does not exist inside the layer",
                    ))
                }
                Err(Errno::NOTDIR) => return Err(unsafe_path(shown, "a parent component is not a directory")),
                Err(e) => return Err(io_err(shown, "open parent directory of")(e)),
            },
            Err(e) => return Err(io_err(shown, "create parent directory of")(e)),
        }
    }
    Ok(cur)
}

/// `/proc/self/fd/N[/name]`: names the object `fd` refers to (or `name` inside that directory)
/// for the syscalls that have no `*at` or fd form (`lsetxattr`, `chmod` without following).
/// `/proc/self/fd/N` is a magic link to exactly the opened object; a trailing `name` is then
/// looked up in that directory, and the `l*` calls do not follow it.
pub(crate) fn proc_fd_path(fd: BorrowedFd<'_>, name: Option<&[u8]>) -> Vec<u8> {
    let mut p = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
    if let Some(name) = name {
        p.push(b'/');
        p.extend_from_slice(name);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(p: &EntryPath) -> Vec<&[u8]> {
        p.components().iter().map(Vec::as_slice).collect()
    }

    #[test]
    fn parse_normalises_dots_and_slashes() {
        let p = EntryPath::parse(b"./usr//bin/./ls").unwrap();
        assert_eq!(comps(&p), [&b"usr"[..], b"bin", b"ls"]);
        assert!(!p.clamped());
        assert_eq!(p.name(), Some(&b"ls"[..]));
        assert_eq!(p.parent().len(), 2);
        assert_eq!(join(p.components()), b"usr/bin/ls");
    }

    #[test]
    fn parse_clamps_dotdot_and_absolute_paths_to_the_root() {
        let p = EntryPath::parse(b"../../etc/passwd").unwrap();
        assert_eq!(comps(&p), [&b"etc"[..], b"passwd"]);
        assert!(p.clamped());
        let p = EntryPath::parse(b"/etc/shadow").unwrap();
        assert_eq!(comps(&p), [&b"etc"[..], b"shadow"]);
        assert!(p.clamped());
        let p = EntryPath::parse(b"a/b/../../../c").unwrap();
        assert_eq!(comps(&p), [&b"c"[..]]);
        assert!(p.clamped());
        let p = EntryPath::parse(b"a/../b").unwrap();
        assert_eq!(comps(&p), [&b"b"[..]]);
        assert!(!p.clamped());
    }

    #[test]
    fn parse_recognises_the_root_and_rejects_empty_or_nul() {
        for root in [&b"."[..], b"./", b"/", b"a/..", b"//", b".."] {
            let p = EntryPath::parse(root).unwrap();
            assert!(p.is_root(), "{root:?}");
            assert!(p.name().is_none());
            assert!(p.name_or_err("x").is_err());
            assert_eq!(join(p.components()), b".");
        }
        assert_eq!(EntryPath::parse(b""), Err("empty name"));
        assert_eq!(EntryPath::parse(b"a\0b"), Err("name contains a NUL byte"));
    }

    #[test]
    fn parse_keeps_non_utf8_bytes() {
        let p = EntryPath::parse(b"d/\xff\xfe").unwrap();
        assert_eq!(p.name(), Some(&b"\xff\xfe"[..]));
    }
}
