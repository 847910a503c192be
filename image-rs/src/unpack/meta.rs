//! Ownership, mode, times and extended attributes: read from tar headers, applied without ever
//! following a symlink.
//!
//! Order matters: content first (a write clears setuid and file capabilities), then `chown`
//! (which clears setuid/setgid and `security.capability`), then `chmod`, then xattrs, then times
//! (every step before changes ctime, and content changes mtime).

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags, CWD};
use rustix::io::Errno;
use tracing::{debug, warn};

use super::error::{invalid_header, io_err, show, UnpackError};
use super::limits::Limits;
use super::path::{join, open_dir_in_root, proc_fd_path};

/// The attribute overlayfs reads to make a directory opaque.
pub(crate) const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// Upper bound on the memory kept for directory timestamps until the end of a layer.
const DIR_TIMES_MAX_BYTES: usize = 64 << 20;

/// Access and modification time of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Times {
    pub(crate) atime: Timespec,
    pub(crate) mtime: Timespec,
}

impl Times {
    pub(crate) fn stamps(&self) -> Timestamps {
        Timestamps { last_access: self.atime, last_modification: self.mtime }
    }
}

/// Metadata to apply to one created file.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Permission bits including setuid, setgid and sticky (`& 0o7777`).
    pub(crate) mode: u32,
    pub(crate) times: Times,
    /// Allowed attributes only (see [`xattr_policy`]).
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Whether a layer may carry the extended attribute `name`. `Err` holds why not.
///
/// Allowed: `user.*`, `trusted.*` and `security.capability`. Never `trusted.overlay.*` (nor the
/// `user.overlay.*` twin used by unprivileged overlay mounts): those steer overlayfs itself
/// (opaque, redirect, metacopy, origin) and a layer setting them could splice other files into
/// the merged view. Everything else (`security.selinux`, ACLs, ...) is host policy, not image
/// content.
pub(crate) fn xattr_policy(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() || name.contains(&0) {
        return Err("malformed attribute name");
    }
    if is_overlay_xattr(name) {
        return Err("overlayfs-private attribute: a layer must not set it");
    }
    if name.starts_with(b"user.") || name.starts_with(b"trusted.") || name == b"security.capability" {
        return Ok(());
    }
    Err("attribute namespace not allowed in image layers")
}

pub(crate) fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

fn id(value: std::io::Result<u64>, shown: &str, what: &str) -> Result<u32, UnpackError> {
    let v = value.map_err(|e| invalid_header(shown, format!("{what}: {e}")))?;
    match u32::try_from(v) {
        // (uid_t)-1 means "leave unchanged" to chown: not an owner.
        Ok(v) if v != u32::MAX => Ok(v),
        _ => Err(invalid_header(shown, format!("{what} {v} out of range"))),
    }
}

/// Parses a PAX time (`[-]seconds[.fraction]`).
pub(crate) fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nsec: i64 = 0;
    let mut scale: i64 = 100_000_000;
    for d in frac.bytes().take(9) {
        nsec += i64::from(d - b'0') * scale;
        scale /= 10;
    }
    if !neg {
        return Some(Timespec { tv_sec: secs, tv_nsec: nsec });
    }
    if nsec == 0 {
        return Some(Timespec { tv_sec: secs.checked_neg()?, tv_nsec: 0 });
    }
    Some(Timespec { tv_sec: secs.checked_neg()?.checked_sub(1)?, tv_nsec: 1_000_000_000 - nsec })
}

/// Reads owner, mode, times (PAX `mtime`/`atime` when present) and allowed `SCHILY.xattr.*`
/// records of an entry.
pub(crate) fn meta_from_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    shown: &str,
    limits: &Limits,
) -> Result<Meta, UnpackError> {
    let header = entry.header();
    let uid = id(header.uid(), shown, "uid")?;
    let gid = id(header.gid(), shown, "gid")?;
    let mode = header.mode().map_err(|e| invalid_header(shown, format!("mode: {e}")))? & 0o7777;
    let secs = header.mtime().map_err(|e| invalid_header(shown, format!("mtime: {e}")))?;
    let secs = i64::try_from(secs).map_err(|_| invalid_header(shown, format!("mtime {secs} out of range")))?;
    let mut mtime = Timespec { tv_sec: secs, tv_nsec: 0 };
    let mut atime = None;
    let mut xattrs = Vec::new();
    let mut xattr_bytes = 0usize;
    let pax = entry.pax_extensions().map_err(|e| UnpackError::Tar { path: shown.to_owned(), source: e })?;
    for record in pax.into_iter().flatten() {
        let record = record
            .map_err(|e| invalid_header(shown, format!("{e} (a PAX value containing a newline is not supported)")))?;
        let (key, value) = (record.key_bytes(), record.value_bytes());
        if key == b"mtime" {
            match parse_pax_time(value) {
                Some(t) => mtime = t,
                None => debug!(path = ?shown, "ignoring unparsable PAX mtime"),
            }
        } else if key == b"atime" {
            atime = parse_pax_time(value);
        } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            xattr_bytes = xattr_bytes.saturating_add(name.len()).saturating_add(value.len());
            if xattr_bytes > limits.max_xattr_bytes {
                return Err(UnpackError::LimitExceeded {
                    path: shown.to_owned(),
                    what: "extended attributes",
                    limit: u64::try_from(limits.max_xattr_bytes).unwrap_or(u64::MAX),
                });
            }
            match xattr_policy(name) {
                Ok(()) => xattrs.push((name.to_vec(), value.to_vec())),
                Err(reason) if is_overlay_xattr(name) => {
                    warn!(path = ?shown, xattr = ?show(name), reason, "refusing extended attribute")
                }
                Err(reason) => debug!(path = ?shown, xattr = ?show(name), reason, "skipping extended attribute"),
            }
        } else if key.starts_with(b"LIBARCHIVE.xattr.") {
            debug!(path = ?shown, key = ?show(key), "skipping libarchive-encoded extended attribute");
        }
    }
    let times = Times { atime: atime.unwrap_or(mtime), mtime };
    Ok(Meta { uid, gid, mode, times, xattrs })
}

fn owner(meta: &Meta) -> (Option<Uid>, Option<Gid>) {
    // `id()` and `Stat` never give u32::MAX here; from_raw_unchecked avoids its debug assertion.
    (Some(Uid::from_raw_unchecked(meta.uid)), Some(Gid::from_raw_unchecked(meta.gid)))
}

/// Applies `meta` to a regular file or directory we hold open (never a symlink: it was opened
/// with `O_NOFOLLOW` or created by us). Times only when `set_times`.
pub(crate) fn apply_fd(
    fd: BorrowedFd<'_>,
    meta: &Meta,
    chown: bool,
    set_times: bool,
    shown: &str,
) -> Result<(), UnpackError> {
    if chown {
        let (u, g) = owner(meta);
        rustix::fs::fchown(fd, u, g).map_err(io_err(shown, "chown"))?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(io_err(shown, "chmod"))?;
    for (name, value) in &meta.xattrs {
        rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty())
            .map_err(io_err(shown, "set xattr on"))?;
    }
    if set_times {
        rustix::fs::futimens(fd, &meta.times.stamps()).map_err(io_err(shown, "set times of"))?;
    }
    Ok(())
}

/// Applies `meta` to `name` in `parent` (a symlink, device or FIFO) without following it.
/// Symlinks get no `chmod` (Linux has no symlink modes).
pub(crate) fn apply_at(
    parent: BorrowedFd<'_>,
    name: &[u8],
    meta: &Meta,
    chown: bool,
    is_symlink: bool,
    shown: &str,
) -> Result<(), UnpackError> {
    if chown {
        let (u, g) = owner(meta);
        rustix::fs::chownat(parent, name, u, g, AtFlags::SYMLINK_NOFOLLOW).map_err(io_err(shown, "chown"))?;
    }
    if !is_symlink {
        chmod_nofollow(parent, name, meta.mode).map_err(io_err(shown, "chmod"))?;
    }
    if !meta.xattrs.is_empty() {
        let at = proc_fd_path(parent, Some(name));
        for (xname, value) in &meta.xattrs {
            rustix::fs::lsetxattr(at.as_slice(), xname.as_slice(), value, XattrFlags::empty())
                .map_err(io_err(shown, "set xattr on"))?;
        }
    }
    rustix::fs::utimensat(parent, name, &meta.times.stamps(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io_err(shown, "set times of"))?;
    Ok(())
}

/// `chmod` of `name` in `parent` that never goes through a symlink: the object is opened with
/// `O_PATH | O_NOFOLLOW`, checked, and changed through its `/proc/self/fd` link (which designates
/// exactly that inode). A symlink is left alone. Without `/proc`, falls back to `fchmodat` after
/// re-checking that the name still designates the same non-symlink inode (the layer directory is
/// written by us alone).
pub(crate) fn chmod_nofollow(parent: BorrowedFd<'_>, name: &[u8], mode: u32) -> Result<(), Errno> {
    let fd = rustix::fs::openat(parent, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Ok(());
    }
    let mode = Mode::from_raw_mode(mode);
    match rustix::fs::chmodat(CWD, proc_fd_path(fd.as_fd(), None), mode, AtFlags::empty()) {
        Err(Errno::NOENT) => {
            let again = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if again.st_ino != st.st_ino
                || again.st_dev != st.st_dev
                || FileType::from_raw_mode(again.st_mode) == FileType::Symlink
            {
                return Err(Errno::AGAIN);
            }
            rustix::fs::chmodat(parent, name, mode, AtFlags::empty())
        }
        other => other,
    }
}

/// Directory times, applied once every entry is in place (creating a child changes its parent's
/// mtime), deepest first.
#[derive(Debug, Default)]
pub(crate) struct DirTimes {
    map: HashMap<Vec<Vec<u8>>, Times>,
    bytes: usize,
}

fn key_cost(comps: &[Vec<u8>]) -> usize {
    comps.iter().map(|c| c.len() + 32).sum::<usize>() + 64
}

impl DirTimes {
    pub(crate) fn record(&mut self, comps: &[Vec<u8>], times: Times, shown: &str) -> Result<(), UnpackError> {
        if let Some(t) = self.map.get_mut(comps) {
            *t = times;
            return Ok(());
        }
        self.bytes = self.bytes.saturating_add(key_cost(comps));
        if self.bytes > DIR_TIMES_MAX_BYTES {
            return Err(UnpackError::LimitExceeded {
                path: shown.to_owned(),
                what: "directory names kept for timestamps",
                limit: DIR_TIMES_MAX_BYTES as u64,
            });
        }
        self.map.insert(comps.to_vec(), times);
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, comps: &[Vec<u8>]) -> bool {
        self.map.contains_key(comps)
    }

    /// Forgets `comps` and everything below (the directory was removed).
    pub(crate) fn forget_under(&mut self, comps: &[Vec<u8>]) {
        let mut freed = 0usize;
        self.map.retain(|k, _| {
            let keep = !k.starts_with(comps);
            if !keep {
                freed += key_cost(k);
            }
            keep
        });
        self.bytes = self.bytes.saturating_sub(freed);
    }

    /// Sets the recorded times, deepest directories first, on whatever is still a directory at
    /// each recorded name (resolved confined to `root`, the last component not followed).
    pub(crate) fn apply(self, root: BorrowedFd<'_>) -> Result<(), UnpackError> {
        let mut all: Vec<_> = self.map.into_iter().collect();
        all.sort_by_key(|(comps, _)| std::cmp::Reverse(comps.len()));
        for (comps, times) in all {
            let shown = show(&join(&comps));
            let Some((name, parent)) = comps.split_last() else {
                rustix::fs::futimens(root, &times.stamps()).map_err(io_err(&shown, "set times of"))?;
                continue;
            };
            let parent = match open_dir_in_root(root, parent) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::NOTDIR) => continue,
                Err(e) => return Err(io_err(&shown, "open parent directory of")(e)),
            };
            match rustix::fs::statat(&parent, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    rustix::fs::utimensat(&parent, name.as_slice(), &times.stamps(), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(io_err(&shown, "set times of"))?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_policy_allows_user_trusted_and_capabilities_only() {
        assert!(xattr_policy(b"user.foo").is_ok());
        assert!(xattr_policy(b"trusted.bar").is_ok());
        assert!(xattr_policy(b"security.capability").is_ok());
        assert!(xattr_policy(b"trusted.overlay.opaque").is_err());
        assert!(xattr_policy(b"trusted.overlay.redirect").is_err());
        assert!(xattr_policy(b"user.overlay.opaque").is_err());
        assert!(xattr_policy(b"security.selinux").is_err());
        assert!(xattr_policy(b"system.posix_acl_access").is_err());
        assert!(xattr_policy(b"").is_err());
        assert!(xattr_policy(b"user.a\0b").is_err());
    }

    #[test]
    fn pax_times_parse_fractions_and_negatives() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(t("1234567890"), Some((1234567890, 0)));
        assert_eq!(t("1.5"), Some((1, 500_000_000)));
        assert_eq!(t("1.1234567899"), Some((1, 123_456_789)));
        assert_eq!(t("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(t("-3"), Some((-3, 0)));
        assert_eq!(t(""), None);
        assert_eq!(t("."), None);
        assert_eq!(t("1e9"), None);
        assert_eq!(t("99999999999999999999"), None);
        assert_eq!(t("+1"), None);
    }

    #[test]
    fn dir_times_forget_removed_subtrees() {
        let t = Times { atime: Timespec::default(), mtime: Timespec::default() };
        let mut d = DirTimes::default();
        let a = vec![b"a".to_vec()];
        let ab = vec![b"a".to_vec(), b"b".to_vec()];
        let c = vec![b"c".to_vec()];
        for k in [&a, &ab, &c] {
            d.record(k, t, "x").unwrap();
        }
        d.forget_under(&a);
        assert!(!d.contains(&a) && !d.contains(&ab) && d.contains(&c));
        assert_eq!(d.bytes, key_cost(&c));
    }
}
