//! Bounds on what a hostile layer can make us do: bytes written, entries, name lengths,
//! extended attributes, the memory the tar parser allocates for extension headers, and the
//! free space left on the target filesystem (checked before each file and while it is written,
//! holes counted, so a decompression bomb cannot fill the guest's tmpfs, i.e. its RAM).

use std::cell::Cell;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::rc::Rc;

use super::error::{io_err, UnpackError};

/// Free space always left on the target filesystem: this share of its size...
pub const FREE_SPACE_RESERVE_PERCENT: u64 = 5;
/// ... but never more than this many bytes. A guest's tmpfs store of 1 GiB keeps 51 MiB
/// free; a 250 GB disk (a development host) keeps 64 MiB, not 12.5 GB.
pub const FREE_SPACE_RESERVE_MAX: u64 = 64 << 20;

/// While a file is written, the free space is checked again every this many bytes, so that
/// concurrent unpacks (or anything else filling the filesystem) stop before it is full.
const FREE_SPACE_CHECK_EVERY: u64 = 1 << 20;

/// Slack, on top of names and xattrs, allowed for the headers and other records (times, ids,
/// sparse maps) the tar parser reads between two entries.
const METADATA_SLACK: u64 = 64 << 10;

/// Limits applied while unpacking one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of regular-file content the layer may write. `u64::MAX` means "whatever fits
    /// in the free space of the target filesystem" (which is checked in any case).
    pub max_bytes: u64,
    /// Number of tar entries (files, directories, links, whiteouts, ...).
    pub max_entries: u64,
    /// Length in bytes of an entry name or a link target, as written in the archive.
    pub max_path_len: usize,
    /// Total size (names + values) of the extended attributes of one entry.
    pub max_xattr_bytes: usize,
    /// Free space kept on the target filesystem: [`Self::free_space_reserve_percent`] of its
    /// size, capped at this many bytes.
    pub free_space_reserve_bytes: u64,
    pub free_space_reserve_percent: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: u64::MAX,
            max_entries: 1_000_000,
            max_path_len: 4096,
            max_xattr_bytes: 64 << 10,
            free_space_reserve_bytes: FREE_SPACE_RESERVE_MAX,
            free_space_reserve_percent: FREE_SPACE_RESERVE_PERCENT,
        }
    }
}

impl Limits {
    /// Bytes the tar parser may read between two entries (GNU long name + long link, PAX records,
    /// headers). It buffers these whole, so this bounds its allocations.
    pub(crate) fn metadata_budget(&self) -> u64 {
        let path = u64::try_from(self.max_path_len).unwrap_or(u64::MAX);
        let xattr = u64::try_from(self.max_xattr_bytes).unwrap_or(u64::MAX);
        path.saturating_mul(2).saturating_add(xattr).saturating_add(METADATA_SLACK)
    }
}

/// Running count of regular-file bytes against [`Limits::max_bytes`].
#[derive(Debug)]
pub(crate) struct ByteBudget {
    limit: u64,
    used: u64,
}

impl ByteBudget {
    pub(crate) fn new(limit: u64) -> Self {
        ByteBudget { limit, used: 0 }
    }

    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    /// Refuses a file whose declared size does not fit the remaining budget.
    pub(crate) fn check_declared(&self, path: &str, size: u64) -> Result<(), UnpackError> {
        if size > self.remaining() {
            return Err(UnpackError::TooLarge { path: path.to_owned(), size, limit: self.remaining() });
        }
        Ok(())
    }

    /// Accounts `n` bytes about to be written; refuses them if they exceed the budget.
    pub(crate) fn consume(&mut self, path: &str, n: u64) -> Result<(), UnpackError> {
        match self.used.checked_add(n) {
            Some(total) if total <= self.limit => {
                self.used = total;
                Ok(())
            }
            _ => Err(UnpackError::TooLarge {
                path: path.to_owned(),
                size: self.used.saturating_add(n),
                limit: self.limit,
            }),
        }
    }
}

/// Reserve kept free on a filesystem of `total` bytes.
pub(crate) fn free_space_reserve(limits: &Limits, total: u64) -> u64 {
    (total / 100).saturating_mul(limits.free_space_reserve_percent.min(100)).min(limits.free_space_reserve_bytes)
}

/// The free-space guard of one unpack. Zero-filled data is written as holes, so the space a
/// layer really takes says nothing about what a decompression bomb costs: the layer's file
/// bytes, holes included, may not exceed what was free (above the reserve) when it started.
/// On top of that, every file is checked before it is created and again every
/// [`FREE_SPACE_CHECK_EVERY`] bytes while it is written, against the space free right then.
/// Filesystems that report no size (`f_blocks == 0`, e.g. some FUSE mounts) are not checked.
#[derive(Debug)]
pub(crate) struct FreeSpace {
    limits: Limits,
    /// Bytes free above the reserve when the unpack started; `None` when not checked.
    layer_allowance: Option<u64>,
    unchecked: u64,
}

/// (bytes free above the reserve, reserve), or `None` for a filesystem without a size.
fn free_above_reserve(limits: &Limits, fs: BorrowedFd<'_>, path: &str) -> Result<Option<(u64, u64)>, UnpackError> {
    let vfs = rustix::fs::fstatvfs(fs).map_err(io_err(path, "statvfs of the layer filesystem for"))?;
    if vfs.f_blocks == 0 {
        return Ok(None);
    }
    let total = vfs.f_blocks.saturating_mul(vfs.f_frsize);
    let avail = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    let reserve = free_space_reserve(limits, total);
    Ok(Some((avail.saturating_sub(reserve), reserve)))
}

impl FreeSpace {
    pub(crate) fn new(limits: &Limits, fs: BorrowedFd<'_>) -> Result<Self, UnpackError> {
        let layer_allowance = free_above_reserve(limits, fs, "(layer root)")?.map(|(free, _)| free);
        Ok(FreeSpace { limits: *limits, layer_allowance, unchecked: 0 })
    }

    fn free_now(&self, fs: BorrowedFd<'_>, path: &str) -> Result<Option<(u64, u64)>, UnpackError> {
        free_above_reserve(&self.limits, fs, path)
    }

    /// Before a file of `size` bytes is created; `layer_used` bytes of this layer are written.
    pub(crate) fn check_file(
        &mut self,
        fs: BorrowedFd<'_>,
        path: &str,
        size: u64,
        layer_used: u64,
    ) -> Result<(), UnpackError> {
        if size == 0 {
            return Ok(());
        }
        let Some((free, reserve)) = self.free_now(fs, path)? else { return Ok(()) };
        if size > free {
            return Err(UnpackError::NoSpace { path: path.to_owned(), what: "this file", size, free, reserve });
        }
        if let Some(allowance) = self.layer_allowance {
            let total = layer_used.saturating_add(size);
            if total > allowance {
                return Err(UnpackError::NoSpace {
                    path: path.to_owned(),
                    what: "the layer's files so far (zero-filled holes included)",
                    size: total,
                    free: allowance,
                    reserve,
                });
            }
        }
        self.unchecked = 0;
        Ok(())
    }

    /// After `n` more bytes of a file were written, `remaining` still to come.
    pub(crate) fn written(
        &mut self,
        fs: BorrowedFd<'_>,
        path: &str,
        n: u64,
        remaining: u64,
    ) -> Result<(), UnpackError> {
        self.unchecked = self.unchecked.saturating_add(n);
        if self.unchecked < FREE_SPACE_CHECK_EVERY {
            return Ok(());
        }
        self.unchecked = 0;
        let Some((free, reserve)) = self.free_now(fs, path)? else { return Ok(()) };
        if remaining > free {
            return Err(UnpackError::NoSpace {
                path: path.to_owned(),
                what: "the rest of this file",
                size: remaining,
                free,
                reserve,
            });
        }
        Ok(())
    }
}

/// Shared state between [`GuardedReader`] and the unpack loop.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pos: Cell<u64>,
    limit: Cell<Option<u64>>,
    eof: Cell<bool>,
    tripped: Cell<bool>,
}

impl StreamState {
    /// Allows at most `budget` more bytes to be read until [`Self::disarm`].
    pub(crate) fn arm(&self, budget: u64) {
        self.limit.set(Some(self.pos.get().saturating_add(budget)));
    }

    pub(crate) fn disarm(&self) {
        self.limit.set(None);
    }

    /// Bytes read from the underlying reader so far.
    pub(crate) fn pos(&self) -> u64 {
        self.pos.get()
    }

    /// Whether the underlying reader reported end of stream.
    pub(crate) fn eof(&self) -> bool {
        self.eof.get()
    }

    /// Whether a read was refused because the armed budget was exhausted.
    pub(crate) fn tripped(&self) -> bool {
        self.tripped.get()
    }
}

/// The reader handed to the tar parser. While armed it refuses to deliver more than the budget:
/// the parser reads GNU long names and PAX extension records whole into memory, so this is what
/// keeps a 10 GB "file name" from exhausting the guest's memory. It also records end of stream,
/// which tells a missing end-of-archive marker from a real one.
pub(crate) struct GuardedReader<R> {
    inner: R,
    state: Rc<StreamState>,
}

impl<R> GuardedReader<R> {
    pub(crate) fn new(inner: R, state: Rc<StreamState>) -> Self {
        GuardedReader { inner, state }
    }
}

impl<R: Read> Read for GuardedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pos = self.state.pos.get();
        let mut want = buf.len();
        if let Some(limit) = self.state.limit.get() {
            let left = limit.saturating_sub(pos);
            if left == 0 && !buf.is_empty() {
                self.state.tripped.set(true);
                return Err(io::Error::other("tar extension headers exceed the metadata budget"));
            }
            want = want.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        let Some(window) = buf.get_mut(..want) else {
            return Err(io::Error::other("read window out of range"));
        };
        let n = self.inner.read(window)?;
        if n == 0 && want > 0 {
            self.state.eof.set(true);
        }
        self.state.pos.set(pos.saturating_add(n as u64));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_budget_refuses_declared_and_streamed_excess() {
        let mut b = ByteBudget::new(100);
        assert!(b.check_declared("f", 100).is_ok());
        assert!(matches!(b.check_declared("f", 101), Err(UnpackError::TooLarge { size: 101, limit: 100, .. })));
        b.consume("f", 60).unwrap();
        assert!(matches!(b.check_declared("g", 41), Err(UnpackError::TooLarge { limit: 40, .. })));
        assert!(matches!(b.consume("g", 41), Err(UnpackError::TooLarge { size: 101, limit: 100, .. })));
        assert_eq!(b.used(), 60);
        b.consume("g", 40).unwrap();
        assert_eq!(b.remaining(), 0);
        assert!(b.consume("h", u64::MAX).is_err());
    }

    #[test]
    fn free_space_reserve_is_five_percent_capped_at_64_mib() {
        let l = Limits::default();
        assert_eq!(free_space_reserve(&l, 100 << 20), (100 << 20) / 100 * 5);
        assert_eq!(free_space_reserve(&l, 1 << 30), (1 << 30) / 100 * 5);
        assert_eq!(free_space_reserve(&l, 100 << 30), 64 << 20);
        assert_eq!(free_space_reserve(&l, 0), 0);
        assert_eq!(free_space_reserve(&l, u64::MAX), 64 << 20);
        let small = Limits { free_space_reserve_bytes: 1 << 20, free_space_reserve_percent: 10, ..l };
        assert_eq!(free_space_reserve(&small, 64 << 20), 1 << 20);
        assert_eq!(free_space_reserve(&small, 4 << 20), (4 << 20) / 100 * 10);
    }

    #[test]
    fn guarded_reader_stops_at_armed_budget_and_records_eof() {
        let state = Rc::new(StreamState::default());
        let data = vec![7u8; 1000];
        let mut r = GuardedReader::new(&data[..], state.clone());
        let mut buf = [0u8; 300];
        state.arm(500);
        assert_eq!(r.read(&mut buf).unwrap(), 300);
        assert_eq!(r.read(&mut buf).unwrap(), 200);
        assert!(r.read(&mut buf).is_err());
        assert!(state.tripped());
        state.disarm();
        assert_eq!(r.read(&mut buf).unwrap(), 300);
        assert_eq!(r.read(&mut buf).unwrap(), 200);
        assert!(!state.eof());
        assert_eq!(r.read(&mut buf).unwrap(), 0);
        assert!(state.eof());
        assert_eq!(state.pos(), 1000);
    }
}
