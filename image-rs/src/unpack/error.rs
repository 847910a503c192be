//! Errors of the layer unpacker and of [`super::flatten_layers`].
//!
//! Every variant names the path it is about (the tar entry's name as written in the archive, or
//! the file of a layer directory for `flatten_layers`) and the cause. Paths come from hostile
//! input, so `Display` prints them with `{:?}`: control characters and newlines are escaped and
//! cannot forge log lines.

use std::io;

/// Why a layer could not be unpacked (or flattened).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The entry's name (or hard link target) is not acceptable: empty, contains NUL, names the
    /// layer root for a non-directory, is a malformed whiteout, or would need a path outside the
    /// root to be created.
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath { path: String, reason: String },

    /// A regular file is larger than the remaining byte budget or the free space of the target
    /// filesystem (minus a reserve). Refused before anything of it is written.
    #[error("{path:?}: {size} bytes exceed the limit of {limit} bytes")]
    TooLarge { path: String, size: u64, limit: u64 },

    /// Writing `size` more bytes would eat into the reserve kept free on the store's filesystem
    /// (see [`super::Limits::free_space_reserve_bytes`]).
    #[error("{path:?}: {what} need {size} bytes, but only {free} bytes are free on the store's filesystem above the {reserve}-byte reserve")]
    NoSpace { path: String, what: &'static str, size: u64, free: u64, reserve: u64 },

    /// The layer has more entries than [`super::Limits::max_entries`].
    #[error("{path:?}: layer has more than {limit} entries")]
    TooManyEntries { path: String, limit: u64 },

    /// An entry name or link target is longer than [`super::Limits::max_path_len`].
    #[error("{path:?}: name or link target is {len} bytes long, the limit is {limit}")]
    PathTooLong { path: String, len: usize, limit: usize },

    /// Some other bound was hit (extended attributes of one entry, tar extension headers, the
    /// memory kept for directory timestamps).
    #[error("{path:?}: {what} exceed the limit of {limit} bytes")]
    LimitExceeded { path: String, what: &'static str, limit: u64 },

    /// A hard link's target exists neither in the layer being unpacked nor, visibly, in a lower
    /// layer.
    #[error("{path:?}: hard link target {target:?} not found: {reason}")]
    HardlinkTargetNotFound { path: String, target: String, reason: String },

    /// The entry type is not one a container layer may contain.
    #[error("{path:?}: unsupported tar entry type {kind}")]
    UnsupportedEntry { path: String, kind: String },

    /// A header field could not be parsed or has an impossible value.
    #[error("{path:?}: invalid tar header: {reason}")]
    InvalidHeader { path: String, reason: String },

    /// The tar stream ended in the middle of an entry or without the end-of-archive marker.
    #[error("{path:?}: tar stream is truncated: {reason}")]
    Truncated { path: String, reason: String },

    /// Reading or parsing the tar stream failed (the underlying reader's error, or a malformed
    /// archive).
    #[error("reading the tar stream at {path:?}: {source}")]
    Tar {
        path: String,
        #[source]
        source: io::Error,
    },

    /// A filesystem operation failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// The path this error is about.
    pub fn path(&self) -> &str {
        match self {
            UnpackError::UnsafePath { path, .. }
            | UnpackError::TooLarge { path, .. }
            | UnpackError::NoSpace { path, .. }
            | UnpackError::TooManyEntries { path, .. }
            | UnpackError::PathTooLong { path, .. }
            | UnpackError::LimitExceeded { path, .. }
            | UnpackError::HardlinkTargetNotFound { path, .. }
            | UnpackError::UnsupportedEntry { path, .. }
            | UnpackError::InvalidHeader { path, .. }
            | UnpackError::Truncated { path, .. }
            | UnpackError::Tar { path, .. }
            | UnpackError::Io { path, .. } => path,
        }
    }
}

/// Lossy, printable form of a raw (possibly non-UTF-8) name.
pub(crate) fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `map_err` helper: an [`UnpackError::Io`] for `op` on `path`.
pub(crate) fn io_err<'a, E: Into<io::Error>>(path: &'a str, op: &'static str) -> impl FnOnce(E) -> UnpackError + 'a {
    move |e| UnpackError::Io { path: path.to_owned(), op, source: e.into() }
}

pub(crate) fn unsafe_path(path: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::UnsafePath { path: path.to_owned(), reason: reason.into() }
}

pub(crate) fn invalid_header(path: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::InvalidHeader { path: path.to_owned(), reason: reason.into() }
}
