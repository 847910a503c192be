//! Where secrets come from: key-encryption keys for encrypted layers,
//! signature-verification keys and policies given as `kbs:///repo/type/tag`.
//!
//! The image code only sees the [`KeySource`] trait. Inside a confidential VM
//! the implementation asks the attestation-agent, which releases a resource
//! only after the KBS has verified the TEE's evidence; tests and development
//! use [`DirKeySource`]. A key source never logs or formats resource bytes.

mod aa;
mod uri;

use std::path::PathBuf;

pub use aa::{AaKeySource, DEFAULT_AA_SOCKET};
pub use uri::{ResourceUri, UriError};
use zeroize::Zeroizing;

/// Bytes of a released resource, wiped from memory when dropped.
pub type Secret = Zeroizing<Vec<u8>>;

/// Why a resource could not be obtained. The message names the URI, never
/// the content.
#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    #[error("resource {uri} not found ({detail})")]
    NotFound { uri: String, detail: String },
    #[error("resource {uri} was refused by the key broker: {detail}")]
    Denied { uri: String, detail: String },
    #[error("resource {uri} could not be fetched: {detail}")]
    Unavailable { uri: String, detail: String },
    #[error("no key source is configured that can resolve {uri}")]
    NoSource { uri: String },
}

/// Resolves `kbs:///` URIs to secret bytes.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync {
    async fn get_resource(&self, uri: &ResourceUri) -> Result<Secret, KeySourceError>;
}

/// A key source that has nothing: every lookup fails with
/// [`KeySourceError::NoSource`]. The default when no source is configured,
/// so a `kbs:///` reference fails closed with a clear message.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoKeySource;

#[async_trait::async_trait]
impl KeySource for NoKeySource {
    async fn get_resource(&self, uri: &ResourceUri) -> Result<Secret, KeySourceError> {
        Err(KeySourceError::NoSource { uri: uri.to_string() })
    }
}

/// Resources stored as files `ROOT/<repo>/<type>/<tag>` (the layout of
/// Trustee's local file repository). For tests and development only: it
/// proves nothing about the guest. URI segments are validated by
/// [`ResourceUri`], so a lookup never leaves `ROOT`.
#[derive(Debug, Clone)]
pub struct DirKeySource {
    root: PathBuf,
}

impl DirKeySource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

#[async_trait::async_trait]
impl KeySource for DirKeySource {
    async fn get_resource(&self, uri: &ResourceUri) -> Result<Secret, KeySourceError> {
        let path = self.root.join(uri.repository()).join(uri.kind()).join(uri.tag());
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Zeroizing::new(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Err(KeySourceError::NotFound { uri: uri.to_string(), detail: format!("no file {}", path.display()) })
            }
            Err(err) => {
                Err(KeySourceError::Unavailable { uri: uri.to_string(), detail: format!("{}: {err}", path.display()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dir_source_reads_resource_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("default/key")).unwrap();
        std::fs::write(dir.path().join("default/key/1"), b"kek").unwrap();
        let source = DirKeySource::new(dir.path());
        let uri: ResourceUri = "kbs:///default/key/1".parse().unwrap();
        assert_eq!(source.get_resource(&uri).await.unwrap().as_slice(), b"kek");
        let missing: ResourceUri = "kbs:///default/key/2".parse().unwrap();
        let err = source.get_resource(&missing).await.unwrap_err();
        assert!(matches!(err, KeySourceError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("kbs:///default/key/2"), "{err}");
    }

    #[tokio::test]
    async fn no_source_fails_closed() {
        let uri: ResourceUri = "kbs:///default/key/1".parse().unwrap();
        let err = NoKeySource.get_resource(&uri).await.unwrap_err();
        assert_eq!(err.to_string(), "no key source is configured that can resolve kbs:///default/key/1");
    }
}
