//! `cdh.toml`: guest-components' confidential-data-hub keys (`socket`, `[kbc]`,
//! `[aa]`, `[image]`, `[log]`, `[[credentials]]`, …) plus ours
//! (`[image] pull_deadline_secs`, `require_signature_policy`).
//!
//! Unknown keys are logged and ignored, as guest-components' files carry keys
//! we have no use for. A known key we cannot honour safely (an inline
//! `image_security_policy`) is an error, never silently dropped: ignoring it
//! would pull unverified images.

use std::path::{Path, PathBuf};
use std::time::Duration;

use image_rs::registry::config::{ProxyConfig, RegistriesConfig};
use serde::Deserialize;

pub const DEFAULT_CDH_SOCKET: &str = "unix:///run/confidential-containers/cdh.sock";
pub const DEFAULT_AA_SOCKET: &str = image_rs::keysource::DEFAULT_AA_SOCKET;
/// guest-components' image work dir.
pub const DEFAULT_WORK_DIR: &str = "/run/kata-containers/image";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path} is not valid TOML for cdh.toml: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct KbcConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub url: String,
    pub kbs_cert: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AaConfig {
    #[serde(default = "default_aa_socket")]
    pub aa_socket: String,
}

impl Default for AaConfig {
    fn default() -> Self {
        AaConfig { aa_socket: default_aa_socket() }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ImagePullProxy {
    pub https_proxy: Option<String>,
    pub http_proxy: Option<String>,
    pub no_proxy: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ImageSection {
    #[serde(default = "default_work_dir")]
    pub work_dir: PathBuf,
    pub image_security_policy_uri: Option<String>,
    /// Inline policy: refused (see module docs).
    pub image_security_policy: Option<String>,
    pub sigstore_config_uri: Option<String>,
    /// Inline registries.d YAML: refused like the inline policy.
    pub sigstore_config: Option<String>,
    pub authenticated_registry_credentials_uri: Option<String>,
    /// A registries.conf file (`kbs:///` is not supported yet: refused).
    pub registry_configuration_uri: Option<String>,
    /// Inline registries.conf (containers-registries.conf(5) shape).
    pub registry_config: Option<RegistriesConfig>,
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_layer_downloads_per_image: usize,
    pub image_pull_proxy: Option<ImagePullProxy>,
    /// PEM certificates (contents, not paths).
    #[serde(default)]
    pub extra_root_certificates: Vec<String>,
    /// Ours: overall per-pull deadline in seconds (0: none).
    #[serde(default = "default_pull_deadline_secs")]
    pub pull_deadline_secs: u64,
    /// Ours: with no signature policy configured, refuse pulls.
    #[serde(default)]
    pub require_signature_policy: bool,
    /// Ours: free space kept on the store's filesystem while unpacking, as a
    /// share of its size (default 5) capped at `free_space_reserve_bytes`
    /// (default 64 MiB): a decompression bomb stops before guest RAM is full.
    pub free_space_reserve_percent: Option<u64>,
    pub free_space_reserve_bytes: Option<u64>,
    /// Ours: a blob fetch slower than this (bytes/s, default 1024; 0: off) is
    /// abandoned and resumed.
    pub min_transfer_rate: Option<u64>,
}

/// What an empty `[image]` table parses to (a unit test holds the two equal).
impl Default for ImageSection {
    fn default() -> Self {
        ImageSection {
            work_dir: default_work_dir(),
            image_security_policy_uri: None,
            image_security_policy: None,
            sigstore_config_uri: None,
            sigstore_config: None,
            authenticated_registry_credentials_uri: None,
            registry_configuration_uri: None,
            registry_config: None,
            max_concurrent_layer_downloads_per_image: default_max_concurrent(),
            image_pull_proxy: None,
            extra_root_certificates: Vec::new(),
            pull_deadline_secs: default_pull_deadline_secs(),
            require_signature_policy: false,
            free_space_reserve_percent: None,
            free_space_reserve_bytes: None,
            min_transfer_rate: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CdhConfig {
    #[serde(default = "default_socket")]
    pub socket: String,
    #[serde(default)]
    pub kbc: KbcConfig,
    #[serde(default)]
    pub aa: AaConfig,
    #[serde(default)]
    pub image: ImageSection,
}

/// What an empty cdh.toml parses to (a unit test holds the two equal).
impl Default for CdhConfig {
    fn default() -> Self {
        CdhConfig {
            socket: default_socket(),
            kbc: KbcConfig::default(),
            aa: AaConfig::default(),
            image: ImageSection::default(),
        }
    }
}

fn default_socket() -> String {
    DEFAULT_CDH_SOCKET.into()
}
fn default_aa_socket() -> String {
    DEFAULT_AA_SOCKET.into()
}
fn default_work_dir() -> PathBuf {
    PathBuf::from(DEFAULT_WORK_DIR)
}
fn default_max_concurrent() -> usize {
    3
}
fn default_pull_deadline_secs() -> u64 {
    1200
}

/// Keys of guest-components' cdh.toml (and ours), per table. Anything else is warned about.
const KNOWN: &[(&str, &[&str])] = &[
    ("", &["socket", "kbc", "aa", "image", "credentials", "skip_sealed_secret_verification", "log"]),
    ("kbc", &["name", "url", "kbs_cert"]),
    ("aa", &["aa_socket"]),
    ("log", &["level"]),
    (
        "image",
        &[
            "work_dir",
            "image_security_policy_uri",
            "image_security_policy",
            "sigstore_config_uri",
            "sigstore_config",
            "authenticated_registry_credentials_uri",
            "registry_configuration_uri",
            "registry_config",
            "max_concurrent_layer_downloads_per_image",
            "image_pull_proxy",
            "extra_root_certificates",
            "kbc",
            "kbs_uri",
            "pull_deadline_secs",
            "require_signature_policy",
        ],
    ),
    ("image.image_pull_proxy", &["https_proxy", "http_proxy", "no_proxy"]),
];

/// Keys of guest-components' that this daemon accepts but does not act on.
const ACCEPTED_UNUSED: &[&str] = &["credentials", "skip_sealed_secret_verification", "image.kbc", "image.kbs_uri"];

impl CdhConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse = |source| ConfigError::Parse { path: path.to_owned(), source };
        let value: toml::Table = toml::from_str(text).map_err(parse)?;
        for key in unknown_keys(&value) {
            tracing::warn!(config = %path.display(), key, "unknown key in cdh.toml ignored");
        }
        for key in ACCEPTED_UNUSED {
            if lookup(&value, key).is_some() {
                tracing::info!(config = %path.display(), key, "cdh.toml key accepted but not used by this daemon");
            }
        }
        let config: CdhConfig = toml::from_str(text).map_err(parse)?;
        config.check().map_err(|reason| ConfigError::Invalid { path: path.to_owned(), reason })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if !self.socket.starts_with("unix:///") {
            return Err(format!("socket {:?}: expected unix:///absolute/path", self.socket));
        }
        if !self.aa.aa_socket.starts_with("unix:///") {
            return Err(format!("aa.aa_socket {:?}: expected unix:///absolute/path", self.aa.aa_socket));
        }
        let image = &self.image;
        if image.image_security_policy.is_some() && image.image_security_policy_uri.is_none() {
            return Err("image.image_security_policy (an inline policy) is not supported: \
                        give image.image_security_policy_uri (a file or kbs:/// URI)"
                .into());
        }
        if image.sigstore_config.is_some() && image.sigstore_config_uri.is_none() {
            return Err("image.sigstore_config (inline) is not supported: give image.sigstore_config_uri".into());
        }
        if image.registry_configuration_uri.as_deref().is_some_and(|u| u.starts_with("kbs:")) {
            return Err("image.registry_configuration_uri from the KBS is not supported: give a file".into());
        }
        if image.max_concurrent_layer_downloads_per_image == 0 {
            return Err("image.max_concurrent_layer_downloads_per_image must be at least 1".into());
        }
        Ok(())
    }

    /// The per-pull deadline, None when `pull_deadline_secs = 0`.
    pub fn pull_deadline(&self) -> Option<Duration> {
        (self.image.pull_deadline_secs > 0).then(|| Duration::from_secs(self.image.pull_deadline_secs))
    }

    /// Registry configuration: the file of `registry_configuration_uri`, else inline `registry_config`.
    pub fn registries(&self) -> Result<RegistriesConfig, image_rs::registry::config::ConfigError> {
        match &self.image.registry_configuration_uri {
            Some(uri) => RegistriesConfig::load(Path::new(uri.strip_prefix("file://").unwrap_or(uri))),
            None => Ok(self.image.registry_config.clone().unwrap_or_default()),
        }
    }

    pub fn proxy(&self) -> Option<ProxyConfig> {
        self.image.image_pull_proxy.as_ref().map(|p| ProxyConfig {
            https: p.https_proxy.clone(),
            http: p.http_proxy.clone(),
            no_proxy: p.no_proxy.clone(),
        })
    }
}

fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Dotted names of keys no known table defines (tables we do not descend
/// into, e.g. `image.registry_config`, are checked by their own parser).
fn unknown_keys(root: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    for (table, keys) in KNOWN {
        let entries = if table.is_empty() { Some(root) } else { lookup(root, table).and_then(|v| v.as_table()) };
        for key in entries.into_iter().flat_map(|t| t.keys()) {
            if !keys.contains(&key.as_str()) {
                out.push(if table.is_empty() { key.clone() } else { format!("{table}.{key}") });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_what_an_empty_file_parses_to() {
        assert_eq!(CdhConfig::default(), toml::from_str::<CdhConfig>("").unwrap());
        assert_eq!(ImageSection::default(), toml::from_str::<ImageSection>("").unwrap());
    }

    const GUEST_COMPONENTS_EXAMPLE: &str = r#"
socket = "unix:///run/confidential-containers/cdh.sock"
skip_sealed_secret_verification = false

[log]
level = "info"

[aa]
aa_socket = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"

[kbc]
name = "cc_kbc"
url = "http://1.2.3.4:8080"
kbs_cert = """
-----BEGIN CERTIFICATE-----
MIIBAA==
-----END CERTIFICATE-----
"""

[[credentials]]
resource_uri = "kbs:///default/1/1"
path = "/run/confidential-containers/cdh/kms-credential/aliyun/ecsRamRole.json"

[image]
max_concurrent_layer_downloads_per_image = 3
sigstore_config_uri = "kbs:///default/sigstore-config/test"
image_security_policy_uri = "kbs:///default/security-policy/test"
authenticated_registry_credentials_uri = "kbs:///default/credential/test"
extra_root_certificates = ["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"]
work_dir = "/run/image-rs"
some_undefined_field = "unknown value"

[image.registry_config]
unqualified-search-registries = ["docker.io", "example1.com"]

[[image.registry_config.registry]]
prefix = "example.com/foo"
insecure = false
blocked = false
location = "internal-registry-for-example.com/bar"

[[image.registry_config.registry.mirror]]
location = "example-mirror-0.local/mirror-for-foo"

[image.image_pull_proxy]
https_proxy = "http://127.0.0.1:8080"
"#;

    #[test]
    fn guest_components_config_parses_with_their_keys() {
        let c = CdhConfig::parse(GUEST_COMPONENTS_EXAMPLE, Path::new("cdh.toml")).unwrap();
        assert_eq!(c.socket, DEFAULT_CDH_SOCKET);
        assert_eq!(c.kbc.name, "cc_kbc");
        assert_eq!(c.kbc.url, "http://1.2.3.4:8080");
        assert!(c.kbc.kbs_cert.as_deref().unwrap().contains("BEGIN CERTIFICATE"));
        assert_eq!(c.image.image_security_policy_uri.as_deref(), Some("kbs:///default/security-policy/test"));
        assert_eq!(c.image.sigstore_config_uri.as_deref(), Some("kbs:///default/sigstore-config/test"));
        assert_eq!(c.image.authenticated_registry_credentials_uri.as_deref(), Some("kbs:///default/credential/test"));
        assert_eq!(c.image.work_dir, Path::new("/run/image-rs"));
        assert_eq!(c.image.extra_root_certificates.len(), 1);
        assert_eq!(c.proxy().unwrap().https.as_deref(), Some("http://127.0.0.1:8080"));
        let reg = c.registries().unwrap();
        assert_eq!(reg.registry[0].location, "internal-registry-for-example.com/bar");
        assert_eq!(reg.registry[0].mirror[0].location, "example-mirror-0.local/mirror-for-foo");
        assert!(!c.image.require_signature_policy);
        assert_eq!(c.pull_deadline(), Some(Duration::from_secs(1200)));
        assert_eq!((c.image.free_space_reserve_percent, c.image.min_transfer_rate), (None, None));
    }

    #[test]
    fn unpack_and_transfer_limits_are_config_keys() {
        let text =
            "[image]\nfree_space_reserve_percent = 10\nfree_space_reserve_bytes = 1048576\nmin_transfer_rate = 0\n";
        let c = CdhConfig::parse(text, Path::new("cdh.toml")).unwrap();
        assert_eq!(c.image.free_space_reserve_percent, Some(10));
        assert_eq!(c.image.free_space_reserve_bytes, Some(1 << 20));
        assert_eq!(c.image.min_transfer_rate, Some(0));
    }

    #[test]
    fn unknown_keys_are_named_not_fatal() {
        let table: toml::Table = toml::from_str(GUEST_COMPONENTS_EXAMPLE).unwrap();
        assert_eq!(unknown_keys(&table), ["image.some_undefined_field"]);
        let c = CdhConfig::parse("surprise = 1\n[kbc]\nname = \"offline_fs_kbc\"\n", Path::new("x")).unwrap();
        assert_eq!(
            c,
            CdhConfig {
                kbc: KbcConfig { name: "offline_fs_kbc".into(), ..KbcConfig::default() },
                ..CdhConfig::default()
            }
        );
    }

    #[test]
    fn defaults_are_guest_components_and_ours() {
        let c = CdhConfig::parse("", Path::new("x")).unwrap();
        assert_eq!(c.socket, "unix:///run/confidential-containers/cdh.sock");
        assert_eq!(c.aa.aa_socket, DEFAULT_AA_SOCKET);
        assert_eq!(c.image.work_dir, Path::new(DEFAULT_WORK_DIR));
        assert_eq!(c.image.max_concurrent_layer_downloads_per_image, 3);
        assert!(c.image.image_security_policy_uri.is_none());
        let c = CdhConfig::parse("[image]\npull_deadline_secs = 0\nrequire_signature_policy = true\n", Path::new("x"))
            .unwrap();
        assert_eq!(c.pull_deadline(), None);
        assert!(c.image.require_signature_policy);
    }

    #[test]
    fn inline_policy_is_refused_not_dropped() {
        let err = CdhConfig::parse("[image]\nimage_security_policy = \"{}\"\n", Path::new("cdh.toml")).unwrap_err();
        assert!(err.to_string().contains("image.image_security_policy"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (toml, key) in [
            ("socket = \"127.0.0.1:50000\"\n", "socket"),
            ("[aa]\naa_socket = \"tcp://x\"\n", "aa.aa_socket"),
            ("[image]\nmax_concurrent_layer_downloads_per_image = 0\n", "max_concurrent_layer_downloads_per_image"),
            ("[image]\nregistry_configuration_uri = \"kbs:///a/b/c\"\n", "registry_configuration_uri"),
        ] {
            let err = CdhConfig::parse(toml, Path::new("cdh.toml")).unwrap_err().to_string();
            assert!(err.contains(key), "{toml} -> {err}");
        }
        let err = CdhConfig::parse("[image]\nmax_concurrent_layer_downloads_per_image = \"3\"\n", Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_concurrent_layer_downloads_per_image"), "{err}");
    }
}
