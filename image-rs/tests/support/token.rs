//! A Docker-token-protocol bearer-token server for Distribution's `auth.token` config.
//!
//! GET `/token?service=S&scope=repository:NAME:pull,push[&scope=...]` with optional Basic
//! credentials → `{"token", "access_token", "expires_in", "issued_at"}`. Tokens are RS256 JWTs
//! signed (via the `openssl` CLI) by a key whose self-signed certificate is both the `x5c` header
//! entry and the registry's `rootcertbundle`. Every request is recorded.

use super::{run_ok, ChildGuard};
use base64::Engine;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
pub struct TokenOptions {
    /// `aud` claim and the registry's `auth.token.service`.
    pub service: String,
    /// `iss` claim and the registry's `auth.token.issuer`.
    pub issuer: String,
    /// Required Basic credentials; `None` grants every request (anonymous included).
    pub creds: Option<(String, String)>,
    /// With `creds` set: a request without credentials gets a pull-only token instead of 401.
    pub anonymous_pull: bool,
    pub expires_in: u64,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            service: "image-rs-test-registry".into(),
            issuer: "image-rs-test-token-issuer".into(),
            creds: None,
            anonymous_pull: false,
            expires_in: 300,
        }
    }
}

/// One request the token server received.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// Path and query as sent.
    pub target: String,
    /// Basic-auth user name, if credentials were sent.
    pub user: Option<String>,
    pub service: Option<String>,
    /// Every `scope` query parameter, decoded.
    pub scopes: Vec<String>,
    /// HTTP status answered (200, 401, 404).
    pub status: u16,
}

struct Shared {
    opts: TokenOptions,
    key_path: PathBuf,
    x5c: String,
    requests: Mutex<Vec<TokenRequest>>,
    jti: AtomicU64,
}

pub struct TokenServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cert_path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    /// Generates an RSA key and self-signed certificate with `openssl` and starts serving on
    /// 127.0.0.1 (port chosen by the OS). Needs `openssl` (check with `require_tool`).
    pub fn start(opts: TokenOptions) -> TokenServer {
        let dir = tempfile::Builder::new().prefix("token-server-").tempdir().expect("tempdir");
        let key_path = dir.path().join("token.key");
        let cert_path = dir.path().join("token.crt");
        run_ok(Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256"]).args([
            "-days",
            "2",
            "-subj",
            "/CN=image-rs test token issuer",
            "-keyout",
            path_str(&key_path),
            "-out",
            path_str(&cert_path),
        ]));
        let der = run_ok(Command::new("openssl").args(["x509", "-in", path_str(&cert_path), "-outform", "DER"])).stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared { opts, key_path, x5c, requests: Mutex::new(Vec::new()), jti: AtomicU64::new(1) });
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let _ = handle(&s2, conn);
                    }
                }
            })
            .expect("spawn token server");
        TokenServer { addr, shared, cert_path, stop, thread: Some(thread), _dir: dir }
    }

    /// `http://127.0.0.1:PORT/token` (the registry's `auth.token.realm`).
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn service(&self) -> &str {
        &self.shared.opts.service
    }

    pub fn issuer(&self) -> &str {
        &self.shared.opts.issuer
    }

    /// PEM certificate to use as the registry's `auth.token.rootcertbundle`.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Number of tokens issued (requests answered 200).
    pub fn tokens_issued(&self) -> usize {
        self.requests().iter().filter(|r| r.status == 200).count()
    }

    /// Mints a token directly, e.g. `issue_token("alice", &[("repository:app", &["pull"])])` where
    /// each entry is (`type:name`, actions).
    pub fn issue_token(&self, subject: &str, access: &[(&str, &[&str])]) -> String {
        let access: Vec<serde_json::Value> = access
            .iter()
            .map(|(tn, actions)| {
                let (ty, name) = tn.split_once(':').unwrap_or(("repository", tn));
                serde_json::json!({"type": ty, "name": name, "actions": actions})
            })
            .collect();
        sign_jwt(&self.shared, subject, access)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)); // wake accept()
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The claims (payload) of a JWT, unverified, e.g. to check `access` in a test.
pub fn jwt_claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("JWT has three parts");
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).expect("base64url");
    serde_json::from_slice(&bytes).expect("JWT claims JSON")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// RFC 3339 UTC timestamp of a Unix time.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn sign_jwt(shared: &Shared, subject: &str, access: Vec<serde_json::Value>) -> String {
    let now = now_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [shared.x5c]});
    let claims = serde_json::json!({
        "iss": shared.opts.issuer,
        "sub": subject,
        "aud": shared.opts.service,
        "exp": now + shared.opts.expires_in,
        "nbf": now - 10,
        "iat": now - 10,
        "jti": format!("image-rs-test-{}", shared.jti.fetch_add(1, Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign", path_str(&shared.key_path)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl dgst");
    let mut guard = ChildGuard::new("openssl", child);
    let c = guard.child_mut();
    c.stdin.take().unwrap().write_all(signing_input.as_bytes()).expect("write to openssl");
    let mut sig = Vec::new();
    c.stdout.take().unwrap().read_to_end(&mut sig).expect("read openssl signature");
    let status = c.wait().expect("wait openssl");
    assert!(status.success() && !sig.is_empty(), "openssl dgst -sign failed: {status}");
    format!("{signing_input}.{}", b64url(&sig))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(conn: &mut TcpStream, status: u16, extra: &str, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    conn.write_all(msg.as_bytes())?;
    conn.flush()
}

fn handle(shared: &Shared, mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while super::http::find_head_end(&head).is_none() {
        let n = conn.read(&mut buf)?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines.next().unwrap_or_default().split(' ').nth(1).unwrap_or("/").to_string();
    let basic = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .and_then(|(_, v)| v.trim().strip_prefix("Basic ").map(str::to_string))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .map(|d| String::from_utf8_lossy(&d).into_owned())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())));
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    let scopes: Vec<String> = params.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    let service = params.iter().find(|(k, _)| k == "service").map(|(_, v)| v.clone());
    let mut record =
        TokenRequest { target: target.clone(), user: basic.as_ref().map(|b| b.0.clone()), service, scopes, status: 0 };

    let opts = &shared.opts;
    let pull_only = match (&opts.creds, &basic) {
        _ if path != "/token" => {
            record.status = 404;
            None
        }
        (None, _) => Some(false),
        (Some(want), Some(got)) if want == got => Some(false),
        (Some(_), None) if opts.anonymous_pull => Some(true),
        _ => {
            record.status = 401;
            None
        }
    };
    let result = match pull_only {
        None if record.status == 404 => respond(&mut conn, 404, "", "{\"error\":\"not found\"}"),
        None => respond(&mut conn, 401, "WWW-Authenticate: Basic realm=\"token\"\r\n", "{\"error\":\"unauthorized\"}"),
        Some(pull_only) => {
            let access: Vec<serde_json::Value> = record
                .scopes
                .iter()
                .flat_map(|s| s.split(' '))
                .filter_map(|scope| {
                    // type[(class)]:name:actions — the name never holds the last ':'.
                    let (ty, rest) = scope.split_once(':')?;
                    let (name, actions) = rest.rsplit_once(':')?;
                    let actions: Vec<&str> =
                        actions.split(',').filter(|a| !a.is_empty() && (!pull_only || *a == "pull")).collect();
                    let ty = ty.split('(').next().unwrap_or(ty);
                    Some(serde_json::json!({"type": ty, "name": name, "actions": actions}))
                })
                .collect();
            let subject = basic.as_ref().map(|b| b.0.as_str()).unwrap_or("");
            let token = sign_jwt(shared, subject, access);
            let body = serde_json::json!({
                "token": token,
                "access_token": token,
                "expires_in": opts.expires_in,
                "issued_at": rfc3339(now_secs()),
            });
            record.status = 200;
            respond(&mut conn, 200, "", &body.to_string())
        }
    };
    shared.requests.lock().unwrap().push(record);
    result
}
