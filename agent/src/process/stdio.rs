//! Stdio of a container process: three pipes, or a pty when the process asks
//! for a terminal. The agent keeps its ends (O_CLOEXEC, non-blocking, driven
//! by tokio's reactor); the child ends go to the container init only, so no
//! fd of one container ever reaches another.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Ends handed to the container init as its fds 0, 1, 2.
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// One non-blocking stream end of the agent.
pub struct Stream {
    fd: AsyncFd<OwnedFd>,
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a valid fd.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Stream {
    fn new(fd: OwnedFd, interest: Interest) -> io::Result<Stream> {
        set_nonblocking(fd.as_raw_fd())?;
        // SAFETY: the fd is an OwnedFd moved into the AsyncFd, which owns it
        // until it is deregistered and closed on drop.
        let fd = unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)?;
        Ok(Stream { fd })
    }

    /// Waits for data and returns up to `max` bytes; an empty vector means end
    /// of stream (every writer closed; EIO on a pty whose slave is gone).
    pub async fn read(&self, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; max.max(1)];
        loop {
            let mut guard = self.fd.readable().await?;
            // SAFETY: reading into a buffer of the given length.
            match guard.try_io(|fd| {
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(Vec::new()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`, waiting while the pipe is full.
    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let mut guard = self.fd.writable().await?;
            // SAFETY: writing from a valid buffer.
            match guard.try_io(|fd| {
                let n = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr() as *const libc::c_void, rest.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => rest = rest.get(n..).unwrap_or_default(),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The agent's side of a process's stdio.
pub struct AgentStdio {
    pub stdin: Option<Stream>,
    pub stdout: Option<Stream>,
    pub stderr: Option<Stream>,
    /// The pty master, for TtyWinResize.
    pub tty: Option<Arc<OwnedFd>>,
}

/// What the OCI process asks for: a pty of its console size (24x80 by
/// default) when `Terminal` is set, else three pipes.
pub fn for_process(process: &protos::oci::Process) -> io::Result<(AgentStdio, ChildStdio)> {
    if process.Terminal {
        let (rows, cols) = process.ConsoleSize.as_ref().map_or((24, 80), |b| (b.Height as u16, b.Width as u16));
        pty(rows, cols)
    } else {
        pipes()
    }
}

/// Three pipes.
pub fn pipes() -> io::Result<(AgentStdio, ChildStdio)> {
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok((
        AgentStdio {
            stdin: Some(Stream::new(in_w, Interest::WRITABLE)?),
            stdout: Some(Stream::new(out_r, Interest::READABLE)?),
            stderr: Some(Stream::new(err_r, Interest::READABLE)?),
            tty: None,
        },
        ChildStdio { stdin: in_r, stdout: out_w, stderr: err_w },
    ))
}

/// A pty: the slave becomes fds 0-2 of the process, the master stays here.
pub fn pty(rows: u16, cols: u16) -> io::Result<(AgentStdio, ChildStdio)> {
    let mut master: RawFd = -1;
    let mut slave: RawFd = -1;
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: valid out-pointers; name and termios are optional.
    if unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds we own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: fcntl on our fd.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let reader = master.try_clone()?;
    let writer = master.try_clone()?;
    Ok((
        AgentStdio {
            stdin: Some(Stream::new(writer, Interest::WRITABLE)?),
            stdout: Some(Stream::new(reader, Interest::READABLE)?),
            stderr: None,
            tty: Some(Arc::new(master)),
        },
        ChildStdio { stdin: slave.try_clone()?, stdout: slave.try_clone()?, stderr: slave },
    ))
}

/// Sets the window size of a pty master.
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ with a valid winsize.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
