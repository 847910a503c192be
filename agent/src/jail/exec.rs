//! Last steps of the container init before the workload runs: sysctls,
//! rlimits, user and groups, capabilities, no_new_privs, seccomp, execve.
//! Runs only in the single-threaded init.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::capabilities::{self, ProcessCaps};
use crate::seccomp::CompiledProfile;

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Writes `/proc/sys/<key with dots as slashes>`; refuses keys that would
/// escape /proc/sys.
pub fn write_sysctl(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.split(['.', '/']).any(|c| c.is_empty() || c == "..") {
        return Err(format!("invalid sysctl name {key:?}"));
    }
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| format!("sysctl {key}: {e}"))
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

pub fn set_rlimits(limits: &[protos::oci::POSIXRlimit]) -> Result<(), String> {
    for l in limits {
        let res = rlimit_resource(&l.Type).ok_or_else(|| format!("unknown rlimit {:?}", l.Type))?;
        let lim = libc::rlimit { rlim_cur: l.Soft, rlim_max: l.Hard };
        // SAFETY: valid struct pointer.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(os_err(&format!("setrlimit {}", l.Type)));
        }
    }
    Ok(())
}

/// The sandbox's namespace holder: PID 1 of the pod's PID namespace when
/// shared, so it reaps whatever is re-parented to it.
pub fn pause_forever() -> ! {
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid.
        if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// Finds `arg0` on the PATH of the process environment (inside the container).
fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf, String> {
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        let c = cstring(&candidate.to_string_lossy())?;
        // SAFETY: valid C string.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 && candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!("executable {arg0:?} not found in PATH {path:?}"))
}

fn switch_user(user: Option<&protos::oci::User>, keep_caps: bool) -> Result<(), String> {
    let (uid, gid, groups) = user.map_or((0, 0, Vec::new()), |u| (u.UID, u.GID, u.AdditionalGids.clone()));
    let groups: Vec<libc::gid_t> = groups;
    // SAFETY: valid pointer and length.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(os_err("setgroups"));
    }
    if keep_caps {
        // SAFETY: integer prctl.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    // SAFETY: plain syscalls.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(os_err(&format!("setgid {gid}")));
    }
    // SAFETY: plain syscall.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(os_err(&format!("setuid {uid}")));
    }
    Ok(())
}

/// Applies the process identity and confinement, then execs. Only returns
/// with an error.
pub fn exec_process(
    p: &protos::oci::Process,
    seccomp: Option<&CompiledProfile>,
) -> Result<std::convert::Infallible, String> {
    let arg0 = p.Args.first().ok_or("the process has no args")?;
    let cwd = if p.Cwd.is_empty() { "/" } else { p.Cwd.as_str() };
    std::env::set_current_dir(cwd).map_err(|e| format!("chdir {cwd}: {e}"))?;
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o022) };
    let caps = p.Capabilities.as_ref().map(ProcessCaps::from_spec).transpose()?;

    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it
    // while we still have it (as runc does).
    if let (Some(profile), false) = (seccomp, p.NoNewPrivileges) {
        crate::seccomp::install(profile, false).map_err(|e| format!("install seccomp: {e}"))?;
    }
    if let Some(caps) = &caps {
        capabilities::drop_bounding(caps).map_err(|e| format!("drop bounding capabilities: {e}"))?;
    }
    switch_user(p.User.as_ref(), caps.is_some())?;
    if let Some(caps) = &caps {
        capabilities::apply(caps).map_err(|e| format!("apply capabilities: {e}"))?;
    }
    if p.NoNewPrivileges {
        // SAFETY: integer prctl.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(os_err("no_new_privs"));
        }
    }
    let exe = find_executable(arg0, &p.Env)?;
    let exe_c = cstring(&exe.to_string_lossy())?;
    let argv: Vec<CString> = p.Args.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = p.Env.iter().map(|e| cstring(e)).collect::<Result<_, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    if let (Some(profile), true) = (seccomp, p.NoNewPrivileges) {
        // Last step before exec so the profile only constrains the workload.
        crate::seccomp::install(profile, false).map_err(|e| format!("install seccomp: {e}"))?;
    }
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(exe_c.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    Err(os_err(&format!("exec {}", exe.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_cannot_escape_proc_sys() {
        assert!(write_sysctl("../../etc/passwd", "x").unwrap_err().contains("invalid sysctl"));
        assert!(write_sysctl("net..ipv4", "x").is_err());
        assert!(write_sysctl("", "x").is_err());
    }

    #[test]
    fn executables_are_found_on_the_process_path() {
        assert_eq!(find_executable("sh", &["PATH=/nonexistent:/bin".into()]).unwrap(), PathBuf::from("/bin/sh"));
        assert!(find_executable("no-such-tool", &["PATH=/bin".into()]).unwrap_err().contains("no-such-tool"));
    }
}
