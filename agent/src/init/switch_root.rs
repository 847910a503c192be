//! Moves PID 1 off the initramfs onto a tmpfs before anything else happens.
//!
//! The kernel unpacks the initramfs into its "rootfs", the one mount that can
//! never be unmounted or pivoted away from: `pivot_root(2)` fails with EINVAL
//! there, and container runtimes need it. So PID 1 copies the image into a
//! fresh tmpfs, deletes the originals (freeing their memory), moves the tmpfs
//! onto `/`, chroots into it and re-executes itself. The second run sees the
//! marker variable and goes on booting.
//!
//! Only runs when `/` is a ram-backed filesystem (an initramfs); a disk root
//! is left alone. Never follows symlinks while copying or deleting, and never
//! crosses into another mount.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Set in the environment of the re-executed PID 1.
pub const SWITCHED_MARKER: &str = "CVM_AGENT_LEFT_INITRAMFS";
const NEW_ROOT: &str = "/.cvm-root";

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True when `/` is the kernel's ram-backed rootfs and we have not switched yet.
pub fn on_initramfs() -> bool {
    if std::env::var_os(SWITCHED_MARKER).is_some() {
        return false;
    }
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let root = c"/";
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(root.as_ptr(), &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type as i64, RAMFS_MAGIC | TMPFS_MAGIC)
}

/// Copies `/` into a tmpfs, switches to it and re-executes `/init`. Returns
/// only on failure (the caller powers off).
pub fn leave_initramfs() -> io::Error {
    match switch() {
        Ok(never) => match never {},
        Err(err) => err,
    }
}

fn switch() -> io::Result<std::convert::Infallible> {
    let new_root = Path::new(NEW_ROOT);
    std::fs::DirBuilder::new().mode(0o755).create(new_root)?;
    let (tmpfs, target, data) = (c"tmpfs", cstr(new_root)?, c"mode=0755");
    // SAFETY: valid C strings for the duration of the call.
    check(unsafe { libc::mount(tmpfs.as_ptr(), target.as_ptr(), tmpfs.as_ptr(), 0, data.as_ptr().cast()) })?;
    let root_dev = std::fs::symlink_metadata("/")?.dev();
    copy_dir(Path::new("/"), new_root, root_dev)?;
    // Free the initramfs copy; what cannot be removed just stays in memory.
    for entry in std::fs::read_dir("/")?.flatten() {
        let path = entry.path();
        if path != new_root {
            let _ = remove(&path, root_dev);
        }
    }
    std::env::set_current_dir(new_root)?;
    let (dot, slash) = (c".", c"/");
    // SAFETY: valid C strings; MS_MOVE of our own tmpfs onto /.
    check(unsafe { libc::mount(dot.as_ptr(), slash.as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null()) })?;
    // SAFETY: valid C string.
    check(unsafe { libc::chroot(dot.as_ptr()) })?;
    std::env::set_current_dir("/")?;
    let init = c"/init";
    let mut args: Vec<CString> = std::env::args_os().map(|a| CString::new(a.as_bytes()).unwrap_or_default()).collect();
    if args.is_empty() {
        args.push(init.to_owned());
    }
    let mut env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok())
        .collect();
    env.push(CString::new(format!("{SWITCHED_MARKER}=1"))?);
    let argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).chain([std::ptr::null()]).collect();
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(init.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(io::Error::last_os_error())
}

/// Recursively copies `src` into the existing directory `dst`, skipping other
/// mounts and the new root itself. Keeps modes, owners and device nodes.
pub fn copy_dir(src: &Path, dst: &Path, dev: u64) -> io::Result<()> {
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        if from == Path::new(NEW_ROOT) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&from)?;
        if meta.dev() != dev {
            continue;
        }
        let to = dst.join(entry.file_name());
        let ft = meta.file_type();
        if ft.is_symlink() {
            symlink(std::fs::read_link(&from)?, &to)?;
        } else if ft.is_dir() {
            std::fs::DirBuilder::new().mode(0o700).create(&to)?;
            copy_dir(&from, &to, dev)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let c = cstr(&to)?;
            // SAFETY: valid C string; mode and rdev come from the source node.
            check(unsafe { libc::mknod(c.as_ptr(), meta.mode(), meta.rdev()) })?;
        } else {
            continue; // sockets: nothing to copy
        }
        let c = cstr(&to)?;
        // SAFETY: valid C string; lchown does not follow the symlink.
        check(unsafe { libc::lchown(c.as_ptr(), meta.uid(), meta.gid()) })?;
    }
    Ok(())
}

fn remove(path: &Path, dev: u64) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.dev() != dev {
        return Ok(());
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)?.flatten() {
            let _ = remove(&entry.path(), dev);
        }
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_keeps_symlinks_modes_and_nesting_without_following_links() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("usr/bin")).unwrap();
        std::fs::write(s.join("usr/bin/tool"), b"#!x").unwrap();
        std::fs::set_permissions(s.join("usr/bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        symlink("usr/bin", s.join("bin")).unwrap();
        symlink("/etc/shadow", s.join("escape")).unwrap();
        std::fs::create_dir(s.join("tmp")).unwrap();
        std::fs::set_permissions(s.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let dev = std::fs::metadata(s).unwrap().dev();
        copy_dir(s, dst.path(), dev).unwrap();
        let d = dst.path();
        assert_eq!(std::fs::read(d.join("usr/bin/tool")).unwrap(), b"#!x");
        assert_eq!(std::fs::metadata(d.join("usr/bin/tool")).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(std::fs::read_link(d.join("bin")).unwrap(), Path::new("usr/bin"));
        assert_eq!(std::fs::read_link(d.join("escape")).unwrap(), Path::new("/etc/shadow"));
        assert_eq!(std::fs::metadata(d.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    }
}
