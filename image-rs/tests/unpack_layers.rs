//! Layer content round-trips (files, directories, links, devices, owners, modes, times, xattrs),
//! overlayfs whiteout format and hard links across layers. Run as root.

#[path = "unpack_support.rs"]
mod support;

use std::fs;
use std::io::{Cursor, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use image_rs::unpack::{unpack_layer, UnpackError, UnpackOptions, UnpackStats};
use support::*;
use tar::EntryType;

#[test]
fn regular_files_round_trip_content_owner_mode_and_mtime() {
    let s = Sandbox::new();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let tar = Tar::new()
        .file_with("etc/app.conf", b"key=value\n", 0o640, 1234, 5678, 1_500_000_000)
        .file_with("bin/su", b"#!su", 0o4755, 0, 0, 1_400_000_000)
        .file_with("bin/sg", b"#!sg", 0o2711, 0, 42, 1_400_000_001)
        .file_with("big.bin", &big, 0o600, 7, 8, 1_300_000_000)
        .file("empty", b"")
        .finish();
    let stats = s.unpack(&tar).unwrap();
    assert_eq!(stats, UnpackStats { entries: 5, bytes: 10 + 4 + 4 + 300_000, whiteouts: 0 });

    let m = s.lstat("etc/app.conf");
    assert_eq!(s.read("etc/app.conf"), "key=value\n");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()), (1234, 5678, 0o640, 1_500_000_000));
    let m = s.lstat("bin/su");
    assert_eq!((m.uid(), m.mode() & 0o7777, m.mtime()), (0, 0o4755, 1_400_000_000));
    let m = s.lstat("bin/sg");
    assert_eq!((m.gid(), m.mode() & 0o7777), (42, 0o2711));
    assert_eq!(fs::read(s.root.join("big.bin")).unwrap(), big);
    assert_eq!(s.lstat("big.bin").uid(), 7);
    assert_eq!(s.lstat("empty").len(), 0);
    // Parent directories the archive did not list: root-owned 0755.
    let m = s.lstat("etc");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o755));
    s.assert_outside_untouched();
}

#[test]
fn directory_mode_owner_and_mtime_survive_their_children() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .dir_with("data", 0o1777, 7, 9, 1_400_000_000)
        .file("data/a", b"a")
        .dir_with("data/sub", 0o750, 0, 0, 1_300_000_000)
        .file("data/sub/b", b"b")
        .symlink("data/sub/l", "b")
        .finish();
    // A "./" entry (as `tar -C dir .` writes first) describes the layer root itself.
    let mut root_entry = Tar::new();
    let mut h = header(EntryType::Directory, 0o711, 0);
    h.set_mtime(1_200_000_000);
    h.as_old_mut().name[..2].copy_from_slice(b"./");
    h.set_cksum();
    root_entry.b.append(&h, std::io::empty()).unwrap();
    let mut both = root_entry.b.get_ref().clone();
    both.extend_from_slice(&tar);
    s.unpack(&both).unwrap();
    let m = s.lstat("data");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()), (7, 9, 0o1777, 1_400_000_000));
    let m = s.lstat("data/sub");
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o750, 1_300_000_000));
    let m = fs::metadata(&s.root).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o711, 1_200_000_000), "./ sets the layer root's metadata");
}

#[test]
fn symlinks_keep_target_verbatim_owner_and_mtime() {
    let s = Sandbox::new();
    let mut t = Tar::new();
    for (name, target) in [("l1", "/etc/passwd"), ("l2", "../../x"), ("l3", "dangling"), ("l4", "a//b/./c/")] {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        h.set_uid(99);
        h.set_gid(98);
        h.set_mtime(1_234_567_890);
        h.set_link_name_literal(target).unwrap();
        t.b.append_data(&mut h, name, std::io::empty()).unwrap();
    }
    let long_target = "x/".repeat(200) + "end";
    t.symlink("long", &long_target);
    s.unpack(&t.finish()).unwrap();
    for (name, target) in [("l1", "/etc/passwd"), ("l2", "../../x"), ("l3", "dangling"), ("l4", "a//b/./c/")] {
        assert_eq!(fs::read_link(s.root.join(name)).unwrap(), PathBuf::from(target));
        let m = s.lstat(name);
        assert!(m.file_type().is_symlink());
        assert_eq!((m.uid(), m.gid(), m.mtime()), (99, 98, 1_234_567_890), "{name}");
    }
    assert_eq!(fs::read_link(s.root.join("long")).unwrap(), PathBuf::from(long_target));
    s.assert_outside_untouched();
}

#[test]
fn hardlinks_share_the_inode_and_ignore_their_own_header() {
    let s = Sandbox::new();
    let mut t = Tar::new();
    t.file_with("a", b"content", 0o640, 5, 6, 1_000_000_000).symlink("s", "a");
    let mut h = header(EntryType::Link, 0o777, 0);
    h.set_uid(55);
    h.set_mtime(5);
    t.b.append_link(&mut h, "dir/b", "a").unwrap();
    t.hardlink("hs", "s").hardlink("./c", "/a");
    s.unpack(&t.finish()).unwrap();
    let (a, b, c) = (s.lstat("a"), s.lstat("dir/b"), s.lstat("c"));
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.ino(), c.ino());
    assert_eq!(a.nlink(), 3);
    assert_eq!((b.uid(), b.mode() & 0o7777, b.mtime()), (5, 0o640, 1_000_000_000));
    // A hard link to a symlink links the symlink itself.
    let hs = s.lstat("hs");
    assert!(hs.file_type().is_symlink());
    assert_eq!(hs.ino(), s.lstat("s").ino());
}

#[test]
fn device_nodes_and_fifos_are_created_with_owner_and_mode() {
    let s = Sandbox::new();
    let mut t = Tar::new();
    t.node("dev/null", EntryType::Char, 0o666, 1, 3).node("dev/loop0", EntryType::Block, 0o660, 7, 0);
    let mut h = header(EntryType::Fifo, 0o4620, 0);
    h.set_uid(33);
    h.set_mtime(1_111_111_111);
    t.b.append_data(&mut h, "run/fifo", std::io::empty()).unwrap();
    s.unpack(&t.finish()).unwrap();
    let m = s.lstat("dev/null");
    assert!(m.file_type().is_char_device());
    assert_eq!((rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev()), m.mode() & 0o7777), (1, 3, 0o666));
    let m = s.lstat("dev/loop0");
    assert!(m.file_type().is_block_device());
    assert_eq!((rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev()), m.mode() & 0o7777), (7, 0, 0o660));
    let m = s.lstat("run/fifo");
    assert!(m.file_type().is_fifo());
    assert_eq!((m.uid(), m.mode() & 0o7777, m.mtime()), (33, 0o4620, 1_111_111_111));
}

#[test]
fn pax_xattrs_are_applied_but_overlay_private_ones_are_refused() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .pax(&[
            ("SCHILY.xattr.user.comment", b"hello"),
            ("SCHILY.xattr.trusted.custom", b"t"),
            ("SCHILY.xattr.security.capability", &CAP_NET_BIND_SERVICE),
            ("SCHILY.xattr.security.selinux", b"system_u:object_r:bin_t:s0"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.user.overlay.opaque", b"y"),
        ])
        .file_with("bin/ping", b"\x7fELF", 0o755, 0, 0, MTIME)
        .pax(&[("SCHILY.xattr.user.d", b"1"), ("SCHILY.xattr.trusted.overlay.opaque", b"y")])
        .dir("dir")
        .pax(&[("SCHILY.xattr.trusted.sym", b"s"), ("SCHILY.xattr.trusted.overlay.redirect", b"/x")])
        .symlink("link", "bin/ping")
        .pax(&[("SCHILY.xattr.trusted.dev", b"d")])
        .node("fifo", EntryType::Fifo, 0o644, 0, 0)
        .finish();
    s.unpack(&tar).unwrap();
    let f = s.root.join("bin/ping");
    assert_eq!(xattr(&f, "user.comment").as_deref(), Some(&b"hello"[..]));
    assert_eq!(xattr(&f, "trusted.custom").as_deref(), Some(&b"t"[..]));
    assert_eq!(xattr(&f, "security.capability").as_deref(), Some(&CAP_NET_BIND_SERVICE[..]));
    assert_eq!(xattr(&f, "trusted.overlay.opaque"), None);
    assert_eq!(xattr(&f, "trusted.overlay.redirect"), None);
    assert_eq!(xattr(&f, "user.overlay.opaque"), None);
    assert_ne!(xattr(&f, "security.selinux").as_deref(), Some(&b"system_u:object_r:bin_t:s0"[..]));
    let d = s.root.join("dir");
    assert_eq!(xattr(&d, "user.d").as_deref(), Some(&b"1"[..]));
    assert_eq!(xattr(&d, "trusted.overlay.opaque"), None);
    let l = s.root.join("link");
    assert_eq!(xattr(&l, "trusted.sym").as_deref(), Some(&b"s"[..]));
    assert_eq!(xattr(&l, "trusted.overlay.redirect"), None);
    assert_eq!(xattr(&s.root.join("fifo"), "trusted.dev").as_deref(), Some(&b"d"[..]));
}

#[test]
fn xattrs_over_the_limit_are_refused() {
    let s = Sandbox::new();
    let big = vec![b'v'; 40 << 10];
    let tar =
        Tar::new().pax(&[("SCHILY.xattr.user.a", &big[..]), ("SCHILY.xattr.user.b", &big[..])]).file("f", b"").finish();
    let err = s.unpack(&tar).unwrap_err();
    assert!(matches!(err, UnpackError::LimitExceeded { ref path, .. } if path == "f"), "{err}");
}

#[test]
fn long_names_and_pax_paths_are_honoured() {
    let s = Sandbox::new();
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let pax_name = format!("{}/pax-file", "p".repeat(130));
    let tar = Tar::new()
        .file(&long_file, b"gnu long name")
        .hardlink("short", &long_file)
        .pax(&[("path", pax_name.as_bytes()), ("mtime", b"1500000000.25")])
        .file("ignored-name", b"pax path")
        .finish();
    s.unpack(&tar).unwrap();
    assert_eq!(s.read(&long_file), "gnu long name");
    assert_eq!(s.lstat("short").ino(), s.lstat(&long_file).ino());
    assert_eq!(s.read(&pax_name), "pax path");
    assert!(!s.exists("ignored-name"));
    let m = s.lstat(&pax_name);
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 250_000_000));
}

#[test]
fn gnu_sparse_files_are_expanded_and_zero_runs_stay_holes() {
    let s = Sandbox::new();
    let data = [b'x'; 512];
    let size = 4 << 20;
    let stats = s.unpack(&Tar::new().sparse("sparse", size, 1 << 20, &data).finish()).unwrap();
    let got = fs::read(s.root.join("sparse")).unwrap();
    let mut want = vec![0u8; size as usize];
    want[1 << 20..(1 << 20) + 512].copy_from_slice(&data);
    assert!(got == want, "content differs");
    assert_eq!(stats.bytes, size);
    assert!(s.lstat("sparse").blocks() * 512 < 1 << 20, "zero runs were written out");
}

#[test]
fn whiteouts_become_char_devices_0_0_and_opaque_markers_xattrs() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .raw(b".wh.gone", EntryType::Regular, b"", None)
        .raw(b"d/.wh.f", EntryType::Regular, b"", None)
        .dir("o")
        .file("o/kept", b"k")
        .raw(b"o/.wh..wh..opq", EntryType::Regular, b"", None)
        .raw(b"new/deep/.wh..wh..opq", EntryType::Regular, b"", None)
        .raw(b".wh..wh.plnk/123.456", EntryType::Regular, b"aufs", None)
        .raw(b".wh..wh.aufs", EntryType::Regular, b"", None)
        .finish();
    let stats = s.unpack(&tar).unwrap();
    assert_eq!(stats.whiteouts, 4);
    assert_eq!(stats.entries, 8);
    assert!(is_whiteout(&s.root.join("gone")));
    assert!(is_whiteout(&s.root.join("d/f")));
    assert_eq!(xattr(&s.root.join("o"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(s.read("o/kept"), "k");
    assert_eq!(xattr(&s.root.join("new/deep"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(names(&s.root), ["d", "gone", "new", "o"]);
    assert_eq!(names(&s.root.join("o")), ["kept"]);
}

#[test]
fn whiteout_does_not_hide_entries_of_its_own_layer() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .file("x", b"x")
        .raw(b".wh.x", EntryType::Regular, b"", None)
        .raw(b".wh.y", EntryType::Regular, b"", None)
        .file("y", b"y")
        .finish();
    s.unpack(&tar).unwrap();
    assert_eq!(s.read("x"), "x");
    assert_eq!(s.read("y"), "y");
}

#[test]
fn later_entries_replace_earlier_ones() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .file("f", b"one")
        .file("f", b"two")
        .file("g", b"file")
        .dir("g")
        .dir("t")
        .file("t/a", b"a")
        .dir("t/sub")
        .file("t/sub/b", b"b")
        .file("t", b"now a file")
        .symlink("s", "f")
        .file("s", b"replaced symlink")
        .dir_with("m", 0o700, 0, 0, MTIME)
        .file("m/c", b"c")
        .dir_with("m", 0o750, 3, 4, MTIME)
        .finish();
    s.unpack(&tar).unwrap();
    assert_eq!(s.read("f"), "two");
    assert!(s.lstat("g").is_dir());
    assert_eq!(s.read("t"), "now a file");
    assert_eq!(s.read("s"), "replaced symlink");
    assert_eq!(s.read("f"), "two", "not written through the old symlink");
    let m = s.lstat("m");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o750, 3, 4));
    assert_eq!(s.read("m/c"), "c");
}

#[test]
fn preserve_ownership_false_keeps_the_callers_owner() {
    let s = Sandbox::new();
    let tar = Tar::new().file_with("f", b"x", 0o4755, 1234, 1234, MTIME).finish();
    unpack_layer(&tar[..], &s.root, &UnpackOptions { preserve_ownership: false, ..Default::default() }).unwrap();
    let m = s.lstat("f");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o4755));
}

#[test]
fn reader_is_not_consumed_past_the_end_of_archive() {
    let s = Sandbox::new();
    let mut data = Tar::new().file("f", b"x").finish();
    let tar_len = data.len() as u64;
    data.extend_from_slice(b"TRAILER");
    let mut cursor = Cursor::new(data);
    unpack_layer(&mut cursor, &s.root, &UnpackOptions::default()).unwrap();
    assert!(cursor.position() <= tar_len - 512, "read up to {} of {tar_len}", cursor.position());
    let mut rest = Vec::new();
    cursor.read_to_end(&mut rest).unwrap();
    assert!(rest.ends_with(b"TRAILER"));
}

#[test]
fn empty_stream_is_an_empty_layer() {
    let s = Sandbox::new();
    assert_eq!(s.unpack(&[]).unwrap(), UnpackStats::default());
    assert_eq!(s.unpack(&[0u8; 1024]).unwrap(), UnpackStats::default());
    assert!(names(&s.root).is_empty());
}

#[test]
fn hardlink_to_lower_layer_file_shares_its_inode() {
    let s = Sandbox::new();
    let l1 = layer(
        &s,
        "l1",
        Tar::new()
            .dir_with("usr", 0o755, 0, 0, 1)
            .dir_with("usr/lib", 0o750, 3, 4, 1_000)
            .file("usr/lib/libx.so", b"lib")
            .finish(),
        &[],
    );
    let tar = Tar::new().hardlink("usr/lib/libx.so.1", "usr/lib/libx.so").finish();
    let stats = unpack_into(&tar, &s.root, std::slice::from_ref(&l1)).unwrap();
    assert_eq!(stats.entries, 1);
    let lower = fs::symlink_metadata(l1.join("usr/lib/libx.so")).unwrap();
    assert_eq!(s.lstat("usr/lib/libx.so.1").ino(), lower.ino());
    assert_eq!(lower.nlink(), 2);
    assert!(!s.exists("usr/lib/libx.so"), "the target itself is not copied up");
    // The implicit parent took the lower directory's owner, mode and mtime.
    let m = s.lstat("usr/lib");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()), (3, 4, 0o750, 1_000));
}

#[test]
fn hardlink_whose_target_is_whited_out_in_the_current_layer_fails() {
    let s = Sandbox::new();
    let l1 = layer(&s, "l1", Tar::new().file("a", b"a").finish(), &[]);
    let tar = Tar::new().raw(b".wh.a", EntryType::Regular, b"", None).hardlink("b", "a").finish();
    let err = unpack_into(&tar, &s.root, &[l1]).unwrap_err();
    match err {
        UnpackError::HardlinkTargetNotFound { path, target, reason } => {
            assert_eq!((path.as_str(), target.as_str()), ("b", "a"));
            assert!(reason.contains("whited out"), "{reason}");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(!s.exists("b"));
}

#[test]
fn hardlink_target_hidden_in_a_middle_layer_fails_and_visible_one_succeeds() {
    let s = Sandbox::new();
    let bottom = layer(&s, "bottom", Tar::new().file("d/f", b"f").file("g", b"g").file("k/keep", b"k").finish(), &[]);
    let mid = layer(
        &s,
        "mid",
        Tar::new()
            .raw(b"d/.wh..wh..opq", EntryType::Regular, b"", None)
            .raw(b".wh.g", EntryType::Regular, b"", None)
            .file("k/other", b"o")
            .finish(),
        std::slice::from_ref(&bottom),
    );
    let lowers = [mid, bottom.clone()];
    for (link, target, why) in [("x", "d/f", "opaque"), ("y", "g", "whited out")] {
        let err = unpack_into(&Tar::new().hardlink(link, target).finish(), &s.root, &lowers).unwrap_err();
        assert!(
            matches!(err, UnpackError::HardlinkTargetNotFound { ref reason, .. } if reason.contains(why)),
            "{link}: {err}"
        );
    }
    unpack_into(&Tar::new().hardlink("z", "k/keep").finish(), &s.root, &lowers).unwrap();
    assert_eq!(s.lstat("z").ino(), fs::metadata(bottom.join("k/keep")).unwrap().ino());
}
