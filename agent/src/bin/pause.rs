//! `pause`: the program of the guest's pause bundle (kata's /pause_bundle),
//! run as a pod's sandbox container when its image is pulled in the guest.
//! It holds the pod's namespaces and does nothing else: it waits for
//! signals, reaps every child it inherits (it may be the pod's PID 1) and
//! exits 0 on SIGINT or SIGTERM, as Kubernetes' pause does. It never reads
//! input, opens files or allocates after start-up.

fn main() {
    // SAFETY: plain libc signal-set calls on a stack sigset; no handlers run.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD] {
            libc::sigaddset(&mut set, sig);
        }
        // Blocked, so each arrives at sigwaitinfo below instead of a handler.
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let sig = libc::sigwaitinfo(&set, std::ptr::null_mut());
            match sig {
                libc::SIGINT | libc::SIGTERM => std::process::exit(0),
                libc::SIGCHLD => while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {},
                _ => {} // EINTR
            }
        }
    }
}
