//! The container init: the agent binary re-executed as `cvm-container-init`
//! (argv[0]) from a sealed memfd copy (`sealed_exe`, so `/proc/<pid>/exe`
//! never leads to the agent binary on disk) with a socketpair at fd 3. It
//! makes itself non-dumpable before anything else, so its /proc entries stay
//! root-owned and closed to ptrace-mode access from the container until the
//! workload's exec resets dumpability. Being a fresh single-threaded
//! process, it may allocate, open files and log freely before it execs the
//! workload; the multithreaded agent itself never runs code between fork and
//! exec (its only spawn is std's `Command` with a `dup2` pre-exec).
//!
//! Steps: read `InitConfig`; join the cgroup; join or create namespaces; fork
//! (so a new or joined PID namespace applies); the parent reports the child's
//! pid and exits once the agent watches it; the child builds the rootfs, sets
//! hostname, sysctls and rlimits, reports `Ready`, waits for `start` (new
//! containers only), then applies user, capabilities, no_new_privs and
//! seccomp and execs. It never returns into agent code.

mod exec;
pub mod protocol;
pub mod sealed_exe;

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use crate::namespaces::NsKind;
use protocol::{InitConfig, Mode, Report, ACK, INIT_ARGV0, START, SYNC_FD};

/// True when this process was started by the agent as a container init.
pub fn is_init_invocation() -> bool {
    std::env::args_os().next().is_some_and(|a| a == INIT_ARGV0)
}

/// Entry point of the container init (called first thing in `main`).
pub fn main() -> ExitCode {
    // SAFETY: the agent placed the socketpair end at SYNC_FD; we own it now.
    let sock = unsafe { UnixStream::from_raw_fd(SYNC_FD) };
    set_cloexec(SYNC_FD);
    // First, before any namespace is joined: a non-dumpable process's
    // /proc/<pid>/{exe,mem,environ,fd,...} are root-owned and need
    // CAP_SYS_PTRACE (in the agent's user namespace) to open, so a container
    // process that sees this one in its PID namespace cannot reach it. The
    // workload's execve makes it dumpable again by the kernel's rules; the
    // namespace holder (Pause) never execs and stays non-dumpable.
    // SAFETY: integer prctl.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        let mut sock = sock;
        let _ = protocol::send(&mut sock, &Report::Error(os_err("prctl(PR_SET_DUMPABLE, 0)")));
        return ExitCode::from(124);
    }
    // Whatever else the agent may have leaked without O_CLOEXEC never reaches
    // the workload: mark every fd above the socket close-on-exec.
    // SAFETY: close_range with the CLOEXEC flag only changes fd flags.
    unsafe { libc::syscall(libc::SYS_close_range, SYNC_FD as u32 + 1, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    let Ok(read_half) = sock.try_clone() else { return ExitCode::from(120) };
    let mut reader = BufReader::new(read_half);
    let mut writer = sock;
    let cfg: InitConfig = match protocol::recv(&mut reader) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => return ExitCode::from(121),
        Err(err) => {
            let _ = protocol::send(&mut writer, &Report::Error(format!("bad init config: {err}")));
            return ExitCode::from(122);
        }
    };
    let err = run(cfg, &mut reader, &mut writer);
    let _ = protocol::send(&mut writer, &Report::Error(err));
    ExitCode::from(123)
}

fn set_cloexec(fd: i32) {
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Runs the init; returns only with an error message.
fn run(cfg: InitConfig, reader: &mut BufReader<UnixStream>, writer: &mut UnixStream) -> String {
    match try_run(cfg, reader, writer) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_run(
    cfg: InitConfig,
    reader: &mut BufReader<UnixStream>,
    writer: &mut UnixStream,
) -> Result<std::convert::Infallible, String> {
    let pid = std::process::id().to_string();
    for procs in &cfg.cgroup_procs {
        std::fs::write(procs, &pid).map_err(|e| format!("join cgroup {}: {e}", procs.display()))?;
    }
    let new_ns = enter_namespaces(&cfg, reader, writer)?;
    let process = cfg.spec.Process.as_ref().ok_or("the spec has no process")?;
    if process.OOMScoreAdj != 0 {
        std::fs::write("/proc/self/oom_score_adj", process.OOMScoreAdj.to_string())
            .map_err(|e| format!("oom_score_adj: {e}"))?;
    }
    // Compile seccomp before forking so a bad profile fails early and cheaply.
    let seccomp = match cfg.spec.Linux.as_ref().and_then(|l| l.Seccomp.as_ref()) {
        Some(profile) if cfg.mode != Mode::Pause => Some(crate::seccomp::compile(profile).map_err(|e| e.to_string())?),
        _ => None,
    };

    let mut fds = [0i32; 2];
    // SAFETY: pipe2 with a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe2"));
    }
    // SAFETY: both fds are fresh and owned here.
    let (release_r, release_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: this process is single-threaded (a fresh exec of the agent binary
    // that started no threads), so the child may run any code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(os_err("fork")),
        0 => {
            drop(release_w);
            child(cfg, new_ns, seccomp, release_r, reader, writer)
        }
        child_pid => {
            drop(release_r);
            protocol::send(writer, &Report::Pid(child_pid)).map_err(|e| format!("report pid: {e}"))?;
            let ack: Option<String> = protocol::recv(reader).map_err(|e| format!("wait for ack: {e}"))?;
            if ack.as_deref() != Some(ACK) {
                // SAFETY: plain kill of our own child.
                unsafe { libc::kill(child_pid, libc::SIGKILL) };
            }
            drop(release_w);
            // SAFETY: leave without running destructors shared with the child.
            unsafe { libc::_exit(0) }
        }
    }
}

/// Joins the namespaces given by path, then unshares the new ones. Returns
/// the kinds that were newly created.
fn enter_namespaces(
    cfg: &InitConfig,
    reader: &mut BufReader<UnixStream>,
    writer: &mut UnixStream,
) -> Result<Vec<NsKind>, String> {
    let mut joined: Vec<(NsKind, File)> = Vec::new();
    let mut new = Vec::new();
    for ns in &cfg.namespaces {
        match (ns.fd, &ns.path) {
            // The agent opened and checked this file; join exactly it.
            (Some(fd), _) => {
                // SAFETY: the agent placed this fd for us (spawn_init_with_fds)
                // and nothing else in this process owns it.
                joined.push((ns.kind, unsafe { File::from_raw_fd(fd) }))
            }
            // Open every path first: /proc paths change meaning once we moved.
            (None, Some(p)) => {
                joined.push((ns.kind, File::open(p).map_err(|e| format!("open namespace {}: {e}", p.display()))?))
            }
            (None, None) => new.push(ns.kind),
        }
    }
    if new.contains(&NsKind::User) {
        // First, so every other new namespace is owned by it. The agent
        // writes the id maps (it is privileged in the parent namespace).
        // SAFETY: unshare with a namespace flag.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
            return Err(os_err("unshare user namespace"));
        }
        protocol::send(writer, &Report::NeedIdMaps).map_err(|e| format!("ask for id maps: {e}"))?;
        let ok: Option<String> = protocol::recv(reader).map_err(|e| format!("wait for id maps: {e}"))?;
        if ok.as_deref() != Some(protocol::MAPPED) {
            return Err("the agent did not write the id maps".into());
        }
        // SAFETY: plain syscalls; uid/gid 0 are mapped now.
        if unsafe { libc::setresgid(0, 0, 0) } != 0 || unsafe { libc::setresuid(0, 0, 0) } != 0 {
            return Err(os_err("become root of the user namespace"));
        }
    }
    for kind in NsKind::JOIN_ORDER {
        if let Some((_, f)) = joined.iter().find(|(k, _)| *k == kind) {
            // SAFETY: setns on an open namespace fd.
            if unsafe { libc::setns(f.as_raw_fd(), kind.clone_flag()) } != 0 {
                return Err(os_err(&format!("join {} namespace", kind.proc_name())));
            }
        }
    }
    let flags = new.iter().filter(|k| **k != NsKind::User).fold(0, |acc, k| acc | k.clone_flag());
    // SAFETY: unshare with namespace flags only.
    if flags != 0 && unsafe { libc::unshare(flags) } != 0 {
        return Err(os_err("unshare namespaces"));
    }
    Ok(new)
}

fn child(
    cfg: InitConfig,
    new_ns: Vec<NsKind>,
    seccomp: Option<crate::seccomp::CompiledProfile>,
    release: OwnedFd,
    reader: &mut BufReader<UnixStream>,
    writer: &mut UnixStream,
) -> Result<std::convert::Infallible, String> {
    let process = cfg.spec.Process.as_ref().ok_or("the spec has no process")?;
    // SAFETY: setsid/ioctl on our own stdin.
    unsafe { libc::setsid() };
    if process.Terminal && unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(os_err("make the pty the controlling terminal"));
    }
    if cfg.mode == Mode::Create {
        if new_ns.contains(&NsKind::Mount) {
            crate::mount::setup_rootfs(&cfg.spec, &cfg.rootfs, &crate::mount::LinuxKernel)
                .map_err(|e| format!("rootfs: {e}"))?;
        } else {
            return Err("a container needs its own mount namespace".into());
        }
    }
    if let Some(name) = &cfg.hostname {
        if new_ns.contains(&NsKind::Uts) {
            // SAFETY: valid buffer and length.
            if unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) } != 0 {
                return Err(os_err("sethostname"));
            }
        }
    }
    if cfg.mode == Mode::Create {
        if let Some(l) = cfg.spec.Linux.as_ref() {
            for (key, value) in &l.Sysctl {
                exec::write_sysctl(key, value)?;
            }
        }
        crate::mount::finalize_rootfs(&cfg.spec, std::path::Path::new("/"), &crate::mount::LinuxKernel)
            .map_err(|e| format!("rootfs: {e}"))?;
    }
    exec::set_rlimits(&process.Rlimits)?;

    // Wait until our parent has exited: we are then re-parented to the agent,
    // which already watches our pid.
    let mut byte = [0u8; 1];
    let mut release = File::from(release);
    let _ = std::io::Read::read(&mut release, &mut byte);
    drop(release);
    protocol::send(writer, &Report::Ready).map_err(|e| format!("report ready: {e}"))?;

    match cfg.mode {
        Mode::Pause => exec::pause_forever(),
        Mode::Create => {
            let go: Option<String> = protocol::recv(reader).map_err(|e| format!("wait for start: {e}"))?;
            if go.as_deref() != Some(START) {
                // The agent went away or removed the container before start.
                std::process::exit(1);
            }
        }
        Mode::Exec => {}
    }
    let _ = writer.flush();
    exec::exec_process(process, seccomp.as_ref())
}
