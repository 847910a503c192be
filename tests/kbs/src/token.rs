//! Attestation tokens: HS256 JWTs signed with a per-server random key. The
//! claims carry the tee-pubkey the attestation bound, so a passport-mode
//! resource request (Bearer token) is encrypted to the attested key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde_json::{json, Value};

pub fn issue(key: &[u8; 32], tee: &str, tee_pubkey: &Value, ttl_secs: u64, now: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({
        "iss": "test-kbs",
        "iat": now,
        "exp": now + ttl_secs,
        "tee": tee,
        "tee-pubkey": tee_pubkey,
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The claims of a token we issued that has not expired.
pub fn verify(key: &[u8; 32], token: &str, now: u64) -> Result<Value, &'static str> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("token is not a JWS compact serialization");
    };
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| "token signature is not base64url")?;
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| "token signature does not verify")?;
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).map_err(|_| "token payload is not base64url")?)
            .map_err(|_| "token payload is not JSON")?;
    let exp = claims.get("exp").and_then(Value::as_u64).ok_or("token has no exp")?;
    if exp <= now {
        return Err("token expired");
    }
    Ok(claims)
}
