//! The container's filesystem view, built inside its new mount namespace by
//! the container init: rootfs propagation, spec mounts, default devices and
//! /dev symlinks, pivot_root, masked and readonly paths, readonly rootfs.
//!
//! Option parsing is pure (unit-tested); `setup_rootfs` talks to the kernel
//! and must only run in the single-threaded init, never in the agent. Every
//! destination is resolved with `resolve_in_root`, so a hostile spec cannot
//! mount over anything outside the container's root.

pub mod beneath;
pub mod kernel;
pub mod path;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use kernel::{Kernel, LinuxKernel};
pub use path::resolve_in_root;

/// Mount flags, propagation and fs data parsed from OCI mount options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: libc::c_ulong,
    /// Cleared flags (e.g. `rw` clears MS_RDONLY); kept for readability of tests.
    pub propagation: Vec<libc::c_ulong>,
    pub bind: bool,
    pub recursive: bool,
    pub data: Vec<String>,
}

/// Parses OCI mount options (`mount(8)` names); unknown ones become fs data.
pub fn parse_options(opts: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    for opt in opts {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                continue;
            }
            "private" => (propagate(&mut o, libc::MS_PRIVATE), 0),
            "rprivate" => (propagate(&mut o, libc::MS_PRIVATE | libc::MS_REC), 0),
            "shared" => (propagate(&mut o, libc::MS_SHARED), 0),
            "rshared" => (propagate(&mut o, libc::MS_SHARED | libc::MS_REC), 0),
            "slave" => (propagate(&mut o, libc::MS_SLAVE), 0),
            "rslave" => (propagate(&mut o, libc::MS_SLAVE | libc::MS_REC), 0),
            "unbindable" => (propagate(&mut o, libc::MS_UNBINDABLE), 0),
            "runbindable" => (propagate(&mut o, libc::MS_UNBINDABLE | libc::MS_REC), 0),
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    o
}

fn propagate(o: &mut MountOptions, flag: libc::c_ulong) -> libc::c_ulong {
    o.propagation.push(flag);
    0
}

/// Propagation of the container's `/` from `linux.rootfsPropagation`.
pub fn rootfs_propagation(name: &str) -> Result<libc::c_ulong, String> {
    Ok(match name {
        "" | "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        other => return Err(format!("unknown rootfsPropagation {other:?}")),
    })
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// mount(2) with context in the error.
pub fn mount(
    src: Option<&Path>,
    dest: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src_c = src.map(cstr).transpose()?;
    let dest_c = cstr(dest)?;
    let type_c = fstype.map(|t| CString::new(t).map_err(io::Error::other)).transpose()?;
    let data_c = data.filter(|d| !d.is_empty()).map(|d| CString::new(d).map_err(io::Error::other)).transpose()?;
    // SAFETY: all pointers are NUL-terminated strings or null.
    let rc = unsafe {
        libc::mount(
            src_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            dest_c.as_ptr(),
            type_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!(
                "mount {:?} on {} ({}): {err}",
                src.map(|s| s.display().to_string()).unwrap_or_default(),
                dest.display(),
                fstype.unwrap_or("")
            ),
        ));
    }
    Ok(())
}

/// Host devices bind-mounted into a container /dev tmpfs (as runc's defaults).
const DEFAULT_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Builds the container's mounts under `rootfs` and pivots into it; call
/// `finalize_rootfs` afterwards.
pub fn setup_rootfs(spec: &protos::oci::Spec, rootfs: &Path, k: &dyn Kernel) -> io::Result<()> {
    let linux = spec.Linux.as_ref();
    let prop = rootfs_propagation(linux.map_or("", |l| l.RootfsPropagation.as_str())).map_err(io::Error::other)?;
    k.mount(None, Path::new("/"), None, prop, None)?;
    k.mount(Some(rootfs), rootfs, None, libc::MS_BIND | libc::MS_REC, None)?;

    let mut dev_is_tmpfs = false;
    for m in &spec.Mounts {
        if m.destination == "/dev" && m.type_ == "tmpfs" {
            dev_is_tmpfs = true;
        }
        mount_one(m, rootfs, k)?;
    }
    if dev_is_tmpfs {
        for name in DEFAULT_DEVICES {
            let dest = rootfs.join("dev").join(name);
            if !dest.exists() {
                std::fs::File::create(&dest)?;
            }
            k.mount(Some(&Path::new("/dev").join(name)), &dest, None, libc::MS_BIND, None)?;
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("core", "/proc/kcore"),
        ] {
            let _ = std::os::unix::fs::symlink(target, rootfs.join("dev").join(link));
        }
        if rootfs.join("dev/pts/ptmx").exists() {
            let _ = std::os::unix::fs::symlink("pts/ptmx", rootfs.join("dev/ptmx"));
        }
    }
    if let Some(l) = linux {
        for d in &l.Devices {
            create_device(d, rootfs, k)?;
        }
    }

    k.pivot_root(rootfs)
}

/// After sysctls are written (as runc orders it): masked and readonly
/// paths, then the readonly rootfs.
pub fn finalize_rootfs(spec: &protos::oci::Spec, root: &Path, k: &dyn Kernel) -> io::Result<()> {
    if let Some(l) = spec.Linux.as_ref() {
        for p in &l.MaskedPaths {
            mask_path(root, p, k)?;
        }
        for p in &l.ReadonlyPaths {
            readonly_path(root, p, k)?;
        }
    }
    if spec.Root.as_ref().is_some_and(|r| r.Readonly) {
        k.mount(None, root, None, libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY, None)?;
    }
    Ok(())
}

fn mount_one(m: &protos::oci::Mount, rootfs: &Path, k: &dyn Kernel) -> io::Result<()> {
    let dest = resolve_in_root(rootfs, &m.destination)?;
    let opts = parse_options(&m.options);
    let data = opts.data.join(",");
    if opts.bind || m.type_ == "bind" {
        let src = PathBuf::from(&m.source);
        let meta = std::fs::metadata(&src)
            .map_err(|e| io::Error::new(e.kind(), format!("bind source {}: {e}", src.display())))?;
        if meta.is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if !dest.exists() {
                std::fs::File::create(&dest)?;
            }
        }
        let rec = if opts.recursive { libc::MS_REC } else { 0 };
        k.mount(Some(&src), &dest, None, libc::MS_BIND | rec, None)?;
        // Flags other than the bind itself need a remount of the new bind.
        let flags = opts.flags & !libc::MS_REMOUNT;
        if flags != 0 {
            k.mount(None, &dest, None, libc::MS_BIND | libc::MS_REMOUNT | flags, None)?;
        }
    } else if m.type_ == "cgroup" || m.type_ == "cgroup2" {
        std::fs::create_dir_all(&dest)?;
        let ro = opts.flags & libc::MS_RDONLY;
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            k.mount(Some(Path::new("cgroup2")), &dest, Some("cgroup2"), opts.flags, None)?;
        } else {
            // v1 host: show the hierarchies read-only as they are.
            k.mount(Some(Path::new("/sys/fs/cgroup")), &dest, None, libc::MS_BIND | libc::MS_REC, None)?;
            k.mount(None, &dest, None, libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | ro, None)?;
        }
    } else {
        std::fs::create_dir_all(&dest)?;
        let src = if m.source.is_empty() { m.type_.clone() } else { m.source.clone() };
        k.mount(Some(Path::new(&src)), &dest, Some(&m.type_), opts.flags, Some(&data))?;
    }
    for p in &opts.propagation {
        k.mount(None, &dest, None, *p, None)?;
    }
    Ok(())
}

fn create_device(d: &protos::oci::LinuxDevice, rootfs: &Path, k: &dyn Kernel) -> io::Result<()> {
    let dest = resolve_in_root(rootfs, &d.Path)?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let kind = match d.Type.as_str() {
        "c" | "u" => libc::S_IFCHR,
        "b" => libc::S_IFBLK,
        "p" => libc::S_IFIFO,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("device {}: unknown type {other:?}", d.Path),
            ))
        }
    };
    let mode = if d.FileMode == 0 { 0o666 } else { d.FileMode & 0o7777 };
    k.mknod(&dest, kind | mode, libc::makedev(d.Major as u32, d.Minor as u32))?;
    k.chown(&dest, d.UID, d.GID)?;
    Ok(())
}

fn mask_path(root: &Path, p: &str, k: &dyn Kernel) -> io::Result<()> {
    let dest = resolve_in_root(root, p)?;
    match std::fs::metadata(&dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => k.mount(Some(Path::new("tmpfs")), &dest, Some("tmpfs"), libc::MS_RDONLY, None),
        Ok(_) => k.mount(Some(Path::new("/dev/null")), &dest, None, libc::MS_BIND, None),
    }
}

fn readonly_path(root: &Path, p: &str, k: &dyn Kernel) -> io::Result<()> {
    let dest = resolve_in_root(root, p)?;
    if !dest.exists() {
        return Ok(());
    }
    k.mount(Some(&dest), &dest, None, libc::MS_BIND | libc::MS_REC, None)?;
    k.mount(
        None,
        &dest,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_set_and_clear_flags_in_order_and_keep_fs_data() {
        let o = opts(&["nosuid", "ro", "rw", "noexec", "mode=755", "size=65536k"]);
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_NOEXEC);
        assert_eq!(o.data, vec!["mode=755".to_string(), "size=65536k".to_string()]);
        let b = opts(&["rbind", "ro", "rprivate"]);
        assert!(b.bind && b.recursive);
        assert_eq!(b.flags, libc::MS_RDONLY);
        assert_eq!(b.propagation, vec![libc::MS_PRIVATE | libc::MS_REC]);
    }

    /// Records every kernel call as a line, with paths relative to `root`.
    struct Recorder {
        root: PathBuf,
        ops: std::cell::RefCell<Vec<String>>,
    }

    impl Recorder {
        fn rel(&self, p: &Path) -> String {
            p.strip_prefix(&self.root).map(|r| format!("/{}", r.display())).unwrap_or_else(|_| p.display().to_string())
        }
    }

    impl Kernel for Recorder {
        fn mount(
            &self,
            src: Option<&Path>,
            dest: &Path,
            fstype: Option<&str>,
            flags: libc::c_ulong,
            data: Option<&str>,
        ) -> io::Result<()> {
            let src = src.map(|s| self.rel(s)).unwrap_or_else(|| "-".into());
            self.ops.borrow_mut().push(format!(
                "mount {src} {} {} {flags:#x} {}",
                self.rel(dest),
                fstype.unwrap_or("-"),
                data.unwrap_or("")
            ));
            Ok(())
        }
        fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
            self.ops.borrow_mut().push(format!("pivot_root {}", self.rel(new_root)));
            Ok(())
        }
        fn mknod(&self, path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
            self.ops.borrow_mut().push(format!("mknod {} {mode:o} {dev}", self.rel(path)));
            Ok(())
        }
        fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
            self.ops.borrow_mut().push(format!("chown {} {uid}:{gid}", self.rel(path)));
            Ok(())
        }
    }

    fn m(dest: &str, typ: &str, src: &str, opts: &[&str]) -> protos::oci::Mount {
        protos::oci::Mount {
            destination: dest.into(),
            type_: typ.into(),
            source: src.into(),
            options: opts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn rootfs_setup_mounts_in_order_with_flags_and_never_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(root.join("proc/acpi")).unwrap();
        std::fs::write(root.join("proc/kcore"), "").unwrap();
        // A hostile symlink: /data -> /etc on the host must land in the root.
        std::os::unix::fs::symlink("/etc", root.join("data")).unwrap();
        let mut linux = protos::oci::Linux::new();
        linux.RootfsPropagation = "rprivate".into();
        linux.Devices = vec![protos::oci::LinuxDevice {
            Path: "/dev/fuse".into(),
            Type: "c".into(),
            Major: 10,
            Minor: 229,
            UID: 5,
            GID: 6,
            ..Default::default()
        }];
        linux.MaskedPaths = vec!["/proc/kcore".into(), "/proc/acpi".into(), "/proc/absent".into()];
        linux.ReadonlyPaths = vec!["/proc".into()];
        let spec = protos::oci::Spec {
            Root: Some(protos::oci::Root { Path: root.display().to_string(), Readonly: true, ..Default::default() })
                .into(),
            Mounts: vec![
                m("/proc", "proc", "proc", &[]),
                m("/dev", "tmpfs", "tmpfs", &["nosuid", "mode=755"]),
                m("/data/app", "bind", vol.to_str().unwrap(), &["rbind", "ro", "rprivate"]),
            ],
            Linux: Some(linux).into(),
            ..Default::default()
        };
        let k = Recorder { root: root.clone(), ops: Default::default() };
        setup_rootfs(&spec, &root, &k).unwrap();
        finalize_rootfs(&spec, &root, &k).unwrap();
        let ops = k.ops.into_inner();
        let vol_s = vol.display().to_string();
        let expected = [
            format!("mount - / - {:#x} ", libc::MS_PRIVATE | libc::MS_REC),
            format!("mount / / - {:#x} ", libc::MS_BIND | libc::MS_REC),
            "mount proc /proc proc 0x0 ".to_string(),
            format!("mount tmpfs /dev tmpfs {:#x} mode=755", libc::MS_NOSUID),
            format!("mount {vol_s} /etc/app - {:#x} ", libc::MS_BIND | libc::MS_REC),
            format!("mount - /etc/app - {:#x} ", libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY),
            format!("mount - /etc/app - {:#x} ", libc::MS_PRIVATE | libc::MS_REC),
        ];
        assert_eq!(ops[..expected.len()], expected[..], "{ops:#?}");
        let rest = &ops[expected.len()..];
        // Default devices are bind-mounted from the host into the /dev tmpfs.
        assert!(
            rest.iter().any(|o| o.starts_with(&format!("mount /dev/null /dev/null - {:#x}", libc::MS_BIND))),
            "{rest:#?}"
        );
        let i_mknod = rest.iter().position(|o| o.starts_with("mknod /dev/fuse")).unwrap();
        assert_eq!(rest[i_mknod], format!("mknod /dev/fuse {:o} {}", libc::S_IFCHR | 0o666, libc::makedev(10, 229)));
        assert_eq!(rest[i_mknod + 1], "chown /dev/fuse 5:6");
        assert_eq!(rest[i_mknod + 2], "pivot_root /");
        let tail: Vec<&str> = rest[i_mknod + 3..].iter().map(String::as_str).collect();
        let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        assert_eq!(
            tail,
            vec![
                format!("mount /dev/null /proc/kcore - {:#x} ", libc::MS_BIND).as_str(),
                format!("mount tmpfs /proc/acpi tmpfs {:#x} ", libc::MS_RDONLY).as_str(),
                format!("mount /proc /proc - {:#x} ", libc::MS_BIND | libc::MS_REC).as_str(),
                format!("mount - /proc - {:#x} ", ro | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC).as_str(),
                format!("mount - / - {ro:#x} ").as_str(),
            ]
        );
        assert!(root.join("etc/app").is_dir(), "bind target created inside the root");
        assert!(!Path::new("/etc/app").exists());
    }

    #[test]
    fn rootfs_propagation_defaults_to_rslave_and_refuses_unknown_names() {
        assert_eq!(rootfs_propagation("").unwrap(), libc::MS_SLAVE | libc::MS_REC);
        assert!(rootfs_propagation("sideways").unwrap_err().contains("sideways"));
    }
}
