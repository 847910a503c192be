//! HTTP(S) to the KBS: reqwest on rustls (ring provider), optional
//! certificate pinning (`cvm_crypto::tls_pinning`: the configured certificate
//! as the exact server certificate or as the only root), bounded response bodies, and retries with exponential
//! backoff on transport errors, 5xx and 429 (a `Retry-After` of seconds is
//! honoured, capped at [`MAX_RETRY_AFTER`]), at most `max_attempts` in all.
//! Any other 4xx is an answer, never retried here (the client decides whether
//! a 401 means "attest again").

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, COOKIE, RETRY_AFTER, SET_COOKIE};
use reqwest::{Method, StatusCode};

use cvm_crypto::tls_pinning::{self, certs_from_pem, Roots};

use super::KbsError;
use crate::config::KbsClientConfig;

/// Longest error body quoted in an error message.
const MAX_QUOTED: usize = 512;

/// Longest wait a KBS's `Retry-After` can impose between two attempts.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Longest backoff between two attempts without a `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Transport {
    http: reqwest::Client,
    max_attempts: u32,
    backoff: Duration,
    max_body: usize,
}

/// A KBS answer with its body read (bounded).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn set_cookies(&self) -> impl Iterator<Item = &[u8]> {
        self.headers.get_all(SET_COOKIE).iter().map(HeaderValue::as_bytes)
    }
}

pub struct Call<'a> {
    pub method: Method,
    pub url: &'a str,
    pub json: Option<&'a [u8]>,
    pub cookie: Option<&'a str>,
    pub bearer: Option<&'a str>,
}

impl Transport {
    /// `cert_pem`: when set, the only certificate trusted for the KBS (pinning).
    pub fn new(config: &KbsClientConfig, cert_pem: Option<&str>) -> Result<Self, KbsError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5).min(config.timeout()))
            .timeout(config.timeout())
            .user_agent(concat!("cvm-attestation-agent/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = cert_pem {
            // The configured certificate is the only trust: accepted as the
            // exact server certificate (self-signed CA:TRUE included) or as
            // the root of the server's chain, never the platform roots.
            let certs = certs_from_pem(pem.as_bytes(), "KBS certificate (token_configs.kbs.cert)")
                .map_err(|e| KbsError::Config(e.to_string()))?;
            let tls = tls_pinning::client_config(certs, Roots::ConfiguredOnly)
                .map_err(|e| KbsError::Config(format!("KBS certificate (token_configs.kbs.cert): {e}")))?;
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder.build().map_err(|e| KbsError::Config(format!("cannot build the HTTPS client: {e}")))?;
        Ok(Self {
            http,
            max_attempts: config.max_attempts.max(1),
            backoff: Duration::from_millis(config.backoff_ms),
            max_body: config.max_response_bytes,
        })
    }

    /// Sends the call, retrying transport errors and 5xx with backoff.
    pub async fn send(&self, call: &Call<'_>) -> Result<Answer, KbsError> {
        let mut delay = self.backoff;
        let mut attempt = 1;
        loop {
            let outcome = self.send_once(call).await;
            let (retryable, wait) = match &outcome {
                Ok(answer) => (retryable_status(answer.status), retry_after(&answer.headers).map(|d| d.max(delay))),
                Err(KbsError::Unreachable { .. }) => (true, None),
                Err(_) => (false, None),
            };
            if !retryable || attempt >= self.max_attempts {
                return match outcome {
                    Err(KbsError::Unreachable { url, reason, .. }) => {
                        Err(KbsError::Unreachable { url, attempts: attempt, reason })
                    }
                    other => other,
                };
            }
            let wait = wait.unwrap_or(delay);
            tracing::warn!(
                url = call.url,
                attempt,
                max = self.max_attempts,
                status = outcome.as_ref().map(|a| a.status.as_u16()).unwrap_or(0),
                delay_ms = wait.as_millis() as u64,
                "KBS request failed; retrying"
            );
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }

    async fn send_once(&self, call: &Call<'_>) -> Result<Answer, KbsError> {
        let mut req = self.http.request(call.method.clone(), call.url);
        if let Some(body) = call.json {
            req = req.header(CONTENT_TYPE, "application/json").body(body.to_vec());
        }
        if let Some(cookie) = call.cookie {
            req = req.header(COOKIE, format!("{}={cookie}", super::session::COOKIE_NAME));
        }
        if let Some(token) = call.bearer {
            req = req.bearer_auth(token);
        }
        let unreachable = |e: reqwest::Error| {
            let reason = error_chain(&e);
            // A certificate the pin or the roots reject will not get better by retrying.
            if reason.contains("certificate") {
                KbsError::Tls { url: call.url.to_owned(), reason }
            } else {
                KbsError::Unreachable { url: call.url.to_owned(), attempts: 1, reason }
            }
        };
        let mut resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if let Some(len) = resp.content_length() {
            if len > self.max_body as u64 {
                return Err(KbsError::TooLarge { url: call.url.to_owned(), limit: self.max_body });
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > self.max_body {
                return Err(KbsError::TooLarge { url: call.url.to_owned(), limit: self.max_body });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer { status, headers, body })
    }
}

/// Whether an answer with this status is worth another attempt: the KBS is
/// overloaded (429) or failing (5xx), not refusing.
fn retryable_status(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// The wait a `Retry-After: <seconds>` asks for, capped at [`MAX_RETRY_AFTER`].
/// An HTTP-date (or anything else) is ignored: the backoff applies.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// The reqwest error with its causes (the root cause names the real problem:
/// "connection refused", "invalid peer certificate").
fn error_chain(err: &reqwest::Error) -> String {
    let mut out = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// An error body quoted for a message: bounded, printable.
pub fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body.get(..MAX_QUOTED).unwrap_or(body));
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(retry_after: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn overload_and_server_errors_are_retried_refusals_are_not() {
        for s in [429, 500, 502, 503, 504] {
            assert!(retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 307, 400, 401, 403, 404, 413] {
            assert!(!retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn retry_after_seconds_are_honoured_up_to_the_cap() {
        assert_eq!(retry_after(&headers(Some("2"))), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(&headers(Some(" 0 "))), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers(Some("86400"))), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&headers(Some("18446744073709551615"))), Some(MAX_RETRY_AFTER));
        // An HTTP-date, garbage, a negative number or no header: the backoff applies.
        for v in [Some("Wed, 21 Oct 2015 07:28:00 GMT"), Some("soon"), Some("-1"), None] {
            assert_eq!(retry_after(&headers(v)), None, "{v:?}");
        }
    }
}
