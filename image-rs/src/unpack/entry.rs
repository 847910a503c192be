//! Creating one entry in the layer directory: regular files, directories, symlinks, hard links,
//! device nodes and FIFOs; replacing what an earlier entry left at the same name.
//!
//! Every entry is created by its last component relative to a descriptor of its parent
//! directory (resolved confined to the root, see [`super::path`]); nothing is opened or changed
//! through a symlink at the last component.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Dev, FileType, Mode, OFlags, Stat, Timespec};
use rustix::io::Errno;
use tracing::debug;

use super::error::{io_err, show, unsafe_path, UnpackError};
use super::meta::{apply_at, apply_fd, DirTimes, Meta, Times};
use super::path::{open_child_dir, open_dir_in_root, open_or_create_dir, EntryPath};
use super::whiteout::{lookup, Lookup};
use super::Unpacker;

pub(crate) fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

pub(crate) fn timespec<S: TryInto<i64>, N: TryInto<i64>>(sec: S, nsec: N) -> Timespec {
    Timespec { tv_sec: sec.try_into().unwrap_or(0), tv_nsec: nsec.try_into().unwrap_or(0) }
}

/// Times of a file as `stat` reported them.
pub(crate) fn stat_times(st: &Stat) -> Times {
    Times { atime: timespec(st.st_atime, st.st_atime_nsec), mtime: timespec(st.st_mtime, st.st_mtime_nsec) }
}

/// Names in directory `dir`, without `.` and `..`.
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, Errno> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(ent) = d.read() {
        let name = ent?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Removes every child of directory `dir` (whole trees, symlinks not followed).
pub(crate) fn clear_dir(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    for name in list_dir(dir)? {
        remove_existing(dir, &name)?;
    }
    Ok(())
}

/// Removes directory `name` in `parent` and everything below it.
pub(crate) fn remove_tree_at(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) => return Ok(()),
        Err(Errno::NOTEMPTY | Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    let dir = open_child_dir(parent, name)?;
    clear_dir(dir.as_fd())?;
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

/// Removes whatever `name` in `parent` is (a directory with its tree); returns what was there.
pub(crate) fn remove_existing(parent: BorrowedFd<'_>, name: &[u8]) -> Result<Option<Stat>, Errno> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    if is_dir(&st) {
        remove_tree_at(parent, name)?;
    } else {
        rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
    }
    Ok(Some(st))
}

/// Owner, mode and times for a parent directory the archive did not list: those of the same
/// directory in the visible lower layers (so the merged view does not change), else root 0755.
fn init_implicit_dir(
    lowers: &[OwnedFd],
    prefix: &[Vec<u8>],
    fd: BorrowedFd<'_>,
    chown: bool,
    dir_times: &mut DirTimes,
    shown: &str,
) -> Result<(), UnpackError> {
    let layers: Vec<BorrowedFd<'_>> = lowers.iter().map(AsFd::as_fd).collect();
    let inherited = match lookup(&layers, prefix) {
        Ok(Lookup::Found { stat, .. }) if is_dir(&stat) => Some(stat),
        Ok(_) => None,
        Err(e) => {
            debug!(path = ?shown, error = %e, "cannot look up parent directory in lower layers");
            None
        }
    };
    let meta = match &inherited {
        Some(st) => {
            Meta { uid: st.st_uid, gid: st.st_gid, mode: st.st_mode & 0o7777, times: stat_times(st), xattrs: vec![] }
        }
        None => Meta {
            uid: 0,
            gid: 0,
            mode: 0o755,
            times: stat_times(&rustix::fs::fstat(fd).map_err(io_err(shown, "stat"))?),
            xattrs: vec![],
        },
    };
    apply_fd(fd, &meta, chown, false, shown)?;
    if inherited.is_some() {
        dir_times.record(prefix, meta.times, shown)?;
    }
    Ok(())
}

impl Unpacker {
    /// Opens directory `comps` of the layer, creating missing components.
    pub(super) fn parent_dir(&mut self, comps: &[Vec<u8>], shown: &str) -> Result<OwnedFd, UnpackError> {
        let chown = self.chown;
        let lowers = &mut self.lowers;
        let dir_times = &mut self.dir_times;
        open_or_create_dir(self.root.as_fd(), comps, shown, |prefix, fd| {
            init_implicit_dir(lowers.get(shown)?, prefix, fd, chown, dir_times, shown)
        })
    }

    /// Clears the slot for `path` in `parent`: removes a previous entry of this layer there.
    fn replace(&mut self, parent: BorrowedFd<'_>, path: &EntryPath, shown: &str) -> Result<(), UnpackError> {
        let name = path.name_or_err(shown)?;
        let removed = remove_existing(parent, name).map_err(io_err(shown, "remove the existing entry at"))?;
        if let Some(st) = removed {
            debug!(path = ?shown, "replacing an earlier entry of the layer");
            if is_dir(&st) {
                self.dir_times.forget_under(path.components());
            }
        }
        Ok(())
    }

    /// A regular file: checked against the byte budget and the free space before anything is
    /// created, then streamed through a fixed buffer. Returns the bytes written.
    pub(super) fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &EntryPath,
        meta: &Meta,
        shown: &str,
    ) -> Result<u64, UnpackError> {
        let name = path.name_or_err(shown)?;
        let size = entry.size();
        self.budget.check_declared(shown, size)?;
        self.space.check_file(self.root.as_fd(), shown, size, self.budget.used())?;
        let parent = self.parent_dir(path.parent(), shown)?;
        self.replace(parent.as_fd(), path, shown)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd =
            rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(0o600)).map_err(io_err(shown, "create"))?;
        let mut file = File::from(fd);
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(UnpackError::Tar { path: shown.to_owned(), source: e }),
            };
            let chunk = self.buf.get(..n).ok_or_else(|| unsafe_path(shown, "reader returned more than asked"))?;
            self.budget.consume(shown, n as u64)?;
            if chunk.iter().all(|b| *b == 0) {
                // Leave a hole instead of writing zeros (sparse files, zero-filled images).
                file.seek(SeekFrom::Current(n as i64)).map_err(io_err(shown, "seek in"))?;
            } else {
                file.write_all(chunk).map_err(io_err(shown, "write"))?;
            }
            written += n as u64;
            self.space.written(self.root.as_fd(), shown, n as u64, size.saturating_sub(written))?;
        }
        if written != size {
            return Err(UnpackError::Truncated {
                path: shown.to_owned(),
                reason: format!("file data ends after {written} of {size} bytes"),
            });
        }
        file.set_len(written).map_err(io_err(shown, "set the length of"))?;
        apply_fd(file.as_fd(), meta, self.chown, true, shown)?;
        self.stats.bytes = self.budget.used();
        Ok(written)
    }

    /// A directory: created, or, if one is already there, only its metadata updated. Its times
    /// are set at the end. The root itself (`./`) gets its metadata too.
    pub(super) fn make_dir(&mut self, path: &EntryPath, meta: &Meta, shown: &str) -> Result<(), UnpackError> {
        let fd = match path.name() {
            None => open_dir_in_root(self.root.as_fd(), &[]).map_err(io_err(shown, "open layer root for"))?,
            Some(name) => {
                let parent = self.parent_dir(path.parent(), shown)?;
                match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if is_dir(&st) => {}
                    Ok(_) => rustix::fs::unlinkat(&parent, name, AtFlags::empty())
                        .map_err(io_err(shown, "remove the existing entry at"))?,
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(io_err(shown, "stat")(e)),
                }
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err(shown, "create directory")(e)),
                }
                open_child_dir(parent.as_fd(), name).map_err(io_err(shown, "open directory"))?
            }
        };
        apply_fd(fd.as_fd(), meta, self.chown, false, shown)?;
        self.dir_times.record(path.components(), meta.times, shown)
    }

    /// A symlink; `target` is stored verbatim and never followed by us.
    pub(super) fn make_symlink(
        &mut self,
        path: &EntryPath,
        target: &[u8],
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let name = path.name_or_err(shown)?;
        let parent = self.parent_dir(path.parent(), shown)?;
        self.replace(parent.as_fd(), path, shown)?;
        rustix::fs::symlinkat(target, &parent, name).map_err(io_err(shown, "create symlink"))?;
        apply_at(parent.as_fd(), name, meta, self.chown, true, shown)
    }

    /// A character or block device, or a FIFO.
    pub(super) fn make_node(
        &mut self,
        path: &EntryPath,
        kind: FileType,
        dev: Dev,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let name = path.name_or_err(shown)?;
        let parent = self.parent_dir(path.parent(), shown)?;
        self.replace(parent.as_fd(), path, shown)?;
        rustix::fs::mknodat(&parent, name, kind, Mode::from_raw_mode(0o600), dev)
            .map_err(io_err(shown, "create device node or FIFO"))?;
        apply_at(parent.as_fd(), name, meta, self.chown, false, shown)
    }

    /// A hard link to `target_raw`, looked up in this layer, then in the lower layers, as the
    /// merged view would show it. The link shares the target's inode and metadata (none of the
    /// entry's header is applied); a symlink target is linked itself, not followed.
    pub(super) fn make_hardlink(
        &mut self,
        path: &EntryPath,
        target_raw: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let name = path.name_or_err(shown)?;
        let target_shown = show(target_raw);
        let target = EntryPath::parse(target_raw).map_err(|r| unsafe_path(shown, format!("hard link target: {r}")))?;
        let found = {
            let lowers = self.lowers.get(shown)?;
            let layers: Vec<BorrowedFd<'_>> =
                std::iter::once(self.root.as_fd()).chain(lowers.iter().map(AsFd::as_fd)).collect();
            lookup(&layers, target.components()).map_err(io_err(shown, "look up the hard link target of"))?
        };
        let (tparent, tname, tstat, layer) = match found {
            Lookup::Found { parent, name, stat, layer } => (parent, name, stat, layer),
            Lookup::Missing(reason) => {
                return Err(UnpackError::HardlinkTargetNotFound {
                    path: shown.to_owned(),
                    target: target_shown,
                    reason,
                })
            }
        };
        if is_dir(&tstat) {
            return Err(unsafe_path(shown, format!("hard link target {target_shown:?} is a directory")));
        }
        let parent = self.parent_dir(path.parent(), shown)?;
        if let Ok(st) = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            if st.st_dev == tstat.st_dev && st.st_ino == tstat.st_ino {
                return Ok(());
            }
        }
        self.replace(parent.as_fd(), path, shown)?;
        rustix::fs::linkat(&tparent, tname.as_slice(), &parent, name, AtFlags::empty())
            .map_err(io_err(shown, "hard link (layers must share one filesystem)"))?;
        debug!(path = ?shown, target = ?target_shown, layer, "hard link");
        Ok(())
    }
}
