//! The kernel seam of the rootfs setup: the few syscalls that need root and
//! a mount namespace. `LinuxKernel` does them; tests use a recording double
//! so the order and flags of every mount are checked without root.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub trait Kernel {
    fn mount(
        &self,
        src: Option<&Path>,
        dest: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// Makes `new_root` the root and detaches the old one.
    fn pivot_root(&self, new_root: &Path) -> io::Result<()>;
    /// mknod; an existing node is not an error.
    fn mknod(&self, path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()>;
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
}

pub struct LinuxKernel;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

impl Kernel for LinuxKernel {
    fn mount(
        &self,
        src: Option<&Path>,
        dest: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        super::mount(src, dest, fstype, flags, data)
    }

    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        std::env::set_current_dir(new_root)?;
        let dot = c".";
        // SAFETY: pivot_root(".", ".") stacks the old root under the new one.
        if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(err.kind(), format!("pivot_root {}: {err}", new_root.display())));
        }
        // Keep the old root's unmount from propagating anywhere, then drop it.
        super::mount(None, Path::new("."), None, libc::MS_SLAVE | libc::MS_REC, None)?;
        // SAFETY: valid C string.
        if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(io::Error::last_os_error());
        }
        std::env::set_current_dir("/")
    }

    fn mknod(&self, path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
        let c = cstr(path)?;
        // SAFETY: valid C string.
        if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::new(err.kind(), format!("mknod {}: {err}", path.display())));
            }
        }
        Ok(())
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        let c = cstr(path)?;
        // SAFETY: valid C string.
        if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
