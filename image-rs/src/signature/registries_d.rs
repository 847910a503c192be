//! containers-registries.d(5): where an image's signatures live. Every
//! `*.yaml` file of the directory is read; `default-docker` and `docker:`
//! scopes say per registry, namespace or repository which `lookaside` base
//! URL (file://, http://, https://) holds simple-signing signatures and
//! whether cosign attachments (`use-sigstore-attachments`) are used.
//!
//! Unknown keys and duplicate scopes refuse the configuration: a typo here
//! must not silently turn into "no signatures found".

use std::collections::BTreeMap;
use std::path::Path;

use reqwest::Url;
use serde::Deserialize;

use super::policy::scope_candidates;
use super::reference::DockerRef;
use crate::digest::Digest;

/// Largest registries.d file we parse.
const FILE_LIMIT: u64 = 1024 * 1024;
/// Most files read from a registries.d directory.
const MAX_FILES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum RegistriesDError {
    #[error("registries.d {path}: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ScopeConfig {
    #[serde(default)]
    pub lookaside: Option<String>,
    #[serde(default)]
    pub lookaside_staging: Option<String>,
    /// Old name of `lookaside`.
    #[serde(default)]
    pub sigstore: Option<String>,
    /// Old name of `lookaside-staging`.
    #[serde(default)]
    pub sigstore_staging: Option<String>,
    #[serde(default)]
    pub use_sigstore_attachments: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    #[serde(default)]
    default_docker: Option<ScopeConfig>,
    #[serde(default)]
    docker: BTreeMap<String, ScopeConfig>,
}

/// The merged configuration of a registries.d directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistriesD {
    default_docker: Option<ScopeConfig>,
    docker: BTreeMap<String, ScopeConfig>,
}

impl ScopeConfig {
    fn lookaside(&self) -> Option<&str> {
        self.lookaside.as_deref().or(self.sigstore.as_deref())
    }
}

impl RegistriesD {
    /// Reads every `*.yaml` file of `dir` (sorted by name).
    pub fn load_dir(dir: &Path) -> Result<Self, RegistriesDError> {
        let err = |path: &Path, reason: String| RegistriesDError::Invalid { path: path.display().to_string(), reason };
        let entries = std::fs::read_dir(dir).map_err(|e| err(dir, e.to_string()))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| err(dir, e.to_string()))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") && entry.file_type().map(|t| t.is_file()).unwrap_or(false)
            {
                files.push(path);
            }
        }
        if files.len() > MAX_FILES {
            return Err(err(dir, format!("more than {MAX_FILES} .yaml files")));
        }
        files.sort();
        let mut out = RegistriesD::default();
        for path in files {
            let size = std::fs::metadata(&path).map_err(|e| err(&path, e.to_string()))?.len();
            if size > FILE_LIMIT {
                return Err(err(&path, format!("{size} bytes, over the {FILE_LIMIT}-byte limit")));
            }
            let text = std::fs::read(&path).map_err(|e| err(&path, e.to_string()))?;
            out.merge(&text).map_err(|reason| err(&path, reason))?;
        }
        Ok(out)
    }

    /// Adds one file's contents; duplicate scopes (across files too) are errors.
    pub fn merge(&mut self, yaml: &[u8]) -> Result<(), String> {
        if yaml.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let raw: RawFile = serde_yaml::from_slice(yaml).map_err(|e| format!("not valid registries.d YAML: {e}"))?;
        if let Some(d) = raw.default_docker {
            if self.default_docker.is_some() {
                return Err("default-docker is defined more than once".into());
            }
            d.check().map_err(|e| format!("default-docker: {e}"))?;
            self.default_docker = Some(d);
        }
        for (scope, cfg) in raw.docker {
            if self.docker.contains_key(&scope) {
                return Err(format!("docker scope {scope:?} is defined more than once"));
            }
            cfg.check().map_err(|e| format!("docker scope {scope:?}: {e}"))?;
            self.docker.insert(scope, cfg);
        }
        Ok(())
    }

    /// Per field, the most specific scope that sets it, then `default-docker`.
    fn lookup<'a, T>(&'a self, image: &DockerRef, get: impl Fn(&'a ScopeConfig) -> Option<T>) -> Option<T> {
        scope_candidates(image)
            .iter()
            .filter_map(|s| self.docker.get(s))
            .chain(self.default_docker.iter())
            .find_map(get)
    }

    /// The lookaside base URL for `image`, if any.
    pub fn lookaside_for(&self, image: &DockerRef) -> Option<Url> {
        self.lookup(image, ScopeConfig::lookaside).and_then(|u| Url::parse(u).ok())
    }

    /// `use-sigstore-attachments` for `image`, when some scope sets it.
    pub fn use_sigstore_attachments(&self, image: &DockerRef) -> Option<bool> {
        self.lookup(image, |c| c.use_sigstore_attachments)
    }
}

impl ScopeConfig {
    fn check(&self) -> Result<(), String> {
        if self.lookaside.is_some() && self.sigstore.is_some() {
            return Err("both lookaside and its old name sigstore are set".into());
        }
        for url in
            [&self.lookaside, &self.sigstore, &self.lookaside_staging, &self.sigstore_staging].into_iter().flatten()
        {
            let u = Url::parse(url).map_err(|e| format!("URL {url:?}: {e}"))?;
            if !matches!(u.scheme(), "file" | "http" | "https") {
                return Err(format!("URL {url:?}: only file://, http:// and https:// lookasides are supported"));
            }
        }
        Ok(())
    }
}

/// `BASE/<repository path>@sha256=<hex>/signature-<n>` (n from 1).
pub fn signature_url(base: &Url, image: &DockerRef, digest: &Digest, n: usize) -> Result<Url, String> {
    let base = base.as_str().trim_end_matches('/');
    let url = format!("{base}/{}@sha256={}/signature-{n}", image.path(), digest.hex());
    Url::parse(&url).map_err(|e| format!("lookaside URL {url:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> DockerRef {
        DockerRef::parse(s).unwrap()
    }

    #[test]
    fn most_specific_scope_wins_per_field() {
        let mut d = RegistriesD::default();
        d.merge(
            br#"
default-docker:
  lookaside: https://sigs.example/default
docker:
  reg.example:5000:
    lookaside: file:///var/lib/sigs
    use-sigstore-attachments: true
  reg.example:5000/team/app:
    lookaside: http://127.0.0.1:8080/app-sigs
  "*.corp.example":
    sigstore: https://corp/sigs
"#,
        )
        .unwrap();
        assert_eq!(
            d.lookaside_for(&r("reg.example:5000/team/app:1")).unwrap().as_str(),
            "http://127.0.0.1:8080/app-sigs"
        );
        assert_eq!(
            d.use_sigstore_attachments(&r("reg.example:5000/team/app:1")),
            Some(true),
            "inherited from the host scope"
        );
        assert_eq!(d.lookaside_for(&r("reg.example:5000/other:1")).unwrap().as_str(), "file:///var/lib/sigs");
        assert_eq!(d.lookaside_for(&r("a.corp.example/x:1")).unwrap().as_str(), "https://corp/sigs");
        assert_eq!(d.lookaside_for(&r("quay.io/x:1")).unwrap().as_str(), "https://sigs.example/default");
        assert_eq!(d.use_sigstore_attachments(&r("quay.io/x:1")), None);
    }

    #[test]
    fn signature_urls_use_the_repository_path_and_digest() {
        let base = Url::parse("file:///srv/look/").unwrap();
        let digest = Digest::of(b"m");
        let u = signature_url(&base, &r("127.0.0.1:5000/ns/app:1"), &digest, 2).unwrap();
        assert_eq!(u.as_str(), format!("file:///srv/look/ns/app@sha256={}/signature-2", digest.hex()));
    }

    #[test]
    fn refuses_garbage_unknown_keys_duplicates_and_odd_schemes() {
        let cases: [&[u8]; 6] = [
            b"docker: [1, 2",
            b"docker:\n  h:\n    lookaside: file:///x\n    lookasid: typo\n",
            b"default-docker:\n  lookaside: ftp://x/\n",
            b"default-docker:\n  lookaside: not a url\n",
            b"unknown-top: 1\n",
            b"\xff\xfe\x00",
        ];
        for c in cases {
            assert!(RegistriesD::default().merge(c).is_err(), "{:?} accepted", String::from_utf8_lossy(c));
        }
        let mut d = RegistriesD::default();
        d.merge(b"docker:\n  h:\n    lookaside: file:///a\n").unwrap();
        assert!(d.merge(b"docker:\n  h:\n    lookaside: file:///b\n").unwrap_err().contains("more than once"));
        assert!(RegistriesD::default().merge(b"").is_ok());
    }
}
