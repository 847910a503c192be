//! `pause`: the program of the guest's pause bundle (kata's /pause_bundle),
//! run as a pod's sandbox container when its image is pulled in the guest.
//! It holds the pod's namespaces and does nothing else: it sleeps in
//! pause(2), reaps every child it inherits (it may be the pod's PID 1) and
//! exits 0 on SIGINT or SIGTERM, as Kubernetes' pause does. Real handlers
//! are installed (not a blocked sigwait): the agent, as kata's, reads SigCgt
//! and turns SIGTERM to an init without a handler into SIGKILL. Handlers only
//! call async-signal-safe functions (waitpid, _exit).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

extern "C" fn exit_zero(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

extern "C" fn reap(_: libc::c_int) {
    // SAFETY: waitpid is async-signal-safe; errno is not inspected.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

fn on(sig: libc::c_int, handler: extern "C" fn(libc::c_int), flags: libc::c_int) {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler as *const () as libc::sighandler_t;
        act.sa_flags = flags;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
            libc::_exit(1);
        }
    }
}

fn main() {
    on(libc::SIGINT, exit_zero, 0);
    on(libc::SIGTERM, exit_zero, 0);
    on(libc::SIGCHLD, reap, libc::SA_NOCLDSTOP | libc::SA_RESTART);
    // Children that exited before the handler was installed.
    reap(0);
    loop {
        // SAFETY: pause has no preconditions; it returns after each handled signal.
        unsafe { libc::pause() };
    }
}
