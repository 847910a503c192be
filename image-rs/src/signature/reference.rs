//! Docker references as the signature policy sees them: the fully expanded
//! name (`docker.io/library/busybox`), plus an explicit tag and/or digest.
//!
//! Unlike a pull reference, a reference here never gets an implied `latest`:
//! a signature that claims `host/repo` claims a repository, not a tag, and the
//! identity rules must be able to tell the two apart.

use std::fmt;

use oci_spec::distribution::Reference;

/// A normalized Docker reference: `name` is `domain/path`; at most a tag and
/// a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRef {
    name: String,
    tag: Option<String>,
    digest: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not a valid docker reference: {reason}")]
pub struct RefError {
    pub input: String,
    pub reason: String,
}

impl DockerRef {
    /// Parses and normalizes (`busybox` → `docker.io/library/busybox`).
    /// No default tag is added.
    pub fn parse(input: &str) -> Result<Self, RefError> {
        let err = |reason: &str| RefError { input: input.to_owned(), reason: reason.to_owned() };
        if input.is_empty() || input.len() > 1024 {
            return Err(err("empty or longer than 1024 bytes"));
        }
        if input.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(err("contains whitespace or control characters"));
        }
        let parsed: Reference = input.parse().map_err(|e| err(&format!("{e}")))?;
        let name_part = input.split('@').next().unwrap_or(input);
        let last = name_part.rsplit('/').next().unwrap_or(name_part);
        let explicit_tag = last.contains(':');
        if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err("repository name must be lowercase"));
        }
        let name = format!("{}/{}", parsed.registry(), parsed.repository());
        Ok(DockerRef {
            name,
            tag: if explicit_tag { parsed.tag().map(str::to_owned) } else { None },
            digest: parsed.digest().map(str::to_owned),
        })
    }

    /// The identity of an image being pulled: a tag or digest is always
    /// present (a pull reference without either means `latest`). When both
    /// are given, the digest is what was pulled, so it is the identity.
    pub fn from_pull_reference(reference: &Reference) -> Self {
        let name = format!("{}/{}", reference.registry(), reference.repository());
        match reference.digest() {
            Some(d) => DockerRef { name, tag: None, digest: Some(d.to_owned()) },
            None => DockerRef { name, tag: Some(reference.tag().unwrap_or("latest").to_owned()), digest: None },
        }
    }

    /// `domain/path`, without tag or digest.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The registry host (and port).
    pub fn domain(&self) -> &str {
        self.name.split('/').next().unwrap_or(&self.name)
    }

    /// The repository path on the registry (without the domain).
    pub fn path(&self) -> &str {
        self.name.split_once('/').map(|(_, p)| p).unwrap_or("")
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Neither a tag nor a digest.
    pub fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    /// The same reference with `name` replaced (tag and digest kept).
    pub(crate) fn with_name(&self, name: String) -> Self {
        DockerRef { name, tag: self.tag.clone(), digest: self.digest.clone() }
    }
}

impl fmt::Display for DockerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// True when `name` is `prefix` or lies below it (`prefix/…`). A host prefix
/// must match the whole `host[:port]`.
pub(crate) fn name_has_prefix(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_without_adding_a_tag() {
        let r = DockerRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox");
        assert!(r.is_name_only());
        let r = DockerRef::parse("127.0.0.1:5000/ns/app:1").unwrap();
        assert_eq!(
            (r.name(), r.tag(), r.domain(), r.path()),
            ("127.0.0.1:5000/ns/app", Some("1"), "127.0.0.1:5000", "ns/app")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = DockerRef::parse(&format!("quay.io/x/y@{d}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (None, Some(d.as_str())));
        assert_eq!(DockerRef::parse("host:5000/repo").unwrap().to_string(), "host:5000/repo");
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in ["", "UPPER/case", "a b", "repo@sha256:short", "host/repo:tag:tag", "x\n"] {
            assert!(DockerRef::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefix_matching_respects_path_boundaries() {
        assert!(name_has_prefix("docker.io/library/busybox", "docker.io/library"));
        assert!(name_has_prefix("docker.io/library/busybox", "docker.io/library/busybox"));
        assert!(!name_has_prefix("docker.io/library/busyboxx", "docker.io/library/busybox"));
        assert!(!name_has_prefix("host:5000/a", "host"));
        assert!(!name_has_prefix("host", "host/a"));
        assert!(name_has_prefix("", ""));
        assert!(!name_has_prefix("", "a"));
    }
}
