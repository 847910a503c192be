//! Hostile archives: nothing may be created, changed or followed outside the layer root, and
//! malformed input must give a clear error (never a panic). Every test checks a sentinel
//! directory next to the root afterwards. Run as root.

#[path = "unpack_support.rs"]
mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::{Duration, Instant};

use image_rs::unpack::{Limits, UnpackError};
use support::*;
use tar::EntryType;

#[test]
fn clamps_dotdot_paths_inside_root() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .raw(b"../escape", EntryType::Regular, b"one", None)
        .raw(b"../outside/passwd", EntryType::Regular, b"pwned", None)
        .raw(b"a/../../../b", EntryType::Regular, b"two", None)
        .raw(b"../../../../../../../../tmp/deep", EntryType::Regular, b"three", None)
        .finish();
    s.unpack(&tar).unwrap();
    assert_eq!(s.read("escape"), "one");
    assert_eq!(s.read("outside/passwd"), "pwned");
    assert_eq!(s.read("b"), "two");
    assert_eq!(s.read("tmp/deep"), "three");
    assert!(!s.tmp.path().join("escape").exists());
    s.assert_outside_untouched();
}

#[test]
fn clamps_absolute_paths_inside_root() {
    let s = Sandbox::new();
    let abs_sentinel = format!("{}/passwd", s.outside.display());
    let tar = Tar::new()
        .raw(b"/abs", EntryType::Regular, b"abs", None)
        .raw(abs_sentinel.as_bytes(), EntryType::Regular, b"pwned", None)
        .raw(b"/etc/passwd", EntryType::Regular, b"pwned", None)
        .finish();
    let etc_passwd = host_file_state("/etc/passwd");
    s.unpack(&tar).unwrap();
    assert_eq!(s.read("abs"), "abs");
    assert_eq!(s.read(abs_sentinel.trim_start_matches('/')), "pwned");
    assert_eq!(s.read("etc/passwd"), "pwned");
    assert_eq!(host_file_state("/etc/passwd"), etc_passwd);
    s.assert_outside_untouched();
}

#[test]
fn symlink_to_etc_then_write_lands_inside_root_or_fails() {
    let etc_passwd = host_file_state("/etc/passwd");
    let etc = dir_listing("/etc");

    // The symlink's confined target exists: the write lands there, inside the root.
    let s = Sandbox::new();
    let tar = Tar::new().dir("etc").symlink("a", "/etc").file("a/passwd", b"pwned").finish();
    s.unpack(&tar).unwrap();
    assert_eq!(s.read("etc/passwd"), "pwned");
    assert!(s.lstat("a").file_type().is_symlink());
    s.assert_outside_untouched();

    // It does not: the entry is refused.
    let s = Sandbox::new();
    let tar = Tar::new().symlink("a", "/etc").file("a/passwd", b"pwned").finish();
    let err = s.unpack(&tar).unwrap_err();
    assert!(matches!(err, UnpackError::UnsafePath { ref path, .. } if path == "a/passwd"), "{err}");
    assert!(!s.exists("etc"));
    s.assert_outside_untouched();

    assert_eq!(host_file_state("/etc/passwd"), etc_passwd);
    assert_eq!(dir_listing("/etc"), etc);
}

#[test]
fn symlink_to_dotdot_then_write_stays_inside_root() {
    let s = Sandbox::new();
    let tar = Tar::new().symlink("a", "../../..").file("a/x", b"inside").finish();
    s.unpack(&tar).unwrap();
    assert_eq!(s.read("x"), "inside");
    s.assert_outside_untouched();

    for target in ["../outside".to_string(), s.outside.display().to_string(), "../../outside/sub".into()] {
        let s = Sandbox::new();
        let tar = Tar::new().symlink("b", &target).file("b/passwd", b"pwned").file("b/keep", b"pwned").finish();
        let err = s.unpack(&tar).unwrap_err();
        assert!(matches!(err, UnpackError::UnsafePath { .. }), "{target}: {err}");
        s.assert_outside_untouched();
    }
}

#[test]
fn symlink_to_directory_then_file_inside_lands_in_target_within_root() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .dir("real")
        .symlink("link", "real")
        .file("link/f", b"rel")
        .symlink("abs", "/real")
        .file("abs/g", b"abs")
        .symlink("up", "../../real")
        .file("up/h", b"up")
        .finish();
    s.unpack(&tar).unwrap();
    assert_eq!(s.read("real/f"), "rel");
    assert_eq!(s.read("real/g"), "abs");
    assert_eq!(s.read("real/h"), "up");
    assert!(s.lstat("link").file_type().is_symlink());
    s.assert_outside_untouched();
}

#[test]
fn symlink_swapped_in_place_of_directory_is_not_followed_outside() {
    for absolute in [false, true] {
        let s = Sandbox::new();
        let target = if absolute { s.outside.display().to_string() } else { "../outside".to_string() };
        let tar = Tar::new()
            .dir("d")
            .file("d/f", b"x")
            .dir("d/sub")
            .symlink("d", &target)
            .file("d/passwd", b"pwned")
            .finish();
        let err = s.unpack(&tar).unwrap_err();
        assert!(matches!(err, UnpackError::UnsafePath { ref path, .. } if path == "d/passwd"), "{err}");
        assert!(s.lstat("d").file_type().is_symlink(), "the directory tree was replaced by the symlink");
        s.assert_outside_untouched();
    }
}

#[test]
fn symlink_as_final_component_is_replaced_not_followed() {
    let s = Sandbox::new();
    let out = s.outside.display().to_string();
    let tar = Tar::new()
        .symlink("p", "../outside/passwd")
        .file("p", b"pwned")
        .symlink("q", &format!("{out}/passwd"))
        .file("q", b"pwned")
        .symlink("d", &out)
        .dir_with("d", 0o700, 0, 0, MTIME)
        .symlink("n", &format!("{out}/passwd"))
        .node("n", EntryType::Fifo, 0o600, 0, 0)
        .file("t", b"target")
        .symlink("h", &format!("{out}/passwd"))
        .hardlink("h", "t")
        .symlink("w", &format!("{out}/passwd"))
        .raw(b".wh.w", EntryType::Regular, b"", None)
        .finish();
    s.unpack(&tar).unwrap();
    assert_eq!(s.read("p"), "pwned");
    assert_eq!(s.read("q"), "pwned");
    assert!(s.lstat("d").is_dir());
    assert_eq!(s.lstat("d").mode() & 0o7777, 0o700);
    assert!(s.lstat("n").file_type().is_fifo());
    assert_eq!(s.lstat("h").ino(), s.lstat("t").ino());
    // A whiteout of a same-layer entry keeps the entry; the symlink is not followed either way.
    assert!(s.lstat("w").file_type().is_symlink());
    s.assert_outside_untouched();
}

#[test]
fn never_chmods_chowns_or_touches_through_a_symlink() {
    let s = Sandbox::new();
    let out = s.outside.display().to_string();
    // Directory metadata is applied at the end, by then `d` is a symlink to the sentinel dir.
    let tar = Tar::new()
        .dir_with("d", 0o777, 1234, 1234, 1)
        .symlink("d", &out)
        .symlink("l", &format!("{out}/passwd"))
        .finish();
    s.unpack(&tar).unwrap();
    assert!(s.lstat("d").file_type().is_symlink());
    s.assert_outside_untouched();
}

#[test]
fn rejects_hardlink_to_outside_root() {
    let etc_passwd = host_file_state("/etc/passwd");
    let s = Sandbox::new();
    let out = s.outside.display().to_string();
    for target in [
        "/etc/passwd".to_string(),
        "../outside/passwd".into(),
        "../../outside/passwd".into(),
        format!("{out}/passwd"),
        "../../../../../../etc/passwd".into(),
    ] {
        let tar = Tar::new().hardlink("h", &target).finish();
        let err = s.unpack(&tar).unwrap_err();
        match &err {
            UnpackError::HardlinkTargetNotFound { path, target: t, .. } => {
                assert_eq!(path, "h");
                assert_eq!(t, &target);
            }
            other => panic!("{target}: unexpected {other}"),
        }
        assert!(err.to_string().contains(&target), "error names the target: {err}");
        assert!(!s.exists("h"));
    }
    // Through a symlinked directory, absolute and relative.
    for link in ["/etc", "../outside", out.as_str()] {
        let tar = Tar::new().symlink("s", link).hardlink("h2", "s/passwd").finish();
        let err = s.unpack(&tar).unwrap_err();
        assert!(matches!(err, UnpackError::HardlinkTargetNotFound { .. }), "{link}: {err}");
        assert!(!s.exists("h2"));
    }
    assert_eq!(fs::metadata(s.outside.join("passwd")).unwrap().nlink(), 1);
    assert_eq!(host_file_state("/etc/passwd"), etc_passwd);
    s.assert_outside_untouched();
}

#[test]
fn rejects_nul_in_names_and_link_targets() {
    let s = Sandbox::new();
    let cases: Vec<Vec<u8>> = vec![
        Tar::new().pax(&[("path", b"a\0b")]).file("placeholder", b"x").finish(),
        Tar::new().pax(&[("linkpath", b"/etc\0/passwd")]).symlink("l", "placeholder").finish(),
        Tar::new().file("t", b"").pax(&[("linkpath", b"t\0x")]).hardlink("h", "placeholder").finish(),
    ];
    for tar in cases {
        let err = s.unpack(&tar).unwrap_err();
        assert!(matches!(err, UnpackError::UnsafePath { ref reason, .. } if reason.contains("NUL")), "{err}");
    }
    assert!(!s.exists("a"));
    assert!(!s.exists("l"));
    assert!(!s.exists("h"));
    s.assert_outside_untouched();
}

#[test]
fn rejects_empty_names_and_root_as_non_directory() {
    let s = Sandbox::new();
    let err = s.unpack(&Tar::new().raw(b"", EntryType::Regular, b"x", None).finish()).unwrap_err();
    assert!(matches!(err, UnpackError::UnsafePath { ref reason, .. } if reason == "empty name"), "{err}");
    for name in [&b"."[..], b"./", b"/", b"a/..", b"../..", b"//."] {
        for (kind, link) in [
            (EntryType::Regular, None),
            (EntryType::Symlink, Some(&b"x"[..])),
            (EntryType::Fifo, None),
            (EntryType::Link, Some(&b"f"[..])),
        ] {
            let tar = Tar::new().file("f", b"f").raw(name, kind, b"", link).finish();
            let err = s.unpack(&tar).unwrap_err();
            assert!(matches!(err, UnpackError::UnsafePath { .. }), "{name:?} {kind:?}: {err}");
        }
    }
    assert!(fs::symlink_metadata(&s.root).unwrap().is_dir());
    s.assert_outside_untouched();
}

#[test]
fn rejects_malformed_whiteouts() {
    let s = Sandbox::new();
    for name in [&b".wh."[..], b"d/.wh..", b"d/.wh...", b".wh.x/y"] {
        let tar = Tar::new().raw(name, EntryType::Regular, b"", None).finish();
        let err = s.unpack(&tar).unwrap_err();
        assert!(matches!(err, UnpackError::UnsafePath { .. }), "{name:?}: {err}");
    }
    assert!(!s.exists("x"));
    s.assert_outside_untouched();
}

#[test]
fn rejects_overlong_paths_and_link_targets() {
    let s = Sandbox::new();
    let long = "a/".repeat(2500) + "f";
    let err = s.unpack(&Tar::new().pax(&[("path", long.as_bytes())]).file("x", b"").finish()).unwrap_err();
    assert!(matches!(err, UnpackError::PathTooLong { len: 5001, limit: 4096, .. }), "{err}");
    let err = s.unpack(&Tar::new().symlink("l", &"t/".repeat(2100)).finish()).unwrap_err();
    assert!(matches!(err, UnpackError::PathTooLong { len: 4200, .. }), "{err}");
    let limits = Limits { max_path_len: 100, ..Limits::default() };
    let err = s.unpack_with(&Tar::new().file(&"n".repeat(150), b"").finish(), limits).unwrap_err();
    assert!(matches!(err, UnpackError::PathTooLong { len: 150, limit: 100, .. }), "{err}");
    assert!(!s.exists("a"));
    assert!(!s.exists("l"));
    s.assert_outside_untouched();
}

/// A reader producing `prefix` then `n` bytes of `fill`, without allocating them.
fn lazy(prefix: Vec<u8>, fill: u8, n: u64) -> impl Read {
    std::io::Cursor::new(prefix).chain(std::io::repeat(fill).take(n))
}

#[test]
fn refuses_huge_extension_headers_without_buffering_them() {
    let s = Sandbox::new();
    for kind in [EntryType::XHeader, EntryType::GNULongName, EntryType::GNULongLink] {
        let mut h = header(kind, 0o644, 1 << 30);
        h.as_old_mut().name[..9].copy_from_slice(b"@LongLink");
        h.set_cksum();
        let started = Instant::now();
        let mut reader = Counting { inner: lazy(h.as_bytes().to_vec(), b'a', 1 << 30), count: 0 };
        let err = image_rs::unpack::unpack_layer(&mut reader, &s.root, &Default::default()).unwrap_err();
        assert!(matches!(err, UnpackError::LimitExceeded { .. }), "{kind:?}: {err}");
        assert!(reader.count < 1 << 20, "{kind:?}: read {} bytes", reader.count);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    s.assert_outside_untouched();
}

#[test]
fn rejects_too_many_entries() {
    let s = Sandbox::new();
    let mut t = Tar::new();
    for i in 0..11 {
        t.file(&format!("f{i}"), b"x");
    }
    let err = s.unpack_with(&t.finish(), Limits { max_entries: 10, ..Limits::default() }).unwrap_err();
    assert!(matches!(err, UnpackError::TooManyEntries { ref path, limit: 10 } if path == "f10"), "{err}");
    assert_eq!(names(&s.root).len(), 10);
    assert!(!s.exists("f10"));
    s.assert_outside_untouched();
}

#[test]
fn rejects_unsupported_entry_types_and_out_of_range_ids() {
    let s = Sandbox::new();
    let err = s.unpack(&Tar::new().raw(b"vol", EntryType::new(b'V'), b"", None).finish()).unwrap_err();
    assert!(matches!(err, UnpackError::UnsupportedEntry { ref path, .. } if path == "vol"), "{err}");
    let err = s.unpack(&Tar::new().pax(&[("uid", b"4294967295")]).file("u", b"").finish()).unwrap_err();
    assert!(matches!(err, UnpackError::InvalidHeader { .. }), "{err}");
    let err = s.unpack(&Tar::new().pax(&[("gid", b"99999999999")]).file("g", b"").finish()).unwrap_err();
    assert!(matches!(err, UnpackError::InvalidHeader { .. }), "{err}");
    s.assert_outside_untouched();
}

#[test]
fn truncated_tar_stream_is_a_clear_error_not_a_panic() {
    let tar = Tar::new().dir("d").file("d/f", &[b'x'; 3000]).symlink("l", "d/f").file("g", b"tail").finish();
    // Where the archive's content ends: after "g"'s header and its padded data.
    let end_of_entries = tar.len() - 1024;
    let s = Sandbox::new();
    for cut in (0..tar.len()).step_by(97).chain([512, 1024, 1536, end_of_entries - 1, end_of_entries]) {
        let root = s.tmp.path().join(format!("cut{cut}"));
        fs::create_dir(&root).unwrap();
        let result = image_rs::unpack::unpack_layer(&tar[..cut], &root, &Default::default());
        if cut == 0 || cut >= end_of_entries + 512 {
            assert!(result.is_ok(), "cut at {cut}: {result:?}");
        } else {
            let err = result.unwrap_err();
            assert!(
                matches!(err, UnpackError::Truncated { .. } | UnpackError::Tar { .. }),
                "cut at {cut}: unexpected {err}"
            );
            assert!(!err.to_string().is_empty());
        }
        fs::remove_dir_all(&root).unwrap();
    }
    s.assert_outside_untouched();
}

#[test]
fn random_corruption_never_panics_or_escapes() {
    let s = Sandbox::new();
    let out = s.outside.display().to_string();
    let base = Tar::new()
        .dir("d")
        .file("d/f", b"hello world")
        .symlink("d/l", &out)
        .hardlink("d/h", "d/f")
        .raw(b"../x", EntryType::Regular, b"x", None)
        .pax(&[("SCHILY.xattr.user.a", b"1")])
        .file("x2", b"y")
        .finish();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..400 {
        let mut tar = base.clone();
        for _ in 0..(1 + next() % 8) {
            let at = (next() % tar.len() as u64) as usize;
            tar[at] = next() as u8;
        }
        let root = s.tmp.path().join(format!("r{i}"));
        fs::create_dir(&root).unwrap();
        let _ = image_rs::unpack::unpack_layer(&tar[..], &root, &Default::default());
        fs::remove_dir_all(&root).unwrap();
    }
    s.assert_outside_untouched();
}

#[test]
fn whiteout_named_like_outside_path_stays_inside() {
    let s = Sandbox::new();
    let tar = Tar::new()
        .raw(b"../outside/.wh.passwd", EntryType::Regular, b"", None)
        .raw(b"/.wh.outside", EntryType::Regular, b"", None)
        .finish();
    let stats = s.unpack(&tar).unwrap();
    assert_eq!(stats.whiteouts, 2);
    assert!(s.lstat("outside/passwd").file_type().is_char_device());
    assert!(s.lstat("outside").is_dir());
    s.assert_outside_untouched();
}

#[test]
fn rejects_hardlink_to_a_directory_and_unparsable_pax_records() {
    let s = Sandbox::new();
    let err = s.unpack(&Tar::new().dir("d").hardlink("h", "d").finish()).unwrap_err();
    assert!(matches!(err, UnpackError::UnsafePath { ref path, .. } if path == "h"), "{err}");
    let err = s.unpack(&Tar::new().pax(&[("SCHILY.xattr.user.a", b"x\ny")]).file("p", b"").finish()).unwrap_err();
    assert!(matches!(err, UnpackError::InvalidHeader { ref path, .. } if path == "p"), "{err}");
    assert!(!s.exists("h"));
    assert!(!s.exists("p"));
    s.assert_outside_untouched();
}
