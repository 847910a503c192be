//! A real Distribution registry (`docker-registry serve`) on 127.0.0.1, optionally with TLS
//! (test CA + server certificate made with the openssl CLI), htpasswd basic auth, or bearer-token
//! auth through a [`TokenServer`]. Pushes go through `skopeo copy`.

use super::token::{TokenOptions, TokenServer};
use super::{free_port, run_ok, ChildGuard};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with a certificate (IP 127.0.0.1, DNS localhost) issued by a fresh test CA.
    pub tls: bool,
    /// Basic auth (bcrypt htpasswd) with these credentials. With `token_auth`, these are the
    /// credentials the token server requires instead (`None` → the token server grants anyone).
    pub htpasswd: Option<(String, String)>,
    /// Bearer-token auth (`auth.token`) backed by a [`TokenServer`] started with the registry.
    pub token_auth: bool,
    /// With `token_auth` and credentials: requests without credentials get pull-only tokens.
    pub anonymous_pull: bool,
    /// `storage.delete.enabled` (allows DELETE of manifests and blobs).
    pub delete: bool,
    /// With `tls`: serve a self-signed certificate made as operators make one
    /// (`openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -addext
    /// subjectAltName=IP:127.0.0.1`, CA:TRUE) instead of a CA-issued one;
    /// `ca_file` is then that very certificate.
    pub self_signed: bool,
}

impl RegistryOptions {
    pub fn plain() -> Self {
        Self::default()
    }
    pub fn tls() -> Self {
        RegistryOptions { tls: true, ..Self::default() }
    }
    pub fn tls_self_signed() -> Self {
        RegistryOptions { tls: true, self_signed: true, ..Self::default() }
    }
    pub fn with_basic(mut self, user: &str, pass: &str) -> Self {
        self.htpasswd = Some((user.into(), pass.into()));
        self
    }
    pub fn with_token(mut self, user: &str, pass: &str) -> Self {
        self.htpasswd = Some((user.into(), pass.into()));
        self.token_auth = true;
        self
    }
}

pub struct Registry {
    child: ChildGuard,
    port: u16,
    opts: RegistryOptions,
    token: Option<TokenServer>,
    ca_file: Option<PathBuf>,
    cert_dir: Option<PathBuf>,
    /// Time `start` took (certificates, htpasswd, token server, process start, readiness).
    pub startup: Duration,
    dir: tempfile::TempDir,
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Test CA + server certificate for 127.0.0.1/localhost. Returns (ca.crt, server.crt, server.key).
fn make_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_key, ca_crt) = (dir.join("ca.key"), dir.join("ca.crt"));
    let (key, csr, crt, ext) =
        (dir.join("server.key"), dir.join("server.csr"), dir.join("server.crt"), dir.join("ext"));
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run_ok(Command::new("openssl").args(["req", "-x509"]).args(ec).args([
        "-sha256",
        "-days",
        "2",
        "-subj",
        "/CN=image-rs test CA",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        p(&ca_key),
        "-out",
        p(&ca_crt),
    ]));
    run_ok(Command::new("openssl").args(["req", "-new"]).args(ec).args([
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        p(&key),
        "-out",
        p(&csr),
    ]));
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let serial =
        format!("0x{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    run_ok(Command::new("openssl").args(["x509", "-req", "-sha256", "-days", "2", "-set_serial", &serial]).args([
        "-in",
        p(&csr),
        "-CA",
        p(&ca_crt),
        "-CAkey",
        p(&ca_key),
        "-extfile",
        p(&ext),
        "-out",
        p(&crt),
    ]));
    (ca_crt, crt, key)
}

/// A self-signed certificate for IP 127.0.0.1 with openssl's defaults (CA:TRUE).
/// Returns (server.crt, server.key); the certificate is its own CA file.
pub fn make_self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    run_ok(Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"]).args([
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        p(&key),
        "-out",
        p(&crt),
    ]));
    (crt, key)
}

/// First line of the answer to `GET /v2/` sent in plain text (a TLS server answers "400").
fn probe(port: u16) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.starts_with("HTTP/").then(|| text.lines().next().unwrap_or_default().to_string())
}

impl Registry {
    /// Starts a registry and waits until `/v2/` answers (401 counts). Panics with the registry log
    /// on failure. Needs `docker-registry` and `openssl`, plus `htpasswd` for basic auth.
    pub fn start(opts: RegistryOptions) -> Registry {
        let t0 = Instant::now();
        let dir = tempfile::Builder::new().prefix("registry-").tempdir().expect("tempdir");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).unwrap();
        let mut tls_yaml = String::new();
        let (mut ca_file, mut cert_dir) = (None, None);
        if opts.tls {
            let certs = dir.path().join("certs");
            fs::create_dir_all(&certs).unwrap();
            let (ca, crt, key) = if opts.self_signed {
                let (crt, key) = make_self_signed(&certs, "server");
                (crt.clone(), crt, key)
            } else {
                make_tls(&certs)
            };
            let cdir = dir.path().join("ca-dir");
            fs::create_dir_all(&cdir).unwrap();
            fs::copy(&ca, cdir.join("ca.crt")).unwrap();
            tls_yaml = format!("  tls:\n    certificate: {}\n    key: {}\n", p(&crt), p(&key));
            ca_file = Some(ca);
            cert_dir = Some(cdir);
        }
        let mut token = None;
        let auth_yaml = match (&opts.htpasswd, opts.token_auth) {
            (creds, true) => {
                let ts = TokenServer::start(TokenOptions {
                    creds: creds.clone(),
                    anonymous_pull: opts.anonymous_pull,
                    ..TokenOptions::default()
                });
                let y = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    ts.realm(),
                    ts.service(),
                    ts.issuer(),
                    p(ts.cert_path())
                );
                token = Some(ts);
                y
            }
            (Some((user, pass)), false) => {
                let out = run_ok(Command::new("htpasswd").args(["-Bbn", user, pass]));
                let path = dir.path().join("htpasswd");
                fs::write(&path, out.stdout).unwrap();
                format!("auth:\n  htpasswd:\n    realm: image-rs-test\n    path: {}\n", p(&path))
            }
            (None, false) => String::new(),
        };
        let log_path = dir.path().join("registry.log");
        for _attempt in 0..8 {
            let port = free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: image-rs-test-secret\n{tls_yaml}{auth_yaml}",
                p(&storage),
                opts.delete
            );
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config).unwrap();
            let log = fs::File::create(&log_path).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}"));
            let mut child = ChildGuard::new("docker-registry", child);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait() {
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    if log.contains("address already in use") {
                        break; // port collision: retry with another port
                    }
                    panic!("docker-registry exited ({status}) during startup:\n{log}");
                }
                if let Some(line) = probe(port) {
                    let ok = if opts.tls { true } else { line.contains(" 200") || line.contains(" 401") };
                    assert!(ok, "registry /v2/ answered {line:?}");
                    return Registry { child, port, opts, token, ca_file, cert_dir, startup: t0.elapsed(), dir };
                }
                if Instant::now() > deadline {
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    panic!("docker-registry not answering on 127.0.0.1:{port} after 30 s:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("docker-registry: no free port after 8 attempts");
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        format!("{}://{}", if self.opts.tls { "https" } else { "http" }, self.host())
    }

    /// "127.0.0.1:PORT/<repo_and_tag>", e.g. for a client under test.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.host())
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// The test CA certificate (PEM) when TLS is on.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The test CA certificate (PEM); panics if the registry was started without TLS.
    pub fn ca_pem_path(&self) -> &Path {
        self.ca_file().expect("registry started without tls")
    }

    /// Directory holding only `ca.crt` (for skopeo `--dest-cert-dir`/`--cert-dir`).
    pub fn cert_dir(&self) -> Option<&Path> {
        self.cert_dir.as_deref()
    }

    /// Credentials clients must use (basic auth, or the token server's), if any.
    pub fn creds(&self) -> Option<(&str, &str)> {
        self.opts.htpasswd.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// Root of Distribution's filesystem storage.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry stores blob `sha256:<hex>` (overwrite with same-length bytes to corrupt).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.storage_dir().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// The registry's stdout+stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// skopeo flags reaching this registry as `--{prefix}-…` ("dest" for copy targets, "src" for
    /// copy sources) or unprefixed (`prefix = ""`, for inspect). Skips flags `extra` already sets.
    pub fn skopeo_flags(&self, prefix: &str, extra: &[&str]) -> Vec<String> {
        let f = |name: &str| if prefix.is_empty() { format!("--{name}") } else { format!("--{prefix}-{name}") };
        let has = |names: &[&str]| extra.iter().any(|a| names.iter().any(|n| a.starts_with(&f(n))));
        let mut out = Vec::new();
        if !has(&["tls-verify", "cert-dir"]) {
            match &self.cert_dir {
                Some(d) => out.extend([f("cert-dir"), p(d).to_string()]),
                None => out.push(format!("{}=false", f("tls-verify"))),
            }
        }
        if let Some((u, pw)) = self.creds() {
            if !has(&["creds", "no-creds", "username", "password", "registry-token"]) {
                out.extend([f("creds"), format!("{u}:{pw}")]);
            }
        }
        out
    }

    fn skopeo(&self, args: Vec<String>) -> Result<std::process::Output, String> {
        let mut cmd = Command::new("skopeo");
        cmd.env("REGISTRY_AUTH_FILE", self.dir.path().join("no-auth.json")).args(["--command-timeout", "300s"]);
        if !args.iter().any(|a| a.starts_with("--policy")) {
            cmd.arg("--insecure-policy");
        }
        cmd.args(&args).stdin(Stdio::null());
        let out = cmd.output().map_err(|e| format!("cannot run skopeo: {e}"))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(format!("skopeo {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// `skopeo copy --preserve-digests oci:<layout_dir>:<tag_in_layout> docker://HOST/<repo_and_tag>`
    /// with the right TLS/credential flags (`--all` always: an index is pushed whole). Panics on
    /// failure; returns how long the push took.
    pub fn push_oci_layout(&self, layout_dir: &Path, tag_in_layout: &str, repo_and_tag: &str) -> Duration {
        let t0 = Instant::now();
        self.push_with_skopeo_args(layout_dir, tag_in_layout, repo_and_tag, &["--preserve-digests"])
            .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", self.log()));
        t0.elapsed()
    }

    /// Escape hatch: `skopeo copy --all <extra_args…> oci:DIR:TAG docker://HOST/REPO:TAG`. Default
    /// TLS/credential flags are added unless `extra_args` sets them (e.g. `--dest-creds u:wrong`);
    /// `--insecure-policy` is added unless it sets `--policy`. Global flags such as
    /// `--registries.d DIR` may be given here too. Err carries skopeo's stderr.
    pub fn push_with_skopeo_args(
        &self,
        layout_dir: &Path,
        tag_in_layout: &str,
        repo_and_tag: &str,
        extra_args: &[&str],
    ) -> Result<(), String> {
        let mut args: Vec<String> = vec!["copy".into(), "--all".into()];
        args.extend(self.skopeo_flags("dest", extra_args));
        args.extend(extra_args.iter().map(|s| s.to_string()));
        args.push(format!("oci:{}:{tag_in_layout}", p(layout_dir)));
        args.push(format!("docker://{}/{repo_and_tag}", self.host()));
        self.skopeo(args).map(|_| ())
    }

    /// `skopeo inspect --raw docker://HOST/REPO:TAG` (manifest or index bytes as stored). Panics on failure.
    pub fn inspect_raw(&self, repo_and_tag: &str) -> Vec<u8> {
        self.try_inspect_raw(repo_and_tag, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `skopeo inspect --raw` with extra flags (e.g. `--creds u:wrong`, `--no-creds`,
    /// `--tls-verify=false`); defaults as in `push_with_skopeo_args`.
    pub fn try_inspect_raw(&self, repo_and_tag: &str, extra_args: &[&str]) -> Result<Vec<u8>, String> {
        let mut args: Vec<String> = vec!["inspect".into(), "--raw".into()];
        args.extend(self.skopeo_flags("", extra_args));
        args.extend(extra_args.iter().map(|s| s.to_string()));
        args.push(format!("docker://{}/{repo_and_tag}", self.host()));
        self.skopeo(args).map(|o| o.stdout)
    }
}
