//! Storages named in CreateSandbox/CreateContainer, per driver. Supported:
//! `image_guest_pull` (CreateContainer only, `guest_pull.rs`), `local` (a directory, kata's `mode=` and `fsgid=` options), `ephemeral`
//! (a new tmpfs, e.g. the sandbox's /dev/shm, with checked mount options and
//! `fsgid=`) and `bind` (a bind mount of an existing guest path). Every
//! option is checked against a list; an unknown one is refused by name.
//! Every mount point must lie under the storage base
//! (/run/kata-containers in production); it is created and opened one
//! component at a time from an fd of the base, never following a symlink,
//! and a bind mount goes onto that fd, so nothing is ever mounted or created
//! outside the base. A bind source must be absolute and not a symlink.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::tmpfs;
use crate::container::RuntimeError;
use crate::mount::beneath;

/// The set-gid bit kata adds to a directory given an `fsgid=`.
const MODE_SETGID: u32 = 0o2000;

/// The checked options of a `local` or `ephemeral` storage.
#[derive(Debug, Default, PartialEq)]
struct DirOptions {
    /// `mode=` (octal), for `local`.
    mode: Option<u32>,
    /// `fsgid=`: the group of the directory (kata's fsGroup).
    fsgid: Option<u32>,
    /// tmpfs options (`size`, `nr_inodes`, `mode`, `uid`, `gid`), for `ephemeral`.
    data: Vec<(String, String)>,
    /// Per-mount attributes (nosuid, nodev, noexec, ro), for `ephemeral`.
    attrs: u64,
}

/// A size as tmpfs takes it: digits, optionally k/m/g (either case) or %.
fn is_size(v: &str) -> bool {
    let digits = v.strip_suffix(['k', 'K', 'm', 'M', 'g', 'G', '%']).unwrap_or(v);
    !digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit())
}

fn parse_octal_mode(v: &str) -> Option<u32> {
    u32::from_str_radix(v, 8).ok().filter(|m| *m <= 0o7777 && !v.is_empty() && v.len() <= 6)
}

impl DirOptions {
    /// Options may come one per string or comma-separated (as kata's
    /// hugetlbfs storage sends them).
    fn parse(s: &protos::agent::Storage, tmpfs: bool) -> Result<DirOptions, RuntimeError> {
        let mp = &s.mount_point;
        let mut o = DirOptions::default();
        for opt in s.options.iter().flat_map(|o| o.split(',')) {
            let bad = || {
                RuntimeError::InvalidArgument(format!("{} storage {mp:?}: option {opt:?} is not supported", s.driver))
            };
            let (key, value) = opt.split_once('=').map_or((opt, None), |(k, v)| (k, Some(v)));
            match (key, value, tmpfs) {
                ("fsgid", Some(v), _) => o.fsgid = Some(v.parse().map_err(|_| bad())?),
                ("mode", Some(v), false) => o.mode = Some(parse_octal_mode(v).ok_or_else(bad)?),
                ("mode", Some(v), true) if parse_octal_mode(v).is_some() => o.data.push((key.into(), v.into())),
                ("size" | "nr_inodes", Some(v), true) if is_size(v) => o.data.push((key.into(), v.into())),
                ("uid" | "gid", Some(v), true) if v.parse::<u32>().is_ok() => o.data.push((key.into(), v.into())),
                ("nosuid", None, true) => o.attrs |= tmpfs::ATTR_NOSUID,
                ("nodev", None, true) => o.attrs |= tmpfs::ATTR_NODEV,
                ("noexec", None, true) => o.attrs |= tmpfs::ATTR_NOEXEC,
                ("ro", None, true) => o.attrs |= tmpfs::ATTR_RDONLY,
                ("rw" | "suid" | "dev" | "exec", None, true) | ("", None, _) => {}
                _ => return Err(bad()),
            }
        }
        Ok(o)
    }
}

/// Gives the directory `dir` refers to the group `gid` and the mode `mode`
/// (each only if given), through an fd opened beneath it.
fn set_group_and_mode(dir: &OwnedFd, gid: Option<u32>, mode: Option<u32>) -> std::io::Result<()> {
    if gid.is_none() && mode.is_none() {
        return Ok(());
    }
    let d = beneath::open_beneath(dir, Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: fchown/fchmod on our fd; uid -1 leaves the owner.
    if let Some(gid) = gid {
        if unsafe { libc::fchown(d.as_raw_fd(), u32::MAX, gid) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if let Some(mode) = mode {
        if unsafe { libc::fchmod(d.as_raw_fd(), mode) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Adds `bits` to the mode of the directory `dir` refers to.
fn add_mode(dir: &OwnedFd, bits: u32) -> std::io::Result<()> {
    let d = beneath::open_beneath(dir, Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: fstat/fchmod on our fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(d.as_raw_fd(), &mut st) } != 0
        || unsafe { libc::fchmod(d.as_raw_fd(), (st.st_mode & 0o7777) | bits) } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Checks a host-supplied mount point and returns it relative to `base`:
/// absolute, under `base`, plain names only (no '.', '..' or empty segment).
pub fn mount_point_under(base: &Path, p: &str) -> Result<PathBuf, RuntimeError> {
    let bad = |why: &str| RuntimeError::InvalidArgument(format!("storage mount point {p:?} {why}"));
    let rest = p.strip_prefix('/').ok_or_else(|| bad("is not an absolute path"))?;
    if rest.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") || p.contains('\0') {
        return Err(bad("must be a clean path (no '.', '..' or empty segments)"));
    }
    let rel = Path::new(p)
        .strip_prefix(base)
        .ok()
        .filter(|r| !r.as_os_str().is_empty())
        .ok_or_else(|| bad(&format!("is not under the storage base {}", base.display())))?;
    Ok(rel.to_path_buf())
}

/// What was done for a storage, so it can be undone.
#[derive(Debug)]
pub enum Prepared {
    /// A directory that exists now (left in place: it may hold data).
    Dir(PathBuf),
    /// A bind mount; `root` refers to the mount itself.
    Mount { target: PathBuf, root: OwnedFd },
    /// An `image_guest_pull` bundle (`<base>/<cid>`): its rootfs mounted by
    /// the data hub, or the pause rootfs; unmounted and removed when undone.
    GuestPull { bundle: PathBuf },
}

fn io_err<'a>(what: &str, p: &'a str) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    let what = what.to_string();
    move |e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => RuntimeError::InvalidArgument(format!(
            "{what} {p:?}: a path component is a symlink or leaves the storage base ({e})"
        )),
        Some(libc::ENOTDIR) | Some(libc::EISDIR) | Some(libc::ENOENT) | Some(libc::EEXIST) => {
            RuntimeError::InvalidArgument(format!("{what} {p:?}: {e}"))
        }
        _ => RuntimeError::Internal(format!("{what} {p:?}: {e}")),
    }
}

/// Opens a bind source: absolute, O_PATH|O_NOFOLLOW, and not a symlink.
fn open_source(src: &str) -> Result<(OwnedFd, bool), RuntimeError> {
    let not_absolute = || RuntimeError::InvalidArgument(format!("bind storage source {src:?} is not an absolute path"));
    if !src.starts_with('/') {
        return Err(not_absolute());
    }
    let c = std::ffi::CString::new(Path::new(src).as_os_str().as_bytes()).map_err(|_| not_absolute())?;
    // SAFETY: valid C string; the fd is ours.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(RuntimeError::InvalidArgument(format!("bind storage source {src:?}: {e}")));
    }
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fstat fills the zeroed struct (O_PATH fds allow fstat).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io_err("bind storage source", src)(std::io::Error::last_os_error()));
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFLNK => Err(RuntimeError::InvalidArgument(format!("bind storage source {src:?} is a symlink"))),
        libc::S_IFDIR => Ok((fd, true)),
        _ => Ok((fd, false)),
    }
}

/// Prepares one storage under `base`.
pub fn prepare(base: &Path, s: &protos::agent::Storage) -> Result<Prepared, RuntimeError> {
    let mp = s.mount_point.as_str();
    let rel = mount_point_under(base, mp)?;
    let base_fd = beneath::open_base(base)
        .map_err(|e| RuntimeError::Internal(format!("storage base {}: {e}", base.display())))?;
    let target = base.join(&rel);
    match s.driver.as_str() {
        "local" => {
            let opts = DirOptions::parse(s, false)?;
            let dir = beneath::mkdir_all_beneath(&base_fd, &rel).map_err(io_err("local storage", mp))?;
            // Kata: the group first, then the mode (with set-gid if a group was given).
            let mode = opts.mode.map(|m| if opts.fsgid.is_some() { m | MODE_SETGID } else { m });
            set_group_and_mode(&dir, opts.fsgid, mode).map_err(io_err("local storage", mp))?;
            tracing::debug!(mount_point = mp, fsgid = ?opts.fsgid, mode = ?mode, "local storage ready");
            Ok(Prepared::Dir(target))
        }
        "ephemeral" => {
            if s.fstype != "tmpfs" {
                return Err(RuntimeError::InvalidArgument(format!(
                    "ephemeral storage {mp:?}: fstype {:?} is not supported (supported: tmpfs)",
                    s.fstype
                )));
            }
            if s.source.len() > 255 || s.source.contains(['\0', ',']) {
                return Err(RuntimeError::InvalidArgument(format!(
                    "ephemeral storage {mp:?}: bad source {:?}",
                    s.source
                )));
            }
            let opts = DirOptions::parse(s, true)?;
            let dst = beneath::mkdir_all_beneath(&base_fd, &rel).map_err(io_err("ephemeral storage", mp))?;
            let source = if s.source.is_empty() { "tmpfs" } else { s.source.as_str() };
            let root = tmpfs::mount_onto(&dst, source, &opts.data, opts.attrs)
                .map_err(|e| RuntimeError::InvalidArgument(format!("ephemeral storage {mp:?}: {e}")))?;
            // Kata: with fsgid, the tmpfs root gets that group and set-gid.
            if let Some(gid) = opts.fsgid {
                if let Err(e) = set_group_and_mode(&root, Some(gid), None).and_then(|()| add_mode(&root, MODE_SETGID)) {
                    let _ = beneath::unmount(&root);
                    return Err(RuntimeError::Internal(format!("ephemeral storage {mp:?}: fsgid {gid}: {e}")));
                }
            }
            tracing::debug!(mount_point = mp, source, options = ?s.options, "ephemeral storage mounted");
            Ok(Prepared::Mount { target, root })
        }
        "bind" => {
            let (src, is_dir) = open_source(&s.source)?;
            let dst = if is_dir {
                beneath::mkdir_all_beneath(&base_fd, &rel)
            } else {
                let parent = rel.parent().unwrap_or(Path::new(""));
                let name = rel.file_name().map(Path::new).unwrap_or(Path::new("."));
                beneath::mkdir_all_beneath(&base_fd, parent).and_then(|d| beneath::create_file_beneath(&d, name))
            }
            .map_err(io_err("bind storage mount point", mp))?;
            let ro = s.options.iter().any(|o| o == "ro");
            let root = beneath::bind_fd_to_fd(&src, &dst, ro)
                .map_err(|e| RuntimeError::Internal(format!("bind storage {:?} on {mp:?}: {e}", s.source)))?;
            tracing::debug!(source = %s.source, mount_point = mp, ro, "bind storage mounted");
            Ok(Prepared::Mount { target, root })
        }
        super::guest_pull::DRIVER => Err(RuntimeError::InvalidArgument(format!(
            "{} storage {mp:?}: only a CreateContainer may name one (it is that container's rootfs)",
            super::guest_pull::DRIVER
        ))),
        other => Err(RuntimeError::InvalidArgument(format!(
            "storage driver {other:?} is not supported by this agent (supported: image_guest_pull, local, ephemeral, bind)"
        ))),
    }
}

pub fn undo(p: Prepared) {
    match p {
        Prepared::Mount { target, root } => {
            if let Err(e) = beneath::unmount(&root) {
                tracing::warn!(mount_point = %target.display(), error = %e, "storage unmount failed");
            }
        }
        Prepared::GuestPull { bundle } => super::guest_pull::remove_bundle(&bundle),
        Prepared::Dir(_) => {}
    }
}

/// Undoes storages in the reverse order of their preparation.
pub fn undo_all(prepared: Vec<Prepared>) {
    for p in prepared.into_iter().rev() {
        undo(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_outside_the_base_or_unclean_are_refused_by_name() {
        let base = Path::new("/run/kata-containers");
        assert_eq!(mount_point_under(base, "/run/kata-containers/shared/vol1").unwrap(), Path::new("shared/vol1"));
        for bad in [
            "relative",
            "/etc",
            "/run/kata-containers",
            "/run/kata-containers/",
            "/run/kata-containersX/a",
            "/run/kata-containers/../etc",
            "/run/kata-containers/a/./b",
            "/run/kata-containers//a",
            "/run/kata-containers/a/",
            "/proc/1/root",
            "/",
        ] {
            let e = mount_point_under(base, bad).unwrap_err();
            assert!(matches!(e, RuntimeError::InvalidArgument(_)) && e.to_string().contains(bad), "{bad}: {e}");
        }
        assert!(mount_point_under(base, "/etc").unwrap_err().to_string().contains("not under the storage base"));
    }

    #[test]
    fn unknown_drivers_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().join("x").display().to_string();
        let s = protos::agent::Storage { driver: "9p".into(), mount_point: mp, ..Default::default() };
        assert!(prepare(dir.path(), &s).unwrap_err().to_string().contains("\"9p\""));
    }

    fn storage(driver: &str, opts: &[&str]) -> protos::agent::Storage {
        protos::agent::Storage {
            driver: driver.into(),
            mount_point: "/run/kata-containers/x".into(),
            options: opts.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn kata_shm_and_local_options_are_understood() {
        let shm = storage("ephemeral", &["noexec", "nosuid", "nodev", "mode=1777", "size=67108864"]);
        let o = DirOptions::parse(&shm, true).unwrap();
        assert_eq!(o.attrs, tmpfs::ATTR_NOEXEC | tmpfs::ATTR_NOSUID | tmpfs::ATTR_NODEV);
        assert_eq!(o.data, [("mode".to_string(), "1777".to_string()), ("size".into(), "67108864".into())]);
        let hugetlb_style = storage("ephemeral", &["size=64m,nr_inodes=10k", "fsgid=2000"]);
        let o = DirOptions::parse(&hugetlb_style, true).unwrap();
        assert_eq!((o.data.len(), o.fsgid), (2, Some(2000)));
        let local = DirOptions::parse(&storage("local", &["mode=0777", "fsgid=2000"]), false).unwrap();
        assert_eq!((local.mode, local.fsgid), (Some(0o777), Some(2000)));
    }

    #[test]
    fn unknown_or_malformed_options_are_refused_by_name() {
        for (driver, opt) in [
            ("ephemeral", "size=1g;rm"),
            ("ephemeral", "huge=always"),
            ("ephemeral", "mode=99"),
            ("ephemeral", "uid=-1"),
            ("ephemeral", "size="),
            ("ephemeral", "mode=0777,exec=1"),
            ("local", "mode=17777"),
            ("local", "mode=rwx"),
            ("local", "fsgid=x"),
            ("local", "noexec"),
            ("local", "size=1m"),
        ] {
            let e = DirOptions::parse(&storage(driver, &[opt]), driver == "ephemeral").unwrap_err();
            assert!(
                matches!(e, RuntimeError::InvalidArgument(_)) && e.to_string().contains("is not supported"),
                "{opt}: {e}"
            );
        }
    }

    #[test]
    fn ephemeral_storages_must_be_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let s = protos::agent::Storage {
            driver: "ephemeral".into(),
            fstype: "hugetlbfs".into(),
            mount_point: dir.path().join("hp").display().to_string(),
            ..Default::default()
        };
        assert!(prepare(dir.path(), &s).unwrap_err().to_string().contains("\"hugetlbfs\" is not supported"));
    }

    #[test]
    fn bind_sources_must_be_absolute_and_not_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let link = dir.path().join("link").display().to_string();
        let e = open_source(&link).unwrap_err().to_string();
        assert!(e.contains("is a symlink") && e.contains(&link), "{e}");
        assert!(open_source("etc/passwd").unwrap_err().to_string().contains("not an absolute path"));
        let e = open_source("/etc\0/passwd").unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidArgument(_)) && e.to_string().contains("not an absolute path"), "{e}");
        assert!(open_source(&dir.path().display().to_string()).unwrap().1);
    }
}
