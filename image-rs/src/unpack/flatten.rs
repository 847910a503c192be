//! Fallback when overlayfs is unavailable: merges committed layer directories (overlayfs format,
//! as written by [`super::unpack_layer`]) into one plain tree, the way an overlay mount of them
//! would look.
//!
//! It must never create, modify or follow anything outside `dest`: every object is created by
//! name relative to a descriptor of its (already created, opened without following) parent, and
//! no symlink in a layer or in `dest` is followed.
//!
//! Per layer, bottom first, per directory entry:
//! - a whiteout (char device 0:0) deletes that name (and its tree) from `dest`, and is not copied;
//! - a directory merges with a directory of the same name in `dest` (anything else there is
//!   replaced); if it is opaque (`trusted.overlay.opaque=y`) the `dest` directory is emptied
//!   first; its owner, mode and xattrs replace those in `dest`;
//! - any other object replaces what `dest` has at that name: regular files are copied
//!   (`copy_file_range` via `std::io::copy`), symlinks recreated verbatim, devices and FIFOs
//!   recreated; regular files sharing an inode are hard-linked in `dest` too, as long as the
//!   first copy is still in place (checked by inode);
//! - ownership (when running as root), modes, times (directories last, deepest first) and
//!   xattrs are carried over, except the overlay-private `trusted.overlay.*` (the same allowlist as
//!   unpacking, see `meta.rs`).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use tracing::{debug, info, warn};

use super::entry::{clear_dir, is_dir, list_dir, remove_existing, stat_times};
use super::error::{io_err, show, UnpackError};
use super::meta::{apply_at, apply_fd, xattr_policy, DirTimes, Meta};
use super::path::{join, open_child_dir, open_dir_in_root, open_dir_path, proc_fd_path};
use super::whiteout::{is_opaque, is_whiteout};

type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Where the first copy of a multiply-linked source inode went.
struct LinkRec {
    comps: Vec<Vec<u8>>,
    dev: u64,
    ino: u64,
}

struct Flattener {
    dest: OwnedFd,
    chown: bool,
    links: HashMap<(u64, u64), LinkRec>,
    dir_times: DirTimes,
}

/// Merges `layers_bottom_first` (committed layer directories) into the existing directory `dest`
/// (normally empty), applying whiteouts and opaque directories.
pub fn flatten_layers(layers_bottom_first: &[PathBuf], dest: &Path) -> Result<(), UnpackError> {
    let mut f = Flattener {
        dest: open_dir_path(dest)?,
        chown: rustix::process::geteuid().is_root(),
        links: HashMap::new(),
        dir_times: DirTimes::default(),
    };
    for layer in layers_bottom_first {
        let shown = layer.display().to_string();
        let src = open_dir_path(layer)?;
        let dest_root = open_dir_in_root(f.dest.as_fd(), &[]).map_err(io_err(&shown, "open flatten target for"))?;
        let st = rustix::fs::fstat(&src).map_err(io_err(&shown, "stat"))?;
        f.merge_dir_meta(src.as_fd(), dest_root.as_fd(), &st, &[], &shown)?;
        let mut rel = Vec::new();
        f.merge_dir(src.as_fd(), dest_root.as_fd(), &mut rel, &shown)?;
        debug!(layer = ?shown, "layer merged");
    }
    let Flattener { dest: dest_fd, dir_times, .. } = f;
    dir_times.apply(dest_fd.as_fd())?;
    info!(layers = layers_bottom_first.len(), dest = ?dest.display().to_string(), "layers flattened");
    Ok(())
}

/// The extended attributes of an object that [`xattr_policy`] allows, read through `fd` (a file or
/// directory we hold open) or a `/proc/self/fd/<dir>/<name>` path (not followed).
fn read_xattrs(fd: Option<BorrowedFd<'_>>, path: &[u8]) -> Result<Xattrs, Errno> {
    let listed = match fd {
        Some(fd) => rustix::fs::flistxattr_query(fd),
        None => rustix::fs::llistxattr_query(path),
    };
    let size = match listed {
        Ok(0) | Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Ok(n) => n,
        Err(e) => return Err(e),
    };
    let mut names = vec![0u8; size];
    let n = match fd {
        Some(fd) => rustix::fs::flistxattr(fd, &mut names[..])?,
        None => rustix::fs::llistxattr(path, &mut names[..])?,
    };
    let mut out = Vec::new();
    for name in names.get(..n).unwrap_or_default().split(|b| *b == 0) {
        if name.is_empty() || xattr_policy(name).is_err() {
            continue;
        }
        let len = match fd {
            Some(fd) => rustix::fs::fgetxattr_query(fd, name)?,
            None => rustix::fs::lgetxattr_query(path, name)?,
        };
        let mut value = vec![0u8; len];
        let got = match fd {
            Some(fd) => rustix::fs::fgetxattr(fd, name, &mut value[..])?,
            None => rustix::fs::lgetxattr(path, name, &mut value[..])?,
        };
        value.truncate(got);
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

fn meta_of(st: &Stat, xattrs: Xattrs) -> Meta {
    Meta { uid: st.st_uid, gid: st.st_gid, mode: st.st_mode & 0o7777, times: stat_times(st), xattrs }
}

impl Flattener {
    /// Merges the children of layer directory `src` into `dst`.
    fn merge_dir(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        rel: &mut Vec<Vec<u8>>,
        layer: &str,
    ) -> Result<(), UnpackError> {
        let names = list_dir(src).map_err(io_err(&format!("{layer}/{}", show(&join(rel))), "list directory"))?;
        for name in names {
            rel.push(name);
            let result = self.merge_entry(src, dst, rel, layer);
            rel.pop();
            result?;
        }
        Ok(())
    }

    /// Removes whatever `dest` has at `name` (`rel`), forgetting times of a removed directory tree.
    fn remove(&mut self, dst: BorrowedFd<'_>, name: &[u8], rel: &[Vec<u8>], shown: &str) -> Result<(), UnpackError> {
        if let Some(st) = remove_existing(dst, name).map_err(io_err(shown, "remove the existing copy of"))? {
            if is_dir(&st) {
                self.dir_times.forget_under(rel);
            }
        }
        Ok(())
    }

    fn merge_entry(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        rel: &[Vec<u8>],
        layer: &str,
    ) -> Result<(), UnpackError> {
        let Some(name) = rel.last() else { return Ok(()) };
        let name = name.as_slice();
        let shown = format!("{layer}/{}", show(&join(rel)));
        let st = rustix::fs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io_err(&shown, "stat"))?;
        if is_whiteout(&st) {
            return self.remove(dst, name, rel, &shown);
        }
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                match rustix::fs::statat(dst, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(d) if is_dir(&d) => {}
                    Ok(_) => self.remove(dst, name, rel, &shown)?,
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(io_err(&shown, "stat the copy of")(e)),
                }
                match rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err(&shown, "create directory for")(e)),
                }
                let s = open_child_dir(src, name).map_err(io_err(&shown, "open"))?;
                let d = open_child_dir(dst, name).map_err(io_err(&shown, "open the copy of"))?;
                if is_opaque(s.as_fd()).map_err(io_err(&shown, "read opaque marker of"))? {
                    clear_dir(d.as_fd()).map_err(io_err(&shown, "clear lower contents of opaque directory"))?;
                    self.dir_times.forget_under(rel);
                }
                self.merge_dir_meta(s.as_fd(), d.as_fd(), &st, rel, &shown)?;
                let mut sub = rel.to_vec();
                self.merge_dir(s.as_fd(), d.as_fd(), &mut sub, layer)
            }
            FileType::RegularFile => {
                if st.st_nlink > 1 && self.link_to_first_copy(&st, dst, rel, &shown)? {
                    return Ok(());
                }
                self.remove(dst, name, rel, &shown)?;
                self.copy_file(src, dst, name, &st, rel, &shown)
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src, name, Vec::new()).map_err(io_err(&shown, "read symlink"))?;
                let xattrs =
                    read_xattrs(None, &proc_fd_path(src, Some(name))).map_err(io_err(&shown, "read xattrs"))?;
                self.remove(dst, name, rel, &shown)?;
                rustix::fs::symlinkat(target.as_bytes(), dst, name).map_err(io_err(&shown, "create symlink for"))?;
                apply_at(dst, name, &meta_of(&st, xattrs), self.chown, true, &shown)
            }
            kind @ (FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo) => {
                let xattrs =
                    read_xattrs(None, &proc_fd_path(src, Some(name))).map_err(io_err(&shown, "read xattrs"))?;
                self.remove(dst, name, rel, &shown)?;
                rustix::fs::mknodat(dst, name, kind, Mode::from_raw_mode(0o600), st.st_rdev)
                    .map_err(io_err(&shown, "create device node or FIFO for"))?;
                apply_at(dst, name, &meta_of(&st, xattrs), self.chown, false, &shown)
            }
            other => {
                warn!(path = ?shown, kind = ?other, "skipping object of unsupported type");
                Ok(())
            }
        }
    }

    /// Owner, mode and xattrs of layer directory `src` onto `dst` (xattrs `dst` has from lower
    /// layers but `src` lacks are removed, as the overlay shows only the upper directory's);
    /// times recorded for the end.
    fn merge_dir_meta(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        st: &Stat,
        rel: &[Vec<u8>],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let wanted = read_xattrs(Some(src), &[]).map_err(io_err(shown, "read xattrs"))?;
        let present = read_xattrs(Some(dst), &[]).map_err(io_err(shown, "read xattrs of the copy of"))?;
        for (name, _) in present {
            if !wanted.iter().any(|(w, _)| *w == name) {
                rustix::fs::fremovexattr(dst, name.as_slice()).map_err(io_err(shown, "remove stale xattr of"))?;
            }
        }
        let meta = meta_of(st, wanted);
        apply_fd(dst, &meta, self.chown, false, shown)?;
        self.dir_times.record(rel, meta.times, shown)
    }

    /// Hard-links `rel` to the first copy of the same source inode, if that copy is still in
    /// place. Returns whether it did.
    fn link_to_first_copy(
        &mut self,
        st: &Stat,
        dst: BorrowedFd<'_>,
        rel: &[Vec<u8>],
        shown: &str,
    ) -> Result<bool, UnpackError> {
        let Some(rec) = self.links.get(&(st.st_dev, st.st_ino)) else { return Ok(false) };
        let Some((first_name, first_parent)) = rec.comps.split_last() else { return Ok(false) };
        let Some(name) = rel.last() else { return Ok(false) };
        let (dev, ino) = (rec.dev, rec.ino);
        let parent = match open_dir_in_root(self.dest.as_fd(), first_parent) {
            Ok(fd) => fd,
            Err(_) => return Ok(false),
        };
        match rustix::fs::statat(&parent, first_name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) if s.st_dev == dev && s.st_ino == ino => {}
            _ => return Ok(false),
        }
        if rec.comps.as_slice() == rel {
            return Ok(true);
        }
        let first_name = first_name.clone();
        self.remove(dst, name, rel, shown)?;
        match rustix::fs::linkat(&parent, first_name.as_slice(), dst, name.as_slice(), AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(e) => {
                debug!(path = ?shown, error = %e, "cannot hard-link to the first copy; copying");
                Ok(false)
            }
        }
    }

    fn copy_file(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &[u8],
        st: &Stat,
        rel: &[Vec<u8>],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let ro = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut from = File::from(rustix::fs::openat(src, name, ro, Mode::empty()).map_err(io_err(shown, "open"))?);
        let wo = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut to = File::from(
            rustix::fs::openat(dst, name, wo, Mode::from_raw_mode(0o600))
                .map_err(io_err(shown, "create the copy of"))?,
        );
        io::copy(&mut from, &mut to).map_err(io_err(shown, "copy"))?;
        let xattrs = read_xattrs(Some(from.as_fd()), &[]).map_err(io_err(shown, "read xattrs"))?;
        apply_fd(to.as_fd(), &meta_of(st, xattrs), self.chown, true, shown)?;
        if st.st_nlink > 1 {
            let copy = rustix::fs::fstat(&to).map_err(io_err(shown, "stat the copy of"))?;
            self.links
                .insert((st.st_dev, st.st_ino), LinkRec { comps: rel.to_vec(), dev: copy.st_dev, ino: copy.st_ino });
        }
        Ok(())
    }
}
