//! Resolves an image's `User` (name, uid, `user:group`, `uid:gid`) against the
//! image's own /etc/passwd and /etc/group, read inside the rootfs without ever
//! following a symlink out of it.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};

/// Largest passwd/group file we read.
const DB_LIMIT: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub username: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("image user {user:?}: no user {name:?} in the image's /etc/passwd")]
    NoSuchUser { user: String, name: String },
    #[error("image user {user:?}: no group {name:?} in the image's /etc/group")]
    NoSuchGroup { user: String, name: String },
    #[error("image user {user:?}: cannot read {file} in the rootfs: {reason}")]
    Read { user: String, file: &'static str, reason: String },
}

/// Reads `rel` (e.g. "etc/passwd") inside `rootfs`; `None` if absent.
fn read_in_root(rootfs: &Path, rel: &str) -> Result<Option<String>, String> {
    let root: OwnedFd = rustix::fs::open(rootfs, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("open rootfs: {e}"))?;
    let fd = match openat2(
        &root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut text = String::new();
    std::fs::File::from(fd).take(DB_LIMIT).read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(Some(text))
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| m.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `user` as runc/containerd do: an unknown *name* is an error, an
/// unknown numeric id is used as is (gid 0 unless given).
pub fn resolve(rootfs: &Path, user: &str) -> Result<ResolvedUser, UserError> {
    let user_s = user.to_owned();
    let read = |file: &'static str| {
        read_in_root(rootfs, file).map_err(|reason| UserError::Read { user: user_s.clone(), file, reason })
    };
    if user.is_empty() {
        return Ok(ResolvedUser::default());
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read("etc/passwd")?.map(|t| parse_passwd(&t)).unwrap_or_default();
    let groups = read("etc/group")?.map(|t| parse_group(&t)).unwrap_or_default();

    let (uid, mut gid, name) = match u.parse::<u32>() {
        Ok(uid) => match passwd.iter().find(|p| p.uid == uid) {
            Some(p) => (uid, p.gid, Some(p.name.clone())),
            None => (uid, 0, None),
        },
        Err(_) => {
            let p = passwd
                .iter()
                .find(|p| p.name == u)
                .ok_or_else(|| UserError::NoSuchUser { user: user.to_owned(), name: u.to_owned() })?;
            (p.uid, p.gid, Some(p.name.clone()))
        }
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                groups
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| UserError::NoSuchGroup { user: user.to_owned(), name: g.to_owned() })?
                    .gid
            }
        };
    }
    let mut additional_gids: Vec<u32> = match &name {
        Some(n) => groups.iter().filter(|e| e.members.iter().any(|m| m == n) && e.gid != gid).map(|e| e.gid).collect(),
        None => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser { uid, gid, additional_gids, username: name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\naudio:x:29:app\n")
            .unwrap();
        d
    }

    #[test]
    fn names_ids_and_pairs() {
        let r = rootfs();
        assert_eq!(resolve(r.path(), "").unwrap(), ResolvedUser::default());
        let app = resolve(r.path(), "app").unwrap();
        assert_eq!((app.uid, app.gid, app.additional_gids.as_slice()), (1000, 1000, &[10, 29][..]));
        assert_eq!(resolve(r.path(), "1000").unwrap().gid, 1000);
        assert_eq!(resolve(r.path(), "app:wheel").unwrap().gid, 10);
        let n = resolve(r.path(), "4242:4343").unwrap();
        assert_eq!((n.uid, n.gid, n.username), (4242, 4343, None));
        assert_eq!(resolve(r.path(), "4242").unwrap().gid, 0);
    }

    #[test]
    fn unknown_names_are_errors() {
        let r = rootfs();
        assert!(matches!(resolve(r.path(), "nobody"), Err(UserError::NoSuchUser { .. })));
        assert!(matches!(resolve(r.path(), "app:nogroup"), Err(UserError::NoSuchGroup { .. })));
    }

    #[test]
    fn passwd_symlinked_outside_the_rootfs_is_not_followed_out() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("passwd"), r.path().join("etc/passwd")).unwrap();
        // Resolved inside the rootfs, the absolute target does not exist there.
        assert!(matches!(resolve(r.path(), "evil"), Err(UserError::NoSuchUser { .. })));
    }
}
