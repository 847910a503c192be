//! Registry credentials from a containers/docker `auth.json`
//! (`{"auths": {"host[/namespace]": {"auth": base64("user:pass")}}}`), the
//! most specific key winning, as containers-auth.json(5) specifies.
//! Credentials are never logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read auth file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("auth file {path} is not valid JSON: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("auth file {path}: entry {key:?} has an invalid \"auth\" value (expected base64 of user:password)")]
    BadEntry { path: PathBuf, key: String },
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl std::str::FromStr for Credentials {
    type Err = String;

    /// `USER:PASS`, as skopeo's `--creds`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (u, p) = s.split_once(':').ok_or("credentials must be USER:PASSWORD")?;
        if u.is_empty() {
            return Err("credentials must be USER:PASSWORD with a non-empty user".into());
        }
        Ok(Credentials { username: u.to_owned(), password: p.to_owned() })
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Parsed auth.json: key (host or host/namespace) → credentials.
#[derive(Debug, Default, Clone)]
pub struct AuthStore {
    entries: Vec<(String, Credentials)>,
}

impl AuthStore {
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: path.to_owned(), source })?;
        let file: AuthFile =
            serde_json::from_str(&text).map_err(|source| AuthError::Parse { path: path.to_owned(), source })?;
        let mut entries = Vec::new();
        for (key, entry) in file.auths {
            let creds = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .and_then(|s| s.parse::<Credentials>().ok())
                        .ok_or_else(|| AuthError::BadEntry { path: path.to_owned(), key: key.clone() })?;
                    decoded
                }
                (_, Some(username), Some(password)) => Credentials { username, password },
                _ => continue,
            };
            entries.push((normalise_key(&key), creds));
        }
        Ok(AuthStore { entries })
    }

    /// Credentials for `registry/repository`: the longest matching key.
    pub fn lookup(&self, registry: &str, repository: &str) -> Option<&Credentials> {
        let name = format!("{registry}/{repository}");
        let registry_aliases: &[&str] = if registry == "docker.io" || registry == "index.docker.io" {
            &["docker.io", "index.docker.io"]
        } else {
            &[]
        };
        self.entries
            .iter()
            .filter(|(key, _)| {
                key == registry
                    || registry_aliases.contains(&key.as_str())
                    || (name.starts_with(key.as_str()) && name.as_bytes().get(key.len()) == Some(&b'/'))
            })
            .max_by_key(|(key, _)| key.len())
            .map(|(_, c)| c)
    }
}

/// Docker's legacy keys ("https://index.docker.io/v1/") reduce to the host.
fn normalise_key(key: &str) -> String {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let k = k.strip_suffix("/v1/").or_else(|| k.strip_suffix("/v1")).unwrap_or(k);
    k.trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(json: &str) -> AuthStore {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth.json");
        std::fs::write(&p, json).unwrap();
        AuthStore::load(&p).unwrap()
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn most_specific_key_wins() {
        let s = store(&format!(
            r#"{{"auths": {{"reg.example": {{"auth": "{}"}}, "reg.example/team": {{"auth": "{}"}}}}}}"#,
            b64("all:1"),
            b64("team:2")
        ));
        assert_eq!(s.lookup("reg.example", "team/app").unwrap().username, "team");
        assert_eq!(s.lookup("reg.example", "other/app").unwrap().username, "all");
        assert_eq!(s.lookup("reg.example", "teamx/app").unwrap().username, "all");
        assert!(s.lookup("other.example", "team/app").is_none());
    }

    #[test]
    fn docker_legacy_key_and_password_with_colons() {
        let s = store(&format!(r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{}"}}}}}}"#, b64("u:p:w")));
        let c = s.lookup("docker.io", "library/busybox").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:w"));
    }

    #[test]
    fn bad_entries_name_the_key_and_never_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth.json");
        std::fs::write(&p, r#"{"auths": {"reg.example": {"auth": "not base64!"}}}"#).unwrap();
        let err = AuthStore::load(&p).unwrap_err().to_string();
        assert!(err.contains("reg.example") && !err.contains("not base64"), "{err}");
        let creds: Credentials = "user:secret".parse().unwrap();
        assert!(!format!("{creds:?}").contains("secret"));
    }
}
