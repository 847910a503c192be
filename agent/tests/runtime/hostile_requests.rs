//! Requests a hostile host may send that the runtime itself refuses, whatever
//! a policy allows: global sysctls, namespace paths into the agent's own
//! namespaces, storages outside the storage base or through symlinks, and
//! storages left behind by a CreateContainer that failed.

use std::path::{Path, PathBuf};

use protos::agent::{CreateContainerRequest, Storage};
use protos::oci;

use crate::harness::{ctx, prerequisites, spec, Rt};

/// Asserts a ttrpc status with `code` whose message contains every needle.
fn assert_refused(r: ttrpc::Result<()>, code: ttrpc::Code, needles: &[&str]) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), code, "{:?}", s.message);
            for n in needles {
                assert!(s.message.contains(n), "{n:?} not in {:?}", s.message);
            }
        }
        other => panic!("expected {code:?} naming {needles:?}, got {other:?}"),
    }
}

/// Mount points (field 5 of /proc/self/mountinfo) at or below `prefix`.
fn mounts_under(prefix: &Path) -> Vec<String> {
    let p = prefix.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &p || m.starts_with(&format!("{p}/")))
        .collect()
}

fn ns(t: &str, path: &str) -> oci::LinuxNamespace {
    oci::LinuxNamespace { Type: t.into(), Path: path.into(), ..Default::default() }
}

fn with_sysctl(mut s: oci::Spec, kv: &[(&str, &str)]) -> oci::Spec {
    let l = s.Linux.as_mut().unwrap();
    for (k, v) in kv {
        l.Sysctl.insert(k.to_string(), v.to_string());
    }
    s
}

fn without_ns(mut s: oci::Spec, kind: &str) -> oci::Spec {
    s.Linux.as_mut().unwrap().Namespaces.retain(|n| n.Type != kind);
    s
}

/// Writes a sysctl file's old value back on drop, so a regression of the
/// refusal under test cannot leave the test machine's kernel changed.
struct Restore(&'static str, String);

impl Restore {
    fn save(path: &'static str) -> Restore {
        Restore(path, std::fs::read_to_string(path).unwrap())
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if std::fs::read_to_string(self.0).ok().as_deref() != Some(self.1.as_str()) {
            let _ = std::fs::write(self.0, &self.1);
        }
    }
}

async fn run_output(rt: &Rt, id: &str, s: oci::Spec) -> String {
    rt.run(id, s).await;
    let out = rt.read_all(id, "", false).await;
    let err = rt.read_all(id, "", true).await;
    assert_eq!(rt.wait(id, "").await, 0, "{id}: {err}");
    rt.remove(id).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_sysctls_are_refused_and_namespaced_ones_apply_inside_only() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let _restore = [
        Restore::save("/proc/sys/kernel/core_pattern"),
        Restore::save("/proc/sys/kernel/shmmax"),
        Restore::save("/proc/sys/net/ipv4/ip_forward"),
    ];
    let s = with_sysctl(spec(&rt.rootfs("c"), &["true"]), &[("kernel.core_pattern", "|/bin/x")]);
    assert_refused(rt.create("c", s).await, ttrpc::Code::INVALID_ARGUMENT, &["kernel.core_pattern", "not namespaced"]);
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(), core_pattern);

    // Names that would steer a /proc/sys path.
    for bad in ["net/../kernel/core_pattern", "net..ipv4", "net.ipv4."] {
        let s = with_sysctl(spec(&rt.rootfs("c"), &["true"]), &[(bad, "1")]);
        assert_refused(rt.create("c", s).await, ttrpc::Code::INVALID_ARGUMENT, &[bad, "invalid name"]);
    }
    // Namespaced sysctls without the container's own namespace.
    let s = with_sysctl(without_ns(spec(&rt.rootfs("c"), &["true"]), "network"), &[("net.ipv4.ip_forward", "1")]);
    assert_refused(rt.create("c", s).await, ttrpc::Code::INVALID_ARGUMENT, &["net.ipv4.ip_forward", "net namespace"]);
    let s = with_sysctl(without_ns(spec(&rt.rootfs("c"), &["true"]), "ipc"), &[("kernel.shmmax", "4096")]);
    assert_refused(rt.create("c", s).await, ttrpc::Code::INVALID_ARGUMENT, &["kernel.shmmax", "ipc namespace"]);
    let s = with_sysctl(without_ns(spec(&rt.rootfs("c"), &["true"]), "uts"), &[("kernel.domainname", "x")]);
    assert_refused(rt.create("c", s).await, ttrpc::Code::INVALID_ARGUMENT, &["kernel.domainname", "uts namespace"]);

    // With their namespaces, they apply inside and nowhere else.
    let shmmax = std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap();
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let want_forward = if forward.trim() == "1" { "0" } else { "1" };
    let s = with_sysctl(
        spec(&rt.rootfs("ok"), &["cat", "/proc/sys/kernel/shmmax", "/proc/sys/net/ipv4/ip_forward"]),
        &[("kernel.shmmax", "12345678"), ("net.ipv4.ip_forward", want_forward)],
    );
    assert_eq!(run_output(&rt, "ok", s).await, format!("12345678\n{want_forward}\n"));
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap(), shmmax);
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(), forward);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_paths_into_the_agents_own_namespaces_are_refused() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let agent = rt.agent.child.id();
    let same = |a: &str, b: &str| std::fs::read_link(a).ok() == std::fs::read_link(b).ok();
    for (ty, proc_name) in
        [("pid", "pid"), ("network", "net"), ("ipc", "ipc"), ("uts", "uts"), ("cgroup", "cgroup"), ("user", "user")]
    {
        let mut paths = vec![format!("/proc/{agent}/ns/{proc_name}"), format!("/proc/self/ns/{proc_name}")];
        // PID 1 shares the agent's namespaces on most test machines.
        if same(&format!("/proc/1/ns/{proc_name}"), &format!("/proc/{agent}/ns/{proc_name}")) {
            paths.push(format!("/proc/1/ns/{proc_name}"));
        }
        for path in paths {
            let mut s = without_ns(spec(&rt.rootfs("c"), &["true"]), ty);
            s.Linux.as_mut().unwrap().Namespaces.push(ns(ty, &path));
            assert_refused(
                rt.create("c", s).await,
                ttrpc::Code::INVALID_ARGUMENT,
                &[&path, &format!("agent's own {proc_name} namespace")],
            );
        }
    }
    // A namespace of another type, and a file that is no namespace at all.
    let mut s = without_ns(spec(&rt.rootfs("c"), &["true"]), "pid");
    s.Linux.as_mut().unwrap().Namespaces.push(ns("pid", &format!("/proc/{agent}/ns/net")));
    assert_refused(rt.create("c", s).await, ttrpc::Code::INVALID_ARGUMENT, &["is not a pid namespace"]);
    let mut s = without_ns(spec(&rt.rootfs("c"), &["true"]), "network");
    s.Linux.as_mut().unwrap().Namespaces.push(ns("network", "/etc/passwd"));
    assert_refused(rt.create("c", s).await, ttrpc::Code::INVALID_ARGUMENT, &["/etc/passwd", "not a namespace file"]);

    // A path into another container's network namespace is joined (by fd).
    rt.run("a", spec(&rt.rootfs("a"), &["sleep", "1000"])).await;
    let procs = rt.cgroup_dir("sb", "a", "pids").join("cgroup.procs");
    let a_pid = std::fs::read_to_string(procs).unwrap().lines().next().unwrap().trim().to_string();
    let a_net = std::fs::read_link(format!("/proc/{a_pid}/ns/net")).unwrap();
    let mut s = without_ns(spec(&rt.rootfs("b"), &["readlink", "/proc/self/ns/net"]), "network");
    s.Linux.as_mut().unwrap().Namespaces.push(ns("network", &format!("/proc/{a_pid}/ns/net")));
    assert_eq!(run_output(&rt, "b", s).await.trim(), a_net.to_str().unwrap());
    rt.remove("a").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kata_namespace_spellings_net_and_mnt_are_accepted() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let agent_net = std::fs::read_link(format!("/proc/{}/ns/net", rt.agent.child.id())).unwrap();
    let mut s = spec(&rt.rootfs("k"), &["readlink", "/proc/self/ns/net"]);
    s.Linux.as_mut().unwrap().Namespaces =
        vec![ns("pid", ""), ns("ipc", ""), ns("uts", ""), ns("mnt", ""), ns("net", "")];
    let out = run_output(&rt, "k", s).await;
    assert!(out.starts_with("net:[") && out.trim() != agent_net.to_str().unwrap(), "{out:?} vs {agent_net:?}");

    let mut s = spec(&rt.rootfs("c"), &["true"]);
    s.Linux.as_mut().unwrap().Namespaces.push(ns("net", ""));
    assert_refused(rt.create("c", s).await, ttrpc::Code::INVALID_ARGUMENT, &["listed twice"]);
    let mut s = spec(&rt.rootfs("c"), &["true"]);
    s.Linux.as_mut().unwrap().Namespaces.push(ns("time", ""));
    assert_refused(rt.create("c", s).await, ttrpc::Code::INVALID_ARGUMENT, &["unknown namespace type", "time"]);
}

fn storage(driver: &str, source: &Path, mount_point: &Path, opts: &[&str]) -> Storage {
    Storage {
        driver: driver.into(),
        source: source.display().to_string(),
        mount_point: mount_point.display().to_string(),
        options: opts.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn request(id: &str, storages: Vec<Storage>, s: oci::Spec) -> CreateContainerRequest {
    CreateContainerRequest {
        container_id: id.into(),
        exec_id: id.into(),
        storages,
        OCI: Some(s).into(),
        ..Default::default()
    }
}

/// A source directory with one file, and a directory outside the base.
fn dirs(rt: &Rt) -> (PathBuf, PathBuf) {
    let src = rt.dir.path().join("src");
    let outside = rt.dir.path().join("outside");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(src.join("file"), "from the storage").unwrap();
    (src, outside)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storages_outside_the_base_or_through_symlinks_are_refused() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let (src, outside) = dirs(&rt);
    let base = rt.storage_base();
    let create = |storages: Vec<Storage>| {
        let req = request("c", storages, spec(&rt.rootfs("c"), &["true"]));
        let client = rt.client.clone();
        async move { client.create_container(ctx(), &req).await.map(drop) }
    };
    let etc_mounts = mounts_under(Path::new("/etc"));
    // The agent's own /etc, and any other place outside the base.
    assert_refused(
        create(vec![storage("bind", &src, Path::new("/etc"), &[])]).await,
        ttrpc::Code::INVALID_ARGUMENT,
        &["\"/etc\"", "not under the storage base"],
    );
    assert_eq!(mounts_under(Path::new("/etc")), etc_mounts, "a storage was mounted on /etc");
    assert_refused(
        create(vec![storage("local", Path::new(""), &outside.join("vol"), &[])]).await,
        ttrpc::Code::INVALID_ARGUMENT,
        &["not under the storage base"],
    );
    assert!(!outside.join("vol").exists());

    // A symlink planted under the base, pointing outside it.
    std::fs::create_dir_all(&base).unwrap();
    std::os::unix::fs::symlink(&outside, base.join("evil")).unwrap();
    for (driver, mp) in [
        ("bind", base.join("evil/vol")),
        ("bind", base.join("evil")),
        ("local", base.join("evil/vol")),
        ("local", base.join("evil/a/b")),
    ] {
        assert_refused(
            create(vec![storage(driver, &src, &mp, &[])]).await,
            ttrpc::Code::INVALID_ARGUMENT,
            &[mp.to_str().unwrap(), "symlink"],
        );
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was created outside the base");
    assert!(mounts_under(&outside).is_empty(), "something was mounted outside the base");
    assert!(mounts_under(&base).is_empty(), "a refused storage stayed mounted");

    // A bind source that is a symlink, or relative.
    std::os::unix::fs::symlink(&src, rt.dir.path().join("src-link")).unwrap();
    assert_refused(
        create(vec![storage("bind", &rt.dir.path().join("src-link"), &base.join("v"), &[])]).await,
        ttrpc::Code::INVALID_ARGUMENT,
        &["src-link", "is a symlink"],
    );
    assert_refused(
        create(vec![storage("bind", Path::new("tmp/src"), &base.join("v"), &[])]).await,
        ttrpc::Code::INVALID_ARGUMENT,
        &["\"tmp/src\"", "not an absolute path"],
    );
    assert!(mounts_under(&base).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_storages_are_mounted_under_the_base_and_gone_after_remove() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let (src, _) = dirs(&rt);
    let base = rt.storage_base();
    let vol = base.join("shared/c/vol");
    let mut s = spec(&rt.rootfs("c"), &["cat", "/data/file"]);
    s.Mounts.push(oci::Mount {
        destination: "/data".into(),
        type_: "bind".into(),
        source: vol.display().to_string(),
        options: vec!["rbind".into(), "ro".into()],
        ..Default::default()
    });
    let req = request("c", vec![storage("bind", &src, &vol, &["ro"])], s);
    rt.client.create_container(ctx(), &req).await.expect("CreateContainer");
    assert_eq!(mounts_under(&vol), vec![vol.display().to_string()]);
    assert!(std::fs::write(vol.join("new"), "x").is_err(), "read-only storage accepted a write");
    rt.start_c("c").await.unwrap();
    assert_eq!(rt.read_all("c", "", false).await, "from the storage");
    assert_eq!(rt.wait("c", "").await, 0);
    rt.remove("c").await.unwrap();
    assert!(mounts_under(&base).is_empty(), "storage still mounted after RemoveContainer: {:?}", mounts_under(&base));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storages_of_a_create_container_that_fails_late_are_undone() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    let (src, _) = dirs(&rt);
    let base = rt.storage_base();
    let storages = || vec![storage("bind", &src, &base.join("a"), &[]), storage("bind", &src, &base.join("b/c"), &[])];

    // The container init fails after its rootfs is set up.
    let mut s = spec(&rt.rootfs("c"), &["true"]);
    s.Process.as_mut().unwrap().Rlimits.push(oci::POSIXRlimit { Type: "RLIMIT_BOGUS".into(), ..Default::default() });
    let e = rt.client.create_container(ctx(), &request("c", storages(), s)).await.map(drop);
    assert_refused(e, ttrpc::Code::INTERNAL, &["RLIMIT_BOGUS"]);
    assert!(mounts_under(&base).is_empty(), "storages left mounted: {:?}", mounts_under(&base));

    // A sysctl that passes the checks but that the kernel does not have.
    let s = with_sysctl(spec(&rt.rootfs("c"), &["true"]), &[("net.ipv4.no_such_knob", "1")]);
    let e = rt.client.create_container(ctx(), &request("c", storages(), s)).await.map(drop);
    assert_refused(e, ttrpc::Code::INTERNAL, &["net.ipv4.no_such_knob"]);
    assert!(mounts_under(&base).is_empty(), "storages left mounted: {:?}", mounts_under(&base));

    // A later storage of the same request is refused: the earlier ones go.
    let mut bad = storages();
    bad.push(storage("bind", &src, Path::new("/etc"), &[]));
    let e = rt.client.create_container(ctx(), &request("c", bad, spec(&rt.rootfs("c"), &["true"]))).await.map(drop);
    assert_refused(e, ttrpc::Code::INVALID_ARGUMENT, &["/etc"]);
    assert!(mounts_under(&base).is_empty(), "storages left mounted: {:?}", mounts_under(&base));

    // The id is free again and a good request still works.
    let req = request("c", storages(), spec(&rt.rootfs("c"), &["true"]));
    rt.client.create_container(ctx(), &req).await.expect("CreateContainer after failures");
    assert_eq!(mounts_under(&base).len(), 2);
    rt.remove("c").await.unwrap();
    assert!(mounts_under(&base).is_empty());
}

/// A root exec with no capabilities field, into a tenant container that runs
/// as uid 1000 without capabilities: it gets none (not every capability), so
/// it cannot read the tenant's environment through /proc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_exec_gets_no_more_capabilities_than_its_container() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", true).await;
    let mut s = spec(&rt.rootfs("tenant"), &["sh", "-c", "export SECRET=s3cr3t; exec sleep 1000"]);
    let p = s.Process.as_mut().unwrap();
    p.User = Some(oci::User { UID: 1000, GID: 1000, ..Default::default() }).into();
    p.Capabilities = Some(oci::LinuxCapabilities::default()).into();
    rt.run("tenant", s).await;
    let mut exec = crate::harness::process(&[
        "sh",
        "-c",
        "grep CapEff /proc/self/status; cat /proc/1/environ >/dev/null 2>&1 && echo environ=readable || echo environ=denied",
    ]);
    exec.User = Some(oci::User { UID: 0, GID: 0, ..Default::default() }).into();
    exec.Capabilities = protobuf::MessageField::none();
    let req = protos::agent::ExecProcessRequest {
        container_id: "tenant".into(),
        exec_id: "peek".into(),
        process: Some(exec).into(),
        ..Default::default()
    };
    rt.client.exec_process(ctx(), &req).await.unwrap();
    let out = rt.read_all("tenant", "peek", false).await;
    assert_eq!(rt.wait("tenant", "peek").await, 0);
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("environ=denied"), "{out}");
    rt.signal("tenant", "", libc::SIGKILL).await.unwrap();
    rt.wait("tenant", "").await;
    rt.remove("tenant").await.unwrap();
}
