//! The agent's configuration: guest-components' `aa.toml` keys (so existing
//! CoCo configs work: `[token_configs.kbs] url`, `cert`) plus our own
//! sections. Without a file, a kata-style kernel parameter
//! (`agent.aa_kbc_params=cc_kbc::<url>`) gives the KBS URL.
//!
//! Unknown keys of guest-components' format (e.g. `[token_configs.coco_as]`,
//! `[eventlog_config]`) are accepted and ignored; our own sections are strict.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::attester::AttesterChoice;

/// Default ttrpc socket (guest-components' path).
pub const DEFAULT_SOCKET: &str = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock";
pub const DEFAULT_EVENTLOG: &str = "/run/attestation-agent/eventlog";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path} is not valid: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Config {
    #[serde(default)]
    pub token_configs: TokenConfigs,
    #[serde(default)]
    pub attester: AttesterConfig,
    #[serde(default)]
    pub kbs_client: KbsClientConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub measurement: MeasurementConfig,
    /// Initdata TOML whose digest the hardware measured (checked at start).
    #[serde(default)]
    pub initdata: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct TokenConfigs {
    pub kbs: Option<KbsTokenConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KbsTokenConfig {
    /// `http://host:port` or `https://host:port` of the KBS.
    pub url: String,
    /// PEM certificate of the KBS; when set, it is the only trust: the server
    /// must present exactly it (name and validity checked) or a chain to it.
    pub cert: Option<String>,
    /// Allow a plain `http://` KBS URL (development only; warned at every start).
    #[serde(default)]
    pub insecure_http: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AttesterConfig {
    #[serde(default, rename = "type")]
    pub kind: AttesterChoice,
}

/// Which TEE key pair to generate (its public half goes to the KBS as a JWK).
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
pub enum TeeKeyAlgorithm {
    #[default]
    #[serde(rename = "ec-p256")]
    EcP256,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum KbsMode {
    /// The KBS verifies evidence itself; resources ride on the session cookie.
    #[default]
    BackgroundCheck,
    /// Resources are requested with the attestation token as a Bearer token,
    /// possibly from another KBS (`resource_url`).
    Passport,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KbsClientConfig {
    pub tee_key: TeeKeyAlgorithm,
    /// Accept resources wrapped with RSA1_5 (PKCS#1 v1.5). Off: it is malleable.
    pub allow_rsa1_5: bool,
    pub mode: KbsMode,
    /// Passport mode: the KBS that releases resources against the token.
    pub resource_url: Option<String>,
    /// Attempts per request on transport errors (connection refused, timeouts, 5xx).
    pub max_attempts: u32,
    /// First backoff delay; doubles per attempt, capped at 5 s.
    pub backoff_ms: u64,
    pub timeout_secs: u64,
    /// Largest KBS response body accepted.
    pub max_response_bytes: usize,
    /// Renew the token this long before its `exp`.
    pub token_skew_secs: u64,
}

impl Default for KbsClientConfig {
    fn default() -> Self {
        Self {
            tee_key: TeeKeyAlgorithm::EcP256,
            allow_rsa1_5: false,
            mode: KbsMode::BackgroundCheck,
            resource_url: None,
            max_attempts: 5,
            backoff_ms: 200,
            timeout_secs: 30,
            max_response_bytes: 16 << 20,
            token_skew_secs: 5,
        }
    }
}

impl KbsClientConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub socket: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { socket: DEFAULT_SOCKET.into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeasurementConfig {
    /// Runtime event log (and its write-ahead file `<path>.wal`).
    pub eventlog: PathBuf,
    /// Register extended by ExtendRuntimeMeasurement without an index (RTMR2 on TDX).
    pub default_register: u64,
}

impl Default for MeasurementConfig {
    fn default() -> Self {
        Self { eventlog: DEFAULT_EVENTLOG.into(), default_register: 2 }
    }
}

impl Config {
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|source| ConfigError::Parse { path: origin.to_owned(), source })?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text, path)
    }

    /// Config from the kernel command line (kata's `agent.aa_kbc_params=cc_kbc::URL`).
    pub fn from_kernel_cmdline(cmdline: &str) -> Result<Self, ConfigError> {
        let params =
            cmdline.split_ascii_whitespace().find_map(|arg| arg.strip_prefix("agent.aa_kbc_params=")).ok_or_else(
                || ConfigError::Invalid("no config file and no agent.aa_kbc_params on the kernel command line".into()),
            )?;
        let (kbc, url) = params
            .split_once("::")
            .ok_or_else(|| ConfigError::Invalid(format!("agent.aa_kbc_params={params:?}: expected cc_kbc::<url>")))?;
        if kbc != "cc_kbc" {
            return Err(ConfigError::Invalid(format!(
                "agent.aa_kbc_params: KBC {kbc:?} is not supported (only cc_kbc)"
            )));
        }
        let config = Config {
            token_configs: TokenConfigs {
                kbs: Some(KbsTokenConfig { url: url.to_owned(), cert: None, insecure_http: false }),
            },
            ..Config::default()
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let insecure_http = self.token_configs.kbs.as_ref().is_some_and(|k| k.insecure_http);
        if let Some(kbs) = &self.token_configs.kbs {
            check_url(&kbs.url, insecure_http)?;
        }
        if let Some(url) = &self.kbs_client.resource_url {
            check_url(url, insecure_http)?;
        }
        if self.kbs_client.max_attempts == 0 || self.kbs_client.max_attempts > 20 {
            return Err(ConfigError::Invalid("kbs_client.max_attempts must be 1..=20".into()));
        }
        Ok(())
    }

    pub fn kbs(&self) -> Result<&KbsTokenConfig, ConfigError> {
        self.token_configs
            .kbs
            .as_ref()
            .ok_or_else(|| ConfigError::Invalid("no KBS configured: set [token_configs.kbs] url".into()))
    }
}

/// `https://host…`; `http://host…` only with `insecure_http = true`.
fn check_url(url: &str, insecure_http: bool) -> Result<(), ConfigError> {
    let rest = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => rest,
        (None, Some(_)) if !insecure_http => {
            return Err(ConfigError::Invalid(format!(
                "KBS url {url:?} is plain HTTP: refused (use https://, or set insecure_http = true in \
                 [token_configs.kbs] for development)"
            )))
        }
        (None, Some(rest)) => rest,
        (None, None) => {
            return Err(ConfigError::Invalid(format!("KBS url {url:?} must start with https:// (or http://)")))
        }
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(ConfigError::Invalid(format!("KBS url {url:?} has no host")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_guest_components_aa_toml() {
        let text = r#"
[token_configs.coco_as]
url = "http://127.0.0.1:8000"

[token_configs.kbs]
url = "https://kbs.example:8080"
cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"

[eventlog_config]
eventlog_algorithm = "sha384"
init_pcr = 17
enable_eventlog = false

[attester]
type = "sample"
"#;
        let c = Config::from_toml(text, Path::new("aa.toml")).unwrap();
        assert_eq!(c.kbs().unwrap().url, "https://kbs.example:8080");
        assert!(c.kbs().unwrap().cert.is_some());
        assert_eq!(c.attester.kind, AttesterChoice::Sample);
    }

    #[test]
    fn attester_defaults_to_auto_never_sample() {
        let c = Config::from_toml("[token_configs.kbs]\nurl = \"https://a:1\"\n", Path::new("x")).unwrap();
        assert_eq!(c.attester.kind, AttesterChoice::Auto);
    }

    #[test]
    fn rejects_unknown_attester_and_bad_urls() {
        assert!(Config::from_toml("[attester]\ntype = \"sgx\"\n", Path::new("x")).is_err());
        assert!(Config::from_toml("[token_configs.kbs]\nurl = \"ftp://a\"\n", Path::new("x")).is_err());
    }

    #[test]
    fn plain_http_needs_insecure_http() {
        let err = Config::from_toml("[token_configs.kbs]\nurl = \"http://a:1\"\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("plain HTTP: refused") && err.to_string().contains("insecure_http"), "{err}");
        let c = Config::from_toml("[token_configs.kbs]\nurl = \"http://a:1\"\ninsecure_http = true\n", Path::new("x"))
            .unwrap();
        assert!(c.kbs().unwrap().insecure_http);
        // The passport-mode resource KBS follows the same rule.
        let text = "[token_configs.kbs]\nurl = \"https://a:1\"\n[kbs_client]\nresource_url = \"http://b:2\"\n";
        assert!(Config::from_toml(text, Path::new("x")).is_err());
    }

    #[test]
    fn kernel_cmdline_fallback() {
        let c = Config::from_kernel_cmdline("quiet agent.aa_kbc_params=cc_kbc::https://10.0.2.2:8080 console=hvc0")
            .unwrap();
        assert_eq!(c.kbs().unwrap().url, "https://10.0.2.2:8080");
        // The host writes the command line: it cannot downgrade us to plain HTTP.
        assert!(Config::from_kernel_cmdline("agent.aa_kbc_params=cc_kbc::http://10.0.2.2:8080").is_err());
        assert!(Config::from_kernel_cmdline("quiet").is_err());
        assert!(Config::from_kernel_cmdline("agent.aa_kbc_params=offline_fs_kbc::null").is_err());
    }
}
