//! The filesystem steps of CopyFile, each relative to an fd of a directory
//! below the shared directory. Names passed here are single components;
//! directories are opened with `mount::beneath::open_beneath`, so a symlink
//! (or magic link) where a directory is expected fails with ELOOP instead of
//! being followed. Never follows a symlink, never resolves a multi-component
//! path outside `mount::beneath`.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::container::RuntimeError;
use crate::mount::beneath;

use super::SHARED_CONTAINERS;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An O_PATH fd of a directory at or below the shared directory.
pub struct Parent(OwnedFd);

/// Opens `<base>/shared/containers`, creating it (mode 0755) if missing,
/// without following a symlink below `base`.
pub fn open_shared_dir(base: &Path) -> io::Result<Parent> {
    let base_fd = beneath::open_base(base)?;
    Ok(Parent(beneath::mkdir_all_beneath(&base_fd, Path::new(SHARED_CONTAINERS))?))
}

/// The last component of `rel` as a C string.
pub fn file_name(rel: &Path) -> Result<CString, RuntimeError> {
    let name = rel
        .file_name()
        .ok_or_else(|| RuntimeError::InvalidArgument(format!("CopyFile path {} has no file name", rel.display())))?;
    CString::new(name.as_bytes()).map_err(|_| RuntimeError::InvalidArgument("CopyFile path contains NUL".into()))
}

/// Creates the missing directories of `rel` below `start` one at a time with
/// `mode` (umask not applied), and returns the last one.
pub fn mkdir_all(start: Parent, rel: &Path, mode: u32) -> io::Result<Parent> {
    let mut dir = start;
    for part in rel.iter() {
        let name = CString::new(part.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: valid C string; mkdirat never follows a final symlink.
        let created = unsafe { libc::mkdirat(dir.0.as_raw_fd(), name.as_ptr(), mode) } == 0;
        if !created {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(err);
            }
        }
        if created {
            // The umask may have cleared bits of `mode`.
            let d = beneath::open_beneath(&dir.0, Path::new(part), libc::O_RDONLY | libc::O_DIRECTORY)?;
            // SAFETY: fchmod on our fd.
            check(unsafe { libc::fchmod(d.as_raw_fd(), mode) })?;
        }
        dir = Parent(beneath::open_beneath(&dir.0, Path::new(part), libc::O_PATH | libc::O_DIRECTORY)?);
    }
    Ok(dir)
}

/// A name for a temporary entry: `.cvm-copy-` and 16 random hex digits.
fn fresh_name() -> io::Result<CString> {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom fills the buffer we pass.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(CString::new(format!(".cvm-copy-{:016x}", u64::from_ne_bytes(buf)))?)
}

impl Parent {
    fn fd(&self) -> libc::c_int {
        self.0.as_raw_fd()
    }

    /// Gives the directory itself `uid`/`gid`.
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        // SAFETY: AT_EMPTY_PATH on our O_PATH fd; the empty string is valid.
        check(unsafe { libc::fchownat(self.fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) })
    }

    /// Removes `name` (not a directory); errors are ignored (best effort
    /// clean-up of a temporary entry).
    pub fn unlink(&self, name: &CString) {
        // SAFETY: valid C string; unlinkat removes the entry, never follows it.
        unsafe { libc::unlinkat(self.fd(), name.as_ptr(), 0) };
    }

    fn lstat(&self, name: &CString) -> io::Result<libc::stat> {
        // SAFETY: zeroed stat filled by fstatat; AT_SYMLINK_NOFOLLOW.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstatat(self.fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(st)
    }

    /// Creates a fresh temporary regular file (mode 0600) in the directory.
    pub fn create_temp(&self) -> io::Result<(CString, File)> {
        for _ in 0..8 {
            let tmp = fresh_name()?;
            // SAFETY: valid C string; O_EXCL|O_NOFOLLOW: never an existing entry.
            let fd = unsafe {
                libc::openat(
                    self.fd(),
                    tmp.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o600,
                )
            };
            if fd >= 0 {
                // SAFETY: a fresh fd owned by nobody else.
                return Ok((tmp, unsafe { File::from_raw_fd(fd) }));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(err);
            }
        }
        Err(io::Error::from_raw_os_error(libc::EEXIST))
    }

    /// Whether `name` is (still) the very file `file` refers to.
    pub fn names_inode(&self, name: &CString, file: &File) -> io::Result<bool> {
        let named = self.lstat(name)?;
        let meta = file.metadata()?;
        use std::os::unix::fs::MetadataExt;
        Ok(named.st_dev == meta.dev() && named.st_ino == meta.ino())
    }
}

/// Renames `from` over `to` in `dir` (replacing a file or symlink; the rename
/// never follows either). An empty directory at `to` is removed first; a
/// non-empty one is refused (EISDIR).
pub fn rename_replacing(dir: &Parent, from: &CString, to: &CString) -> io::Result<()> {
    let rename = || {
        // SAFETY: valid C strings, both relative to our fd.
        check(unsafe { libc::renameat(dir.fd(), from.as_ptr(), dir.fd(), to.as_ptr()) })
    };
    match rename() {
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
            // SAFETY: valid C string; rmdir only succeeds on an empty directory.
            if unsafe { libc::unlinkat(dir.fd(), to.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            rename()
        }
        other => other,
    }
}

/// Makes `name` a directory with `mode` and owner `uid`/`gid`. An existing
/// directory is kept (and given the mode and owner); anything else at `name`
/// (a file, a symlink) is removed first.
pub fn make_dir(dir: &Parent, name: &CString, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    match dir.lstat(name) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
        Ok(_) => {
            // SAFETY: valid C string; removes the entry itself.
            check(unsafe { libc::unlinkat(dir.fd(), name.as_ptr(), 0) })?;
            // SAFETY: as above.
            check(unsafe { libc::mkdirat(dir.fd(), name.as_ptr(), 0o700) })?;
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            // SAFETY: valid C string.
            check(unsafe { libc::mkdirat(dir.fd(), name.as_ptr(), 0o700) })?;
        }
        Err(e) => return Err(e),
    }
    let name = std::ffi::OsStr::from_bytes(name.as_bytes());
    let d = beneath::open_beneath(&dir.0, Path::new(name), libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: fchmod/fchown on our fd.
    check(unsafe { libc::fchmod(d.as_raw_fd(), mode) })?;
    check(unsafe { libc::fchown(d.as_raw_fd(), uid, gid) })
}

/// Makes `name` a symlink to `target` owned by `uid`/`gid`, replacing a file
/// or symlink there atomically (created under a temporary name, then renamed).
pub fn make_symlink(dir: &Parent, name: &CString, target: &CString, uid: u32, gid: u32) -> io::Result<()> {
    let mut tmp = fresh_name()?;
    let mut tries = 0;
    // SAFETY: valid C strings; symlinkat creates a new entry or fails.
    while unsafe { libc::symlinkat(target.as_ptr(), dir.fd(), tmp.as_ptr()) } != 0 {
        let err = io::Error::last_os_error();
        tries += 1;
        if err.raw_os_error() != Some(libc::EEXIST) || tries >= 8 {
            return Err(err);
        }
        tmp = fresh_name()?;
    }
    let done = (|| {
        // SAFETY: valid C string; AT_SYMLINK_NOFOLLOW changes the link itself.
        check(unsafe { libc::fchownat(dir.fd(), tmp.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })?;
        rename_replacing(dir, &tmp, name)
    })();
    if done.is_err() {
        dir.unlink(&tmp);
    }
    done
}

/// A refusal naming the cause for errors the host's request caused; other
/// errors are the guest's (INTERNAL).
pub fn errno_err(path: &str, e: io::Error) -> RuntimeError {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => RuntimeError::InvalidArgument(format!(
            "CopyFile {path:?}: a path component is a symlink or leaves the shared directory ({e})"
        )),
        Some(libc::EISDIR) => {
            RuntimeError::InvalidArgument(format!("CopyFile {path:?}: the target is a non-empty directory ({e})"))
        }
        Some(libc::ESTALE) => RuntimeError::InvalidArgument(format!(
            "CopyFile {path:?}: the temporary file was replaced before the rename; nothing written"
        )),
        Some(libc::ENOTDIR)
        | Some(libc::ENOENT)
        | Some(libc::EEXIST)
        | Some(libc::ENAMETOOLONG)
        | Some(libc::ENOTEMPTY) => RuntimeError::InvalidArgument(format!("CopyFile {path:?}: {e}")),
        _ => RuntimeError::Internal(format!("CopyFile {path:?}: {e}")),
    }
}
