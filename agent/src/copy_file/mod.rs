//! CopyFile: the host writes directories, symlinks and regular files into the
//! guest's shared-containers directory (`<storage base>/shared/containers`),
//! which is how kata's shim passes /etc/hosts, resolv.conf, service-account
//! tokens, configmaps and secrets without a shared filesystem.
//!
//! Never writes outside that directory and never follows a symlink while
//! resolving a path: every component is created and opened from an fd of the
//! directory with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS (`mount::beneath`).
//! Never shows a half-written file at its final name: a regular file is
//! written to a fresh temporary name in its directory and renamed into place
//! when its last chunk arrives. Later chunks of a file go to the fd opened for
//! the first chunk, so nothing swapped into the path between chunks (a
//! symlink, a renamed directory) can redirect them.
//!
//! Kata semantics kept: `file_mode`'s type bits pick the kind (S_IFDIR,
//! S_IFLNK with `data` as the target, otherwise a regular file), missing
//! parents are created with `dir_mode` and the immediate parent gets
//! `uid`/`gid`, an existing symlink or file at the target is replaced, an
//! existing directory is kept for S_IFDIR. Differences, each a bound kata
//! lacks: file_size <= MAX_FILE_SIZE, chunks in order (offset == bytes
//! received so far; the shim sends them so), clean paths only, no set-id bits
//! on regular files (Kubernetes' volume modes are 0..0777 anyway), the base
//! directory itself never chowned, a non-empty directory never replaced.

mod resolve;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use protos::agent::CopyFileRequest;

use crate::container::RuntimeError;
use resolve::{errno_err, rename_replacing, Parent};

/// Largest file the host may copy. Kata has no bound; what its shim copies
/// (hosts, resolv.conf, tokens, configmaps and secrets, which Kubernetes caps
/// at 1 MiB each) is far below this, and the guest's tmpfs is memory.
pub const MAX_FILE_SIZE: u64 = 256 << 20;
/// Largest `data` of one request: ttrpc's message size limit (4 MiB). Kata's
/// shim sends 1 MiB chunks.
pub const MAX_CHUNK: usize = 4 << 20;
/// Longest accepted path (PATH_MAX including the NUL) and deepest nesting
/// below the shared directory.
pub const MAX_PATH_LEN: usize = 4095;
pub const MAX_DEPTH: usize = 32;
/// Unfinished chunked copies kept at once; the oldest is dropped beyond it.
pub const MAX_PENDING: usize = 64;

/// The shared-containers directory, relative to the storage base.
pub const SHARED_CONTAINERS: &str = "shared/containers";

/// A regular file whose chunks are still arriving.
struct Pending {
    parent: Parent,
    tmp: CString,
    name: CString,
    file: File,
    size: u64,
    received: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    seq: u64,
}

/// The CopyFile service of one agent: where files go and the copies in flight.
pub struct CopyFiles {
    storage_base: PathBuf,
    pending: Mutex<(u64, HashMap<PathBuf, Pending>)>,
}

fn invalid(msg: String) -> RuntimeError {
    RuntimeError::InvalidArgument(msg)
}

/// What the request asks for.
enum Kind {
    Dir,
    Symlink(CString),
    File,
}

impl CopyFiles {
    /// Files are written under `<storage_base>/shared/containers`.
    pub fn new(storage_base: &Path) -> CopyFiles {
        CopyFiles { storage_base: storage_base.to_path_buf(), pending: Mutex::new((0, HashMap::new())) }
    }

    /// The directory every CopyFile target must lie under.
    pub fn shared_dir(&self) -> PathBuf {
        self.storage_base.join(SHARED_CONTAINERS)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<PathBuf, Pending>)> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `path` and returns it relative to the shared directory: under
    /// it, plain names only, bounded in length and depth.
    pub fn relative(&self, path: &str) -> Result<PathBuf, RuntimeError> {
        let shared = self.shared_dir();
        let bad = |why: String| invalid(format!("CopyFile path {path:?} {why}"));
        if path.len() > MAX_PATH_LEN {
            return Err(bad(format!("is longer than {MAX_PATH_LEN} bytes")));
        }
        if path.contains('\0') {
            return Err(bad("contains a NUL byte".into()));
        }
        let rest = path.strip_prefix('/').ok_or_else(|| bad("is not an absolute path".into()))?;
        if rest.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
            return Err(bad("must be a clean path (no '.', '..' or empty segments)".into()));
        }
        let rel = Path::new(path)
            .strip_prefix(&shared)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
            .ok_or_else(|| bad(format!("is not under {}", shared.display())))?;
        if rel.iter().count() > MAX_DEPTH {
            return Err(bad(format!("is nested deeper than {MAX_DEPTH} directories")));
        }
        if rel.iter().any(|c| c.len() > 255) {
            return Err(bad("has a component longer than 255 bytes".into()));
        }
        Ok(rel.to_path_buf())
    }

    /// Serves one CopyFile request.
    pub fn copy(&self, req: &CopyFileRequest) -> Result<(), RuntimeError> {
        let rel = self.relative(&req.path)?;
        let kind = match req.file_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink(symlink_target(&req.path, &req.data)?),
            libc::S_IFREG | 0 => Kind::File,
            other => {
                return Err(invalid(format!(
                    "CopyFile {:?}: file type {other:#o} is not a directory, symlink or regular file",
                    req.path
                )))
            }
        };
        if let Kind::File = kind {
            return self.write_chunk(&rel, req);
        }
        // A directory or symlink replaces any unfinished copy to the same path.
        self.forget(&rel);
        let parent = self.open_parent(&rel, req)?;
        let name = resolve::file_name(&rel)?;
        match kind {
            Kind::Dir => resolve::make_dir(&parent, &name, req.file_mode & 0o7777, req.uid as u32, req.gid as u32),
            Kind::Symlink(target) => resolve::make_symlink(&parent, &name, &target, req.uid as u32, req.gid as u32),
            Kind::File => unreachable!("handled above"),
        }
        .map_err(|e| errno_err(&req.path, e))?;
        tracing::debug!(path = %req.path, mode = format!("{:o}", req.file_mode), "CopyFile done");
        Ok(())
    }

    /// Opens (creating what is missing, with `dir_mode`) the parent directory
    /// of `rel`, and gives it the request's owner unless it is the shared
    /// directory itself.
    fn open_parent(&self, rel: &Path, req: &CopyFileRequest) -> Result<Parent, RuntimeError> {
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = resolve::open_shared_dir(&self.storage_base)
            .map_err(|e| RuntimeError::Internal(format!("CopyFile: {}: {e}", self.shared_dir().display())))?;
        let parent =
            resolve::mkdir_all(parent, parent_rel, req.dir_mode & 0o777).map_err(|e| errno_err(&req.path, e))?;
        if !parent_rel.as_os_str().is_empty() {
            parent.chown(req.uid as u32, req.gid as u32).map_err(|e| errno_err(&req.path, e))?;
        }
        Ok(parent)
    }

    /// Drops an unfinished copy to `rel`, removing its temporary file.
    fn forget(&self, rel: &Path) {
        if let Some(p) = self.lock().1.remove(rel) {
            p.parent.unlink(&p.tmp);
        }
    }

    fn write_chunk(&self, rel: &Path, req: &CopyFileRequest) -> Result<(), RuntimeError> {
        let path = &req.path;
        let size = u64::try_from(req.file_size).ok().filter(|s| *s <= MAX_FILE_SIZE).ok_or_else(|| {
            invalid(format!("CopyFile {path:?}: file_size {} is not in 0..={MAX_FILE_SIZE}", req.file_size))
        })?;
        if req.data.len() > MAX_CHUNK {
            return Err(invalid(format!(
                "CopyFile {path:?}: {} bytes of data in one request (limit {MAX_CHUNK})",
                req.data.len()
            )));
        }
        let offset = u64::try_from(req.offset)
            .map_err(|_| invalid(format!("CopyFile {path:?}: negative offset {}", req.offset)))?;
        let end = offset + req.data.len() as u64;
        if end > size {
            return Err(invalid(format!(
                "CopyFile {path:?}: offset {offset} + {} bytes of data is beyond file_size {size}",
                req.data.len()
            )));
        }
        let mut pending = if offset == 0 {
            self.forget(rel);
            self.start(rel, req, size)?
        } else {
            let p = self.lock().1.remove(rel).ok_or_else(|| {
                invalid(format!("CopyFile {path:?}: offset {offset} but no copy of this file is in progress"))
            })?;
            if p.size != size || p.received != offset {
                let msg = format!(
                    "CopyFile {path:?}: chunk at offset {offset} of file_size {size}, expected offset {} of file_size {}",
                    p.received, p.size
                );
                p.parent.unlink(&p.tmp);
                return Err(invalid(msg));
            }
            p
        };
        if let Err(e) = pending.file.write_all_at(&req.data, offset) {
            pending.parent.unlink(&pending.tmp);
            return Err(RuntimeError::Internal(format!("CopyFile {path:?}: write at {offset}: {e}")));
        }
        pending.received = end;
        if end == size {
            return finish(pending).map_err(|e| errno_err(path, e));
        }
        let mut guard = self.lock();
        let (seq, map) = &mut *guard;
        *seq += 1;
        pending.seq = *seq;
        if map.len() >= MAX_PENDING {
            if let Some(oldest) = map.iter().min_by_key(|(_, p)| p.seq).map(|(k, _)| k.clone()) {
                if let Some(p) = map.remove(&oldest) {
                    tracing::warn!(path = %oldest.display(), limit = MAX_PENDING, "dropping the oldest unfinished CopyFile");
                    p.parent.unlink(&p.tmp);
                }
            }
        }
        // A concurrent first chunk to the same path: the later one wins.
        if let Some(old) = map.insert(rel.to_path_buf(), pending) {
            old.parent.unlink(&old.tmp);
        }
        Ok(())
    }

    /// Opens the parent and a fresh temporary file for the first chunk.
    fn start(&self, rel: &Path, req: &CopyFileRequest, size: u64) -> Result<Pending, RuntimeError> {
        let parent = self.open_parent(rel, req)?;
        let name = resolve::file_name(rel)?;
        let (tmp, file) = parent.create_temp().map_err(|e| errno_err(&req.path, e))?;
        Ok(Pending {
            parent,
            tmp,
            name,
            file,
            size,
            received: 0,
            // No set-id or sticky bits on a copied file.
            mode: req.file_mode & 0o777,
            uid: req.uid as u32,
            gid: req.gid as u32,
            seq: 0,
        })
    }

    /// How many chunked copies are unfinished.
    pub fn pending_count(&self) -> usize {
        self.lock().1.len()
    }
}

/// Gives the complete temporary file its mode and owner and renames it into
/// place, provided the temporary name still refers to the file written.
fn finish(p: Pending) -> std::io::Result<()> {
    let done = (|| {
        let fd = p.file.as_raw_fd();
        // SAFETY: fchmod/fchown on a file we own.
        if unsafe { libc::fchmod(fd, p.mode) } != 0 || unsafe { libc::fchown(fd, p.uid, p.gid) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if !p.parent.names_inode(&p.tmp, &p.file)? {
            return Err(std::io::Error::from_raw_os_error(libc::ESTALE));
        }
        rename_replacing(&p.parent, &p.tmp, &p.name)
    })();
    if done.is_err() {
        p.parent.unlink(&p.tmp);
    }
    done
}

/// `data` as a symlink target: non-empty, no NUL, shorter than PATH_MAX. It
/// may point anywhere: it is stored, never followed by this module.
fn symlink_target(path: &str, data: &[u8]) -> Result<CString, RuntimeError> {
    if data.is_empty() || data.len() > MAX_PATH_LEN {
        return Err(invalid(format!(
            "CopyFile {path:?}: symlink target of {} bytes (must be 1..={MAX_PATH_LEN})",
            data.len()
        )));
    }
    CString::new(data).map_err(|_| invalid(format!("CopyFile {path:?}: symlink target contains a NUL byte")))
}
