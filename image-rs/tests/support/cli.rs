//! The real `image-pull` binary as the acceptance scripts drive it: pull into
//! a bundle, encrypt a layout, and compare unpacked trees.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::registry::Registry;

/// The image-pull binary of this test build; other crates' tests (which share
/// these fixtures by path) find it beside their own binaries.
pub const PULL: &str = match option_env!("CARGO_BIN_EXE_image-pull") {
    Some(p) => p,
    None => "image-pull",
};

pub fn pull_bin() -> PathBuf {
    if option_env!("CARGO_BIN_EXE_image-pull").is_some() {
        return PathBuf::from(PULL);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/image-pull
    exe.parent().and_then(|deps| deps.parent()).map(|d| d.join("image-pull")).expect("target dir")
}

pub fn image_pull(args: &[&str]) -> Output {
    Command::new(pull_bin()).args(args).output().expect("run image-pull")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Path → type, mode, owner, size, link count, mtime and content of everything under `dir`.
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let content = if m.file_type().is_symlink() {
                format!("-> {:?}", std::fs::read_link(&path).unwrap())
            } else if m.is_file() {
                super::sha256_hex(&std::fs::read(&path).unwrap())
            } else {
                String::new()
            };
            let mtime = if m.is_dir() { 0 } else { m.mtime() };
            out.insert(
                path.strip_prefix(base).unwrap().to_owned(),
                format!("{:o} {}:{} {} n{} t{mtime} {content}", m.mode(), m.uid(), m.gid(), m.size(), m.nlink()),
            );
            if m.is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

pub struct Pull {
    pub out: Output,
    pub work: PathBuf,
    pub bundle: PathBuf,
}

impl Pull {
    pub fn ok(&self) -> &Self {
        assert!(self.out.status.success(), "pull failed: {}", stderr(&self.out));
        self
    }
    pub fn err(&self) -> String {
        assert!(!self.out.status.success(), "pull unexpectedly succeeded: {}", stderr(&self.out));
        stderr(&self.out)
    }
    pub fn rootfs(&self) -> BTreeMap<PathBuf, String> {
        tree(&self.bundle.join("rootfs"))
    }
    /// Committed layer directories in the store.
    pub fn committed_layers(&self) -> usize {
        std::fs::read_dir(self.work.join("layers")).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count()
    }
    pub fn staging_left(&self) -> usize {
        std::fs::read_dir(self.work.join("staging")).unwrap().count()
    }
    /// Asserts the pull failed and left nothing behind: no committed layer,
    /// no staging, no bundle. Returns its stderr.
    #[track_caller]
    pub fn refused_leaving_nothing(&self) -> String {
        let err = self.err();
        assert_eq!(self.committed_layers(), 0, "a layer was committed: {err}");
        assert_eq!(self.staging_left(), 0, "staging was left behind");
        assert!(!self.bundle.exists(), "a bundle was written at {}", self.bundle.display());
        err
    }
}

pub fn pull(reg: &Registry, work: &Path, repo_tag: &str, extra: &[&str]) -> Pull {
    let bundle = tempfile::tempdir().unwrap().keep().join("bundle");
    let mut args = vec!["--work-dir", p(work), "--plain-http", "--rootfs", "flatten"];
    args.extend_from_slice(extra);
    let reference = reg.reference(repo_tag);
    args.push(&reference);
    args.push(p(&bundle));
    let out = image_pull(&args);
    Pull { out, work: work.to_owned(), bundle }
}

/// Encrypts layout `src:t` into `dst:t` with `image-pull encrypt`.
pub fn our_encrypt(src: &Path, dst: &Path, recipients: &[String]) {
    let mut cmd = Command::new(pull_bin());
    cmd.arg("encrypt");
    for r in recipients {
        cmd.args(["--recipient", r]);
    }
    cmd.arg(format!("{}:t", p(src))).arg(format!("{}:t", p(dst)));
    super::run_ok(&mut cmd);
}

pub fn manifest_of(layout: &Path, tag: &str) -> Value {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let hex = entry["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}
