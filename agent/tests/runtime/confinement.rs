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
    let mut s = spec(&rt.rootfs("user"), &["sh", "-c", "id -u; id -g; id -G; grep CapEff /proc/self/status"]);
    let p = s.Process.as_mut().unwrap();
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
}
