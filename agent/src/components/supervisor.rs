//! Starts the guest components in plan order and keeps them running.
//!
//! Start-up is kata's: each component is launched (its stale socket removed
//! first) and the next one only once its socket exists, waiting at most the
//! launch timeout; a component that exits or times out at boot fails the
//! boot (kata's agent then refuses to run, and so do we).
//! Beyond kata, a component that dies later is relaunched after an
//! exponential backoff (doubling from `initial_backoff` up to `max_backoff`,
//! back to the start once a run lasted `stable_after`); after `max_failures`
//! failed runs in a row it is left `Failed`.
//!
//! Exit statuses come from the agent's one reaper (`crate::reaper`): nothing
//! here calls `waitpid`. Processes are reached only through [`Launcher`], so
//! the ordering and backoff are unit-tested without binaries.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::status::{State, StatusBoard};
use super::{Component, LaunchSpec};
use crate::reaper::{ExitStatus, Reaper};

/// A launched process: its pid and the future of its exit status (`None`
/// only if the reaper went away).
pub struct Launched {
    pub pid: i32,
    pub exit: Pin<Box<dyn Future<Output = Option<ExitStatus>> + Send>>,
}

/// Everything the supervisor does to processes and sockets.
pub trait Launcher: Send + Sync + 'static {
    fn spawn(&self, spec: &LaunchSpec) -> io::Result<Launched>;
    /// The component's socket is there (it is serving).
    fn socket_ready(&self, path: &Path) -> bool;
    /// Removes a socket file left by an earlier run.
    fn remove_stale_socket(&self, path: &Path);
    fn signal(&self, pid: i32, sig: i32);
}

/// How relaunches are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A run at least this long resets the backoff.
    pub stable_after: Duration,
    /// Failed runs in a row after which the component is given up.
    pub max_failures: u32,
    /// How often a launch checks for the socket (kata: every second).
    pub poll: Duration,
    /// How long a stopped component gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            max_failures: 10,
            poll: Duration::from_millis(50),
            stop_grace: Duration::from_secs(5),
        }
    }
}

impl RestartPolicy {
    /// The wait before relaunch number `failures` of a row (1-based).
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial_backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start {component} ({program}): {source}")]
    Spawn { component: &'static str, program: String, source: io::Error },
    #[error("{component} exited ({status}) before serving on {socket}")]
    Exited { component: &'static str, status: String, socket: String },
    #[error("{component} did not create {socket} within {timeout:?}")]
    Timeout { component: &'static str, socket: String, timeout: Duration },
}

/// Launches `spec` and waits for its socket (kata's `launch_process`).
async fn launch(launcher: &dyn Launcher, spec: &LaunchSpec, poll: Duration) -> Result<Launched, LaunchError> {
    let component = spec.component.name();
    if let Some(socket) = &spec.wait_socket {
        launcher.remove_stale_socket(socket);
    }
    let mut launched = launcher.spawn(spec).map_err(|source| LaunchError::Spawn {
        component,
        program: spec.program.display().to_string(),
        source,
    })?;
    let Some(socket) = spec.wait_socket.as_deref().filter(|_| !spec.timeout.is_zero()) else {
        return Ok(launched);
    };
    let deadline = Instant::now() + spec.timeout;
    loop {
        if launcher.socket_ready(socket) {
            return Ok(launched);
        }
        if Instant::now() >= deadline {
            launcher.signal(launched.pid, libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut launched.exit).await;
            return Err(LaunchError::Timeout {
                component,
                socket: socket.display().to_string(),
                timeout: spec.timeout,
            });
        }
        tokio::select! {
            status = &mut launched.exit => {
                return Err(LaunchError::Exited {
                    component,
                    status: describe(status),
                    socket: socket.display().to_string(),
                });
            }
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(ExitStatus::Exited(c)) => format!("exit code {c}"),
        Some(ExitStatus::Signaled(s)) => format!("killed by signal {s}"),
        None => "status unknown".into(),
    }
}

/// The running supervision; [`Supervisor::stop`] ends it and the components.
pub struct Supervisor {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Supervisor {
    /// Launches `plan` in order, each after the previous one's socket exists,
    /// then supervises every component. On a launch failure the components
    /// already started are stopped and the error returned.
    pub async fn start(
        plan: Vec<LaunchSpec>,
        launcher: Arc<dyn Launcher>,
        policy: RestartPolicy,
        board: StatusBoard,
    ) -> Result<Supervisor, LaunchError> {
        let (stop, _) = watch::channel(false);
        let mut sup = Supervisor { stop, tasks: Vec::new() };
        for spec in plan {
            let c = spec.component;
            board.update(c, |s| {
                s.state = State::Starting;
                s.pid = None;
            });
            let started = Instant::now();
            match launch(launcher.as_ref(), &spec, policy.poll).await {
                Ok(launched) => {
                    tracing::info!(component = c.name(), pid = launched.pid, program = %spec.program.display(),
                        args = ?spec.command_args(), elapsed_ms = started.elapsed().as_millis() as u64,
                        "guest component started");
                    set_running(&board, c, launched.pid);
                    let task = Task {
                        launcher: launcher.clone(),
                        spec,
                        policy,
                        board: board.clone(),
                        stop: sup.stop.subscribe(),
                    };
                    sup.tasks.push(tokio::spawn(task.supervise(launched)));
                }
                Err(err) => {
                    tracing::error!(component = c.name(), %err, "guest component failed to start");
                    board.update(c, |s| s.state = State::Failed);
                    sup.stop().await;
                    return Err(err);
                }
            }
        }
        Ok(sup)
    }

    /// Stops supervising and terminates the components (SIGTERM, then
    /// SIGKILL after the grace period).
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

fn set_running(board: &StatusBoard, c: Component, pid: i32) {
    board.update(c, |s| {
        s.state = State::Running;
        s.pid = Some(pid);
    });
}

/// Resolves once a stop is requested; never if the supervisor was dropped.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

struct Task {
    launcher: Arc<dyn Launcher>,
    spec: LaunchSpec,
    policy: RestartPolicy,
    board: StatusBoard,
    stop: watch::Receiver<bool>,
}

impl Task {
    async fn supervise(mut self, mut running: Launched) {
        let c = self.spec.component;
        let mut failures = 0u32;
        let mut up_since = Instant::now();
        loop {
            let exited = tokio::select! {
                status = &mut running.exit => Some(status),
                _ = stopped(&mut self.stop) => None,
            };
            let Some(status) = exited else {
                self.terminate(running).await;
                return;
            };
            let ran = up_since.elapsed();
            if ran >= self.policy.stable_after {
                failures = 0;
            }
            failures += 1;
            tracing::warn!(component = c.name(), pid = running.pid, status = %describe(status),
                ran_ms = ran.as_millis() as u64, "guest component exited");
            running = loop {
                if failures > self.policy.max_failures {
                    tracing::error!(component = c.name(), failures, "guest component keeps failing; giving up");
                    self.board.update(c, |s| {
                        s.state = State::Failed;
                        s.pid = None;
                    });
                    return;
                }
                let delay = self.policy.backoff(failures);
                self.board.update(c, |s| {
                    s.state = State::Restarting;
                    s.pid = None;
                });
                tracing::info!(
                    component = c.name(),
                    delay_ms = delay.as_millis() as u64,
                    failures,
                    "restarting guest component"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut self.stop) => {
                        self.board.update(c, |s| s.state = State::Stopped);
                        return;
                    }
                }
                self.board.update(c, |s| {
                    s.state = State::Starting;
                    s.restarts += 1;
                });
                match launch(self.launcher.as_ref(), &self.spec, self.policy.poll).await {
                    Ok(launched) => {
                        tracing::info!(component = c.name(), pid = launched.pid, "guest component restarted");
                        set_running(&self.board, c, launched.pid);
                        break launched;
                    }
                    Err(err) => {
                        tracing::warn!(component = c.name(), %err, failures, "guest component restart failed");
                        failures += 1;
                    }
                }
            };
            up_since = Instant::now();
        }
    }

    async fn terminate(&self, mut running: Launched) {
        let c = self.spec.component;
        self.launcher.signal(running.pid, libc::SIGTERM);
        let status = match tokio::time::timeout(self.policy.stop_grace, &mut running.exit).await {
            Ok(status) => status,
            Err(_) => {
                self.launcher.signal(running.pid, libc::SIGKILL);
                tokio::time::timeout(self.policy.stop_grace, &mut running.exit).await.ok().flatten()
            }
        };
        tracing::info!(component = c.name(), pid = running.pid, status = %describe(status), "guest component stopped");
        self.board.update(c, |s| {
            s.state = State::Stopped;
            s.pid = None;
        });
    }
}

/// The real processes, spawned through the agent's reaper.
pub struct ProcessLauncher {
    reaper: Reaper,
    /// Not PID 1 (tests, development): the components get SIGKILL when the
    /// agent dies instead of lingering on the host.
    die_with_agent: bool,
}

impl ProcessLauncher {
    pub fn new(reaper: Reaper, die_with_agent: bool) -> Self {
        ProcessLauncher { reaper, die_with_agent }
    }
}

impl Launcher for ProcessLauncher {
    fn spawn(&self, spec: &LaunchSpec) -> io::Result<Launched> {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(&spec.program);
        cmd.args(spec.command_args()).stdin(std::process::Stdio::null());
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        if self.die_with_agent {
            // SAFETY: only prctl, which is async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let (child, waiter) = self.reaper.spawn(&mut cmd)?;
        Ok(Launched { pid: child.id() as i32, exit: Box::pin(waiter.wait()) })
    }

    fn socket_ready(&self, path: &Path) -> bool {
        use std::os::unix::fs::FileTypeExt;
        std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
    }

    fn remove_stale_socket(&self, path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::debug!(socket = %path.display(), "removed a stale socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(socket = %path.display(), %err, "cannot remove a stale socket"),
        }
    }

    fn signal(&self, pid: i32, sig: i32) {
        // SAFETY: kill with integer arguments; pid > 0 is one of our children.
        if pid > 0 {
            unsafe { libc::kill(pid, sig) };
        }
    }
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
