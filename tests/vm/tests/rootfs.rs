//! `rootfs/build.sh`: the same inputs give the same bytes, and the image has
//! the layout PID 1 relies on (root-owned, fixed mtimes, /init, device nodes,
//! modules with their dependency file, the busybox test rootfs, the guest
//! components where kata's agent launches them).
//! Needs root, cpio and the static release agent (`make release`); skips with
//! the reason otherwise, except with CI=true.

use std::path::{Path, PathBuf};
use std::process::Command;

use vm_harness::workspace_root;

fn skip_or_fail(test: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: CI=true and {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
}

fn release_dir() -> PathBuf {
    workspace_root().join("target/x86_64-unknown-linux-gnu/release")
}

fn ready(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail(test, "not root (the image holds device nodes)");
        return false;
    }
    if !release_dir().join("cvm-agent").exists() {
        skip_or_fail(test, "no static release cvm-agent: run `make release`");
        return false;
    }
    if !vm_harness::qemu::on_path("cpio") {
        skip_or_fail(test, "cpio not installed");
        return false;
    }
    true
}

fn build(out: &Path, epoch: &str) -> (String, Vec<u8>) {
    let o = Command::new(workspace_root().join("rootfs/build.sh"))
        .arg(release_dir())
        .arg(out)
        .env("SOURCE_DATE_EPOCH", epoch)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "build.sh failed:\n{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    (stdout, std::fs::read(out.join("initramfs")).unwrap())
}

fn sha256_hex(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}

#[test]
fn two_builds_give_the_same_bytes_and_the_layout_pid1_needs() {
    let test = "two_builds_give_the_same_bytes_and_the_layout_pid1_needs";
    if !ready(test) {
        return;
    }
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (report, first) = build(a.path(), "0");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a different wall-clock second
    let (_, second) = build(b.path(), "0");
    assert!(first == second, "two builds of the same inputs differ");
    let sum = sha256_hex(&a.path().join("initramfs"));
    assert!(report.contains(&sum) && report.contains("bytes"), "build must print sha256 and size: {report}");

    let (_, other_epoch) = build(b.path(), "1700000000");
    assert!(first != other_epoch, "SOURCE_DATE_EPOCH must reach the archive");

    // Layout: list the archive (gzip -> cpio -tv).
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc '{}' | cpio -tv --quiet", a.path().join("initramfs").display()))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((f[2], f[3]), ("root", "root"), "not root-owned: {line}");
        assert!(line.contains(" 1970 "), "mtime is not SOURCE_DATE_EPOCH: {line}");
    }
    // `cpio -tv` prints "... Jan  1  1970 NAME[ -> TARGET]" (device lines have one more column).
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split_once(" 1970 ").map(|(_, n)| n.split(" -> ").next().unwrap_or(n)).unwrap_or(""))
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries are not sorted");
    for needed in [
        "init",
        "usr/bin/cvm-agent",
        "dev/console",
        "dev/null",
        "etc/ssl/certs/ca-certificates.crt",
        "usr/share/cvm/busybox/bin/busybox",
        "usr/share/cvm/busybox/bin/sh",
        // Where kata's agent launches the guest components from.
        "usr/local/bin/attestation-agent",
        "usr/local/bin/confidential-data-hub",
    ] {
        assert!(names.contains(&needed), "{needed} missing from the image:\n{listing}");
    }
    assert!(listing.contains("init -> usr/bin/cvm-agent"), "{listing}");
    assert!(
        listing.lines().any(|l| l.starts_with('c') && l.ends_with("dev/console")),
        "dev/console is not a char device"
    );
    assert!(names.iter().any(|n| n.ends_with("/modules.dep")) && names.iter().any(|n| n.ends_with("/modules.load")));
    assert!(names.iter().any(|n| n.ends_with("vmw_vsock_virtio_transport.ko")), "vsock module missing");
    assert!(names.iter().any(|n| n.ends_with("/virtio_blk.ko")), "virtio_blk (the initdata disk) missing");
    assert!(
        !names.iter().any(|n| n.ends_with(".ko.xz") || n.ends_with(".ko.zst")),
        "modules must be stored decompressed"
    );
}
