//! Fuzz target bodies (the `fuzz/` crate's targets call these; the unit test
//! below replays every committed input under `fuzz/regressions/<target>/`).
//! Thin wrappers over what the attestation-agent reads from the KBS, the
//! initdata document and its configuration; nothing here is used by the agent.

use std::path::Path;
use std::sync::OnceLock;

use crate::attester::TeeKind;
use crate::kbs::resource::ResourcePath;
use crate::tee_key::TeeKey;

/// Splits a multi-part input at NUL bytes; missing parts are empty.
fn parts<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&[][..]; N];
    let mut rest = data;
    for (i, slot) in out.iter_mut().enumerate() {
        if i == N - 1 {
            *slot = rest;
            break;
        }
        match rest.iter().position(|&b| b == 0) {
            Some(p) => {
                *slot = &rest[..p];
                rest = &rest[p + 1..];
            }
            None => {
                *slot = rest;
                rest = &[];
            }
        }
    }
    out
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

fn tee_key() -> &'static TeeKey {
    static KEY: OnceLock<TeeKey> = OnceLock::new();
    KEY.get_or_init(|| {
        TeeKey::generate(crate::config::TeeKeyAlgorithm::EcP256, false, 4 << 20).expect("the TEE key generates")
    })
}

/// An error text built from KBS bytes must stay one bounded log line.
fn check_error_text(what: &str, e: &impl std::fmt::Display) {
    let s = e.to_string();
    assert!(!s.chars().any(char::is_control), "{what}: control character in {s:?}");
    assert!(s.len() <= 16 * 1024, "{what}: {} byte message", s.len());
}

/// Target `kbs_rcar`: what a KBS sends the RCAR client (auth challenge,
/// attest token, error bodies, session cookie, resource JWE) and resource
/// URIs, which round-trip when they parse.
pub fn kbs_rcar(data: &[u8]) {
    let [challenge, token, error, cookie, uri, jwe] = parts::<6>(data);
    for tee in [TeeKind::Tdx, TeeKind::Se] {
        match crate::kbs::rcar::read_challenge(challenge, tee) {
            Ok((c, _alg)) => assert!(!c.nonce.is_empty() && c.nonce.len() <= 64 * 1024),
            Err(e) => check_error_text("challenge", &e),
        }
    }
    match crate::kbs::rcar::read_token(token) {
        Ok((t, _)) => assert!(t.len() <= crate::kbs::session::MAX_TOKEN),
        Err(e) => check_error_text("token", &e),
    }
    for status in [401u16, 403, 404, 500] {
        let status = reqwest::StatusCode::from_u16(status).expect("status");
        check_error_text("refused", &crate::kbs::refused(&status, error));
        check_error_text("http error", &crate::kbs::http_error("https://kbs.test/kbs/v0/auth", status, error));
    }
    match crate::kbs::session::session_cookie([cookie].into_iter()) {
        Ok(Some(v)) => assert!(!v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b';')),
        Ok(None) => {}
        Err(e) => check_error_text("cookie", &e),
    }
    if let Ok(p) = ResourcePath::parse(text(uri)) {
        let printed = p.to_string();
        let again = ResourcePath::parse(&printed).expect("a printed resource path parses");
        assert_eq!(again, p);
        assert!(!printed.split('/').any(|s| s == ".." || s == "."));
        let with_scheme = ResourcePath::parse(&format!("kbs:///{printed}")).expect("kbs:/// form parses");
        assert_eq!(with_scheme, p);
    }
    if let Ok(pt) = tee_key().decrypt(jwe) {
        assert!(pt.len() <= jwe.len());
    }
}

/// Target `initdata` (attestation-agent part): the TOML document. The digest
/// has its algorithm's length and fits the TEE fields as specified.
pub fn initdata(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    if let Ok(d) = crate::initdata::Initdata::parse(raw.to_owned()) {
        let digest = d.digest().unwrap();
        assert!([32, 48, 64].contains(&digest.len()), "{} byte digest", digest.len());
        for len in [32, 48] {
            let fitted = crate::initdata::fit_to_field(&digest, len);
            assert_eq!(fitted.len(), len);
            let common = len.min(digest.len());
            assert_eq!(fitted[..common], digest[..common]);
        }
    }
}

/// Target `configs` (attestation-agent part): aa.toml and the kernel
/// command line fallback, which never yields a plain-http KBS.
pub fn configs(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = crate::config::Config::from_toml(&text, Path::new("aa.toml")) {
        if let Ok(k) = c.kbs() {
            assert!(k.insecure_http || !k.url.to_ascii_lowercase().starts_with("http://"), "plain http KBS {}", k.url);
        }
    }
    if let Ok(c) = crate::config::Config::from_kernel_cmdline(&text) {
        let k = c.kbs().expect("a kernel command line config names a KBS");
        assert!(!k.insecure_http);
        assert!(!k.url.to_ascii_lowercase().starts_with("http://"), "plain http KBS from the command line: {}", k.url);
    }
}

#[cfg(test)]
mod tests {
    /// A target's name and body.
    type Target = (&'static str, fn(&[u8]));

    /// Replays the committed inputs of this crate's targets.
    #[test]
    fn fuzz_regressions_replay() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
        let targets: [Target; 3] =
            [("kbs_rcar", super::kbs_rcar), ("initdata", super::initdata), ("configs", super::configs)];
        for (name, body) in targets {
            let Ok(dir) = std::fs::read_dir(base.join(name)) else { continue };
            for entry in dir {
                let path = entry.unwrap().path();
                eprintln!("replaying {}", path.display());
                body(&std::fs::read(&path).unwrap());
            }
        }
    }
}
