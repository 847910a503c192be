//! A new tmpfs mounted onto a directory fd with the new mount API (fsopen,
//! fsconfig, fsmount, move_mount): the mount goes onto the fd that was
//! resolved beneath the storage base, never onto a path, so a symlink
//! swapped in after the check cannot redirect it. Never passes an option
//! the caller did not check.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// Per-mount attributes of fsmount(2) (MOUNT_ATTR_*).
pub const ATTR_RDONLY: u64 = 0x01;
pub const ATTR_NOSUID: u64 = 0x02;
pub const ATTR_NODEV: u64 = 0x04;
pub const ATTR_NOEXEC: u64 = 0x08;

fn owned(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a mount option"))
}

/// Mounts a new tmpfs named `source` with the `data` key=value options and
/// `attrs` (ATTR_*) onto `dst`; returns an fd of the new mount's root
/// (`mount::beneath::unmount` takes it).
pub fn mount_onto(dst: &OwnedFd, source: &str, data: &[(String, String)], attrs: u64) -> io::Result<OwnedFd> {
    // SAFETY: fsopen with a valid C string.
    let fs = owned(unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC) })?;
    let set = |key: &str, value: &str| -> io::Result<()> {
        let (k, v) = (cstr(key)?, cstr(value)?);
        // SAFETY: valid C strings on our fs context fd.
        let rc = unsafe {
            libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, k.as_ptr(), v.as_ptr(), 0)
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("tmpfs option {key}={value}: {e}")));
        }
        Ok(())
    };
    set("source", source)?;
    for (k, v) in data {
        set(k, v)?;
    }
    // SAFETY: no pointers for CMD_CREATE.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsmount on our configured context.
    let mnt = owned(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })?;
    // SAFETY: move_mount between two fds we hold, empty paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            dst.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(mnt)
}
