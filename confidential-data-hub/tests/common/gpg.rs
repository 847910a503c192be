//! A throwaway GnuPG home for signing images pushed to the test registry
//! (skopeo `--sign-by`, signatures in a file lookaside).

use std::path::Path;
use std::process::Command;

use crate::support::cli::p;
use crate::support::registry::Registry;

/// A throwaway GnuPG home with one ed25519 signing key.
pub struct Gpg {
    home: tempfile::TempDir,
    fpr: String,
}

impl Gpg {
    pub fn new() -> Gpg {
        let home = tempfile::Builder::new().prefix("gpg-").tempdir_in("/tmp").unwrap();
        let gpg = |args: &[&str]| {
            crate::support::run_ok(Command::new("gpg").env("GNUPGHOME", home.path()).args(["--batch"]).args(args))
                .stdout
        };
        gpg(&[
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            "cdh-test",
            "ed25519",
            "sign",
            "never",
        ]);
        let listing = String::from_utf8(gpg(&["--with-colons", "--list-keys"])).unwrap();
        let fpr = listing.lines().find_map(|l| l.strip_prefix("fpr:")).unwrap().trim_matches(':').to_owned();
        Gpg { home, fpr }
    }

    pub fn public_key(&self) -> Vec<u8> {
        crate::support::run_ok(Command::new("gpg").env("GNUPGHOME", self.home.path()).args(["--export", &self.fpr]))
            .stdout
    }

    /// Copies layout `src:t` to `reg/<repo_tag>`, signing into the lookaside `look`.
    pub fn push_signed(&self, reg: &Registry, src: &Path, repo_tag: &str, look: &Path) {
        let rd = tempfile::tempdir().unwrap();
        let url = format!("file://{}", p(look));
        std::fs::write(
            rd.path().join("sign.yaml"),
            format!("docker:\n  {}:\n    lookaside: {url}\n    lookaside-staging: {url}\n", reg.host()),
        )
        .unwrap();
        crate::support::run_ok(Command::new("skopeo").env("GNUPGHOME", self.home.path()).args([
            "--insecure-policy",
            "--registries.d",
            p(rd.path()),
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--sign-by",
            &self.fpr,
            &format!("oci:{}:t", p(src)),
            &format!("docker://{}/{repo_tag}", reg.host()),
        ]));
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf").env("GNUPGHOME", self.home.path()).args(["--kill", "all"]).status();
    }
}
