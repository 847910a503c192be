//! GetVolumeStats: capacity and inode usage of a volume the agent mounted,
//! in kata's VolumeStatsResponse (one BYTES and one INODES entry). The path
//! must lie under the storage base and is opened without following a
//! symlink, so the host cannot probe arbitrary guest filesystems.

use std::os::fd::AsRawFd;
use std::path::Path;

use protos::csi::{volume_usage, VolumeCondition, VolumeStatsResponse, VolumeUsage};

use crate::container::RuntimeError;
use crate::mount::beneath;
use crate::sandbox::storage::mount_point_under;

/// Statistics of the filesystem holding `volume_guest_path`. Figures as
/// kubelet computes them: total = blocks, used = blocks - free, available =
/// blocks available to unprivileged users (kata reports free there).
pub fn stats(storage_base: &Path, volume_guest_path: &str) -> Result<VolumeStatsResponse, RuntimeError> {
    let rel = mount_point_under(storage_base, volume_guest_path)
        .map_err(|e| RuntimeError::InvalidArgument(format!("GetVolumeStats: {e}")))?;
    let base = beneath::open_base(storage_base)
        .map_err(|e| RuntimeError::Internal(format!("storage base {}: {e}", storage_base.display())))?;
    let fd = beneath::open_beneath(&base, &rel, libc::O_PATH).map_err(|e| {
        let msg = format!("GetVolumeStats {volume_guest_path:?}: {e}");
        match e.raw_os_error() {
            Some(libc::ENOENT) => RuntimeError::NotFound(msg),
            Some(libc::ELOOP) | Some(libc::EXDEV) | Some(libc::ENOTDIR) => {
                RuntimeError::InvalidArgument(format!("{msg} (a path component is a symlink or not a directory)"))
            }
            _ => RuntimeError::Internal(msg),
        }
    })?;
    // SAFETY: zeroed statfs filled by fstatfs on our (O_PATH) fd.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(RuntimeError::Internal(format!("GetVolumeStats {volume_guest_path:?}: statfs: {e}")));
    }
    let bsize = st.f_bsize as u64;
    let usage = |unit: volume_usage::Unit, total: u64, free: u64, avail: u64| VolumeUsage {
        total,
        used: total.saturating_sub(free),
        available: avail,
        unit: unit.into(),
        ..Default::default()
    };
    let bytes = usage(
        volume_usage::Unit::BYTES,
        (st.f_blocks as u64).saturating_mul(bsize),
        (st.f_bfree as u64).saturating_mul(bsize),
        (st.f_bavail as u64).saturating_mul(bsize),
    );
    let inodes = usage(volume_usage::Unit::INODES, st.f_files as u64, st.f_ffree as u64, st.f_ffree as u64);
    Ok(VolumeStatsResponse {
        usage: vec![bytes, inodes],
        volume_condition: Some(VolumeCondition { abnormal: false, message: "OK".into(), ..Default::default() }).into(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn paths_outside_the_base_or_through_symlinks_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("kata");
        std::fs::create_dir_all(base.join("vol")).unwrap();
        std::os::unix::fs::symlink("/", base.join("root")).unwrap();
        for (p, needle) in [
            ("/".to_string(), "clean path"),
            ("/proc".to_string(), "not under the storage base"),
            (format!("{}/../x", base.display()), "clean path"),
            (format!("{}/root/etc", base.display()), "symlink"),
            (format!("{}/root", base.display()), "symlink"),
        ] {
            let e = stats(&base, &p).unwrap_err();
            assert!(matches!(e, RuntimeError::InvalidArgument(_)) && e.to_string().contains(needle), "{p}: {e}");
        }
        let e = stats(&base, &format!("{}/missing", base.display())).unwrap_err();
        assert!(matches!(e, RuntimeError::NotFound(_)), "{e}");
    }

    #[test]
    fn bytes_and_inodes_of_a_tmpfs_volume() {
        if !is_root() {
            eprintln!("skipping: mounting a tmpfs needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("kata");
        let vol = base.join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        let c = std::ffi::CString::new(vol.to_str().unwrap()).unwrap();
        let data = c"size=8m,nr_inodes=1000";
        // SAFETY: valid C strings.
        let rc = unsafe { libc::mount(c"tmpfs".as_ptr(), c.as_ptr(), c"tmpfs".as_ptr(), 0, data.as_ptr().cast()) };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        std::fs::write(vol.join("f"), vec![1u8; 1 << 20]).unwrap();
        let r = stats(&base, vol.to_str().unwrap());
        // SAFETY: valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let r = r.unwrap();
        assert_eq!(r.volume_condition.message, "OK");
        let (bytes, inodes) = (&r.usage[0], &r.usage[1]);
        assert_eq!(bytes.unit, volume_usage::Unit::BYTES.into());
        assert_eq!(bytes.total, 8 << 20);
        assert_eq!(bytes.used, 1 << 20);
        assert_eq!(bytes.available, (8 << 20) - (1 << 20));
        assert_eq!(inodes.unit, volume_usage::Unit::INODES.into());
        assert_eq!(inodes.total, 1000);
        assert_eq!(inodes.used, 2, "the root directory and f");
        assert_eq!(inodes.available, 998);
    }
}
