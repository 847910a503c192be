//! kata's `agent.log_vport=PORT`: the agent listens on that guest vsock port
//! and copies every log line to the host connection attached to it (one at a
//! time; a newer connection replaces the older one). The console keeps
//! getting every line regardless.
//!
//! Must never slow or block the agent: the connection is non-blocking, a line
//! the host is too slow to take is dropped, and a broken connection is
//! forgotten until the host reconnects.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

static ATTACHED: OnceLock<Mutex<Option<OwnedFd>>> = OnceLock::new();

/// Copies one formatted log line to the attached host, if any.
pub fn copy(line: &[u8]) {
    let Some(slot) = ATTACHED.get() else { return };
    let Ok(mut slot) = slot.try_lock() else { return };
    let Some(fd) = slot.as_ref() else { return };
    // SAFETY: a valid connected socket fd and a buffer we own; MSG_NOSIGNAL
    // turns a closed peer into EPIPE instead of a signal.
    let n = unsafe {
        libc::send(fd.as_raw_fd(), line.as_ptr().cast(), line.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
    };
    if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
        *slot = None;
    }
}

/// Binds vsock `port` on any CID and serves host connections on a thread.
pub fn start(port: u32) -> io::Result<()> {
    // SAFETY: plain socket(2); ownership taken right away.
    let raw = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    let listener = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_vm is plain old data; zero is a valid start.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    addr.svm_port = port;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes.
    if unsafe { libc::bind(listener.as_raw_fd(), (&addr as *const libc::sockaddr_vm).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a bound socket.
    if unsafe { libc::listen(listener.as_raw_fd(), 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let slot = ATTACHED.get_or_init(|| Mutex::new(None));
    std::thread::Builder::new().name("log-vport".into()).spawn(move || loop {
        // SAFETY: accept4 on our listening socket; peer address not needed.
        let conn = unsafe {
            libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if conn < 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        // SAFETY: accept4 returned a fresh fd we now own.
        let conn = unsafe { OwnedFd::from_raw_fd(conn) };
        if let Ok(mut s) = slot.lock() {
            *s = Some(conn);
        }
    })?;
    Ok(())
}
