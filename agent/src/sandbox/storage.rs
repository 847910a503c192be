//! Storages named in CreateSandbox/CreateContainer, per driver. Supported:
//! `local` (an empty directory) and `bind` (a bind mount of an existing guest
//! path). Every mount point must lie under the storage base
//! (/run/kata-containers in production); it is created and opened one
//! component at a time from an fd of the base, never following a symlink,
//! and a bind mount goes onto that fd, so nothing is ever mounted or created
//! outside the base. A bind source must be absolute and not a symlink.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::container::RuntimeError;
use crate::mount::beneath;

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
    if !src.starts_with('/') || src.contains('\0') {
        return Err(RuntimeError::InvalidArgument(format!("bind storage source {src:?} is not an absolute path")));
    }
    let c = std::ffi::CString::new(Path::new(src).as_os_str().as_bytes()).expect("checked for NUL");
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
            beneath::mkdir_all_beneath(&base_fd, &rel).map_err(io_err("local storage", mp))?;
            Ok(Prepared::Dir(target))
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
        other => Err(RuntimeError::InvalidArgument(format!(
            "storage driver {other:?} is not supported by this agent (supported: local, bind)"
        ))),
    }
}

/// Prepares `storages` in order; if one fails, undoes the ones before it.
pub fn prepare_all(base: &Path, storages: &[protos::agent::Storage]) -> Result<Vec<Prepared>, RuntimeError> {
    let mut done = Vec::with_capacity(storages.len());
    for s in storages {
        match prepare(base, s) {
            Ok(p) => done.push(p),
            Err(e) => {
                undo_all(done);
                return Err(e);
            }
        }
    }
    Ok(done)
}

pub fn undo(p: Prepared) {
    if let Prepared::Mount { target, root } = p {
        if let Err(e) = beneath::unmount(&root) {
            tracing::warn!(mount_point = %target.display(), error = %e, "storage unmount failed");
        }
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

    #[test]
    fn bind_sources_must_be_absolute_and_not_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let link = dir.path().join("link").display().to_string();
        let e = open_source(&link).unwrap_err().to_string();
        assert!(e.contains("is a symlink") && e.contains(&link), "{e}");
        assert!(open_source("etc/passwd").unwrap_err().to_string().contains("not an absolute path"));
        assert!(open_source(&dir.path().display().to_string()).unwrap().1);
    }
}
