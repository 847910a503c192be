//! OCI whiteouts in overlayfs format, and lookups through a stack of layers that honour them.
//!
//! - `D/.wh.NAME` becomes a character device 0:0 `D/NAME` (an overlayfs whiteout).
//! - `D/.wh..wh..opq` sets `trusted.overlay.opaque=y` on `D`.
//! - Any other name starting with `.wh..wh.` (AUFS bookkeeping such as `.wh..wh.plnk`, also as a
//!   directory component) is skipped with a warning: it carries no meaning in OCI layers.
//! - `.wh.` alone, `.wh..` and `.wh...` (whiteouts of nothing, `.` or `..`), and a `.wh.X` name
//!   used as a parent directory, are rejected as unsafe paths.
//! - Per the OCI spec a whiteout only hides lower layers: if the same layer already holds `NAME`,
//!   that entry is kept (and a warning logged). A later entry `NAME` replaces the whiteout.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, Stat, XattrFlags};
use rustix::io::Errno;
use tracing::{debug, warn};

use super::error::{io_err, UnpackError};
use super::meta::OPAQUE_XATTR;
use super::path::{open_child_dir, EntryPath};
use super::Unpacker;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_NAME: &[u8] = b".wh..wh..opq";

/// What an entry name means with respect to whiteouts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Class<'p> {
    /// An ordinary name.
    Normal,
    /// `.wh.NAME`: hide `NAME` of lower layers.
    Whiteout(&'p [u8]),
    /// `.wh..wh..opq`: hide all lower-layer children of the parent directory.
    Opaque,
    /// Ignore the entry (reason).
    Skip(&'static str),
    /// Refuse the entry (reason).
    Reject(&'static str),
}

pub(crate) fn classify(path: &EntryPath) -> Class<'_> {
    let comps = path.components();
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        if comp.starts_with(META_PREFIX) {
            if last && comp.as_slice() == OPAQUE_NAME {
                return Class::Opaque;
            }
            return Class::Skip("AUFS metadata name (.wh..wh.*) has no meaning in OCI layers");
        }
        if let Some(hidden) = comp.strip_prefix(WHITEOUT_PREFIX) {
            if !last {
                return Class::Reject("a whiteout name is used as a parent directory");
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Class::Reject("whiteout of an empty, \".\" or \"..\" name");
            }
            return Class::Whiteout(hidden);
        }
    }
    Class::Normal
}

/// An overlayfs whiteout: a character device with device number 0:0.
pub(crate) fn is_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Whether directory `dir` carries `trusted.overlay.opaque=y`.
pub(crate) fn is_opaque(dir: BorrowedFd<'_>) -> Result<bool, Errno> {
    let mut buf = [0u8; 8];
    match rustix::fs::fgetxattr(dir, OPAQUE_XATTR, &mut buf[..]) {
        Ok(n) => Ok(buf.get(..n) == Some(&b"y"[..])),
        Err(Errno::NODATA | Errno::NOTSUP | Errno::RANGE) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Result of looking a path up through a stack of layers.
#[derive(Debug)]
pub(crate) enum Lookup {
    Found {
        /// The directory holding the object, in layer `layer`.
        parent: OwnedFd,
        name: Vec<u8>,
        stat: Stat,
        layer: usize,
    },
    /// Not visible; the reason says why.
    Missing(String),
}

/// Finds `comps` the way an overlay mount of `layers` (top-most first) would show it: the first
/// layer that has it wins, unless a higher layer hides it with a whiteout of the path or of a
/// parent, an opaque parent directory, or a non-directory in a parent's place. Nothing is
/// followed: a symlink as a parent component hides the path too (hard link targets in real
/// archives never go through symlinks).
pub(crate) fn lookup(layers: &[BorrowedFd<'_>], comps: &[Vec<u8>]) -> Result<Lookup, Errno> {
    let Some(last) = comps.len().checked_sub(1) else {
        return Ok(Lookup::Missing("the layer root is not a file".into()));
    };
    for (layer, root) in layers.iter().enumerate() {
        let mut cur = open_child_dir(*root, b".")?;
        let mut opaque = false;
        for (i, comp) in comps.iter().enumerate() {
            let st = match rustix::fs::statat(&cur, comp.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => break,
                Err(e) => return Err(e),
            };
            if is_whiteout(&st) {
                return Ok(Lookup::Missing(format!("whited out in layer {layer} (0 = the layer being unpacked)")));
            }
            if i == last {
                return Ok(Lookup::Found { parent: cur, name: comp.clone(), stat: st, layer });
            }
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                return Ok(Lookup::Missing(format!(
                    "a parent component is not a directory in layer {layer} (0 = the layer being unpacked)"
                )));
            }
            cur = open_child_dir(cur.as_fd(), comp)?;
            if is_opaque(cur.as_fd())? {
                opaque = true;
            }
        }
        if opaque {
            return Ok(Lookup::Missing(format!(
                "hidden by an opaque directory in layer {layer} (0 = the layer being unpacked)"
            )));
        }
    }
    Ok(Lookup::Missing("in no layer".into()))
}

impl Unpacker {
    /// `.wh.NAME`: a 0:0 character device `NAME` next to it.
    pub(super) fn whiteout(&mut self, path: &EntryPath, hidden: &[u8], shown: &str) -> Result<(), UnpackError> {
        let parent = self.parent_dir(path.parent(), shown)?;
        match rustix::fs::statat(&parent, hidden, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if is_whiteout(&st) => debug!(path = ?shown, "duplicate whiteout"),
            Ok(_) => warn!(
                path = ?shown,
                "whiteout of an entry of the same layer: keeping the entry (whiteouts only hide lower layers)"
            ),
            Err(Errno::NOENT) => {
                rustix::fs::mknodat(
                    &parent,
                    hidden,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(io_err(shown, "create whiteout device for"))?;
            }
            Err(e) => return Err(io_err(shown, "stat whiteout target of")(e)),
        }
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// `D/.wh..wh..opq`: mark `D` opaque (creating it if needed).
    pub(super) fn opaque(&mut self, path: &EntryPath, shown: &str) -> Result<(), UnpackError> {
        let dir = self.parent_dir(path.parent(), shown)?;
        rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
            .map_err(io_err(shown, "set trusted.overlay.opaque for"))?;
        self.stats.whiteouts += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str) -> String {
        format!("{:?}", classify(&EntryPath::parse(name.as_bytes()).unwrap()))
    }

    #[test]
    fn classify_whiteouts_opaque_and_metadata_names() {
        assert_eq!(class("a/.wh.b"), format!("{:?}", Class::Whiteout(b"b")));
        assert_eq!(class(".wh..wh..opq"), "Opaque");
        assert_eq!(class("a/b/.wh..wh..opq"), "Opaque");
        assert!(class(".wh..wh.plnk").starts_with("Skip"));
        assert!(class(".wh..wh.plnk/123.4").starts_with("Skip"));
        assert!(class("a/.wh..wh..opq/x").starts_with("Skip"));
        assert!(class(".wh.").starts_with("Reject"));
        assert!(class("d/.wh..").starts_with("Reject"));
        assert!(class("d/.wh...").starts_with("Reject"));
        assert!(class(".wh.x/y").starts_with("Reject"));
        assert_eq!(class("a/b.wh.c"), "Normal");
        assert_eq!(class("a/wh.c"), "Normal");
    }
}
