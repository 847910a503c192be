//! What an RCAR handshake leaves behind: the KBS session cookie and the
//! attestation token, reused until the token's `exp` (minus a skew) or a 401.
//!
//! The token is for the KBS, not for us: its signature is not verified here;
//! only `exp` is read, to know when to re-attest. A cookie value is accepted
//! only if it is a plain token (no `;`, spaces or control characters) of
//! bounded length, so a hostile KBS cannot inject headers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::KbsError;

pub const COOKIE_NAME: &str = "kbs-session-id";
const MAX_COOKIE: usize = 512;
pub const MAX_TOKEN: usize = 64 * 1024;

#[derive(Debug)]
pub struct Session {
    pub cookie: Option<String>,
    pub token: String,
    /// Unix seconds after which the session is not used (None: until a 401).
    pub renew_at: Option<u64>,
    /// Monotonic id, to tell sessions apart when invalidating.
    pub id: u64,
}

impl Session {
    pub fn is_fresh(&self) -> bool {
        self.renew_at.is_none_or(|t| unix_now() < t)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// The `kbs-session-id` value of the `Set-Cookie` headers, if any.
pub fn session_cookie<'a>(set_cookies: impl Iterator<Item = &'a [u8]>) -> Result<Option<String>, KbsError> {
    for raw in set_cookies {
        let Ok(text) = std::str::from_utf8(raw) else { continue };
        let first = text.split(';').next().unwrap_or("").trim();
        let Some((name, value)) = first.split_once('=') else { continue };
        if name.trim() != COOKIE_NAME {
            continue;
        }
        let value = value.trim().trim_matches('"');
        if value.is_empty()
            || value.len() > MAX_COOKIE
            || !value.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'\\' | b'"'))
        {
            return Err(KbsError::Protocol(format!(
                "KBS sent an invalid {COOKIE_NAME} cookie ({} bytes): refusing to echo it",
                value.len()
            )));
        }
        return Ok(Some(value.to_owned()));
    }
    Ok(None)
}

/// The `exp` claim (Unix seconds) of a JWT, if it has one.
pub fn token_expiry(token: &str) -> Result<Option<u64>, KbsError> {
    if token.len() > MAX_TOKEN {
        return Err(KbsError::Protocol(format!("attestation token is {} bytes (max {MAX_TOKEN})", token.len())));
    }
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(KbsError::Protocol("attestation token is not a JWT (header.payload.signature)".into()));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| KbsError::Protocol("attestation token payload is not base64url".into()))?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| KbsError::Protocol("attestation token payload is not JSON".into()))?;
    match claims.get("exp") {
        None => Ok(None),
        Some(exp) => exp
            .as_u64()
            .or_else(|| exp.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| KbsError::Protocol("attestation token exp is not a number".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_session_cookie() {
        let headers: [&[u8]; 2] = [b"other=1; Path=/", b"kbs-session-id=abc123; Max-Age=300; Path=/kbs"];
        assert_eq!(session_cookie(headers.into_iter()).unwrap().as_deref(), Some("abc123"));
        assert_eq!(session_cookie(std::iter::empty()).unwrap(), None);
    }

    #[test]
    fn refuses_hostile_cookies() {
        for bad in [&b"kbs-session-id=a\r\nX-Evil: 1"[..], b"kbs-session-id=", b"kbs-session-id=a b"] {
            assert!(session_cookie([bad].into_iter()).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!("kbs-session-id={}", "a".repeat(600));
        assert!(session_cookie([long.as_bytes()].into_iter()).is_err());
    }

    #[test]
    fn reads_exp_and_rejects_garbage_tokens() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"exp":1700000000}"#);
        assert_eq!(token_expiry(&format!("h.{payload}.s")).unwrap(), Some(1_700_000_000));
        let no_exp = URL_SAFE_NO_PAD.encode(br#"{"iss":"x"}"#);
        assert_eq!(token_expiry(&format!("h.{no_exp}.s")).unwrap(), None);
        assert!(token_expiry("not-a-jwt").is_err());
        assert!(token_expiry("a.!!!.c").is_err());
        let bad_exp = URL_SAFE_NO_PAD.encode(br#"{"exp":"soon"}"#);
        assert!(token_expiry(&format!("h.{bad_exp}.s")).is_err());
    }
}
