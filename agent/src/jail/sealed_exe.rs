//! The executable of every container init: a sealed, in-memory copy of the
//! agent binary (the CVE-2019-5736 class). While an init sets a container up,
//! `/proc/<pid>/exe` of that process is this memfd, not the agent binary on
//! the guest filesystem, so nothing a container reaches through it can change
//! the agent: the seals (no write, no shrink, no grow, no further seal
//! changes) hold for every file description, root's included.
//!
//! Made once per agent lifetime, on the first spawn, and shared by all
//! spawns. Never hands out an unsealed file and never falls back to the agent
//! binary on disk: without memfd sealing, spawning fails.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// memfd name; `/proc/<pid>/exe` of an init reads `/memfd:<this> (deleted)`.
pub const MEMFD_NAME: &str = "cvm-container-init";

/// The seals the copy must carry, and nothing else is asked of it.
pub const REQUIRED_SEALS: i32 = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// `MFD_EXEC` (Linux 6.3): executable even when `vm.memfd_noexec` = 1 would
/// default to non-executable. Older kernels refuse the flag with EINVAL.
const MFD_EXEC: libc::c_uint = 0x10;

/// The memfd is moved to this fd number or above: the spawn `dup2`s the
/// init's stdio onto 0-2, its socket onto `SYNC_FD` (3) and up to
/// `MAX_INHERITED_FDS` namespace fds from `INHERITED_FD_BASE` on before exec,
/// none of which may replace the file being executed.
pub const MIN_FD: i32 = crate::jail::protocol::INHERITED_FD_BASE + crate::jail::protocol::MAX_INHERITED_FDS as i32 + 8;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "memfd_create({MEMFD_NAME:?}, MFD_CLOEXEC|MFD_ALLOW_SEALING): {0}; container inits run only from a sealed \
         copy of the agent, never from its binary on disk"
    )]
    Memfd(#[source] std::io::Error),
    #[error("move the memfd to fd {MIN_FD} or above: {0}")]
    Dup(#[source] std::io::Error),
    #[error("open the agent binary {path}: {source}")]
    OpenAgent { path: PathBuf, source: std::io::Error },
    #[error("copy the agent binary into the memfd: {0}")]
    Copy(#[source] std::io::Error),
    #[error("the memfd holds {found} bytes after copying {copied}")]
    SizeMismatch { copied: u64, found: u64 },
    #[error("fcntl(F_ADD_SEALS) on the memfd: {0}")]
    AddSeals(#[source] std::io::Error),
    #[error("fcntl(F_GET_SEALS) on the memfd: {0}")]
    GetSeals(#[source] std::io::Error),
    #[error("the memfd's seals are {found:#x}, missing {missing:#x} (required: SEAL|SHRINK|GROW|WRITE = {REQUIRED_SEALS:#x})")]
    SealsMissing { found: i32, missing: i32 },
}

/// A sealed, executable memfd (close-on-exec, at fd `MIN_FD` or above).
#[derive(Debug)]
pub struct SealedExe {
    fd: OwnedFd,
    size: u64,
}

impl SealedExe {
    /// Copies `src` into a new memfd named `name` and seals it; checks the
    /// seals read back before returning.
    pub fn seal_copy<R: Read>(name: &str, src: &mut R) -> Result<SealedExe, SealError> {
        let mut file = File::from(create_memfd(name)?);
        let copied = std::io::copy(src, &mut file).map_err(SealError::Copy)?;
        let found = file.metadata().map_err(SealError::Copy)?.len();
        if found != copied {
            return Err(SealError::SizeMismatch { copied, found });
        }
        let fd = OwnedFd::from(file);
        // SAFETY: fcntl on an fd we own, integer argument.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, REQUIRED_SEALS) } != 0 {
            return Err(SealError::AddSeals(std::io::Error::last_os_error()));
        }
        let found = seals_of(fd.as_fd())?;
        let missing = REQUIRED_SEALS & !found;
        if missing != 0 {
            return Err(SealError::SealsMissing { found, missing });
        }
        Ok(SealedExe { fd, size: copied })
    }

    /// The sealed copy of the running agent binary (`/proc/self/exe`).
    fn of_agent_binary() -> Result<SealedExe, SealError> {
        let path = PathBuf::from("/proc/self/exe");
        let mut src = File::open(&path).map_err(|source| SealError::OpenAgent { path, source })?;
        let started = Instant::now();
        let exe = Self::seal_copy(MEMFD_NAME, &mut src)?;
        tracing::info!(
            bytes = exe.size,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "container inits run from a sealed memfd copy of the agent binary"
        );
        Ok(exe)
    }

    /// A path that execs this file from a child that inherited the fd (it is
    /// close-on-exec, and the kernel opens the path before closing it).
    pub fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Bytes held in memory (tmpfs pages) by the copy.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The seals on `fd` (`F_GET_SEALS`).
pub fn seals_of(fd: BorrowedFd<'_>) -> Result<i32, SealError> {
    // SAFETY: fcntl on a borrowed open fd, no pointer argument.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(SealError::GetSeals(std::io::Error::last_os_error()));
    }
    Ok(seals)
}

fn create_memfd(name: &str) -> Result<OwnedFd, SealError> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| SealError::Memfd(std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in memfd name")))?;
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: valid C string; the kernel returns a new fd or -1.
    let mut raw = unsafe { libc::memfd_create(c_name.as_ptr(), flags | MFD_EXEC) };
    if raw < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // A kernel before 6.3: no MFD_EXEC, and memfds are executable anyway.
        // SAFETY: as above.
        raw = unsafe { libc::memfd_create(c_name.as_ptr(), flags) };
    }
    if raw < 0 {
        return Err(SealError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own.
    let first = unsafe { OwnedFd::from_raw_fd(raw) };
    if raw >= MIN_FD {
        return Ok(first);
    }
    // SAFETY: fcntl on an fd we own; returns a new fd or -1.
    let moved = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, MIN_FD) };
    if moved < 0 {
        return Err(SealError::Dup(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own; `first` closes on drop.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

static AGENT_COPY: OnceLock<SealedExe> = OnceLock::new();
static MAKING: Mutex<()> = Mutex::new(());

/// The sealed copy every container init is executed from; made on first use.
/// A failure is not cached: the next spawn tries again.
pub fn container_init_exe() -> Result<&'static SealedExe, SealError> {
    if let Some(exe) = AGENT_COPY.get() {
        return Ok(exe);
    }
    let _making = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(exe) = AGENT_COPY.get() {
        return Ok(exe);
    }
    let exe = SealedExe::of_agent_binary()?;
    Ok(AGENT_COPY.get_or_init(|| exe))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn errno(e: &std::io::Error) -> Option<i32> {
        e.raw_os_error()
    }

    #[test]
    fn a_sealed_copy_refuses_writes_truncation_and_growth() {
        let exe = SealedExe::seal_copy("seal-test", &mut &b"0123456789"[..]).unwrap();
        assert_eq!(exe.size(), 10);
        assert_eq!(seals_of(exe.fd()).unwrap(), REQUIRED_SEALS, "exactly SEAL|SHRINK|GROW|WRITE");
        // The memfd's own description is read-write: only the seals stop it.
        let mut f = File::from(exe.fd().try_clone_to_owned().unwrap());
        f.seek(SeekFrom::Start(0)).unwrap();
        assert_eq!(errno(&f.write(b"X").unwrap_err()), Some(libc::EPERM), "write");
        f.seek(SeekFrom::End(0)).unwrap();
        assert_eq!(errno(&f.write(b"X").unwrap_err()), Some(libc::EPERM), "append");
        assert_eq!(errno(&f.set_len(0).unwrap_err()), Some(libc::EPERM), "shrink");
        assert_eq!(errno(&f.set_len(4096).unwrap_err()), Some(libc::EPERM), "grow");
        // SAFETY: shared writable mapping of an fd we own; checked for failure.
        let map = unsafe { libc::mmap(std::ptr::null_mut(), 10, libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0) };
        assert_eq!(map, libc::MAP_FAILED, "shared writable mapping");
        assert_eq!(errno(&std::io::Error::last_os_error()), Some(libc::EPERM));
        // SAFETY: integer fcntl; the seal seal forbids lifting or adding seals.
        assert!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_EXEC) } < 0);
        let mut back = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, "0123456789");
    }

    #[test]
    fn the_copy_is_a_close_on_exec_memfd_above_the_spawn_fds() {
        let exe = SealedExe::seal_copy("cloexec-test", &mut &b"x"[..]).unwrap();
        let raw = exe.fd().as_raw_fd();
        assert!(raw >= MIN_FD, "fd {raw} could be replaced by the spawn's dup2s");
        // SAFETY: integer fcntl on an open fd.
        assert_ne!(unsafe { libc::fcntl(raw, libc::F_GETFD) } & libc::FD_CLOEXEC, 0);
        let link = std::fs::read_link(exe.exec_path()).unwrap();
        assert_eq!(link.to_string_lossy(), "/memfd:cloexec-test (deleted)");
    }

    #[test]
    fn a_sealed_copy_of_a_program_runs_through_its_exec_path() {
        let mut src = File::open("/bin/sh").unwrap();
        let exe = SealedExe::seal_copy("exec-test", &mut src).unwrap();
        let out = std::process::Command::new(exe.exec_path()).arg("-c").arg("exit 7").status().unwrap();
        assert_eq!(out.code(), Some(7));
    }
}
