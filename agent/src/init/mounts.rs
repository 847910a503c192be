//! The boot mounts PID 1 makes before anything else: proc, sysfs, devtmpfs,
//! devpts, /dev/shm, /run and the cgroup hierarchy, chosen as kata does
//! (`config::cgroup_v2`): cgroup2 with `nsdelegate`, or a read-only tmpfs
//! with one v1 hierarchy per enabled controller kata knows, and none at all
//! when the kernel has no devices controller (kata's rule: containers without
//! device confinement are worse than containers without cgroups).
//!
//! The table is data, applied through the [`MountOps`] seam so its order and
//! flags are unit-tested without root. A mount point that is already mounted is
//! left alone; any other failure is an error naming the target.

use std::ffi::CString;
use std::io;

/// One mount, in the order the table lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: u64,
    pub data: &'static str,
}

const NOSUID: u64 = libc::MS_NOSUID;
const NODEV: u64 = libc::MS_NODEV;
const NOEXEC: u64 = libc::MS_NOEXEC;
const RELATIME: u64 = libc::MS_RELATIME;

/// Pseudo filesystems, parents before children.
pub const BOOT_MOUNTS: &[MountSpec] = &[
    MountSpec { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID | NODEV | NOEXEC, data: "" },
    MountSpec { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID | NODEV | NOEXEC, data: "" },
    MountSpec { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: NOSUID, data: "mode=0755" },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID | NOEXEC,
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
    },
    MountSpec { source: "shm", target: "/dev/shm", fstype: "tmpfs", flags: NOSUID | NODEV, data: "mode=1777" },
    MountSpec { source: "tmpfs", target: "/run", fstype: "tmpfs", flags: NOSUID | NODEV, data: "mode=0755" },
];

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup v2 mount (default).
pub const CGROUP2: MountSpec = MountSpec {
    source: "cgroup2",
    target: CGROUP_ROOT,
    fstype: "cgroup2",
    flags: NOSUID | NODEV | NOEXEC | RELATIME,
    data: "nsdelegate",
};

/// The v1 controllers kata's agent mounts (others are left unmounted).
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "blkio",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
];

/// The v1 tmpfs made read-only once the hierarchies are mounted.
pub const CGROUP1_ROOT_RO: MountSpec = MountSpec {
    source: "tmpfs",
    target: CGROUP_ROOT,
    fstype: "tmpfs",
    flags: libc::MS_REMOUNT | libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
    data: "mode=0755",
};

/// The tmpfs that holds one directory per v1 controller.
pub const CGROUP1_ROOT: MountSpec = MountSpec {
    source: "tmpfs",
    target: CGROUP_ROOT,
    fstype: "tmpfs",
    flags: NOSUID | NODEV | NOEXEC,
    data: "mode=0755",
};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create mount point {target}: {source}")]
    MountPoint { target: String, source: io::Error },
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount { fstype: String, target: String, source: io::Error },
    #[error("cannot read the cgroup v1 controllers from /proc/cgroups: {0}")]
    Controllers(io::Error),
}

/// What the mount table needs from the kernel (a seam for tests).
pub trait MountOps {
    fn create_dir_all(&mut self, path: &str) -> io::Result<()>;
    fn mount(&mut self, spec: &MountSpec, target: &str, data: &str) -> io::Result<()>;
}

/// The real kernel.
pub struct Kernel;

impl MountOps for Kernel {
    fn create_dir_all(&mut self, path: &str) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mount(&mut self, spec: &MountSpec, target: &str, data: &str) -> io::Result<()> {
        let c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
        let (source, target, fstype, data) = (c(spec.source)?, c(target)?, c(spec.fstype)?, c(data)?);
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let rc =
            unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), spec.flags, data.as_ptr().cast()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Mounts `spec` at `target`; EBUSY (already mounted there) counts as done.
fn apply(ops: &mut impl MountOps, spec: &MountSpec, target: &str, data: &str) -> Result<(), MountError> {
    ops.create_dir_all(target).map_err(|source| MountError::MountPoint { target: target.to_owned(), source })?;
    match ops.mount(spec, target, data) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(source) => Err(MountError::Mount { fstype: spec.fstype.to_owned(), target: target.to_owned(), source }),
    }
}

pub fn apply_table(ops: &mut impl MountOps, table: &[MountSpec]) -> Result<(), MountError> {
    table.iter().try_for_each(|m| apply(ops, m, m.target, m.data))
}

/// Mounts the cgroup hierarchy: cgroup2, or (v1) a tmpfs with one hierarchy
/// per enabled controller named in `proc_cgroups` (the text of /proc/cgroups),
/// then remounted read-only. Returns whether anything was mounted (v1 without
/// a devices controller mounts nothing, as kata does).
pub fn apply_cgroups(ops: &mut impl MountOps, v1: bool, proc_cgroups: &str) -> Result<bool, MountError> {
    if !v1 {
        apply(ops, &CGROUP2, CGROUP2.target, CGROUP2.data)?;
        return Ok(true);
    }
    let controllers: Vec<String> =
        v1_controllers(proc_cgroups).into_iter().filter(|c| V1_CONTROLLERS.contains(&c.as_str())).collect();
    if !controllers.iter().any(|c| c == "devices") {
        return Ok(false);
    }
    apply(ops, &CGROUP1_ROOT, CGROUP1_ROOT.target, CGROUP1_ROOT.data)?;
    for controller in &controllers {
        let spec = MountSpec {
            source: "cgroup",
            target: "",
            fstype: "cgroup",
            flags: NOSUID | NODEV | NOEXEC | RELATIME,
            data: "",
        };
        apply(ops, &spec, &format!("{CGROUP_ROOT}/{controller}"), controller)?;
    }
    apply(ops, &CGROUP1_ROOT_RO, CGROUP1_ROOT_RO.target, CGROUP1_ROOT_RO.data)?;
    Ok(true)
}

/// Enabled controllers from /proc/cgroups (`name hierarchy num_cgroups enabled`).
/// Names are kept only if they are plain identifiers, so a odd line cannot
/// become a path; lines with non-numeric fields are skipped (as kata does).
pub fn v1_controllers(proc_cgroups: &str) -> Vec<String> {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [name, hierarchy, num_cgroups, enabled] = f.as_slice() else { return None };
            let numeric = [hierarchy, num_cgroups, enabled].iter().all(|n| n.parse::<u64>().is_ok());
            (numeric && *enabled != "0").then_some(*name)
        })
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(str::to_owned)
        .collect()
}

/// proc, sysfs, devtmpfs, devpts, /dev/shm, /run.
pub fn mount_pseudo_filesystems() -> Result<(), MountError> {
    apply_table(&mut Kernel, BOOT_MOUNTS)
}

pub fn mount_cgroups(v1: bool) -> Result<(), MountError> {
    let proc_cgroups =
        if v1 { std::fs::read_to_string("/proc/cgroups").map_err(MountError::Controllers)? } else { String::new() };
    if !apply_cgroups(&mut Kernel, v1, &proc_cgroups)? {
        tracing::warn!(
            "init: the kernel has no devices cgroup controller: no cgroup v1 hierarchy mounted (kata's rule)"
        );
        return Ok(());
    }
    if v1 {
        // kata turns on hierarchical memory accounting (implicit in v2).
        let knob = format!("{CGROUP_ROOT}/memory/memory.use_hierarchy");
        if let Err(err) = std::fs::write(&knob, "1") {
            tracing::warn!(%err, knob, "init: cannot enable memory.use_hierarchy");
        }
    }
    Ok(())
}

/// Makes sure fds 0, 1 and 2 are open. The kernel opens /dev/console for init
/// when the image has that node; otherwise open it now that devtmpfs is up, or
/// /dev/null as a last resort so writes never hit an unrelated file.
pub fn ensure_console() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD on a plain integer fd has no memory effects.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        for p in [c"/dev/console", c"/dev/null"] {
            // SAFETY: valid C string; the returned fd is owned by this process.
            let opened = unsafe { libc::open(p.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
            if opened < 0 {
                continue;
            }
            if opened != fd {
                // SAFETY: both fds are valid; dup2 onto a closed fd.
                unsafe {
                    libc::dup2(opened, fd);
                    libc::close(opened);
                }
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        busy: Vec<&'static str>,
        fail: Option<&'static str>,
    }

    impl MountOps for Recorder {
        fn create_dir_all(&mut self, path: &str) -> io::Result<()> {
            self.calls.push(format!("mkdir {path}"));
            Ok(())
        }
        fn mount(&mut self, spec: &MountSpec, target: &str, data: &str) -> io::Result<()> {
            if self.busy.contains(&spec.target) {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            if self.fail == Some(spec.fstype) {
                return Err(io::Error::from_raw_os_error(libc::ENODEV));
            }
            self.calls.push(format!("mount {} {target} {data}", spec.fstype));
            Ok(())
        }
    }

    #[test]
    fn parents_are_mounted_before_children() {
        let mut r = Recorder::default();
        apply_table(&mut r, BOOT_MOUNTS).unwrap();
        let mounts: Vec<&String> = r.calls.iter().filter(|c| c.starts_with("mount")).collect();
        let pos = |needle: &str| mounts.iter().position(|c| c.contains(needle)).unwrap();
        assert!(pos("devtmpfs /dev ") < pos("devpts /dev/pts"));
        assert!(pos("devtmpfs /dev ") < pos("tmpfs /dev/shm"));
        assert_eq!(mounts.len(), 6);
        // every mount point is created right before it is mounted
        assert_eq!(r.calls[0], "mkdir /proc");
    }

    #[test]
    fn already_mounted_is_not_an_error() {
        let mut r = Recorder { busy: vec!["/proc", "/sys"], ..Default::default() };
        apply_table(&mut r, BOOT_MOUNTS).unwrap();
        assert!(!r.calls.iter().any(|c| c.starts_with("mount proc")));
    }

    #[test]
    fn a_failing_mount_names_fstype_and_target() {
        let mut r = Recorder { fail: Some("devpts"), ..Default::default() };
        let err = apply_table(&mut r, BOOT_MOUNTS).unwrap_err().to_string();
        assert!(err.contains("devpts") && err.contains("/dev/pts"), "{err}");
    }

    #[test]
    fn cgroup2_is_mounted_with_nsdelegate_and_v1_per_enabled_known_controller() {
        let mut r = Recorder::default();
        assert!(apply_cgroups(&mut r, false, "").unwrap());
        assert_eq!(r.calls, vec!["mkdir /sys/fs/cgroup", "mount cgroup2 /sys/fs/cgroup nsdelegate"]);
        assert_ne!(CGROUP2.flags & libc::MS_RELATIME, 0);

        let proc_cgroups = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t0\t1\t1\nmemory\t0\t1\t1\n\
                            devices\t0\t1\t1\nrdma\t0\t1\t0\nmisc\t0\t1\t1\n";
        let mut r = Recorder::default();
        assert!(apply_cgroups(&mut r, true, proc_cgroups).unwrap());
        let mounts: Vec<&str> = r.calls.iter().filter(|c| c.starts_with("mount")).map(String::as_str).collect();
        assert_eq!(
            mounts,
            [
                "mount tmpfs /sys/fs/cgroup mode=0755",
                "mount cgroup /sys/fs/cgroup/cpu cpu",
                "mount cgroup /sys/fs/cgroup/memory memory",
                "mount cgroup /sys/fs/cgroup/devices devices",
                // the remount read-only, last
                "mount tmpfs /sys/fs/cgroup mode=0755",
            ]
        );
        assert_ne!(CGROUP1_ROOT_RO.flags & libc::MS_REMOUNT, 0);
        assert_ne!(CGROUP1_ROOT_RO.flags & libc::MS_RDONLY, 0);
    }

    #[test]
    fn v1_without_a_devices_controller_mounts_nothing() {
        let mut r = Recorder::default();
        assert!(!apply_cgroups(&mut r, true, "cpu 0 1 1\nmemory 0 1 1\ndevices 0 1 0\n").unwrap());
        assert!(r.calls.is_empty(), "{:?}", r.calls);
    }

    #[test]
    fn hostile_proc_cgroups_lines_never_become_paths() {
        let text = "../../etc 0 1 1\ncpu/x 0 1 1\n\n  \nmemory 0 1\nblkio 0 1 1 extra\npids 0 1 1\nhugetlb x 1 1\n";
        assert_eq!(v1_controllers(text), vec!["pids"]);
    }
}
