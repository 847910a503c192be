//! Paths under a trusted base directory, created and opened one component at
//! a time from an fd of the base, and bind mounts done fd to fd. Never follows
//! a symlink (or a /proc magic link) and never leaves the base: a symlink
//! planted anywhere below the base makes the operation fail, and a symlink
//! swapped in after a check cannot redirect the mount, which goes onto the
//! fd that was resolved (open_tree + move_mount), not onto a path.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x01;

/// Resolution rules of every lookup below the base.
const RESOLVE: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// openat2(dir, rel, flags | O_CLOEXEC) with RESOLVE_BENEATH, no symlinks,
/// no magic links. A symlink anywhere in `rel` fails with ELOOP.
pub fn open_beneath(dir: &OwnedFd, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstr(rel.as_os_str().as_bytes())?;
    let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: 0, resolve: RESOLVE };
    // SAFETY: valid C string and struct of the size passed.
    owned(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })
}

/// An O_PATH fd of the trusted base directory (created if missing).
pub fn open_base(base: &Path) -> io::Result<OwnedFd> {
    std::fs::create_dir_all(base)?;
    let c = cstr(base.as_os_str().as_bytes())?;
    // SAFETY: valid C string.
    owned(unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) } as libc::c_long)
}

/// Creates every directory of `rel` below `base` that is missing, one
/// component at a time, and returns an O_PATH fd of the last one.
/// `rel` must consist of plain names only.
pub fn mkdir_all_beneath(base: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let mut dir = open_beneath(base, Path::new("."), libc::O_PATH | libc::O_DIRECTORY)?;
    for part in rel.iter() {
        let name = cstr(part.as_bytes())?;
        // SAFETY: valid C string; mkdirat never follows a final symlink
        // (an existing one is EEXIST, then refused by the open below).
        if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(err);
            }
        }
        dir = open_beneath(&dir, Path::new(part), libc::O_PATH | libc::O_DIRECTORY)?;
    }
    Ok(dir)
}

/// Creates (if missing) the regular file `name` in `dir` without following a
/// symlink, and returns an O_PATH fd of it.
pub fn create_file_beneath(dir: &OwnedFd, name: &Path) -> io::Result<OwnedFd> {
    let c = cstr(name.as_os_str().as_bytes())?;
    // SAFETY: valid C string; O_NOFOLLOW makes a symlink fail with ELOOP.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            0o644,
        )
    };
    drop(owned(fd as libc::c_long)?);
    open_beneath(dir, name, libc::O_PATH)
}

/// Bind-mounts (recursively) what `src` refers to onto what `dst` refers to;
/// returns an fd of the new mount's root, which `unmount` takes.
pub fn bind_fd_to_fd(src: &OwnedFd, dst: &OwnedFd, readonly: bool) -> io::Result<OwnedFd> {
    let empty = cstr(b"")?;
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint;
    // SAFETY: open_tree on our fd with an empty path.
    let tree = owned(unsafe { libc::syscall(libc::SYS_open_tree, src.as_raw_fd(), empty.as_ptr(), flags) })?;
    if readonly {
        let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
        // SAFETY: valid struct of the size passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: move_mount between two fds we hold, empty paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            dst.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Lazily unmounts the mount whose root `root` refers to (from `bind_fd_to_fd`),
/// whatever path now leads to it.
pub fn unmount(root: &OwnedFd) -> io::Result<()> {
    let c = cstr(format!("/proc/self/fd/{}", root.as_raw_fd()).as_bytes())?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn directories_are_created_beneath_and_symlinks_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let base_dir = tmp.path().join("base");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let base = open_base(&base_dir).unwrap();
        mkdir_all_beneath(&base, Path::new("a/b/c")).unwrap();
        assert!(base_dir.join("a/b/c").is_dir());

        symlink(&outside, base_dir.join("a/link")).unwrap();
        let e = mkdir_all_beneath(&base, Path::new("a/link/x")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        let e = mkdir_all_beneath(&base, Path::new("a/link")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        assert!(!outside.join("x").exists(), "created through the symlink");

        symlink(outside.join("f"), base_dir.join("a/flink")).unwrap();
        let dir = mkdir_all_beneath(&base, Path::new("a")).unwrap();
        assert_eq!(create_file_beneath(&dir, Path::new("flink")).unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert!(!outside.join("f").exists(), "file created through the symlink");
        create_file_beneath(&dir, Path::new("plain")).unwrap();
        assert!(base_dir.join("a/plain").is_file());
        assert!(open_beneath(&base, Path::new("../outside"), libc::O_PATH).is_err());
    }
}
