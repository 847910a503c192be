//! What a SIGKILLed pull may and may not leave behind, checked from outside
//! (image-rs/src/store.rs names the store's parts):
//! - no mount at or below the test's directory (/proc/self/mountinfo);
//! - no layer lock (`locks/<chain>.lock`, flock) still held;
//! - `layers/`: only `<chain hex>` directories with their `<chain hex>.json`
//!   record, each equal to the same layer of a clean pull;
//! - `staging/` and write-in-progress records of the dead only until the
//!   store is opened again.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::cli::tree;

/// Mount points (field 5 of /proc/self/mountinfo, octal escapes decoded) at or below `prefix`.
pub fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(unescape(mp)))
        .filter(|mp| mp.starts_with(prefix))
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lock files under `<store>/locks` that another process still holds (a
/// non-blocking exclusive flock fails).
pub fn held_locks(store: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(store.join("locks")) else { return Vec::new() };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| {
            let Ok(f) = std::fs::OpenOptions::new().read(true).open(p) else { return false };
            // SAFETY: flock on a file descriptor we own.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            r != 0
        })
        .collect()
}

/// Layer trees of `<store>/layers` by chain hex (committed layers only).
pub fn committed_layers(store: &Path) -> BTreeMap<String, BTreeMap<PathBuf, String>> {
    let Ok(rd) = std::fs::read_dir(store.join("layers")) else { return BTreeMap::new() };
    rd.flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), tree(&e.path())))
        .collect()
}

/// Everything in `<store>/layers` is a committed layer with its record, or a
/// record, and every committed layer equals the clean store's one.
#[track_caller]
pub fn assert_layers_consistent(store: &Path, clean: &BTreeMap<String, BTreeMap<PathBuf, String>>, ctx: &str) {
    let Ok(rd) = std::fs::read_dir(store.join("layers")) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let hex = name.strip_suffix(".json").unwrap_or(&name);
        assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{ctx}: stray entry layers/{name}");
        if e.path().is_dir() {
            assert!(store.join("layers").join(format!("{name}.json")).is_file(), "{ctx}: layer {name} without record");
            let want = clean.get(&name).unwrap_or_else(|| panic!("{ctx}: unknown layer {name} committed"));
            assert_eq!(&tree(&e.path()), want, "{ctx}: committed layer {name} differs from a clean pull");
        }
    }
}

/// Entries of `<store>/<sub>` (e.g. "staging").
pub fn entries_of(store: &Path, sub: &str) -> Vec<PathBuf> {
    std::fs::read_dir(store.join(sub)).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// Write-in-progress record files (`*.tmp.<pid>`) under `<store>/layers` and `<store>/images`.
pub fn temp_records(store: &Path) -> Vec<PathBuf> {
    ["layers", "images"]
        .iter()
        .flat_map(|sub| entries_of(store, sub))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(".tmp.")))
        .collect()
}

/// SIGKILL `pid` (a child of this test).
pub fn sigkill(pid: u32) {
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}
