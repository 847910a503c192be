//! Starts a container init (the agent binary re-executed from its sealed
//! memfd copy, `jail::sealed_exe`) and runs the agent side of its handshake
//! (see `jail::protocol`). Blocking: call it from `spawn_blocking`. Between
//! fork and exec the child runs only std's own spawn code plus `dup2`
//! calls, which are async-signal-safe. Never execs the agent binary on
//! disk.

use std::io::BufReader;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::jail::protocol::{
    self, InitConfig, Report, ACK, INHERITED_FD_BASE, INIT_ARGV0, MAX_INHERITED_FDS, START, SYNC_FD,
};
use crate::jail::sealed_exe;
use crate::reaper::{ExitWaiter, Reaper};

use super::stdio::ChildStdio;

/// How long an init may take to set up before the agent gives up on it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// The agent's end of the handshake socket of a created, not yet started
/// container.
pub struct StartGate {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

pub struct Spawned {
    pub pid: i32,
    pub waiter: ExitWaiter,
    /// Present in `Create` mode until `start`.
    pub gate: Option<StartGate>,
}

fn io_err(what: &str, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

/// Spawns the init for `cfg` with `stdio` as its fds 0-2 and returns once it
/// is ready (Create: waiting for start; Exec: exec'd; Pause: running).
pub fn spawn_init(reaper: &Reaper, cfg: &InitConfig, stdio: ChildStdio) -> Result<Spawned, String> {
    spawn_init_with_fds(reaper, cfg, stdio, &[])
}

/// Lowest fd number the sources of the child's fd table are moved to, so
/// that no `dup2` in the child overwrites a source not yet placed.
const FD_FLOOR: i32 = 64;

/// A close-on-exec copy of `fd` numbered at least `FD_FLOOR`.
fn dup_high(fd: i32) -> Result<OwnedFd, String> {
    // SAFETY: fcntl F_DUPFD_CLOEXEC on an fd we hold; the result is ours.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FD_FLOOR) };
    if n < 0 {
        return Err(io_err("dup fd for the container init", std::io::Error::last_os_error()));
    }
    // SAFETY: `n` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Like `spawn_init`, and `inherit[i]` becomes fd `INHERITED_FD_BASE + i` of
/// the init (the numbers `cfg` refers to).
pub fn spawn_init_with_fds(
    reaper: &Reaper,
    cfg: &InitConfig,
    stdio: ChildStdio,
    inherit: &[OwnedFd],
) -> Result<Spawned, String> {
    if inherit.len() > MAX_INHERITED_FDS {
        return Err(format!("{} fds for the container init (at most {MAX_INHERITED_FDS})", inherit.len()));
    }
    let (ours, low) = UnixStream::pair().map_err(|e| io_err("socketpair", e))?;
    let theirs = dup_high(low.as_raw_fd())?;
    drop(low);
    let raw = theirs.as_raw_fd();
    let high: Vec<OwnedFd> = inherit.iter().map(|f| dup_high(f.as_raw_fd())).collect::<Result<_, _>>()?;
    let sources: Vec<i32> = high.iter().map(|f| f.as_raw_fd()).collect();
    // Made on the first spawn (a copy of the agent binary), shared after. The
    // memfd is close-on-exec and numbered above every dup2 target below
    // (`sealed_exe::MIN_FD`), so the kernel still finds it at exec.
    let exe = sealed_exe::container_init_exe().map_err(|e| format!("container init executable: {e}"))?;
    let mut cmd = Command::new(exe.exec_path());
    cmd.arg0(INIT_ARGV0)
        .env_clear()
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr));
    // SAFETY: only dup2/fcntl run in the child between fork and exec; both
    // are async-signal-safe, and iterating the prebuilt slice allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Every source is >= FD_FLOOR and every target below it; dup2
            // leaves the targets without close-on-exec.
            if libc::dup2(raw, SYNC_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (i, &src) in sources.iter().enumerate() {
                if libc::dup2(src, INHERITED_FD_BASE + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let spawned = reaper.spawn(&mut cmd);
    // Close our copies of the child's ends now, so EOFs are seen correctly.
    drop(cmd);
    drop(theirs);
    drop(high);
    let (child, _intermediate_exit) = spawned.map_err(|e| io_err("spawn container init", e))?;

    ours.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| io_err("socket timeout", e))?;
    let mut writer = ours.try_clone().map_err(|e| io_err("socket clone", e))?;
    let mut reader = BufReader::new(ours);
    protocol::send(&mut writer, cfg).map_err(|e| io_err("send init config", e))?;
    let mut first = protocol::recv::<_, Report>(&mut reader).map_err(|e| io_err("read init pid", e))?;
    if first == Some(Report::NeedIdMaps) {
        let proc_dir = std::path::PathBuf::from(format!("/proc/{}", child.id()));
        std::fs::write(proc_dir.join("uid_map"), &cfg.uid_map).map_err(|e| io_err("write uid_map", e))?;
        std::fs::write(proc_dir.join("gid_map"), &cfg.gid_map).map_err(|e| io_err("write gid_map", e))?;
        protocol::send(&mut writer, &protocol::MAPPED).map_err(|e| io_err("send mapped", e))?;
        first = protocol::recv::<_, Report>(&mut reader).map_err(|e| io_err("read init pid", e))?;
    }
    let pid = match first {
        Some(Report::Pid(pid)) => pid,
        Some(Report::Error(e)) => return Err(e),
        other => return Err(format!("container init: unexpected message {other:?}")),
    };
    let waiter = reaper.watch(pid);
    protocol::send(&mut writer, &ACK).map_err(|e| io_err("send ack", e))?;
    match protocol::recv::<_, Report>(&mut reader).map_err(|e| io_err("read init status", e))? {
        Some(Report::Ready) => {}
        Some(Report::Error(e)) => return Err(e),
        other => return Err(format!("container init: unexpected message {other:?}")),
    }
    let mut gate = StartGate { reader, writer };
    match cfg.mode {
        protocol::Mode::Create => Ok(Spawned { pid, waiter, gate: Some(gate) }),
        protocol::Mode::Exec => {
            gate.wait_exec()?;
            Ok(Spawned { pid, waiter, gate: None })
        }
        protocol::Mode::Pause => Ok(Spawned { pid, waiter, gate: None }),
    }
}

impl StartGate {
    /// Lets a created container exec its process; returns once it did.
    pub fn start(mut self) -> Result<(), String> {
        protocol::send(&mut self.writer, &START).map_err(|e| io_err("send start", e))?;
        self.wait_exec()
    }

    /// The socket closes on a successful exec (O_CLOEXEC), or carries an error.
    fn wait_exec(&mut self) -> Result<(), String> {
        match protocol::recv::<_, Report>(&mut self.reader) {
            Ok(None) => Ok(()),
            Ok(Some(Report::Error(e))) => Err(e),
            Ok(Some(other)) => Err(format!("container init: unexpected message {other:?}")),
            Err(e) => Err(io_err("wait for exec", e)),
        }
    }
}
