//! The KBS protocol state machine: auth → challenge, attest → token,
//! resource → JWE. Pure request → response functions over [`Shared`]; the
//! HTTP plumbing lives in `http.rs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kbs_types::{Attestation, HashAlgorithm, Request, Tee, TeePubKey};
use serde_json::{json, Value};

use crate::{token, Policy, Shared};

pub const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";
pub const COOKIE_NAME: &str = "kbs-session-id";
/// How long a challenged or attested session lives.
const SESSION_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Session {
    pub tee: Tee,
    pub nonce: String,
    pub hash: HashAlgorithm,
    pub expires: u64,
    /// Set once attested: the JWK the resources are encrypted to.
    pub tee_pubkey: Option<Value>,
    pub token_exp: u64,
}

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub set_cookie: Option<String>,
    pub content_type: &'static str,
}

impl Reply {
    fn json(value: Value) -> Self {
        Reply { status: 200, body: value.to_string().into_bytes(), set_cookie: None, content_type: "application/json" }
    }

    pub fn error(status: u16, variant: &str, detail: impl Into<String>) -> Self {
        let body = json!({"type": format!("{ERROR_TYPE_PREFIX}{variant}"), "detail": detail.into()});
        Reply { status, body: body.to_string().into_bytes(), set_cookie: None, content_type: "application/json" }
    }

    fn unauthorized(variant: &str, detail: impl Into<String>) -> Self {
        Self::error(401, variant, detail)
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn random_b64(n: usize) -> String {
    let mut buf = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf).expect("randomness");
    STANDARD.encode(buf)
}

pub struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub cookie: Option<&'a str>,
    pub bearer: Option<&'a str>,
    pub body: &'a [u8],
}

pub fn handle(shared: &Shared, req: Incoming<'_>) -> Reply {
    match (req.method, req.path) {
        ("POST", "/kbs/v0/auth") => auth(shared, req.body),
        ("POST", "/kbs/v0/attest") => attest(shared, req.cookie, req.body),
        ("GET", p) if p.starts_with("/kbs/v0/resource/") => {
            resource(shared, &p["/kbs/v0/resource/".len()..], req.cookie, req.bearer)
        }
        _ => Reply::error(404, "PluginNotFound", format!("no handler for {} {}", req.method, req.path)),
    }
}

fn auth(shared: &Shared, body: &[u8]) -> Reply {
    shared.stats.auth.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    // Trustee requires all three keys; serde fails on a missing one.
    let request: Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Reply::unauthorized("InvalidRequest", format!("auth request: {e}")),
    };
    if request.version != "0.4.0" {
        return Reply::unauthorized("ProtocolVersion", format!("expected version 0.4.0, got {:?}", request.version));
    }
    let offered: Vec<String> = request
        .extra_params
        .get("supported-hash-algorithms")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_lowercase).collect())
        .unwrap_or_default();
    let preferred = if request.tee == Tee::Se { HashAlgorithm::Sha512 } else { HashAlgorithm::Sha384 };
    let hash = if offered.is_empty() || offered.iter().any(|a| a == preferred.as_ref()) {
        preferred
    } else {
        return Reply::unauthorized("InvalidRequest", format!("client offers {offered:?}, we need {preferred}"));
    };
    let faults = shared.config.lock().unwrap_or_else(|p| p.into_inner()).faults.clone();
    let nonce = random_b64(32);
    let id = faults.bad_cookie.clone().unwrap_or_else(hex_id);
    let session = Session {
        tee: request.tee,
        nonce: nonce.clone(),
        hash,
        expires: now() + SESSION_TTL.as_secs(),
        tee_pubkey: None,
        token_exp: 0,
    };
    shared.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), session);
    let challenge = if faults.malformed_challenge {
        json!({"extra-params": {}})
    } else {
        json!({"nonce": nonce, "extra-params": {"selected-hash-algorithm": hash.as_ref()}})
    };
    let mut reply = Reply::json(challenge);
    reply.set_cookie = Some(format!("{COOKIE_NAME}={id}; Max-Age={}; Path=/kbs", SESSION_TTL.as_secs()));
    reply
}

fn hex_id() -> String {
    let mut buf = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf).expect("randomness");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Only the members Trustee keeps of a tee-pubkey, as a JSON value.
fn trimmed_jwk(tpk: &TeePubKey) -> Value {
    match tpk {
        TeePubKey::EC { crv, alg, x, y } => json!({"kty": "EC", "crv": crv, "alg": alg, "x": x, "y": y}),
        TeePubKey::RSA { alg, k_mod, k_exp } => json!({"kty": "RSA", "alg": alg, "n": k_mod, "e": k_exp}),
        TeePubKey::AKP { alg, public_key } => json!({"kty": "AKP", "alg": alg, "pub": public_key}),
    }
}

fn attest(shared: &Shared, cookie: Option<&str>, body: &[u8]) -> Reply {
    shared.stats.attest.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let Some(id) = cookie else {
        return Reply::unauthorized("MissingCookie", "attest without a kbs-session-id cookie");
    };
    let mut sessions = shared.sessions.lock().unwrap_or_else(|p| p.into_inner());
    let Some(session) = sessions.get_mut(id) else { return Reply::unauthorized("SessionNotFound", "unknown session") };
    if session.expires <= now() {
        return Reply::unauthorized("SessionExpired", "session expired");
    }
    let attestation: Attestation = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => return Reply::unauthorized("InvalidRequest", format!("attest request: {e}")),
    };
    if session.tee != Tee::Sample {
        return Reply::unauthorized(
            "AttestationFailed",
            format!("this test KBS verifies only sample evidence, not {:?}", session.tee),
        );
    }
    if attestation.runtime_data.nonce != session.nonce {
        return Reply::unauthorized("AttestationFailed", "runtime-data nonce is not the challenge nonce");
    }
    let jwk = trimmed_jwk(&attestation.runtime_data.tee_pubkey);
    let binding = json!({
        "additional-evidence": attestation.tee_evidence.additional_evidence,
        "nonce": session.nonce,
        "tee-pubkey": jwk,
    });
    let canonical = jcs(&binding);
    let expected = session.hash.digest(canonical.as_bytes());
    let evidence = &attestation.tee_evidence.primary_evidence;
    let reported = evidence.get("report_data").and_then(Value::as_str);
    let svn = evidence.get("svn").and_then(Value::as_str);
    if svn.is_none() || reported.is_none() {
        return Reply::unauthorized("AttestationFailed", "sample evidence needs string members svn and report_data");
    }
    let skip = shared.config.lock().unwrap_or_else(|p| p.into_inner()).faults.skip_binding_check;
    if !skip && reported != Some(STANDARD.encode(&expected).as_str()) {
        return Reply::unauthorized(
            "AttestationFailed",
            "sample evidence report_data does not match the runtime data binding hash",
        );
    }
    let ttl = shared.config.lock().unwrap_or_else(|p| p.into_inner()).token_ttl.as_secs();
    let now = now();
    let token = token::issue(&shared.token_key, "sample", &jwk, ttl, now);
    session.tee_pubkey = Some(jwk);
    session.token_exp = now + ttl;
    *shared.stats.last_init_data.lock().unwrap_or_else(|p| p.into_inner()) = attestation.init_data.map(|i| i.body);
    *shared.stats.last_binding.lock().unwrap_or_else(|p| p.into_inner()) = Some(expected);
    shared.stats.attest_ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Reply::json(json!({"token": token}))
}

/// RFC 8785 for the shapes the binding has (objects of strings).
fn jcs(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            let members: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", Value::String((*k).clone()), jcs(&m[*k]))).collect();
            format!("{{{}}}", members.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(jcs).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

fn resource(shared: &Shared, path: &str, cookie: Option<&str>, bearer: Option<&str>) -> Reply {
    let now = now();
    let jwk = if let Some(token) = bearer {
        match token::verify(&shared.token_key, token, now) {
            Ok(claims) => claims.get("tee-pubkey").cloned(),
            Err(why) => return Reply::unauthorized("TokenVerification", why),
        }
    } else {
        let Some(id) = cookie else {
            return Reply::unauthorized("MissingCookie", "resource request without session cookie or token");
        };
        let sessions = shared.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(session) = sessions.get(id) else { return Reply::unauthorized("SessionNotFound", "unknown session") };
        if session.tee_pubkey.is_none() {
            return Reply::unauthorized("UnAuthenticatedCookie", "session has not attested");
        }
        if session.token_exp <= now || session.expires <= now {
            return Reply::unauthorized("TokenExpired", "attestation token of this session expired");
        }
        session.tee_pubkey.clone()
    };
    let Some(jwk) = jwk else { return Reply::unauthorized("TokenVerification", "token carries no tee-pubkey") };
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() != 3 || segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Reply::unauthorized("InvalidRequest", format!("resource path {path:?} is not repo/type/tag"));
    }
    let config = shared.config.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let denied = match &config.policy {
        Policy::AllowAll => false,
        Policy::DenyAll => true,
        Policy::Deny(paths) => paths.contains(path),
    };
    if denied {
        return Reply::unauthorized("PolicyDeny", "resource policy denied the request");
    }
    if let Some(n) = config.faults.oversized_resource {
        return Reply { status: 200, body: vec![b'a'; n], set_cookie: None, content_type: "application/json" };
    }
    if config.faults.garbage_resource {
        return Reply {
            status: 200,
            body: b"\x00\xffnot json".to_vec(),
            set_cookie: None,
            content_type: "application/json",
        };
    }
    let Some(plaintext) = config.resources.get(path) else {
        return Reply::unauthorized("ResourceNotFound", format!("no resource {path}"));
    };
    let key = match cvm_crypto::PublicKey::from_jwk(jwk.to_string().as_bytes()) {
        Ok(k) => k,
        Err(e) => return Reply::unauthorized("InvalidRequest", format!("tee-pubkey: {e}")),
    };
    let jwe = match cvm_crypto::jwe::encrypt(
        plaintext,
        &[cvm_crypto::jwe::Recipient::new(&key)],
        cvm_crypto::jwe::Serialization::Flattened,
        None,
    ) {
        Ok(j) => j,
        Err(e) => return Reply::error(500, "JweEncryption", e.to_string()),
    };
    let mut body = jwe.into_bytes();
    if config.faults.tamper_jwe {
        body = tamper(&body);
    }
    shared.stats.resource_ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Reply { status: 200, body, set_cookie: None, content_type: "application/json" }
}

/// Flips one bit of the ciphertext (base64url stays valid).
fn tamper(jwe: &[u8]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(jwe).expect("our own JWE");
    let ct = v["ciphertext"].as_str().unwrap_or_default().to_owned();
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(ct).unwrap_or_default();
    if let Some(b) = bytes.first_mut() {
        *b ^= 1;
    }
    v["ciphertext"] = Value::String(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    v.to_string().into_bytes()
}
