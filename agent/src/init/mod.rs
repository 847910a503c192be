//! PID 1 duties of the agent inside the confidential VM: leaving the
//! initramfs for a tmpfs (so containers can pivot_root), the boot mounts, the
//! kernel modules the image ships, the loopback interface, the console, and
//! the only two ways PID 1 ever ends: sync + power off.
//!
//! Nothing here runs unless the agent is PID 1 (`is_pid1`). This module must
//! never let PID 1 exit, return into the kernel or unwind: every fatal path ends
//! in [`power_off`], which does not return.

pub mod log_port;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod power;
pub mod switch_root;

use std::time::Instant;

use crate::config::InitParams;

pub use power::power_off;

/// PATH given to everything PID 1 starts (the kernel hands init no PATH).
pub const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// True when this process is the first one the kernel started.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Steps that must happen before anything reads `/proc` or logs: the pseudo
/// filesystems and a console on fds 0-2. Errors here are written straight to
/// the console (logging is not set up yet) and are fatal.
pub fn early_boot() {
    if switch_root::on_initramfs() {
        // Returns only on failure; on success this process image is replaced.
        let err = switch_root::leave_initramfs();
        power::fatal_before_logging(&format!("cannot move off the initramfs onto a tmpfs: {err}"));
    }
    if let Err(err) = mounts::mount_pseudo_filesystems() {
        power::fatal_before_logging(&format!("boot mounts failed: {err}"));
    }
    mounts::ensure_console();
    // SAFETY-free: set_var is only unsound with other threads; none exist yet.
    std::env::set_var("PATH", DEFAULT_PATH);
}

/// Steps after logging is up: cgroups, kernel modules, loopback. Module and
/// network failures are logged and fatal, because the agent cannot be reached
/// without vsock.
pub fn late_boot(params: &InitParams) -> Result<(), InitError> {
    let started = Instant::now();
    mounts::mount_cgroups(params.cgroup_v1)?;
    let loaded = modules::load_from_image(std::path::Path::new(modules::MODULES_DIR))?;
    net::bring_up_loopback()?;
    if let Some(port) = params.log_vport {
        // Logs still reach the console; a missing log port is not fatal.
        match log_port::start(port) {
            Ok(()) => tracing::info!(port, "init: copying logs to vsock port"),
            Err(err) => tracing::warn!(port, %err, "init: cannot listen on the log vsock port"),
        }
    }
    tracing::info!(
        kernel_uptime_s = kernel_uptime().as_deref().unwrap_or("?"),
        modules = loaded,
        cgroup = if params.cgroup_v1 { "v1" } else { "v2" },
        elapsed_ms = started.elapsed().as_millis() as u64,
        "init: boot done"
    );
    if params.debug_console {
        tracing::warn!("agent.debug_console requested: this image ships no shell and no debug console; ignored");
    }
    Ok(())
}

/// Seconds since the kernel started (first field of /proc/uptime), for boot timing.
fn kernel_uptime() -> Option<String> {
    std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next().map(str::to_owned)
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error(transparent)]
    Module(#[from] modules::ModuleError),
    #[error("cannot bring up the loopback interface: {0}")]
    Loopback(std::io::Error),
}
