//! Resolves an image's `User` (name, uid, `user:group`, `uid:gid`) against the
//! image's own /etc/passwd and /etc/group, read inside the rootfs without ever
//! following a symlink out of it, and only when they are regular files of at
//! most [`DB_LIMIT`] bytes: a FIFO, a device node or a huge file there is an
//! error naming what it is, never opened for reading (a FIFO would block the
//! pull forever; a device's open alone can have effects).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{openat2, FileType, Mode, OFlags, ResolveFlags};

/// Largest passwd/group file we read: real ones are a few KiB.
pub const DB_LIMIT: u64 = 1024 * 1024;

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
    #[error("image user {user:?}: cannot read /{file} in the rootfs: {reason}")]
    Read { user: String, file: &'static str, reason: String },
    #[error("image user {user:?}: /{file} in the rootfs is a {kind}, not a regular file; refusing to read it")]
    NotRegular { user: String, file: &'static str, kind: &'static str },
    #[error("image user {user:?}: /{file} in the rootfs is {size} bytes, over the {limit}-byte limit")]
    TooLarge { user: String, file: &'static str, size: u64, limit: u64 },
}

/// Why a database file was not read.
enum DbError {
    Io(String),
    NotRegular(&'static str),
    TooLarge(u64),
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Fifo => "fifo",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Socket => "socket",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::RegularFile => "regular file",
        FileType::Unknown => "file of unknown type",
    }
}

/// Reads `rel` (e.g. "etc/passwd") inside `rootfs`; `None` if absent.
///
/// Symlinks resolve as if `rootfs` were `/` (never out of it). The file is
/// first opened `O_PATH` (which opens no device and waits on no FIFO) and
/// checked with fstat: only a regular file of at most [`DB_LIMIT`] bytes is
/// then opened for reading, `O_NONBLOCK`, and checked again to be the same
/// inode.
fn read_in_root(rootfs: &Path, rel: &str) -> Result<Option<String>, DbError> {
    let io = |what: &str, e: rustix::io::Errno| DbError::Io(format!("{what}: {e}"));
    let root: OwnedFd = rustix::fs::open(rootfs, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io("open rootfs", e))?;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let path_fd = match openat2(&root, rel, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), resolve) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io("open", e)),
    };
    let st = rustix::fs::fstat(&path_fd).map_err(|e| io("stat", e))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(DbError::NotRegular(kind_name(kind)));
    }
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > DB_LIMIT {
        return Err(DbError::TooLarge(size));
    }
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = openat2(&root, rel, flags, Mode::empty(), resolve).map_err(|e| io("open", e))?;
    let again = rustix::fs::fstat(&fd).map_err(|e| io("stat", e))?;
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
        return Err(DbError::Io("the file changed while it was being opened".into()));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd).take(DB_LIMIT + 1).read_to_end(&mut bytes).map_err(|e| DbError::Io(e.to_string()))?;
    if bytes.len() as u64 > DB_LIMIT {
        return Err(DbError::TooLarge(bytes.len() as u64));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
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
        read_in_root(rootfs, file).map_err(|e| match e {
            DbError::Io(reason) => UserError::Read { user: user_s.clone(), file, reason },
            DbError::NotRegular(kind) => UserError::NotRegular { user: user_s.clone(), file, kind },
            DbError::TooLarge(size) => UserError::TooLarge { user: user_s.clone(), file, size, limit: DB_LIMIT },
        })
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

    /// Runs `resolve` on another thread: a FIFO read would block forever, and
    /// a hang must fail the test, not stall it.
    fn resolve_within(root: &Path, user: &str, secs: u64) -> Result<ResolvedUser, UserError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (root, user) = (root.to_owned(), user.to_owned());
        std::thread::spawn(move || {
            let _ = tx.send(resolve(&root, &user));
        });
        rx.recv_timeout(std::time::Duration::from_secs(secs))
            .unwrap_or_else(|_| panic!("resolving the user hung for more than {secs} s"))
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn skip_unless_root(what: &str) -> bool {
        if is_root() {
            return false;
        }
        let ci = std::env::var("CI").map(|v| v.eq_ignore_ascii_case("true")).unwrap_or(false);
        assert!(!ci, "CI=true but {what} needs root (mknod)");
        eprintln!("SKIP: {what} needs root (mknod)");
        true
    }

    fn mknod(path: &Path, kind: FileType, dev: rustix::fs::Dev) {
        rustix::fs::mknodat(rustix::fs::CWD, path, kind, Mode::from_raw_mode(0o644), dev).unwrap();
    }

    #[test]
    fn a_fifo_passwd_is_refused_without_blocking() {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        mknod(&r.path().join("etc/passwd"), FileType::Fifo, 0);
        let err = resolve_within(r.path(), "app", 10).unwrap_err();
        assert_eq!(err, UserError::NotRegular { user: "app".into(), file: "etc/passwd", kind: "fifo" });
        assert!(err.to_string().contains("/etc/passwd in the rootfs is a fifo"), "{err}");
    }

    #[test]
    fn a_fifo_group_is_refused_without_blocking() {
        let r = rootfs();
        std::fs::remove_file(r.path().join("etc/group")).unwrap();
        mknod(&r.path().join("etc/group"), FileType::Fifo, 0);
        let err = resolve_within(r.path(), "app:wheel", 10).unwrap_err();
        assert!(matches!(err, UserError::NotRegular { file: "etc/group", kind: "fifo", .. }), "{err}");
    }

    #[test]
    fn a_char_device_passwd_is_refused() {
        if skip_unless_root("a_char_device_passwd_is_refused") {
            return;
        }
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        mknod(&r.path().join("etc/passwd"), FileType::CharacterDevice, rustix::fs::makedev(1, 5));
        let err = resolve_within(r.path(), "app", 10).unwrap_err();
        assert!(matches!(err, UserError::NotRegular { kind: "character device", .. }), "{err}");
        assert!(err.to_string().contains("/etc/passwd"), "{err}");
    }

    #[test]
    fn a_passwd_symlinked_to_dev_zero_is_refused() {
        // Resolved in the root, the link names the rootfs's own dev/zero;
        // whatever device is there, it is never read.
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", r.path().join("etc/passwd")).unwrap();
        // No dev/zero in the image: the host's is not reached, the file is absent.
        assert!(matches!(resolve_within(r.path(), "app", 10), Err(UserError::NoSuchUser { .. })));
        if skip_unless_root("a_passwd_symlinked_to_dev_zero_is_refused (device part)") {
            return;
        }
        std::fs::create_dir(r.path().join("dev")).unwrap();
        mknod(&r.path().join("dev/zero"), FileType::CharacterDevice, rustix::fs::makedev(1, 5));
        let err = resolve_within(r.path(), "app", 10).unwrap_err();
        assert!(matches!(err, UserError::NotRegular { kind: "character device", .. }), "{err}");
    }

    #[test]
    fn a_huge_passwd_is_refused_by_its_size() {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        let line = "app:x:1000:1000::/home/app:/bin/sh\n";
        let mut text = line.repeat(1 + (10 << 20) / line.len());
        text.truncate(10 << 20);
        std::fs::write(r.path().join("etc/passwd"), &text).unwrap();
        let err = resolve_within(r.path(), "app", 10).unwrap_err();
        assert_eq!(
            err,
            UserError::TooLarge { user: "app".into(), file: "etc/passwd", size: 10 << 20, limit: DB_LIMIT }
        );
        // Just under the limit still works.
        text.truncate(line.len() * (DB_LIMIT as usize / line.len()));
        std::fs::write(r.path().join("etc/passwd"), &text).unwrap();
        assert_eq!(resolve_within(r.path(), "app", 10).unwrap().uid, 1000);
    }
}
