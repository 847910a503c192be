//! A running guest: `vhost-device-vsock` (the host end of the guest's vsock,
//! exposed as a hybrid-vsock unix socket) and QEMU, each in its own process
//! group. Dropping the `Vm` kills both groups and waits for them, so no test
//! failure or panic leaves a VM behind.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cvm_agent::ctl::{self, Target};

use crate::qemu::{VmSpec, QEMU, VHOST_DEVICE_VSOCK};

/// The agent's vsock port (kata's default).
pub const AGENT_PORT: u32 = 1024;

/// Kernel message on a clean power-off (printed even with `quiet`).
const POWER_DOWN: &str = "reboot: Power down";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot create the VM work directory: {0}")]
    WorkDir(std::io::Error),
    #[error("cannot start {tool}: {source}")]
    Spawn { tool: &'static str, source: std::io::Error },
    #[error("vhost-device-vsock did not create {0} within 5 s (log: {1})")]
    VhostNotReady(PathBuf, String),
    #[error("QEMU exited ({status}) before the agent was ready\n--- console ---\n{console}\n--- qemu ---\n{qemu}")]
    QemuExited { status: ExitStatus, console: String, qemu: String },
    #[error("the agent did not answer Check within {timeout:?} (last error: {last})\n--- console ---\n{console}")]
    NotReady { timeout: Duration, last: String, console: String },
    #[error("the VM did not power off within {timeout:?}\n--- console ---\n{console}")]
    StillRunning { timeout: Duration, console: String },
    #[error("the VM stopped without a clean power-off ({status})\n--- console ---\n{console}")]
    UncleanStop { status: ExitStatus, console: String },
}

/// A child process in its own process group, killed (whole group) on drop.
struct GroupChild {
    child: Child,
}

impl GroupChild {
    fn spawn(tool: &'static str, cmd: &mut Command) -> Result<Self, VmError> {
        cmd.process_group(0).stdin(Stdio::null());
        let child = cmd.spawn().map_err(|source| VmError::Spawn { tool, source })?;
        Ok(GroupChild { child })
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's process group.
            unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Vm {
    qemu: GroupChild,
    vhost: GroupChild,
    started: Instant,
    /// The hybrid-vsock socket: connect, `CONNECT <port>\n`, `OK ...`.
    pub vsock_socket: PathBuf,
    pub console_log: PathBuf,
    qemu_log: PathBuf,
    echo: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    // Last field: removed after the processes are gone.
    work: tempfile::TempDir,
}

impl Vm {
    /// Starts vhost-device-vsock, then QEMU. The boot clock starts when QEMU
    /// is spawned. With `echo_console`, the guest console is copied to stdout.
    pub fn launch(spec: &VmSpec, echo_console: bool) -> Result<Vm, VmError> {
        // Short path: unix socket paths are limited to 107 bytes.
        let work = tempfile::Builder::new().prefix("cvm-vm.").tempdir_in("/tmp").map_err(VmError::WorkDir)?;
        let dir = work.path();
        let vhost_socket = dir.join("vhost.sock");
        let vsock_socket = dir.join("vm.vsock");
        let vhost_log = dir.join("vhost-device-vsock.log");
        let log = |p: &Path| File::create(p).map_err(VmError::WorkDir);
        let vhost = GroupChild::spawn(
            VHOST_DEVICE_VSOCK,
            Command::new(VHOST_DEVICE_VSOCK)
                .arg("--guest-cid")
                .arg(spec.cid.to_string())
                .arg("--socket")
                .arg(&vhost_socket)
                .arg("--uds-path")
                .arg(&vsock_socket)
                .stdout(log(&vhost_log)?)
                .stderr(log(&vhost_log)?),
        )?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !vhost_socket.exists() {
            if Instant::now() > deadline {
                return Err(VmError::VhostNotReady(vhost_socket, read_lossy(&vhost_log)));
            }
            std::thread::sleep(Duration::from_millis(10));
        }

        let console_log = dir.join("console.log");
        let qemu_log = dir.join("qemu.log");
        File::create(&console_log).map_err(VmError::WorkDir)?;
        let initdata_image = match &spec.initdata {
            Some(doc) => {
                // kata: /run/kata-containers/shared/initdata/<id>/data.img
                let img = dir.join("initdata.img");
                crate::initdata::write_image(doc, &img).map_err(VmError::WorkDir)?;
                Some(img)
            }
            None => None,
        };
        let args = spec.qemu_args(&vhost_socket, &console_log, false, initdata_image.as_deref());
        let started = Instant::now();
        let qemu =
            GroupChild::spawn(QEMU, Command::new(QEMU).args(&args).stdout(log(&qemu_log)?).stderr(log(&qemu_log)?))?;
        let echo = echo_console.then(|| {
            let stop = Arc::new(AtomicBool::new(false));
            let handle = std::thread::spawn({
                let (stop, path) = (stop.clone(), console_log.clone());
                move || tail(&path, &stop)
            });
            (stop, handle)
        });
        Ok(Vm { qemu, vhost, started, vsock_socket, console_log, qemu_log, echo, work })
    }

    /// How the host reaches the agent: the hybrid-vsock socket, port 1024.
    pub fn agent_target(&self) -> Target {
        let addr =
            format!("unix://{}", self.vsock_socket.display()).parse().expect("temp path is a valid unix address");
        Target { addr, hybrid_vsock_port: Some(AGENT_PORT) }
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// CPU time (user + system) QEMU has used so far: on a busy host this is
    /// what the boot would take on an idle one (TCG is CPU-bound).
    pub fn qemu_cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.qemu.child.id())).ok()?;
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_millis(ticks * 1000 / hz))
    }

    /// Process ids of QEMU and vhost-device-vsock (each leads its own group).
    pub fn pids(&self) -> [u32; 2] {
        [self.qemu.child.id(), self.vhost.child.id()]
    }

    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    pub fn console(&self) -> String {
        read_lossy(&self.console_log)
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.qemu.child.try_wait().ok().flatten()
    }

    /// Polls Check over hybrid vsock until the agent answers; returns the
    /// time from QEMU start to the first answer.
    pub async fn wait_agent_ready(&mut self, timeout: Duration) -> Result<Duration, VmError> {
        let target = self.agent_target();
        let mut last = String::from("no attempt yet");
        while self.started.elapsed() < timeout {
            if let Some(status) = self.exited() {
                return Err(VmError::QemuExited { status, console: self.console(), qemu: read_lossy(&self.qemu_log) });
            }
            match target.connect(Duration::from_secs(2)).await {
                Ok(client) => match ctl::call_on(&client, "Check", "{}", Duration::from_secs(5)).await {
                    Ok(_) => return Ok(self.started.elapsed()),
                    Err(err) => last = err.to_string(),
                },
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(VmError::NotReady { timeout, last, console: self.console() })
    }

    /// Waits for QEMU to exit on its own and checks that the guest powered
    /// off cleanly (not a panic, not a kill). Returns the time it took.
    pub fn wait_power_off(&mut self, timeout: Duration) -> Result<Duration, VmError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                let console = self.console();
                if status.success() && console.contains(POWER_DOWN) && !console.contains("Kernel panic") {
                    return Ok(start.elapsed());
                }
                return Err(VmError::UncleanStop { status, console });
            }
            if start.elapsed() > timeout {
                return Err(VmError::StillRunning { timeout, console: self.console() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.qemu.kill();
        self.vhost.kill();
        if let Some((stop, handle)) = self.echo.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Copies what is appended to `path` to stdout until `stop` is set (then
/// drains what is left).
fn tail(path: &Path, stop: &AtomicBool) {
    let Ok(mut file) = File::open(path) else { return };
    let mut buf = [0u8; 8192];
    let mut out = std::io::stdout();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        match file.read(&mut buf) {
            Ok(0) if stopping => return,
            Ok(0) => std::thread::sleep(Duration::from_millis(20)),
            Ok(n) => {
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
