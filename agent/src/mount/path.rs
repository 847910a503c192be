//! Resolves a path from the (untrusted) spec inside a root directory the way
//! the container will see it: symlinks and `..` are followed but can never
//! climb above the root. Never returns a path outside `root`.

use std::io;
use std::path::{Component, Path, PathBuf};

const MAX_SYMLINKS: usize = 40;

/// Joins `unsafe_path` to `root`, resolving symlinks as if `root` were `/`.
/// Components that do not exist yet are appended as they are (after `..`
/// has been clamped), so the result can be created.
pub fn resolve_in_root(root: &Path, unsafe_path: &str) -> io::Result<PathBuf> {
    let mut pending: Vec<PathBuf> = Vec::new();
    push_components(&mut pending, Path::new(unsafe_path));
    let mut resolved = PathBuf::new(); // relative to root
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("too many symlinks resolving {unsafe_path:?}"),
                    ));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                push_components(&mut pending, &target);
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Pushes the components of `path` so that the first one is popped first.
fn push_components(stack: &mut Vec<PathBuf>, path: &Path) {
    let parts: Vec<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    stack.extend(parts.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn dotdot_and_absolute_symlinks_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../etc", root.join("etc/up")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();

        assert_eq!(resolve_in_root(root, "/../../etc/passwd").unwrap(), root.join("etc/passwd"));
        assert_eq!(resolve_in_root(root, "/abs/shadow").unwrap(), root.join("etc/shadow"));
        assert_eq!(resolve_in_root(root, "etc/up/x").unwrap(), root.join("etc/x"));
        assert_eq!(resolve_in_root(root, "/new/dir").unwrap(), root.join("new/dir"));
        assert!(resolve_in_root(root, "/loop1").is_err());
    }
}
