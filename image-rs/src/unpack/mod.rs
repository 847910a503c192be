//! Unpacks one OCI image layer (an uncompressed tar stream) into a directory in overlayfs layer
//! format, ready to be used as an overlay `lowerdir`; [`flatten_layers`] merges such directories
//! when overlayfs is unavailable.
//!
//! **It must never create, modify or follow anything outside the layer root**, whatever the
//! archive says (`../`, absolute names, symlinks planted by earlier entries, hard links to
//! outside files), and must never let a hostile archive exhaust memory or disk: the registry and
//! the network are untrusted, and this runs inside the confidential VM.
//!
//! # How it stays inside the root
//! - Entry names are normalised lexically and **clamped**: a leading `/` is dropped and a `..`
//!   that would leave the root is dropped (the OCI/containerd convention), so `../x` and `/x` both
//!   land at `ROOT/x`. A warning is logged for every clamped name. Names that are empty, contain
//!   NUL, or name the root itself in a non-directory entry are rejected
//!   ([`UnpackError::UnsafePath`]).
//! - The parent directory of every entry is opened with `openat2(RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS)` from a descriptor of the root: symlinks inside the path (from earlier
//!   entries) resolve as if the root were `/`. So `a -> /etc` then `a/passwd` writes
//!   `ROOT/etc/passwd`; a symlink whose confined target does not exist makes the entry fail.
//! - The last component is handled with `*at` calls on that parent descriptor that never follow
//!   it: existing entries are removed first, files are created with `O_CREAT | O_EXCL |
//!   O_NOFOLLOW`, owner and times are set with `AT_SYMLINK_NOFOLLOW`, modes of non-regular files
//!   through an `O_PATH | O_NOFOLLOW` descriptor (symlinks get no chmod), xattrs of symlinks and
//!   devices through `/proc/self/fd/<parent>/<name>` with `lsetxattr`.
//! - Hard link targets are looked up only inside the layer roots (this one, then `lower_roots`),
//!   component by component without following anything (see `whiteout.rs` for the visibility
//!   rules).
//!
//! # Layer semantics
//! - Whiteouts become overlayfs whiteouts (see `whiteout.rs` for the exact rules: `.wh.NAME` →
//!   char device 0:0, `.wh..wh..opq` → `trusted.overlay.opaque=y`, other `.wh..wh.*` skipped).
//! - A later entry replaces an earlier one at the same name; a directory over a directory only
//!   updates its metadata; a non-directory over a directory removes the tree.
//! - Owner (numeric uid/gid), mode (including setuid/setgid/sticky, set after chown), times
//!   (directories at the end, deepest first) and the allowed xattrs (`user.*`, `trusted.*` but
//!   not `trusted.overlay.*`, `security.capability`; others skipped) are applied; hard links get
//!   none of their header's metadata.
//! - Parent directories the archive does not list are created root-owned 0755, or with the owner,
//!   mode and times of the same directory in a lower layer.
//! - File data is streamed through a 64 KiB buffer; all-zero chunks are left as holes, so GNU
//!   sparse files and zero-filled images stay sparse.
//! - Entry types a container layer has no use for (volume labels, multi-volume continuations,
//!   unrecognised type flags) are rejected; PAX global headers are ignored. A PAX record the tar
//!   crate cannot parse (it splits records at newlines, so a binary xattr value containing `\n`)
//!   is rejected rather than silently dropped.
//!
//! # Limits
//! [`Limits`] bounds entries, name lengths, xattr bytes and file bytes. Every regular file is
//! checked against the remaining byte budget and the free space of the target filesystem, minus
//! a reserve (by default the larger of 64 MiB and 5% of its size), **before** it is created;
//! bytes are counted again while they are written, and the free space is checked again every
//! MiB. A layer's file bytes, zero-filled holes included, may not exceed what was free above
//! the reserve when it started, so a zeros bomb stops after that much decompression. The tar parser buffers long names and PAX records whole, so the
//! reader it gets refuses to deliver more than a bounded amount between two entries.
//!
//! The tar stream is read only up to the end-of-archive marker: the caller drains the rest (for
//! its digest). A stream that ends without the marker, or in the middle of an entry, is an error.
//! On any error the root is left partly written: the caller discards it.
//! Requires Linux ≥ 5.6 (`openat2`) and, for xattrs on symlinks and devices, a mounted `/proc`.

mod entry;
mod error;
mod flatten;
mod limits;
mod meta;
mod path;
mod whiteout;

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::FileType;
use tracing::{debug, info, warn};

pub use error::UnpackError;
pub use flatten::flatten_layers;
pub use limits::{Limits, FREE_SPACE_RESERVE_MAX, FREE_SPACE_RESERVE_PERCENT};

use error::{invalid_header, show, unsafe_path};
use limits::{ByteBudget, FreeSpace, GuardedReader, StreamState};
use meta::{meta_from_entry, DirTimes};
use path::{open_dir_path, EntryPath};
use whiteout::{classify, Class};

/// Size of the buffer file data is streamed through.
const COPY_BUFFER: usize = 64 << 10;

/// Called the first time the lower layers are needed (a hard link into them, or a parent
/// directory the archive does not list), before they are opened: lets a caller unpack layers
/// concurrently and block only when a layer really depends on the ones below. Returns false to
/// abandon the unpack.
#[derive(Clone)]
pub struct LowerGate(pub std::sync::Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for LowerGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LowerGate")
    }
}

/// How to unpack a layer.
#[derive(Debug, Clone)]
pub struct UnpackOptions<'a> {
    /// Committed lower layers of the same image, top-most first, on the same filesystem as the
    /// layer root: where hard link targets not in this layer are looked up.
    pub lower_roots: &'a [PathBuf],
    /// Waited on before `lower_roots` are first opened (see [`LowerGate`]).
    pub lower_gate: Option<LowerGate>,
    pub limits: Limits,
    /// `chown` to the uid/gid of the headers (true in production; needs root).
    pub preserve_ownership: bool,
}

impl Default for UnpackOptions<'_> {
    fn default() -> Self {
        UnpackOptions { lower_roots: &[], lower_gate: None, limits: Limits::default(), preserve_ownership: true }
    }
}

/// The lower layers, opened on first use.
pub(crate) struct Lowers {
    paths: Vec<PathBuf>,
    gate: Option<LowerGate>,
    fds: Option<Vec<OwnedFd>>,
}

impl Lowers {
    pub(crate) fn get(&mut self, shown: &str) -> Result<&[OwnedFd], UnpackError> {
        if self.fds.is_none() {
            if let Some(gate) = &self.gate {
                if !(gate.0)() {
                    return Err(UnpackError::Io {
                        path: shown.to_owned(),
                        op: "wait for the lower layers needed by",
                        source: std::io::Error::new(std::io::ErrorKind::Interrupted, "pull abandoned"),
                    });
                }
            }
            let fds = self.paths.iter().map(|p| open_dir_path(p)).collect::<Result<Vec<_>, _>>()?;
            self.fds = Some(fds);
        }
        Ok(self.fds.as_deref().unwrap_or(&[]))
    }
}

/// What one unpack did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries processed (extension headers folded into their entry by the parser excluded).
    pub entries: u64,
    /// Regular-file bytes written.
    pub bytes: u64,
    /// Whiteouts and opaque markers created.
    pub whiteouts: u64,
}

/// State of one unpack.
pub(crate) struct Unpacker {
    root: OwnedFd,
    lowers: Lowers,
    limits: Limits,
    chown: bool,
    stats: UnpackStats,
    budget: ByteBudget,
    space: FreeSpace,
    dir_times: DirTimes,
    buf: Vec<u8>,
}

/// Unpacks the tar stream `tar` into the existing (empty) directory `root`, in overlayfs layer
/// format. Reads `tar` up to the end-of-archive marker and no further.
pub fn unpack_layer<R: Read>(tar: R, root: &Path, opts: &UnpackOptions) -> Result<UnpackStats, UnpackError> {
    let lowers = Lowers { paths: opts.lower_roots.to_vec(), gate: opts.lower_gate.clone(), fds: None };
    let root = open_dir_path(root)?;
    let space = FreeSpace::new(&opts.limits, root.as_fd())?;
    let mut u = Unpacker {
        root,
        lowers,
        limits: opts.limits,
        chown: opts.preserve_ownership,
        stats: UnpackStats::default(),
        budget: ByteBudget::new(opts.limits.max_bytes),
        space,
        dir_times: DirTimes::default(),
        buf: vec![0; COPY_BUFFER],
    };
    let state = Rc::new(StreamState::default());
    let mut archive = tar::Archive::new(GuardedReader::new(tar, state.clone()));
    let mut entries =
        archive.entries().map_err(|e| UnpackError::Tar { path: "(start of archive)".into(), source: e })?;
    let meta_budget = opts.limits.metadata_budget();
    let mut last = String::from("(start of archive)");
    loop {
        state.arm(meta_budget);
        let next = entries.next();
        state.disarm();
        let mut entry = match next {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(stream_error(&state, &last, meta_budget, e)),
        };
        let shown = show(&entry.path_bytes());
        u.stats.entries += 1;
        if u.stats.entries > opts.limits.max_entries {
            return Err(UnpackError::TooManyEntries { path: shown, limit: opts.limits.max_entries });
        }
        let consumed = u.entry(&mut entry, &shown)?;
        let rest =
            io::copy(&mut entry, &mut io::sink()).map_err(|e| UnpackError::Tar { path: shown.clone(), source: e })?;
        let size = entry.size();
        if consumed.saturating_add(rest) != size {
            return Err(UnpackError::Truncated {
                path: shown,
                reason: format!("entry data ends after {} of {size} bytes", consumed.saturating_add(rest)),
            });
        }
        last = shown;
    }
    if state.eof() && state.pos() > 0 {
        return Err(UnpackError::Truncated {
            path: last,
            reason: "the stream ends without the end-of-archive marker".into(),
        });
    }
    u.finish()
}

/// Classifies an error of the tar parser while it reads the headers following entry `last`.
fn stream_error(state: &StreamState, last: &str, budget: u64, e: io::Error) -> UnpackError {
    if state.tripped() {
        UnpackError::LimitExceeded {
            path: last.to_owned(),
            what: "tar extension headers (long names, PAX records) following this entry",
            limit: budget,
        }
    } else if state.eof() {
        UnpackError::Truncated { path: last.to_owned(), reason: format!("in the headers following this entry: {e}") }
    } else {
        UnpackError::Tar { path: last.to_owned(), source: e }
    }
}

impl Unpacker {
    /// Creates one entry; returns how many bytes of its data were consumed.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<u64, UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            debug!(path = ?shown, "ignoring PAX global header");
            return Ok(0);
        }
        let raw = entry.path_bytes().into_owned();
        let limit = self.limits.max_path_len;
        if raw.len() > limit {
            return Err(UnpackError::PathTooLong { path: shown.to_owned(), len: raw.len(), limit });
        }
        let path = EntryPath::parse(&raw).map_err(|reason| unsafe_path(shown, reason))?;
        if path.clamped() {
            warn!(path = ?shown, "entry name leads outside the layer root; clamped to the root");
        }
        match classify(&path) {
            Class::Normal => {}
            Class::Skip(reason) => {
                warn!(path = ?shown, reason, "skipping entry");
                return Ok(0);
            }
            Class::Reject(reason) => return Err(unsafe_path(shown, reason)),
            Class::Opaque => {
                self.opaque(&path, shown)?;
                return Ok(0);
            }
            Class::Whiteout(hidden) => {
                self.whiteout(&path, hidden, shown)?;
                return Ok(0);
            }
        }
        use tar::EntryType as T;
        match kind {
            T::Regular if raw.last() == Some(&b'/') && entry.header().as_bytes().get(156) == Some(&0) => {
                // Pre-POSIX archives (type flag NUL) mark directories with a trailing slash only.
                let meta = meta_from_entry(entry, shown, &self.limits)?;
                self.make_dir(&path, &meta, shown)?;
                Ok(0)
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let meta = meta_from_entry(entry, shown, &self.limits)?;
                self.write_file(entry, &path, &meta, shown)
            }
            T::Directory => {
                let meta = meta_from_entry(entry, shown, &self.limits)?;
                self.make_dir(&path, &meta, shown)?;
                Ok(0)
            }
            T::Symlink => {
                let target = self.link_target(entry, shown)?;
                let meta = meta_from_entry(entry, shown, &self.limits)?;
                self.make_symlink(&path, &target, &meta, shown)?;
                Ok(0)
            }
            T::Link => {
                let target = self.link_target(entry, shown)?;
                self.make_hardlink(&path, &target, shown)?;
                Ok(0)
            }
            T::Char | T::Block | T::Fifo => {
                let (file_type, dev) = match kind {
                    T::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let header = entry.header();
                        let major = header.device_major().map_err(|e| invalid_header(shown, e.to_string()))?;
                        let minor = header.device_minor().map_err(|e| invalid_header(shown, e.to_string()))?;
                        let (Some(major), Some(minor)) = (major, minor) else {
                            return Err(invalid_header(shown, "device entry without device numbers"));
                        };
                        let ty = if kind == T::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
                        (ty, rustix::fs::makedev(major, minor))
                    }
                };
                let meta = meta_from_entry(entry, shown, &self.limits)?;
                self.make_node(&path, file_type, dev, &meta, shown)?;
                Ok(0)
            }
            other => Err(UnpackError::UnsupportedEntry {
                path: shown.to_owned(),
                kind: format!("{other:?} ({:?})", char::from(other.as_byte())),
            }),
        }
    }

    /// The link target of a symlink or hard link entry, checked for presence, NUL and length.
    fn link_target<R: Read>(&self, entry: &tar::Entry<'_, R>, shown: &str) -> Result<Vec<u8>, UnpackError> {
        let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
        if target.is_empty() {
            return Err(invalid_header(shown, "link entry without a target"));
        }
        if target.contains(&0) {
            return Err(unsafe_path(shown, "link target contains a NUL byte"));
        }
        let limit = self.limits.max_path_len;
        if target.len() > limit {
            return Err(UnpackError::PathTooLong { path: shown.to_owned(), len: target.len(), limit });
        }
        Ok(target)
    }

    /// Sets directory times (deepest first) and returns the statistics.
    fn finish(self) -> Result<UnpackStats, UnpackError> {
        let Unpacker { root, dir_times, mut stats, budget, .. } = self;
        dir_times.apply(root.as_fd())?;
        stats.bytes = budget.used();
        info!(entries = stats.entries, bytes = stats.bytes, whiteouts = stats.whiteouts, "layer unpacked");
        Ok(stats)
    }
}
