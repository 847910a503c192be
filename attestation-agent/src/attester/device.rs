//! The seam between attesters and the kernel: ioctls on character devices and
//! reads/writes of configfs/sysfs files. Attesters never touch a device or a
//! pseudo-file except through [`KernelIo`], so unit tests drive them with fake
//! backends that implement the kernel side of the same ABI.
//!
//! This module must never interpret what it reads: it moves bytes, and the
//! attester that asked decides what they mean.

use std::ffi::c_void;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Longest pseudo-file accepted from configfs/sysfs (a TDX quote with its
/// certification data is a few KiB; an SNP certificate table tens of KiB).
pub const MAX_PSEUDO_FILE: u64 = 1 << 20;

/// Kernel access used by the attesters.
pub trait KernelIo: Send + Sync + std::fmt::Debug {
    /// Issues `ioctl(fd, request, arg)` on `device`, opened read-write.
    ///
    /// # Safety
    /// `arg` must point to the argument structure `request` encodes, and every
    /// pointer inside that structure must be valid for the length it states,
    /// for the duration of the call.
    unsafe fn ioctl(&self, device: &Path, request: u64, arg: *mut c_void) -> io::Result<()>;

    /// Reads a whole configfs/sysfs file (bounded by [`MAX_PSEUDO_FILE`]).
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;

    /// Writes `data` to a configfs/sysfs attribute in one `write(2)`.
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;

    /// Creates a configfs item directory.
    fn create_dir(&self, path: &Path) -> io::Result<()>;

    /// Removes a configfs item directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;

    /// Whether `path` exists (used by platform detection).
    fn exists(&self, path: &Path) -> bool;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxKernel;

impl KernelIo for LinuxKernel {
    unsafe fn ioctl(&self, device: &Path, request: u64, arg: *mut c_void) -> io::Result<()> {
        let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(device)?;
        // SAFETY: the caller guarantees `arg` matches `request` (see trait docs).
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let file = std::fs::File::open(path)?;
        let mut buf = Vec::new();
        file.take(MAX_PSEUDO_FILE + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > MAX_PSEUDO_FILE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than {MAX_PSEUDO_FILE} bytes", path.display()),
            ));
        }
        Ok(buf)
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut file = OpenOptions::new().write(true).open(path)?;
        let n = file.write(data)?;
        if n != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write to {}: {n} of {} bytes", path.display(), data.len()),
            ));
        }
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// `_IOC(dir, type, nr, size)` of the Linux asm-generic ioctl encoding.
pub const fn ioc(dir: u64, ty: u8, nr: u8, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

/// `_IOWR(type, nr, T)`.
pub const fn iowr(ty: u8, nr: u8, size: usize) -> u64 {
    ioc(3, ty, nr, size)
}
