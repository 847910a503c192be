//! The spec's confinement reaches the process: readonly rootfs, capabilities,
//! seccomp, user and groups, masked paths.

use protos::oci;

use crate::harness::{prerequisites, spec, Rt};

async fn run_output(rt: &Rt, id: &str, spec: oci::Spec) -> (String, String, i32) {
    rt.run(id, spec).await;
    let out = rt.read_all(id, "", false).await;
    let err = rt.read_all(id, "", true).await;
    let code = rt.wait(id, "").await;
    rt.remove(id).await.unwrap();
    (out, err, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_refuses_writes_and_masked_paths_are_empty() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let mut s = spec(
        &rt.rootfs("ro"),
        &["sh", "-c", "touch /x; echo rc=$?; wc -c < /proc/timer_list; touch /dev/shm/ok && echo shm-ok"],
    );
    s.Root.as_mut().unwrap().Readonly = true;
    let (out, err, code) = run_output(&rt, "ro", s).await;
    assert_eq!(out, "rc=1\n0\nshm-ok\n", "stderr: {err}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_capability_is_absent_from_cap_eff() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let mut s = spec(&rt.rootfs("caps"), &["sh", "-c", "grep CapEff /proc/self/status"]);
    let caps = s.Process.as_mut().unwrap().Capabilities.as_mut().unwrap();
    for set in [&mut caps.Bounding, &mut caps.Effective, &mut caps.Permitted] {
        set.retain(|c| c != "CAP_NET_RAW");
    }
    // runc's default spec asks for ambient caps without inheritable ones; the
    // kernel cannot raise those, and like runc and crun we still start.
    caps.Ambient = vec!["CAP_KILL".into()];
    let (out, err, _) = run_output(&rt, "caps", s).await;
    let hex = out.trim().strip_prefix("CapEff:").unwrap_or_else(|| panic!("{out:?} {err}")).trim();
    let eff = u64::from_str_radix(hex, 16).unwrap();
    assert_eq!(eff & (1 << 13), 0, "CAP_NET_RAW still effective: {hex}");
    assert_ne!(eff & 1, 0, "CAP_CHOWN missing: {hex}");
    assert_eq!(eff & (1 << 21), 0, "CAP_SYS_ADMIN must not be granted: {hex}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seccomp_profile_blocking_mkdir_gives_eperm() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let mut s =
        spec(&rt.rootfs("sc"), &["sh", "-c", "mkdir /tmp/d; echo rc=$?; mkdir -p /tmp/e/f 2>&1; ls -d /tmp/e 2>&1"]);
    let blocked = oci::LinuxSyscall {
        Names: vec!["mkdir".into(), "mkdirat".into()],
        Action: "SCMP_ACT_ERRNO".into(),
        ..Default::default()
    };
    s.Linux.as_mut().unwrap().Seccomp = Some(oci::LinuxSeccomp {
        DefaultAction: "SCMP_ACT_ALLOW".into(),
        Syscalls: vec![blocked],
        ..Default::default()
    })
    .into();
    s.Process.as_mut().unwrap().NoNewPrivileges = true;
    let (out, err, _) = run_output(&rt, "sc", s).await;
    assert!(out.starts_with("rc=1\n"), "{out:?}");
    assert!(err.contains("Operation not permitted"), "{err}");

    // An unsupported action is refused at create time, naming it.
    let mut bad = spec(&rt.rootfs("sc2"), &["true"]);
    let notify =
        oci::LinuxSyscall { Names: vec!["mkdir".into()], Action: "SCMP_ACT_NOTIFY".into(), ..Default::default() };
    bad.Linux.as_mut().unwrap().Seccomp = Some(oci::LinuxSeccomp {
        DefaultAction: "SCMP_ACT_ALLOW".into(),
        Syscalls: vec![notify],
        ..Default::default()
    })
    .into();
    let e = rt.create("sc2", bad).await.unwrap_err();
    assert!(format!("{e:?}").contains("SCMP_ACT_NOTIFY"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_additional_groups_are_applied() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let script = "id -u; id -g; id -G; grep CapEff /proc/self/status; ulimit -n; cat /proc/sys/net/ipv4/ip_forward";
    let mut s = spec(&rt.rootfs("user"), &["sh", "-c", script]);
    s.Linux.as_mut().unwrap().Sysctl.insert("net.ipv4.ip_forward".into(), "1".into());
    let p = s.Process.as_mut().unwrap();
    p.Rlimits = vec![oci::POSIXRlimit { Type: "RLIMIT_NOFILE".into(), Hard: 321, Soft: 321, ..Default::default() }];
    p.User = Some(oci::User { UID: 1000, GID: 1000, AdditionalGids: vec![10, 20], ..Default::default() }).into();
    let (out, err, code) = run_output(&rt, "user", s).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "1000");
    let groups: Vec<&str> = lines[2].split_whitespace().collect();
    assert!(groups.contains(&"10") && groups.contains(&"20"), "{groups:?}");
    // Effective caps of a non-root user come from the spec (kept across setuid).
    assert!(lines[3].starts_with("CapEff:"), "{out}");
    assert_eq!(lines[4], "321", "RLIMIT_NOFILE");
    assert_eq!(lines[5], "1", "sysctl in the container's network namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cgroup_rules_apply_in_order() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let mut s = spec(
        &rt.rootfs("dev"),
        &["sh", "-c", "echo x > /dev/null && echo null-ok; test -c /dev/zero && { head -c1 /dev/zero >/dev/null 2>&1 || echo zero-denied; }"],
    );
    let rule = |allow: bool, t: &str, major: i64, minor: i64| oci::LinuxDeviceCgroup {
        Allow: allow,
        Type: t.into(),
        Major: major,
        Minor: minor,
        Access: "rwm".into(),
        ..Default::default()
    };
    let res = s.Linux.as_mut().unwrap().Resources.mut_or_insert_default();
    res.Devices = vec![rule(false, "a", -1, -1), rule(true, "c", 1, 3)];
    let (out, err, _) = run_output(&rt, "dev", s).await;
    assert_eq!(out, "null-ok\nzero-denied\n", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespace_with_id_maps_applies_to_init_and_exec() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    // No sandbox: the container gets its own ipc/uts, owned by its user namespace.
    let mut s = spec(&rt.rootfs("userns"), &["sh", "-c", "cat /proc/self/uid_map; id -u; sleep 1000"]);
    let linux = s.Linux.as_mut().unwrap();
    linux.Namespaces.push(oci::LinuxNamespace { Type: "user".into(), ..Default::default() });
    let map = oci::LinuxIDMapping { ContainerID: 0, HostID: 100000, Size: 65536, ..Default::default() };
    linux.UIDMappings = vec![map.clone()];
    linux.GIDMappings = vec![map];
    rt.run("userns", s).await;
    let mut out = String::new();
    while out.lines().count() < 2 {
        let req = protos::agent::ReadStreamRequest { container_id: "userns".into(), len: 4096, ..Default::default() };
        let chunk = rt.client.read_stdout(crate::harness::ctx(), &req).await.unwrap().data;
        assert!(!chunk.is_empty(), "EOF early: {out:?} {}", rt.agent.log_text());
        out.push_str(&String::from_utf8_lossy(&chunk));
    }
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["0", "100000", "65536", "0"], "{out:?}");
    // The init runs as host uid 100000.
    let cg = rt.cgroup_dir("standalone", "userns", "pids");
    let pid = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap().lines().next().unwrap().to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("100000")), "{status}");

    rt.exec("userns", "e", &["cat", "/proc/self/uid_map"], false).await.unwrap();
    let words: Vec<String> = rt.read_all("userns", "e", false).await.split_whitespace().map(String::from).collect();
    assert_eq!(words, ["0", "100000", "65536"], "exec joins the user namespace");
    assert_eq!(rt.wait("userns", "e").await, 0);
    rt.remove("userns").await.unwrap();

    let mut bad = spec(&rt.rootfs("nomap"), &["true"]);
    bad.Linux.as_mut().unwrap().Namespaces.push(oci::LinuxNamespace { Type: "user".into(), ..Default::default() });
    let e = rt.create("nomap", bad).await.unwrap_err();
    assert!(format!("{e:?}").contains("uidMappings"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_argument_conditions_select_by_value_and_mask() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    // linux32 calls personality(PER_LINUX32 = 8), linux64 personality(PER_LINUX = 0).
    let script = "linux64 true && echo linux64-ok; linux32 true 2>/dev/null || echo linux32-denied";
    let mut s = spec(&rt.rootfs("args"), &["sh", "-c", script]);
    let arg = oci::LinuxSeccompArg {
        Index: 0,
        Value: 0xffff,
        ValueTwo: 8,
        Op: "SCMP_CMP_MASKED_EQ".into(),
        ..Default::default()
    };
    let deny = oci::LinuxSyscall {
        Names: vec!["personality".into()],
        Action: "SCMP_ACT_ERRNO".into(),
        Args: vec![arg],
        ..Default::default()
    };
    s.Linux.as_mut().unwrap().Seccomp =
        Some(oci::LinuxSeccomp { DefaultAction: "SCMP_ACT_ALLOW".into(), Syscalls: vec![deny], ..Default::default() })
            .into();
    let (out, err, _) = run_output(&rt, "args", s).await;
    assert_eq!(out, "linux64-ok\nlinux32-denied\n", "{err}");

    // Default-deny with an allow list keyed on an argument (Docker's style):
    // personality(0) allowed, anything else gets the default errno.
    let script = "linux64 true && echo linux64-ok; linux32 true 2>/dev/null || echo linux32-denied";
    let mut s = spec(&rt.rootfs("args2"), &["sh", "-c", script]);
    let eq0 = oci::LinuxSeccompArg { Index: 0, Value: 0, Op: "SCMP_CMP_EQ".into(), ..Default::default() };
    let allow_p = oci::LinuxSyscall {
        Names: vec!["personality".into()],
        Action: "SCMP_ACT_ALLOW".into(),
        Args: vec![eq0],
        ..Default::default()
    };
    // The syscalls busybox sh, linux32/64 and true need.
    let allow_rest = oci::LinuxSyscall {
        Names: [
            "read",
            "write",
            "openat",
            "open",
            "close",
            "fstat",
            "newfstatat",
            "stat",
            "lstat",
            "mmap",
            "munmap",
            "mprotect",
            "brk",
            "rt_sigaction",
            "rt_sigprocmask",
            "rt_sigreturn",
            "ioctl",
            "access",
            "execve",
            "exit",
            "exit_group",
            "wait4",
            "clone",
            "clone3",
            "fork",
            "vfork",
            "getpid",
            "getppid",
            "getuid",
            "geteuid",
            "getgid",
            "getegid",
            "fcntl",
            "dup2",
            "dup3",
            "pipe",
            "pipe2",
            "arch_prctl",
            "set_tid_address",
            "set_robust_list",
            "prlimit64",
            "getrandom",
            "uname",
            "getcwd",
            "chdir",
            "lseek",
            "readlink",
            "sigaltstack",
            "futex",
            "getpgrp",
            "setpgid",
            "getpgid",
            "rseq",
            "statx",
            "faccessat",
            "faccessat2",
            "poll",
            "ppoll",
            "pread64",
            "writev",
            "readv",
            "kill",
            "tgkill",
            "gettid",
            "sysinfo",
            "getdents64",
            "umask",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        Action: "SCMP_ACT_ALLOW".into(),
        ..Default::default()
    };
    s.Linux.as_mut().unwrap().Seccomp = Some(oci::LinuxSeccomp {
        DefaultAction: "SCMP_ACT_ERRNO".into(),
        Syscalls: vec![allow_p, allow_rest],
        ..Default::default()
    })
    .into();
    s.Process.as_mut().unwrap().NoNewPrivileges = true;
    let (out, err, _) = run_output(&rt, "args2", s).await;
    assert_eq!(out, "linux64-ok\nlinux32-denied\n", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_specs_are_refused_or_contained() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    // A mount destination climbing out of the rootfs lands inside it.
    let escape = format!("cvm-escape-{}", std::process::id());
    let root = rt.rootfs("esc");
    let mut s = spec(&root, &["sh", "-c", &format!("test -d /tmp/{escape} && echo inside")]);
    let dest = format!("/../../../../tmp/{escape}");
    s.Mounts.push(oci::Mount {
        destination: dest,
        type_: "tmpfs".into(),
        source: "tmpfs".into(),
        ..Default::default()
    });
    let (out, err, _) = run_output(&rt, "esc", s).await;
    assert_eq!(out, "inside\n", "{err}");
    assert!(!std::path::Path::new("/tmp").join(&escape).exists(), "mount target created on the host");

    // A namespace path that is not a namespace.
    let mut s = spec(&rt.rootfs("ns"), &["true"]);
    s.Linux.as_mut().unwrap().Namespaces.push(oci::LinuxNamespace {
        Type: "cgroup".into(),
        Path: "/etc/hostname".into(),
        ..Default::default()
    });
    let e = rt.create("ns", s).await.unwrap_err();
    let e = format!("{e:?}");
    assert!(e.contains("INVALID_ARGUMENT") && e.contains("/etc/hostname is not a namespace file"), "{e}");

    // No args, no rootfs, the host's root as rootfs, bad signals.
    let mut s = spec(&rt.rootfs("noargs"), &[]);
    s.Process.as_mut().unwrap().Args.clear();
    assert!(format!("{:?}", rt.create("noargs", s).await.unwrap_err()).contains("INVALID_ARGUMENT"));
    let s = spec(std::path::Path::new("/"), &["true"]);
    assert!(format!("{:?}", rt.create("hostroot", s).await.unwrap_err()).contains("not a usable rootfs"));
    rt.run("sig", spec(&rt.rootfs("sig"), &["sleep", "1000"])).await;
    for bad in [0, 65, 1000] {
        let e = rt.signal("sig", "", bad).await.unwrap_err();
        assert!(format!("{e:?}").contains("INVALID_ARGUMENT"), "signal {bad}: {e:?}");
    }
    let e = rt.signal("sig", "no-such-exec", libc::SIGTERM).await.unwrap_err();
    assert!(format!("{e:?}").contains("NOT_FOUND"), "{e:?}");
    rt.remove("sig").await.unwrap();
}
