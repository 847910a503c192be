//! The only ways PID 1 ends: flush filesystems, then power the VM off. Used on
//! an orderly shutdown (DestroySandbox, SIGTERM), on a fatal error and from the
//! panic hook. Never returns; if the kernel refuses to power off, PID 1 parks
//! forever rather than exit (an exiting init panics the kernel).

use std::io::Write;

/// Syncs and powers off. `reason` is logged to the console first.
pub fn power_off(reason: &str) -> ! {
    tracing::info!(reason, "init: syncing and powering off");
    console_line(&format!("cvm-agent: powering off: {reason}"));
    halt()
}

/// A fatal error before logging exists (e.g. /proc could not be mounted).
pub fn fatal_before_logging(message: &str) -> ! {
    console_line(&format!("cvm-agent: fatal: {message}"));
    halt()
}

fn console_line(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

fn halt() -> ! {
    // SAFETY: sync(2) and reboot(2) take no pointers; this is PID 1 with
    // CAP_SYS_BOOT, and nothing after this point relies on process state.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    console_line(&format!("cvm-agent: power off failed: {}", std::io::Error::last_os_error()));
    loop {
        // SAFETY: pause(2) has no arguments.
        unsafe { libc::pause() };
    }
}
