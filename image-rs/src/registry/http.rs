//! The OCI distribution HTTP client: TLS (system roots plus extra CAs; an
//! extra certificate the registry presents as its own is accepted by exact
//! match, self-signed CA:TRUE included: `cvm_crypto::tls_pinning`),
//! plain HTTP only for hosts explicitly marked insecure, proxies, and the
//! registry auth dance (anonymous, Basic, Bearer tokens from the
//! `WWW-Authenticate` realm), with tokens cached per registry and repository.
//!
//! Every response body is read with a size bound: a hostile registry cannot
//! make us buffer more than the caller allows. Credentials are never logged,
//! and never sent to a host they do not belong to: a token realm gets them
//! only over https (or on the insecure registry's own host, see
//! [`realm_may_receive_credentials`]), and a redirect to another host (a
//! blob CDN) never carries the `Authorization` header (reqwest drops it on
//! any change of scheme, host or port; `tests/pull_hostile_network.rs` pins it).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use cvm_crypto::tls_pinning::{self, certs_from_pem, Roots};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, RANGE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};

use super::auth::{AuthStore, Credentials};
use super::config::ProxyConfig;
use super::RegistryError;

/// Longest token-server response we read.
const TOKEN_RESPONSE_LIMIT: u64 = 64 * 1024;
/// Longest error body we quote from a registry.
const ERROR_BODY_LIMIT: u64 = 1024;

pub struct HttpOptions {
    pub extra_ca_pems: Vec<Vec<u8>>,
    pub proxy: ProxyConfig,
    pub insecure_hosts: HashSet<String>,
    pub auth: AuthStore,
    /// `--creds`: used for every registry, over auth.json.
    pub creds_override: Option<Credentials>,
    pub connect_timeout: Duration,
    /// Longest silence on an established connection before it counts as lost.
    pub read_timeout: Duration,
    /// Longest time to read a whole small body (manifest, config, token,
    /// error): a server trickling it within `read_timeout` must not hold the
    /// pull. Layer blobs have the pipeline's minimum transfer rate instead.
    pub body_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            extra_ca_pems: Vec::new(),
            proxy: ProxyConfig::default(),
            insecure_hosts: HashSet::new(),
            auth: AuthStore::default(),
            creds_override: None,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
enum Scheme {
    Basic,
    Bearer(String),
}

pub struct Distribution {
    http: reqwest::Client,
    insecure_hosts: HashSet<String>,
    auth: AuthStore,
    creds_override: Option<Credentials>,
    body_timeout: Duration,
    /// (registry, repository) → how to authenticate. Short critical sections only.
    schemes: Mutex<HashMap<(String, String), Scheme>>,
}

/// The host to contact for a registry name (Docker Hub's API lives elsewhere).
pub fn api_host(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

impl Distribution {
    pub fn new(opts: HttpOptions) -> Result<Self, RegistryError> {
        // reqwest is built without a default crypto provider; ring is ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .user_agent(concat!("cvm-image-rs/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5));
        if !opts.extra_ca_pems.is_empty() {
            let mut certs = Vec::new();
            for (i, pem) in opts.extra_ca_pems.iter().enumerate() {
                let origin = format!("extra CA certificate file #{} (--ca-file / ca-files)", i + 1);
                certs.extend(certs_from_pem(pem, &origin).map_err(|e| RegistryError::Tls(e.to_string()))?);
            }
            let tls = tls_pinning::client_config(certs, Roots::PlatformAndConfigured)
                .map_err(|e| RegistryError::Tls(format!("extra CA certificates: {e}")))?;
            builder = builder.tls_backend_preconfigured(tls);
        }
        type MakeProxy = fn(&str) -> reqwest::Result<reqwest::Proxy>;
        let proxies: [(&Option<String>, &str, MakeProxy); 2] = [
            (&opts.proxy.https, "https", |u| reqwest::Proxy::https(u)),
            (&opts.proxy.http, "http", |u| reqwest::Proxy::http(u)),
        ];
        for (url, kind, make) in proxies {
            if let Some(url) = url {
                let mut proxy = make(url).map_err(|e| RegistryError::Config(format!("{kind} proxy {url}: {e}")))?;
                if let Some(np) = &opts.proxy.no_proxy {
                    proxy = proxy.no_proxy(reqwest::NoProxy::from_string(np));
                }
                builder = builder.proxy(proxy);
            }
        }
        let http = builder.build().map_err(|e| RegistryError::Tls(format!("cannot build HTTP client: {e}")))?;
        Ok(Distribution {
            http,
            insecure_hosts: opts.insecure_hosts,
            auth: opts.auth,
            creds_override: opts.creds_override,
            body_timeout: opts.body_timeout,
            schemes: Mutex::new(HashMap::new()),
        })
    }

    /// How long a small body ([`read_limited`]) may take.
    pub fn body_timeout(&self) -> Duration {
        self.body_timeout
    }

    fn url(&self, registry: &str, repository: &str, path: &str) -> String {
        let scheme = if self.insecure_hosts.contains(registry) { "http" } else { "https" };
        format!("{scheme}://{}/v2/{repository}/{path}", api_host(registry))
    }

    fn creds(&self, registry: &str, repository: &str) -> Option<&Credentials> {
        self.creds_override.as_ref().or_else(|| self.auth.lookup(registry, repository))
    }

    fn scheme(&self, key: &(String, String)) -> Option<Scheme> {
        self.schemes.lock().ok().and_then(|m| m.get(key).cloned())
    }

    fn remember(&self, key: (String, String), scheme: Scheme) {
        if let Ok(mut m) = self.schemes.lock() {
            m.insert(key, scheme);
        }
    }

    /// GETs `/v2/<repository>/<path>`, authenticating as the registry asks.
    /// `range_from` adds `Range: bytes=N-`. Returns only 2xx responses.
    pub async fn get(
        &self,
        registry: &str,
        repository: &str,
        path: &str,
        accept: &[&str],
        range_from: Option<u64>,
    ) -> Result<Response, RegistryError> {
        let url = self.url(registry, repository, path);
        let key = (registry.to_owned(), repository.to_owned());
        let mut headers = HeaderMap::new();
        if !accept.is_empty() {
            headers.insert(
                ACCEPT,
                HeaderValue::from_str(&accept.join(", ")).map_err(|e| RegistryError::Config(e.to_string()))?,
            );
        }
        if let Some(offset) = range_from {
            headers.insert(
                RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-")).map_err(|e| RegistryError::Config(e.to_string()))?,
            );
        }
        let mut retried_auth = false;
        loop {
            let mut req = self.http.get(&url).headers(headers.clone());
            match self.scheme(&key) {
                Some(Scheme::Bearer(token)) => req = req.bearer_auth(token),
                Some(Scheme::Basic) => {
                    if let Some(c) = self.creds(registry, repository) {
                        req = req.basic_auth(&c.username, Some(&c.password));
                    }
                }
                None => {}
            }
            let resp = req.send().await.map_err(|e| RegistryError::transport(&url, e))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !retried_auth {
                retried_auth = true;
                let challenge =
                    resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_owned).ok_or_else(
                        || RegistryError::Unauthorized {
                            url: url.clone(),
                            reason: "401 without a WWW-Authenticate challenge".into(),
                        },
                    )?;
                let scheme = self.answer_challenge(registry, repository, &challenge, &url).await?;
                self.remember(key.clone(), scheme);
                continue;
            }
            if status.is_success() {
                return Ok(resp);
            }
            let body = read_limited(resp, ERROR_BODY_LIMIT, self.body_timeout).await.unwrap_or_default();
            let body = String::from_utf8_lossy(&body).trim().to_owned();
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    RegistryError::Unauthorized { url, reason: format!("{status}: {body}") }
                }
                StatusCode::NOT_FOUND => RegistryError::NotFound { url, body },
                _ => RegistryError::Status { url, status: status.as_u16(), body },
            });
        }
    }

    async fn answer_challenge(
        &self,
        registry: &str,
        repository: &str,
        challenge: &str,
        url: &str,
    ) -> Result<Scheme, RegistryError> {
        let (kind, params) = parse_challenge(challenge);
        let creds = self.creds(registry, repository);
        match kind.to_ascii_lowercase().as_str() {
            "basic" => {
                if creds.is_none() {
                    return Err(RegistryError::Unauthorized {
                        url: url.to_owned(),
                        reason: format!("registry {registry} requires credentials (use --creds or --auth-file)"),
                    });
                }
                Ok(Scheme::Basic)
            }
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| RegistryError::Unauthorized {
                    url: url.to_owned(),
                    reason: "Bearer challenge without a realm".into(),
                })?;
                let mut token_url = reqwest::Url::parse(realm).map_err(|e| RegistryError::Unauthorized {
                    url: url.to_owned(),
                    reason: format!("token realm {realm:?}: {e}"),
                })?;
                if !matches!(token_url.scheme(), "https" | "http") {
                    return Err(RegistryError::Unauthorized {
                        url: url.to_owned(),
                        reason: format!("token realm {realm:?} is not http(s)"),
                    });
                }
                {
                    let mut q = token_url.query_pairs_mut();
                    if let Some(service) = params.get("service") {
                        q.append_pair("service", service);
                    }
                    // Ask for pull on this repository, whatever scope the challenge named.
                    q.append_pair("scope", &format!("repository:{repository}:pull"));
                }
                let mut req = self.http.get(token_url.clone());
                let registry_insecure = self.insecure_hosts.contains(registry);
                let withheld = match creds {
                    Some(c) if realm_may_receive_credentials(api_host(registry), registry_insecure, &token_url) => {
                        req = req.basic_auth(&c.username, Some(&c.password));
                        false
                    }
                    Some(_) => {
                        tracing::warn!(
                            registry,
                            realm = %token_url.origin().ascii_serialization(),
                            "token realm is plain http on another host: asking for an anonymous token, credentials withheld"
                        );
                        true
                    }
                    None => false,
                };
                let resp = req.send().await.map_err(|e| RegistryError::transport(token_url.as_str(), e))?;
                let status = resp.status();
                if !status.is_success() {
                    let why = if withheld {
                        format!(
                            " (the credentials of {registry} were not sent: the realm is plain http on another host)"
                        )
                    } else {
                        String::new()
                    };
                    return Err(RegistryError::Unauthorized {
                        url: url.to_owned(),
                        reason: format!("token server {} answered {status}{why}", token_url.host_str().unwrap_or("?")),
                    });
                }
                let body = read_limited(resp, TOKEN_RESPONSE_LIMIT, self.body_timeout).await?;
                #[derive(serde::Deserialize)]
                struct TokenResponse {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| RegistryError::Unauthorized {
                    url: url.to_owned(),
                    reason: format!("token server response is not JSON: {e}"),
                })?;
                let token = t.token.or(t.access_token).filter(|t| !t.is_empty()).ok_or_else(|| {
                    RegistryError::Unauthorized { url: url.to_owned(), reason: "token server returned no token".into() }
                })?;
                Ok(Scheme::Bearer(token))
            }
            other => Err(RegistryError::Unauthorized {
                url: url.to_owned(),
                reason: format!("unsupported authentication scheme {other:?}"),
            }),
        }
    }
}

/// Whether a registry's credentials may be sent to its Bearer token `realm`.
/// Over https, yes (Docker Hub's realm is auth.docker.io: another host by
/// design, and TLS authenticates it). Over plain http only to the registry's
/// own host (any port), and only when that registry is itself explicitly
/// insecure: the credentials then cross the same untrusted network to the
/// same machine that Basic auth would send them to; never to another host.
pub(crate) fn realm_may_receive_credentials(
    registry_host: &str,
    registry_insecure: bool,
    realm: &reqwest::Url,
) -> bool {
    match realm.scheme() {
        "https" => true,
        "http" => {
            let registry_url = reqwest::Url::parse(&format!("http://{registry_host}/")).ok();
            let registry_host = registry_url.as_ref().and_then(|u| u.host_str());
            registry_insecure && registry_host.is_some() && registry_host == realm.host_str()
        }
        _ => false,
    }
}

/// Reads a whole response body, refusing more than `limit` bytes.
/// Reads a small body whole: at most `limit` bytes, within `within`.
pub async fn read_limited(resp: Response, limit: u64, within: Duration) -> Result<Vec<u8>, RegistryError> {
    let url = resp.url().to_string();
    tokio::time::timeout(within, read_limited_untimed(resp, limit)).await.unwrap_or_else(|_| {
        Err(RegistryError::Transport { url, reason: format!("response body not received within {within:?}") })
    })
}

async fn read_limited_untimed(mut resp: Response, limit: u64) -> Result<Vec<u8>, RegistryError> {
    let url = resp.url().to_string();
    if let Some(len) = resp.content_length() {
        if len > limit {
            return Err(RegistryError::TooLarge { url, limit });
        }
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| RegistryError::transport(&url, e))? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(RegistryError::TooLarge { url, limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Splits `Bearer realm="x",service="y"` into the scheme and its parameters.
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (kind, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key, value.trim().to_owned());
    }
    (kind.to_owned(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges_with_commas_inside_quotes() {
        let (kind, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(kind, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
    }

    #[test]
    fn parses_basic_and_unquoted_values() {
        let (kind, p) = parse_challenge(r#"Basic realm=Registry , charset="UTF-8""#);
        assert_eq!(kind, "Basic");
        assert_eq!(p["realm"], "Registry");
        assert_eq!(p["charset"], "UTF-8");
        assert_eq!(parse_challenge("Bearer").1.len(), 0);
    }

    #[test]
    fn proxy_settings_are_validated() {
        let mut ok = HttpOptions::default();
        ok.proxy.https = Some("http://proxy.example:3128".into());
        ok.proxy.no_proxy = Some("127.0.0.1,localhost".into());
        assert!(Distribution::new(ok).is_ok());
        let mut bad = HttpOptions::default();
        bad.proxy.http = Some("http://[not-an-address".into());
        let err = Distribution::new(bad).err().expect("bad proxy refused").to_string();
        assert!(err.contains("http proxy"), "{err}");
    }

    #[test]
    fn extra_ca_files_that_are_not_certificates_are_refused_by_number() {
        let opts = HttpOptions { extra_ca_pems: vec![b"not a certificate".to_vec()], ..HttpOptions::default() };
        let err = Distribution::new(opts).err().expect("refused").to_string();
        assert!(err.contains("extra CA certificate file #1"), "{err}");
    }

    #[test]
    fn credentials_reach_a_token_realm_only_over_https_or_on_the_insecure_registry_host() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        // https: any host (TLS authenticates the realm).
        assert!(realm_may_receive_credentials("reg.example", false, &url("https://auth.example/token")));
        assert!(realm_may_receive_credentials("127.0.0.1:5000", true, &url("https://127.0.0.2/token")));
        // Plain http to another host: never, insecure registry or not.
        assert!(!realm_may_receive_credentials("127.0.0.1:5000", true, &url("http://127.0.0.2:5000/token")));
        assert!(!realm_may_receive_credentials("reg.example", true, &url("http://auth.example/token")));
        assert!(!realm_may_receive_credentials("reg.example", true, &url("http://reg.example.evil/token")));
        // Plain http on the registry's own host: only when the registry is explicitly insecure.
        assert!(realm_may_receive_credentials("127.0.0.1:5000", true, &url("http://127.0.0.1:5001/token")));
        assert!(realm_may_receive_credentials("Reg.Example:443", true, &url("http://reg.example/token")));
        assert!(!realm_may_receive_credentials("reg.example", false, &url("http://reg.example/token")));
        assert!(!realm_may_receive_credentials("reg.example", true, &url("ftp://reg.example/token")));
    }

    #[test]
    fn docker_hub_api_host() {
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
