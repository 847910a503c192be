//! KBS resource URIs: `kbs:///<repository>/<type>/<tag>` (a host part, as in
//! `kbs://example/…`, is accepted and ignored: the KBS is the configured one),
//! or the bare `<repository>/<type>/<tag>`.
//!
//! Segments are restricted to `[A-Za-z0-9._-]`, never `.` or `..`, so a path
//! never escapes `/kbs/v0/resource/` on the server side.

use std::fmt;

#[derive(Debug, thiserror::Error)]
#[error("invalid resource URI {uri:?}: {reason}")]
pub struct UriError {
    pub uri: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub repository: String,
    pub kind: String,
    pub tag: String,
}

const MAX_SEGMENT: usize = 255;

impl ResourcePath {
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let bad = |reason: &str| UriError { uri: uri.chars().take(300).collect(), reason: reason.into() };
        let path = if let Some(rest) = uri.strip_prefix("kbs://") {
            let slash = rest.find('/').ok_or_else(|| bad("no path after kbs://"))?;
            &rest[slash + 1..]
        } else if uri.contains("://") {
            return Err(bad("scheme must be kbs://"));
        } else {
            uri.strip_prefix('/').unwrap_or(uri)
        };
        if path.contains(['?', '#']) {
            return Err(bad("query strings and fragments are not supported"));
        }
        let segments: Vec<&str> = path.split('/').collect();
        let [repository, kind, tag] = segments.as_slice() else {
            return Err(bad("expected exactly <repository>/<type>/<tag>"));
        };
        for s in [repository, kind, tag] {
            if s.is_empty() || *s == "." || *s == ".." {
                return Err(bad("empty, '.' or '..' segment"));
            }
            if s.len() > MAX_SEGMENT {
                return Err(bad("segment longer than 255 bytes"));
            }
            if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
                return Err(bad("segments may only contain A-Z a-z 0-9 . _ -"));
            }
        }
        Ok(Self { repository: (*repository).into(), kind: (*kind).into(), tag: (*tag).into() })
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.repository, self.kind, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        for uri in ["kbs:///default/key/1", "kbs://kbs.example:8080/default/key/1", "default/key/1", "/default/key/1"] {
            assert_eq!(ResourcePath::parse(uri).unwrap().to_string(), "default/key/1", "{uri}");
        }
    }

    #[test]
    fn rejects_traversal_and_junk() {
        for uri in [
            "kbs:///../key/1",
            "kbs:///default/../1",
            "kbs:///default/key",
            "kbs:///default/key/1/2",
            "kbs:///default//1",
            "https://x/default/key/1",
            "kbs:///default/key/1?x=y",
            "kbs:///default/key/a%2Fb",
            "kbs:///default/key/\u{0}",
            "kbs:",
        ] {
            assert!(ResourcePath::parse(uri).is_err(), "{uri}");
        }
        assert!(ResourcePath::parse(&format!("a/b/{}", "c".repeat(256))).is_err());
    }
}
