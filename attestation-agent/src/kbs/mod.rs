//! The KBS client: Trustee's RCAR protocol (version 0.4.0) and resource
//! release.
//!
//! One handshake gives a session (cookie + token) that every later resource
//! request reuses until the token's `exp` or a 401; then exactly one task
//! re-attests while the others wait for its result. Resource requests with a
//! live session run concurrently (no lock is held across a request).
//!
//! Must never send the TEE private key anywhere, never accept a resource that
//! does not decrypt and authenticate under the TEE key, and never echo a
//! cookie value that could inject a header.

pub(crate) mod rcar;
pub mod resource;
pub mod session;
pub mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use reqwest::{Method, StatusCode};
use zeroize::Zeroizing;

pub use self::resource::ResourcePath;
use self::session::Session;
use self::transport::{quote, Call, Transport};
use crate::attester::{Attester, AttesterError};
use crate::config::{Config, KbsMode};
use crate::measurement::EventLog;
use crate::tee_key::{TeeKey, TeeKeyError};

pub const KBS_PROTOCOL_VERSION: &str = "0.4.0";

/// 401 error variants that are answers about the resource, not about the
/// session: re-attesting would only repeat the handshake for the same answer.
const FINAL_VERDICTS: [&str; 2] = ["PolicyDeny", "ResourceNotFound"];

#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    #[error("config: {0}")]
    Config(String),
    #[error("KBS at {url} unreachable after {attempts} attempt(s): {reason}")]
    Unreachable { url: String, attempts: u32, reason: String },
    #[error("TLS to the KBS at {url} failed (check token_configs.kbs.cert): {reason}")]
    Tls { url: String, reason: String },
    #[error("KBS refused ({status}) {variant}: {detail}")]
    Refused { status: u16, variant: String, detail: String },
    #[error("KBS answered HTTP {status} to {url}: {body}")]
    Http { url: String, status: u16, body: String },
    #[error("KBS response from {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("KBS protocol violation: {0}")]
    Protocol(String),
    #[error("cannot produce evidence: {0}")]
    Evidence(#[from] AttesterError),
    #[error(transparent)]
    Key(#[from] TeeKeyError),
    #[error(transparent)]
    Uri(#[from] resource::UriError),
}

impl KbsError {
    /// Whether the KBS said "not authenticated / not authorized" (HTTP 401).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, KbsError::Refused { status: 401, .. })
    }
}

/// The attestation-agent's only door to the KBS.
#[derive(Debug)]
pub struct KbsClient {
    url: String,
    resource_url: String,
    mode: KbsMode,
    transport: Transport,
    attester: Arc<dyn Attester>,
    key: TeeKey,
    initdata: Option<String>,
    eventlog: Option<(Arc<EventLog>, u64)>,
    token_skew: u64,
    session: RwLock<Option<Arc<Session>>>,
    handshake: tokio::sync::Mutex<()>,
    sessions_made: AtomicU64,
}

impl KbsClient {
    pub fn new(config: &Config, attester: Arc<dyn Attester>, initdata: Option<String>) -> Result<Self, KbsError> {
        let kbs = config.kbs().map_err(|e| KbsError::Config(e.to_string()))?;
        if kbs.insecure_http {
            tracing::warn!(
                url = %kbs.url,
                "insecure_http = true: the KBS may be reached over plain HTTP; anyone on the path sees and \
                 changes the attestation traffic (development only)"
            );
        }
        let transport = Transport::new(&config.kbs_client, kbs.cert.as_deref())?;
        let key = TeeKey::generate(
            config.kbs_client.tee_key,
            config.kbs_client.allow_rsa1_5,
            config.kbs_client.max_response_bytes,
        )?;
        let url = kbs.url.trim_end_matches('/').to_owned();
        let resource_url = config.kbs_client.resource_url.as_deref().unwrap_or(&url).trim_end_matches('/').to_owned();
        Ok(Self {
            url,
            resource_url,
            mode: config.kbs_client.mode,
            transport,
            attester,
            key,
            initdata,
            eventlog: None,
            token_skew: config.kbs_client.token_skew_secs,
            session: RwLock::new(None),
            handshake: tokio::sync::Mutex::new(()),
            sessions_made: AtomicU64::new(0),
        })
    }

    /// Evidence of TDX carries this register's event log (AAEL).
    pub fn with_eventlog(mut self, log: Arc<EventLog>, register: u64) -> Self {
        self.eventlog = Some((log, register));
        self
    }

    pub fn tee_key(&self) -> &TeeKey {
        &self.key
    }

    /// How many RCAR handshakes this client completed.
    pub fn handshakes(&self) -> u64 {
        self.sessions_made.load(Ordering::SeqCst)
    }

    /// The attestation token (attesting first if there is no fresh one).
    pub async fn token(&self) -> Result<String, KbsError> {
        Ok(self.fresh_session(None).await?.token.clone())
    }

    /// Fetches and decrypts `uri` (`kbs:///repo/type/tag`).
    pub async fn get_resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, KbsError> {
        let path = ResourcePath::parse(uri)?;
        let url = format!("{}/kbs/v0/resource/{path}", self.resource_url);
        let mut stale: Option<u64> = None;
        for round in 0..2 {
            let session = self.fresh_session(stale).await?;
            let (cookie, bearer) = match self.mode {
                KbsMode::BackgroundCheck => (session.cookie.as_deref(), None),
                KbsMode::Passport => (None, Some(session.token.as_str())),
            };
            let answer =
                self.transport.send(&Call { method: Method::GET, url: &url, json: None, cookie, bearer }).await?;
            match answer.status {
                StatusCode::OK => {
                    let plaintext = self.key.decrypt(&answer.body)?;
                    tracing::info!(resource = %path, bytes = plaintext.len(), "resource released");
                    return Ok(plaintext);
                }
                StatusCode::UNAUTHORIZED if round == 0 => {
                    let err = refused(&answer.status, &answer.body);
                    // A verdict on a valid session: new evidence would not change it.
                    if matches!(&err, KbsError::Refused { variant, .. } if FINAL_VERDICTS.contains(&variant.as_str())) {
                        return Err(err);
                    }
                    tracing::warn!(resource = %path, %err, "KBS rejected the session; attesting again");
                    stale = Some(session.id);
                }
                status => return Err(http_error(&url, status, &answer.body)),
            }
        }
        unreachable!("the second round returns")
    }

    /// A session that is fresh and is not `stale`; runs the handshake if needed.
    async fn fresh_session(&self, stale: Option<u64>) -> Result<Arc<Session>, KbsError> {
        let usable = |s: &Option<Arc<Session>>| s.as_ref().filter(|s| s.is_fresh() && Some(s.id) != stale).cloned();
        if let Some(s) = usable(&self.session.read().unwrap_or_else(|p| p.into_inner())) {
            return Ok(s);
        }
        let _turn = self.handshake.lock().await;
        // Another task may have attested while we waited.
        if let Some(s) = usable(&self.session.read().unwrap_or_else(|p| p.into_inner())) {
            return Ok(s);
        }
        let id = self.sessions_made.load(Ordering::SeqCst) + 1;
        let session = Arc::new(self.handshake(id).await?);
        self.sessions_made.store(id, Ordering::SeqCst);
        *self.session.write().unwrap_or_else(|p| p.into_inner()) = Some(session.clone());
        Ok(session)
    }
}

/// A 401 body as Trustee writes it: `{"type": ".../errors/<Variant>", "detail"}`.
pub(crate) fn refused(status: &StatusCode, body: &[u8]) -> KbsError {
    match serde_json::from_slice::<kbs_types::ErrorInformation>(body) {
        Ok(info) => KbsError::Refused {
            status: status.as_u16(),
            variant: quote(info.error_type.rsplit('/').next().unwrap_or("").as_bytes()).chars().take(128).collect(),
            detail: quote(info.detail.as_bytes()),
        },
        Err(_) => KbsError::Refused { status: status.as_u16(), variant: "(no error body)".into(), detail: quote(body) },
    }
}

pub(crate) fn http_error(url: &str, status: StatusCode, body: &[u8]) -> KbsError {
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND {
        if let err @ KbsError::Refused { .. } = refused(&status, body) {
            if serde_json::from_slice::<kbs_types::ErrorInformation>(body).is_ok() {
                return err;
            }
        }
    }
    KbsError::Http { url: url.to_owned(), status: status.as_u16(), body: quote(body) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the kbs_rcar fuzz target (fuzz/regressions/kbs_rcar/): the
    /// error `type` went into the message, and the log line, unquoted.
    #[test]
    fn refused_variant_from_the_kbs_is_quoted_like_the_detail() {
        let body = br#"{"type":"https://x/errors/Policy\u001b[2J\nFAKE LOG","detail":"d"}"#;
        let err = refused(&StatusCode::UNAUTHORIZED, body);
        let text = err.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(matches!(&err, KbsError::Refused { variant, .. } if variant == "Policy?[2J?FAKE LOG"), "{err:?}");
    }
}
