//! Namespace paths of a CreateContainer: each file is opened once, here in
//! the agent, and checked as the open file it is: a namespace (nsfs) of the
//! declared type (`NS_GET_NSTYPE`), and not the agent's own namespace of
//! that type (st_dev/st_ino against /proc/self/ns/<x>). The container init
//! joins exactly these fds; a checked path is never opened again by name.
//! Never opens a non-namespace file for reading (a hostile path may name a
//! FIFO or a device whose open has effects): the first open is O_PATH.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::jail::protocol::{NsRequest, INHERITED_FD_BASE, MAX_INHERITED_FDS};
use crate::namespaces::NsKind;

/// `f_type` of the nsfs filesystem (linux/magic.h).
const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum NsPathError {
    #[error("namespace path {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("namespace path {path} is not a namespace file")]
    NotNamespace { path: PathBuf },
    #[error("namespace path {path} is not a {kind} namespace")]
    WrongType { path: PathBuf, kind: &'static str },
    #[error("namespace path {path} is the agent's own {kind} namespace; a container may not join it")]
    AgentOwn { path: PathBuf, kind: &'static str },
    #[error("too many namespace paths ({0})")]
    TooMany(usize),
}

fn os_err(path: &Path) -> impl FnOnce(io::Error) -> NsPathError + '_ {
    move |source| NsPathError::Open { path: path.to_path_buf(), source }
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: fstat fills the zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn open(path: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: valid C string; the fd returned is ours.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOCTTY) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` as a namespace of `kind`: O_PATH first, nsfs checked, then
/// the same inode reopened readable through /proc/self/fd (setns needs it).
fn open_namespace(path: &Path, kind: NsKind) -> Result<OwnedFd, NsPathError> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| NsPathError::NotNamespace { path: path.to_path_buf() })?;
    let handle = open(&c, libc::O_PATH).map_err(os_err(path))?;
    // SAFETY: fstatfs fills the zeroed struct.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(handle.as_raw_fd(), &mut fs) } != 0 {
        return Err(os_err(path)(io::Error::last_os_error()));
    }
    if fs.f_type as libc::c_long != NSFS_MAGIC {
        return Err(NsPathError::NotNamespace { path: path.to_path_buf() });
    }
    let reopen = CString::new(format!("/proc/self/fd/{}", handle.as_raw_fd())).map_err(|e| os_err(path)(e.into()))?;
    let fd = open(&reopen, libc::O_RDONLY).map_err(os_err(path))?;
    let (a, b) = (fstat(&handle).map_err(os_err(path))?, fstat(&fd).map_err(os_err(path))?);
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
        return Err(NsPathError::NotNamespace { path: path.to_path_buf() });
    }
    // SAFETY: an ioctl without argument on our fd.
    let ty = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if ty != kind.clone_flag() {
        return Err(NsPathError::WrongType { path: path.to_path_buf(), kind: kind.proc_name() });
    }
    Ok(fd)
}

/// The agent's own namespace of `kind` as (st_dev, st_ino).
fn agent_namespace(kind: NsKind) -> io::Result<(u64, u64)> {
    let st = std::fs::metadata(Path::new("/proc/self/ns").join(kind.proc_name()))?;
    Ok((std::os::unix::fs::MetadataExt::dev(&st), std::os::unix::fs::MetadataExt::ino(&st)))
}

/// Opens and checks every path of `plan`; sets each request's `fd` to the
/// number the init will find it at, and returns the fds in that order.
pub fn open_checked(plan: &mut [NsRequest]) -> Result<Vec<OwnedFd>, NsPathError> {
    let mut fds = Vec::new();
    for ns in plan.iter_mut() {
        let Some(path) = ns.path.clone() else { continue };
        if fds.len() == MAX_INHERITED_FDS {
            return Err(NsPathError::TooMany(fds.len() + 1));
        }
        let fd = open_namespace(&path, ns.kind)?;
        let st = fstat(&fd).map_err(os_err(&path))?;
        let own = agent_namespace(ns.kind).map_err(os_err(Path::new("/proc/self/ns")))?;
        if (st.st_dev, st.st_ino) == own {
            return Err(NsPathError::AgentOwn { path, kind: ns.kind.proc_name() });
        }
        ns.fd = Some(INHERITED_FD_BASE + fds.len() as i32);
        fds.push(fd);
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: NsKind, path: &str) -> Vec<NsRequest> {
        vec![NsRequest { kind, path: Some(path.into()), fd: None }]
    }

    #[test]
    fn the_agents_own_namespaces_are_refused_under_any_spelling() {
        // Reading /proc/self/ns/* of oneself needs no privilege.
        let me = std::process::id();
        for path in [format!("/proc/{me}/ns/net"), "/proc/self/ns/net".into(), "/proc/thread-self/ns/net".into()] {
            let e = open_checked(&mut req(NsKind::Network, &path)).unwrap_err();
            assert!(matches!(e, NsPathError::AgentOwn { kind: "net", .. }), "{path}: {e}");
            assert!(e.to_string().contains(&path), "{e}");
        }
        let e = open_checked(&mut req(NsKind::Pid, "/proc/self/ns/pid")).unwrap_err();
        assert!(e.to_string().contains("agent's own pid namespace"), "{e}");
    }

    #[test]
    fn a_file_of_another_type_or_no_namespace_at_all_is_refused() {
        let e = open_checked(&mut req(NsKind::Pid, "/proc/self/ns/net")).unwrap_err();
        assert!(matches!(e, NsPathError::WrongType { kind: "pid", .. }), "{e}");
        let e = open_checked(&mut req(NsKind::Network, "/proc/self/status")).unwrap_err();
        assert!(matches!(e, NsPathError::NotNamespace { .. }), "{e}");
        let e = open_checked(&mut req(NsKind::Network, "/nonexistent/ns")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ns"), "{e}");
    }
}
