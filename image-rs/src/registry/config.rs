//! Registry configuration: a subset of containers-registries.conf(5) v2 TOML
//! (`[[registry]]` with `prefix`, `location`, `insecure`, `blocked`,
//! `mirror-by-digest-only`, `[[registry.mirror]]`), plus our own top-level
//! `ca-files` and `[proxy]`. Unknown keys are ignored so existing
//! registries.conf files load; malformed values are errors.
//!
//! Mirrors are safe to use because every byte is digest-verified; a blocked
//! registry is never contacted.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read registry config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("registry config {path} is not valid TOML for this format: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("registry config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Endpoint {
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct RegistryEntry {
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub blocked: bool,
    #[serde(default)]
    pub mirror_by_digest_only: bool,
    #[serde(default)]
    pub mirror: Vec<Endpoint>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ProxyConfig {
    pub https: Option<String>,
    pub http: Option<String>,
    pub no_proxy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct RegistriesConfig {
    #[serde(default)]
    pub registry: Vec<RegistryEntry>,
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    #[serde(default)]
    pub proxy: ProxyConfig,
}

/// Where to fetch one image from, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Registry host (and port) to contact.
    pub registry: String,
    /// Repository on that registry.
    pub repository: String,
    /// Plain HTTP allowed for this endpoint.
    pub insecure: bool,
    pub is_mirror: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("registry {0} is blocked by the registry configuration")]
pub struct Blocked(pub String);

impl RegistriesConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let cfg: RegistriesConfig =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        for r in &cfg.registry {
            if r.prefix.is_empty() && r.location.is_empty() {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    reason: "a [[registry]] needs a prefix or a location".into(),
                });
            }
        }
        Ok(cfg)
    }

    /// The entry whose prefix matches `registry/repository` most specifically.
    fn entry_for(&self, registry: &str, repository: &str) -> Option<&RegistryEntry> {
        let name = format!("{registry}/{repository}");
        self.registry
            .iter()
            .filter(|e| prefix_matches(e.effective_prefix(), registry, &name))
            .max_by_key(|e| e.effective_prefix().len())
    }

    /// The endpoints to try for `registry/repository`: mirrors first (unless
    /// restricted to digest references), then the (possibly remapped) primary.
    pub fn sources(&self, registry: &str, repository: &str, by_digest: bool) -> Result<Vec<Source>, Blocked> {
        let Some(entry) = self.entry_for(registry, repository) else {
            return Ok(vec![Source {
                registry: registry.to_owned(),
                repository: repository.to_owned(),
                insecure: false,
                is_mirror: false,
            }]);
        };
        if entry.blocked {
            return Err(Blocked(format!("{registry}/{repository}")));
        }
        let prefix = entry.effective_prefix();
        let rewrite = |location: &str| -> (String, String) {
            // Replace the matched prefix of "registry/repository" by location.
            let name = format!("{registry}/{repository}");
            let rest = if prefix.starts_with("*.") { &name[registry.len()..] } else { &name[prefix.len()..] };
            let full = format!("{location}{rest}");
            match full.split_once('/') {
                Some((r, repo)) => (r.to_owned(), repo.to_owned()),
                None => (full, repository.to_owned()),
            }
        };
        let mut out = Vec::new();
        if by_digest || !entry.mirror_by_digest_only {
            for m in &entry.mirror {
                let (r, repo) = rewrite(&m.location);
                out.push(Source { registry: r, repository: repo, insecure: m.insecure, is_mirror: true });
            }
        }
        let primary = if entry.location.is_empty() || prefix.starts_with("*.") { None } else { Some(&entry.location) };
        let (r, repo) = match primary {
            Some(loc) => rewrite(loc),
            None => (registry.to_owned(), repository.to_owned()),
        };
        out.push(Source { registry: r, repository: repo, insecure: entry.insecure, is_mirror: false });
        Ok(out)
    }

    /// Every host that may be spoken to over plain HTTP.
    pub fn insecure_hosts(&self) -> Vec<String> {
        let mut hosts = Vec::new();
        for e in &self.registry {
            if e.insecure && !e.location.is_empty() {
                hosts.push(host_of(&e.location));
            }
            for m in e.mirror.iter().filter(|m| m.insecure) {
                hosts.push(host_of(&m.location));
            }
        }
        hosts
    }
}

impl RegistryEntry {
    fn effective_prefix(&self) -> &str {
        if self.prefix.is_empty() {
            &self.location
        } else {
            &self.prefix
        }
    }
}

fn host_of(location: &str) -> String {
    location.split('/').next().unwrap_or(location).to_owned()
}

/// containers-registries.conf prefix rules: a prefix matches on whole path
/// components; `*.example.com` matches any subdomain host.
fn prefix_matches(prefix: &str, registry: &str, name: &str) -> bool {
    if let Some(domain) = prefix.strip_prefix("*.") {
        return registry.ends_with(&format!(".{domain}"));
    }
    name == prefix || (name.starts_with(prefix) && name.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> RegistriesConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn unconfigured_registry_is_used_as_is_over_https() {
        let s = RegistriesConfig::default().sources("quay.io", "a/b", false).unwrap();
        assert_eq!(
            s,
            vec![Source { registry: "quay.io".into(), repository: "a/b".into(), insecure: false, is_mirror: false }]
        );
    }

    #[test]
    fn mirrors_come_first_and_locations_are_remapped() {
        let c = cfg(r#"
            unqualified-search-registries = ["docker.io"]
            [[registry]]
            prefix = "docker.io/library"
            location = "internal.example/dockerhub"
            [[registry.mirror]]
            location = "127.0.0.1:5000/cache"
            insecure = true
        "#);
        let s = c.sources("docker.io", "library/busybox", false).unwrap();
        assert_eq!(
            s[0],
            Source {
                registry: "127.0.0.1:5000".into(),
                repository: "cache/busybox".into(),
                insecure: true,
                is_mirror: true
            }
        );
        assert_eq!(
            s[1],
            Source {
                registry: "internal.example".into(),
                repository: "dockerhub/busybox".into(),
                insecure: false,
                is_mirror: false
            }
        );
        assert_eq!(c.insecure_hosts(), vec!["127.0.0.1:5000".to_owned()]);
        // "docker.io/libraryx" must not match the "docker.io/library" prefix.
        assert_eq!(c.sources("docker.io", "libraryx/a", false).unwrap()[0].registry, "docker.io");
    }

    #[test]
    fn most_specific_prefix_wins_and_blocked_is_refused() {
        let c = cfg(r#"
            [[registry]]
            prefix = "example.com"
            blocked = true
            [[registry]]
            prefix = "example.com/allowed"
            location = "example.com/allowed"
        "#);
        assert_eq!(c.sources("example.com", "other/x", false), Err(Blocked("example.com/other/x".into())));
        assert_eq!(c.sources("example.com", "allowed/x", false).unwrap()[0].repository, "allowed/x");
    }

    #[test]
    fn digest_only_mirrors_are_skipped_for_tags() {
        let c = cfg(r#"
            [[registry]]
            location = "registry.example"
            mirror-by-digest-only = true
            [[registry.mirror]]
            location = "mirror.example"
        "#);
        assert_eq!(c.sources("registry.example", "r", false).unwrap().len(), 1);
        assert_eq!(c.sources("registry.example", "r", true).unwrap()[0].registry, "mirror.example");
    }

    #[test]
    fn wildcard_domains_match_subdomains_only() {
        let c = cfg(r#"
            [[registry]]
            prefix = "*.internal"
            insecure = true
        "#);
        assert!(c.sources("a.internal", "r", false).unwrap()[0].insecure);
        assert!(!c.sources("internal", "r", false).unwrap()[0].insecure);
    }

    #[test]
    fn proxy_and_ca_files_load() {
        let c = cfg(r#"
            ca-files = ["/etc/extra.pem"]
            [proxy]
            https = "http://proxy:3128"
            no-proxy = "127.0.0.1"
        "#);
        assert_eq!(c.ca_files, vec![PathBuf::from("/etc/extra.pem")]);
        assert_eq!(c.proxy.https.as_deref(), Some("http://proxy:3128"));
    }
}
