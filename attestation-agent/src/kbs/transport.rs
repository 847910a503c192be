//! HTTP(S) to the KBS: reqwest on rustls (ring provider), optional
//! certificate pinning (`cvm_crypto::tls_pinning`: the configured certificate
//! as the exact server certificate or as the only root), bounded response bodies, and retries with exponential
//! backoff on transport errors and 5xx. A 4xx is an answer, never retried
//! here (the client decides whether a 401 means "attest again").

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};

use cvm_crypto::tls_pinning::{self, certs_from_pem, Roots};

use super::KbsError;
use crate::config::KbsClientConfig;

/// Longest error body quoted in an error message.
const MAX_QUOTED: usize = 512;

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
            let retryable = match &outcome {
                Ok(answer) => answer.status.is_server_error(),
                Err(KbsError::Unreachable { .. }) => true,
                Err(_) => false,
            };
            if !retryable || attempt >= self.max_attempts {
                return match outcome {
                    Err(KbsError::Unreachable { url, reason, .. }) => {
                        Err(KbsError::Unreachable { url, attempts: attempt, reason })
                    }
                    other => other,
                };
            }
            tracing::warn!(
                url = call.url,
                attempt,
                max = self.max_attempts,
                delay_ms = delay.as_millis() as u64,
                "KBS request failed; retrying"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
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
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_QUOTED)]);
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}
