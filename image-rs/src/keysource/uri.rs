//! `kbs://[host[:port]]/<repository>/<type>/<tag>`: the name of a KBS
//! resource. Parsing is strict so that a URI can never name a path outside a
//! resource root: each segment is non-empty, is not `.` or `..`, and uses only
//! `[A-Za-z0-9._-]`.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "kbs://";
const MAX_URI_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceUri {
    /// `host[:port]` of the KBS, or empty for "the configured KBS".
    authority: String,
    repository: String,
    kind: String,
    tag: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    #[error("resource URI {0:?} does not start with kbs://")]
    Scheme(String),
    #[error("resource URI {0:?} must have exactly three path segments: <repository>/<type>/<tag>")]
    Segments(String),
    #[error("resource URI {uri:?} has an invalid segment {segment:?} (allowed: A-Z a-z 0-9 . _ -, not . or ..)")]
    Segment { uri: String, segment: String },
    #[error("resource URI is longer than {MAX_URI_LEN} bytes")]
    TooLong,
}

impl ResourceUri {
    pub fn authority(&self) -> &str {
        &self.authority
    }
    pub fn repository(&self) -> &str {
        &self.repository
    }
    /// The resource type (`key`, `cosign-public-key`, …).
    pub fn kind(&self) -> &str {
        &self.kind
    }
    pub fn tag(&self) -> &str {
        &self.tag
    }
    /// `<repository>/<type>/<tag>`, the path under `/kbs/v0/resource/`.
    pub fn resource_path(&self) -> String {
        format!("{}/{}/{}", self.repository, self.kind, self.tag)
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl FromStr for ResourceUri {
    type Err = UriError;

    fn from_str(uri: &str) -> Result<Self, UriError> {
        if uri.len() > MAX_URI_LEN {
            return Err(UriError::TooLong);
        }
        let rest = uri.strip_prefix(SCHEME).ok_or_else(|| UriError::Scheme(uri.to_owned()))?;
        let (authority, path) = rest.split_once('/').ok_or_else(|| UriError::Segments(uri.to_owned()))?;
        if !authority.is_empty()
            && !authority.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(UriError::Segment { uri: uri.to_owned(), segment: authority.to_owned() });
        }
        let segments: Vec<&str> = path.split('/').collect();
        let [repository, kind, tag] = segments[..] else {
            return Err(UriError::Segments(uri.to_owned()));
        };
        for segment in [repository, kind, tag] {
            if !valid_segment(segment) {
                return Err(UriError::Segment { uri: uri.to_owned(), segment: segment.to_owned() });
            }
        }
        Ok(Self {
            authority: authority.to_owned(),
            repository: repository.to_owned(),
            kind: kind.to_owned(),
            tag: tag.to_owned(),
        })
    }
}

impl fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}/{}/{}", self.authority, self.repository, self.kind, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        for text in ["kbs:///default/key/1", "kbs://kbs.example:8080/repo/cosign-key/v1.2"] {
            let uri: ResourceUri = text.parse().unwrap();
            assert_eq!(uri.to_string(), text);
        }
        let uri: ResourceUri = "kbs:///default/key/1".parse().unwrap();
        assert_eq!((uri.authority(), uri.resource_path().as_str()), ("", "default/key/1"));
    }

    #[test]
    fn rejects_traversal_and_malformed_uris() {
        let cases = [
            ("https:///a/b/c", "does not start with kbs://"),
            ("kbs:///a/b", "exactly three path segments"),
            ("kbs:///a/b/c/d", "exactly three path segments"),
            ("kbs:///a/../c", "invalid segment \"..\""),
            ("kbs:///a/./c", "invalid segment \".\""),
            ("kbs:///a//c", "invalid segment \"\""),
            ("kbs:///a/b/c?x=1", "invalid segment \"c?x=1\""),
            ("kbs://host/with/space/x y", "invalid segment \"x y\""),
            ("kbs://us@er/a/b/c", "invalid segment \"us@er\""),
        ];
        for (text, want) in cases {
            let err = text.parse::<ResourceUri>().unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        let long = format!("kbs:///a/b/{}", "x".repeat(2000));
        assert_eq!(long.parse::<ResourceUri>().unwrap_err(), UriError::TooLong);
    }
}
