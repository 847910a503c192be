//! `flatten_layers`: merging committed layer directories into one plain tree (the fallback when
//! overlayfs is unavailable): whiteouts, opaque directories, type changes, hard links, metadata.
//! Run as root.

#[path = "unpack_support.rs"]
mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use image_rs::unpack::flatten_layers;
use support::*;
use tar::EntryType;

#[test]
fn flatten_applies_whiteouts_and_opaque_dirs() {
    let s = Sandbox::new();
    let l1 = layer(
        &s,
        "l1",
        Tar::new()
            .file("a/keep", b"keep")
            .file("a/old", b"old")
            .file("b/x", b"x")
            .file("b/sub/y", b"y")
            .file("gone", b"gone")
            .dir("gonedir")
            .file("gonedir/z", b"z")
            .file("etc/conf", b"v1")
            .finish(),
        &[],
    );
    let l2 = layer(
        &s,
        "l2",
        Tar::new()
            .raw(b"a/.wh.old", EntryType::Regular, b"", None)
            .raw(b"b/.wh..wh..opq", EntryType::Regular, b"", None)
            .file("b/new", b"new")
            .raw(b".wh.gone", EntryType::Regular, b"", None)
            .raw(b".wh.gonedir", EntryType::Regular, b"", None)
            .file("etc/conf", b"v2")
            .file("added", b"added")
            .finish(),
        std::slice::from_ref(&l1),
    );
    let dest = s.dir("merged");
    flatten_layers(&[l1, l2], &dest).unwrap();
    let got = snapshot(&dest, None).into_keys().map(|p| p.display().to_string()).collect::<Vec<_>>();
    assert_eq!(got, ["a", "a/keep", "added", "b", "b/new", "etc", "etc/conf"]);
    assert_eq!(fs::read_to_string(dest.join("etc/conf")).unwrap(), "v2");
    assert_eq!(fs::read_to_string(dest.join("a/keep")).unwrap(), "keep");
    assert_eq!(xattr(&dest.join("b"), "trusted.overlay.opaque"), None);
    s.assert_outside_untouched();
}

#[test]
fn flatten_preserves_hardlinks_and_metadata() {
    let s = Sandbox::new();
    let l1 = layer(
        &s,
        "l1",
        Tar::new()
            .dir_with("d", 0o1750, 5, 6, 1_000_000)
            .file_with("d/h1", b"shared", 0o4711, 7, 8, 2_000_000)
            .hardlink("d/h2", "d/h1")
            .symlink("d/sym", "h1")
            .node("d/fifo", EntryType::Fifo, 0o640, 0, 0)
            .node("d/null", EntryType::Char, 0o666, 1, 3)
            .pax(&[("SCHILY.xattr.user.k", b"v"), ("SCHILY.xattr.security.capability", &CAP_NET_BIND_SERVICE)])
            .file("cap", b"bin")
            .finish(),
        &[],
    );
    let l2 = layer(&s, "l2", Tar::new().hardlink("h3", "d/h1").finish(), std::slice::from_ref(&l1));
    let dest = s.dir("merged");
    flatten_layers(&[l1, l2], &dest).unwrap();
    let h1 = fs::symlink_metadata(dest.join("d/h1")).unwrap();
    for other in ["d/h2", "h3"] {
        assert_eq!(fs::symlink_metadata(dest.join(other)).unwrap().ino(), h1.ino(), "{other}");
    }
    assert_eq!(h1.nlink(), 3);
    assert_eq!((h1.uid(), h1.gid(), h1.mode() & 0o7777, h1.mtime()), (7, 8, 0o4711, 2_000_000));
    assert_eq!(fs::read(dest.join("d/h1")).unwrap(), b"shared");
    let d = fs::symlink_metadata(dest.join("d")).unwrap();
    assert_eq!((d.uid(), d.gid(), d.mode() & 0o7777, d.mtime()), (5, 6, 0o1750, 1_000_000));
    assert_eq!(fs::read_link(dest.join("d/sym")).unwrap(), PathBuf::from("h1"));
    assert!(fs::symlink_metadata(dest.join("d/fifo")).unwrap().file_type().is_fifo());
    let null = fs::symlink_metadata(dest.join("d/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(xattr(&dest.join("cap"), "user.k").as_deref(), Some(&b"v"[..]));
    assert_eq!(xattr(&dest.join("cap"), "security.capability").as_deref(), Some(&CAP_NET_BIND_SERVICE[..]));
}

#[test]
fn flatten_replaces_across_types_without_following_symlinks() {
    let s = Sandbox::new();
    let out = s.outside.display().to_string();
    let l1 = layer(
        &s,
        "l1",
        Tar::new()
            .file("x/child", b"c")
            .file("y", b"file")
            .symlink("d", &out)
            .symlink("f", &format!("{out}/passwd"))
            .finish(),
        &[],
    );
    let l2 = layer(
        &s,
        "l2",
        Tar::new()
            .file("x", b"now file")
            .file("y/child", b"now dir")
            .file("d/passwd", b"pwned")
            .file("f", b"pwned")
            .finish(),
        std::slice::from_ref(&l1),
    );
    let dest = s.dir("merged");
    flatten_layers(&[l1, l2], &dest).unwrap();
    assert_eq!(fs::read_to_string(dest.join("x")).unwrap(), "now file");
    assert_eq!(fs::read_to_string(dest.join("y/child")).unwrap(), "now dir");
    assert!(fs::symlink_metadata(dest.join("d")).unwrap().is_dir());
    assert_eq!(fs::read_to_string(dest.join("d/passwd")).unwrap(), "pwned");
    assert!(fs::symlink_metadata(dest.join("f")).unwrap().is_file());
    s.assert_outside_untouched();
}
