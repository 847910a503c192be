//! CVE-2019-5736 class: a container process must not reach the agent binary
//! through /proc/<pid>/exe of a process the agent is spawning into its PID
//! namespace. Container inits run from a sealed memfd copy of the agent and
//! are non-dumpable until the workload's exec.
//!
//! While an init still holds the full capability set, the kernel's ptrace
//! rule (the prober's permitted capabilities must cover the target's) keeps a
//! container out of it anyway; the open window is after the init dropped to
//! the workload's capabilities and before its execve. Dumpability closes that
//! window, the seals make whatever is reached through it immutable.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protos::agent::CreateContainerRequest;

use crate::harness::{ctx, prerequisites, spec, Rt};

const MEMFD_LINK: &str = "/memfd:cvm-container-init (deleted)";
const SEALS: i32 = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

fn shared(rt: &Rt, id: &str, args: &[&str]) -> CreateContainerRequest {
    CreateContainerRequest {
        container_id: id.into(),
        exec_id: id.into(),
        sandbox_pidns: true,
        OCI: Some(spec(&rt.rootfs(id), args)).into(),
        ..Default::default()
    }
}

/// The only process in a container's (or the namespace holder's) cgroup
/// (the init's intermediate parent may still be on its way out).
fn only_pid(rt: &Rt, id: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = std::fs::read_to_string(rt.cgroup_dir("sb", id, "pids").join("cgroup.procs")).unwrap();
        let pids: Vec<i32> = procs.lines().map(|l| l.parse().unwrap()).collect();
        if pids.len() == 1 {
            return pids[0];
        }
        assert!(Instant::now() < deadline, "{id}: {pids:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pid of `host_pid` in the innermost PID namespace (NSpid's last field).
fn ns_pid(host_pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap();
    line.split_whitespace().last().unwrap().parse().unwrap()
}

fn seals(fd: i32) -> i32 {
    // SAFETY: integer fcntl on an open fd.
    unsafe { libc::fcntl(fd, libc::F_GET_SEALS) }
}

/// A duplicate of the agent's own memfd descriptor (read-write, as
/// memfd_create made it), through pidfd_getfd.
fn agent_memfd(agent_pid: i32) -> OwnedFd {
    let dir = PathBuf::from(format!("/proc/{agent_pid}/fd"));
    let fds: Vec<i32> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == Path::new(MEMFD_LINK)))
        .map(|e| e.file_name().to_string_lossy().parse().unwrap())
        .collect();
    assert_eq!(fds.len(), 1, "the agent holds exactly one sealed copy: {fds:?}");
    // SAFETY: plain syscalls; results checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, agent_pid, 0) } as i32;
    assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: as above.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fds[0], 0) } as i32;
    assert!(fd >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Run inside a container of the pod: every process whose cmdline is a
/// container init (found the way an attacker would, cmdline needs no ptrace
/// access) is probed through its /proc entries; `$1` is a control pid.
const PROBE: &str = r#"
probe() {
  d=/proc/$1
  echo "pid $1"
  if l=$(readlink $d/exe); then echo "$1 exe-link $l"; fi
  if ( : >> $d/exe ) 2>/tmp/err; then echo "$1 exe-writable"; else echo "$1 exe-write-refused $(cat /tmp/err)"; fi
  if cat $d/environ >/dev/null 2>&1; then echo "$1 environ-readable"; fi
  if ( exec 3<$d/mem ) 2>/dev/null; then echo "$1 mem-openable"; fi
}
for d in /proc/[0-9]*; do
  [ "$(tr '\0' ' ' < $d/cmdline 2>/dev/null)" = "cvm-container-init " ] && probe ${d#/proc/}
done
echo control
probe $1
"#;

async fn probe_from(rt: &Rt, id: &str, exec_id: &str, control: i32) -> String {
    let control = control.to_string();
    rt.exec(id, exec_id, &["sh", "-c", PROBE, "probe", &control], false).await.unwrap();
    let out = rt.read_all(id, exec_id, false).await;
    assert_eq!(rt.wait(id, exec_id).await, 0, "probe script failed: {out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_init_runs_sealed_and_is_closed_to_the_container() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", true).await;
    rt.client.create_container(ctx(), &shared(&rt, "a", &["sleep", "1000"])).await.unwrap();
    rt.start_c("a").await.unwrap();
    // `b` is created, not started: its init waits inside the pod's PID
    // namespace, where `a` can see it.
    rt.client.create_container(ctx(), &shared(&rt, "b", &["sh", "-c", "echo b-runs; exec sleep 2000"])).await.unwrap();
    let b_init = only_pid(&rt, "b");
    let pause = only_pid(&rt, ".pause");
    let a_sleep = only_pid(&rt, "a");

    // Host side (root): both the waiting init and the namespace holder run
    // from the sealed memfd, not from the agent binary on disk.
    for pid in [b_init, pause] {
        let link = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(link, Path::new(MEMFD_LINK), "pid {pid}");
    }
    let exe = File::open(format!("/proc/{b_init}/exe")).unwrap();
    assert_eq!(seals(exe.as_raw_fd()), SEALS, "exactly SEAL|SHRINK|GROW|WRITE");
    // Opening an executing file for write fails with ETXTBSY before any seal
    // is looked at; the seal itself is proven on a writable description below.
    let w = std::fs::OpenOptions::new().write(true).open(format!("/proc/{b_init}/exe")).unwrap_err();
    assert_eq!(w.raw_os_error(), Some(libc::ETXTBSY), "{w}");
    // The agent's own memfd descriptor is read-write, and it is the very file
    // the init executes: even root writing through it gets EPERM (F_SEAL_WRITE),
    // and cannot shrink or grow it.
    let own = File::from(agent_memfd(rt.agent.child.id() as i32));
    // SAFETY: integer fcntl.
    assert_eq!(unsafe { libc::fcntl(own.as_raw_fd(), libc::F_GETFL) } & libc::O_ACCMODE, libc::O_RDWR);
    let (m_own, m_exe) = (own.metadata().unwrap(), exe.metadata().unwrap());
    assert_eq!((m_own.dev(), m_own.ino()), (m_exe.dev(), m_exe.ino()), "the init executes the agent's memfd");
    let agent_size = std::fs::metadata(format!("/proc/{}/exe", rt.agent.child.id())).unwrap().len();
    assert_eq!(m_own.len(), agent_size, "a full copy of the agent binary");
    let e = std::os::unix::fs::FileExt::write_at(&own, b"\x7fELF", 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "write: {e}");
    assert_eq!(own.set_len(0).unwrap_err().raw_os_error(), Some(libc::EPERM), "shrink");
    assert_eq!(own.set_len(agent_size + 4096).unwrap_err().raw_os_error(), Some(libc::EPERM), "grow");
    assert_eq!(seals(own.as_raw_fd()), SEALS);

    // Container side (root in `a`, default capabilities, same uid as the
    // inits): the inits are found by cmdline, but their exe link, environ and
    // mem are closed, and a write open is refused for permission, not merely
    // because the file is busy (the full-capability inits are also covered by
    // the capability rule; see the exec window test for dumpability alone).
    // The control (a's own, dumpable workload) shows the same probes do
    // succeed on a dumpable process.
    let (b_ns, pause_ns, a_ns) = (ns_pid(b_init), ns_pid(pause), ns_pid(a_sleep));
    assert_eq!(pause_ns, 1, "the namespace holder is PID 1 of the pod");
    let out = probe_from(&rt, "a", "probe1", a_ns).await;
    let (inits, control) = out.split_once("control\n").unwrap();
    for p in [pause_ns, b_ns] {
        assert!(inits.contains(&format!("pid {p}\n")), "init {p} not found by cmdline: {out}");
        assert!(inits.contains(&format!("{p} exe-write-refused ")), "{out}");
    }
    assert!(!inits.contains("exe-link"), "an init's exe link is readable from the container: {out}");
    assert!(!inits.contains("exe-writable"), "{out}");
    assert!(!inits.contains("Text file busy"), "refused only as busy, not for permission: {out}");
    assert_eq!(inits.matches("Permission denied").count(), 2, "{out}");
    assert!(!inits.contains("environ-readable"), "{out}");
    assert!(!inits.contains("mem-openable"), "{out}");
    assert!(control.contains(&format!("{a_ns} exe-link /bin/busybox")), "control: {out}");
    assert!(control.contains(&format!("{a_ns} environ-readable")), "control: {out}");

    // After StartContainer the workload runs normally, and its exec made it
    // dumpable again: the container now sees b's process like any other.
    rt.start_c("b").await.unwrap();
    let req = protos::agent::ReadStreamRequest { container_id: "b".into(), len: 4096, ..Default::default() };
    let first = rt.client.read_stdout(ctx(), &req).await.unwrap().data;
    assert_eq!(String::from_utf8_lossy(&first), "b-runs\n");
    let b_sleep = only_pid(&rt, "b");
    assert_eq!(b_sleep, b_init, "the init became the workload");
    let out = probe_from(&rt, "a", "probe2", ns_pid(b_sleep)).await;
    let (_, control) = out.split_once("control\n").unwrap();
    assert!(control.contains(&format!("{b_ns} exe-link /bin/busybox")), "after exec: {out}");
    for id in ["a", "b"] {
        rt.signal(id, "", libc::SIGKILL).await.unwrap();
        assert_eq!(rt.wait(id, "").await, 137);
        rt.remove(id).await.unwrap();
    }
}

/// Scans the container's PID namespace for container inits and reads their
/// exe link; on a readable one (other than the workload it became), tries to
/// open it for write.
const SCANNER: &str = r#"
trap 'echo scan-done; exit 0' TERM
echo scanning
while :; do
  for d in /proc/[0-9]*; do
    # read fails at the end of a cmdline (no newline) but keeps what it read
    c=; read -r c < $d/cmdline 2>/dev/null
    case "$c" in cvm-container-init*) ;; *) continue;; esac
    if l=$(readlink $d/exe); then
      # /bin/busybox: the init exec'd `true` after its cmdline was read.
      [ "$l" = /bin/busybox ] && continue
      echo "${d#/proc/} exe-link $l"
      ( : >> $d/exe ) 2>&1 | sed 's/^/write: /'
    else
      echo "${d#/proc/} exe-denied"
    fi
  done
done
"#;

/// The window observed before the fix: an ExecProcess init that already
/// dropped to the workload's capabilities (the same as the scanning
/// container's) and has not exec'd yet. A PATH of 40,000 missing directories
/// before /bin holds the init in its executable lookup, after the drop, for
/// tens of milliseconds per exec. Without PR_SET_DUMPABLE the scanner reads
/// the agent binary's path there and a write open fails only with ETXTBSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_init_stays_closed_to_the_container_until_its_exec() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    rt.run("a", spec(&rt.rootfs("a"), &["sh", "-c", SCANNER])).await;
    let req = protos::agent::ReadStreamRequest { container_id: "a".into(), len: 4096, ..Default::default() };
    let first = rt.client.read_stdout(ctx(), &req).await.unwrap().data;
    assert_eq!(String::from_utf8_lossy(&first), "scanning\n");
    // One env string may hold at most 128 KiB (MAX_ARG_STRLEN).
    let slow_path = format!("PATH={}/bin", "/x:".repeat(40_000));
    for i in 0..5 {
        let exec_id = format!("e{i}");
        let mut p = crate::harness::process(&["true"]);
        p.Env = vec![slow_path.clone()];
        let req = protos::agent::ExecProcessRequest {
            container_id: "a".into(),
            exec_id: exec_id.clone(),
            process: Some(p).into(),
            ..Default::default()
        };
        rt.client.exec_process(ctx(), &req).await.unwrap();
        assert_eq!(rt.wait("a", &exec_id).await, 0);
    }
    rt.signal("a", "", libc::SIGTERM).await.unwrap();
    let out = rt.read_all("a", "", false).await;
    assert_eq!(rt.wait("a", "").await, 0, "{out}");
    assert!(out.ends_with("scan-done\n"), "{out}");
    let denied = out.matches(" exe-denied").count();
    assert!(denied > 0, "the scanner never saw an exec init: {out}");
    let reached: Vec<&str> = out.lines().filter(|l| l.contains("exe-link") || l.starts_with("write:")).collect();
    assert!(reached.is_empty(), "an exec init was reachable from the container: {reached:?}");
    rt.remove("a").await.unwrap();
}

/// Prints the cost of the sealed copy: its size and time (from the agent's
/// log), the first spawn (CreateSandbox: copy + spawn) and later spawns.
/// `cargo test ... -- --ignored --nocapture spawn_cost`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn spawn_cost() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    let t = Instant::now();
    rt.create_sandbox("sb", true).await;
    let first = t.elapsed();
    rt.run("a", spec(&rt.rootfs("a"), &["sleep", "1000"])).await;
    let mut later = Vec::new();
    for i in 0..20 {
        let id = format!("e{i}");
        let t = Instant::now();
        rt.exec("a", &id, &["true"], false).await.unwrap();
        later.push(t.elapsed());
        assert_eq!(rt.wait("a", &id).await, 0);
    }
    later.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let copy = rt.agent.log_text().lines().find(|l| l.contains("sealed memfd copy")).map(String::from);
    eprintln!("agent log: {copy:?}");
    eprintln!(
        "first spawn (CreateSandbox) {:.2} ms; ExecProcess spawns: median {:.2} ms, min {:.2} ms, max {:.2} ms",
        ms(first),
        ms(later[later.len() / 2]),
        ms(later[0]),
        ms(later[later.len() - 1])
    );
    rt.signal("a", "", libc::SIGKILL).await.unwrap();
    rt.wait("a", "").await;
    rt.remove("a").await.unwrap();
}
