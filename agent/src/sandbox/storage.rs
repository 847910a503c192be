//! Storages named in CreateSandbox/CreateContainer, per driver. Supported:
//! `local` (an empty directory) and `bind` (a bind mount of an existing guest
//! path). Every mount point must be an absolute, `..`-free path outside
//! /proc, /sys and /dev; nothing is created anywhere else.

use std::path::{Component, Path, PathBuf};

use crate::container::RuntimeError;

/// Validates a host-supplied guest path.
pub fn clean_mount_point(p: &str) -> Result<PathBuf, RuntimeError> {
    let path = Path::new(p);
    let bad =
        || RuntimeError::InvalidArgument(format!("storage mount point {p:?} must be an absolute path without '..'"));
    if !path.is_absolute() || p.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(bad());
    }
    for c in path.components() {
        match c {
            Component::RootDir | Component::Normal(_) => {}
            _ => return Err(bad()),
        }
    }
    for forbidden in ["/proc", "/sys", "/dev"] {
        if path.starts_with(forbidden) {
            return Err(RuntimeError::InvalidArgument(format!("storage mount point {p:?} is under {forbidden}")));
        }
    }
    if path == Path::new("/") {
        return Err(bad());
    }
    Ok(path.to_path_buf())
}

/// What was done for a storage, so destroy can undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    Dir(PathBuf),
    Mount(PathBuf),
}

pub fn prepare(s: &protos::agent::Storage) -> Result<Prepared, RuntimeError> {
    let target = clean_mount_point(&s.mount_point)?;
    match s.driver.as_str() {
        "local" => {
            std::fs::create_dir_all(&target)
                .map_err(|e| RuntimeError::Internal(format!("local storage {}: {e}", target.display())))?;
            Ok(Prepared::Dir(target))
        }
        "bind" => {
            let src = Path::new(&s.source);
            if !src.is_absolute() || !src.exists() {
                return Err(RuntimeError::InvalidArgument(format!(
                    "bind storage source {:?} does not exist",
                    s.source
                )));
            }
            if src.is_dir() {
                std::fs::create_dir_all(&target)
            } else {
                target
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|_| std::fs::File::create(&target).map(drop))
            }
            .map_err(|e| RuntimeError::Internal(format!("bind storage {}: {e}", target.display())))?;
            let ro = if s.options.iter().any(|o| o == "ro") { libc::MS_RDONLY } else { 0 };
            crate::mount::mount(Some(src), &target, None, libc::MS_BIND | libc::MS_REC, None)
                .and_then(|_| {
                    if ro != 0 {
                        crate::mount::mount(None, &target, None, libc::MS_BIND | libc::MS_REMOUNT | ro, None)
                    } else {
                        Ok(())
                    }
                })
                .map_err(|e| RuntimeError::Internal(format!("bind storage: {e}")))?;
            Ok(Prepared::Mount(target))
        }
        other => Err(RuntimeError::InvalidArgument(format!(
            "storage driver {other:?} is not supported by this agent (supported: local, bind)"
        ))),
    }
}

pub fn undo(p: &Prepared) {
    if let Prepared::Mount(target) = p {
        if let Ok(c) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_with_traversal_or_in_kernel_filesystems_are_refused() {
        assert!(clean_mount_point("/run/cvm/local/vol1").is_ok());
        for bad in ["relative", "/run/../etc", "/proc/1/root", "/sys/kernel", "/dev/sda", "/", "/a/./b"] {
            assert!(clean_mount_point(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn unknown_drivers_are_named_in_the_error() {
        let s = protos::agent::Storage { driver: "9p".into(), mount_point: "/run/x".into(), ..Default::default() };
        assert!(prepare(&s).unwrap_err().to_string().contains("\"9p\""));
    }
}
