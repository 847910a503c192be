//! Finding an image on a registry: tag or digest → (index →) manifest →
//! config, each verified against its digest and size before it is parsed,
//! and streaming layer blobs with resume.
//!
//! Nothing from the registry is trusted: manifests and configs are read with
//! size bounds, a digest reference is checked against the bytes received, and
//! a descriptor's `urls` (foreign layers) are never followed.

pub mod auth;
pub mod config;
pub mod http;
mod platform;

use oci_spec::distribution::Reference;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Response, StatusCode};

pub use platform::Platform;

use crate::digest::Digest;
use config::{RegistriesConfig, Source};
use http::{read_limited, Distribution};

/// Largest manifest or index we read (Distribution's own limit is 4 MiB).
pub const MANIFEST_LIMIT: u64 = 4 * 1024 * 1024;
/// Largest image config we read.
pub const CONFIG_LIMIT: u64 = 16 * 1024 * 1024;

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MANIFEST_ACCEPT: &[&str] = &[MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST];

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url}: not authorized: {reason}")]
    Unauthorized { url: String, reason: String },
    #[error("{url}: not found{}", if body.is_empty() { String::new() } else { format!(" ({body})") })]
    NotFound { url: String, body: String },
    #[error("{url}: registry answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url}: response larger than the {limit}-byte limit")]
    TooLarge { url: String, limit: u64 },
    #[error("{what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("{what} size mismatch: descriptor says {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("{what} is malformed: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{what} has unsupported media type {media_type:?}")]
    MediaType { what: String, media_type: String },
    #[error("image index {digest} has no manifest for platform {platform} (available: {available})")]
    NoPlatform { digest: Digest, platform: Platform, available: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("registry configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Blocked(#[from] config::Blocked),
    #[error("all sources failed for {reference}: {}", errors.join("; "))]
    AllSourcesFailed { reference: String, errors: Vec<String> },
}

impl RegistryError {
    pub(crate) fn transport(url: &str, e: reqwest::Error) -> Self {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            source = s.source();
        }
        RegistryError::Transport { url: url.to_owned(), reason }
    }

    /// Worth trying the next mirror/source for.
    fn try_next_source(&self) -> bool {
        matches!(self, RegistryError::Transport { .. } | RegistryError::NotFound { .. } | RegistryError::Status { .. })
    }
}

/// An image found and verified on one source.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub source: Source,
    /// Digest of the platform manifest (what a digest reference would pin).
    pub manifest_digest: Digest,
    /// Digest of the index the manifest was selected from, if any.
    pub index_digest: Option<Digest>,
    pub manifest: ImageManifest,
    pub manifest_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    pub config_bytes: Vec<u8>,
}

pub struct Registry {
    http: Distribution,
    config: RegistriesConfig,
    platform: Platform,
}

impl Registry {
    pub fn new(http: Distribution, config: RegistriesConfig, platform: Platform) -> Self {
        Registry { http, config, platform }
    }

    /// Resolves `reference` to a verified manifest and config, trying mirrors
    /// then the primary location.
    pub async fn resolve(&self, reference: &Reference) -> Result<ResolvedImage, RegistryError> {
        let sources =
            self.config.sources(reference.registry(), reference.repository(), reference.digest().is_some())?;
        let mut errors = Vec::new();
        for source in sources {
            match self.resolve_at(&source, reference).await {
                Ok(img) => return Ok(img),
                Err(e) if e.try_next_source() => {
                    tracing::warn!(registry = %source.registry, repository = %source.repository, error = %e, "source failed; trying the next one");
                    errors.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        match errors.len() {
            1 => Err(errors.remove(0)),
            _ => Err(RegistryError::AllSourcesFailed {
                reference: reference.whole(),
                errors: errors.iter().map(ToString::to_string).collect(),
            }),
        }
    }

    async fn resolve_at(&self, source: &Source, reference: &Reference) -> Result<ResolvedImage, RegistryError> {
        let wanted: Option<Digest> =
            match reference.digest() {
                Some(d) => Some(d.parse().map_err(|e| RegistryError::Malformed {
                    what: "reference digest".into(),
                    reason: format!("{e}"),
                })?),
                None => None,
            };
        let tag_or_digest =
            reference.digest().map(str::to_owned).unwrap_or_else(|| reference.tag().unwrap_or("latest").to_owned());
        let (bytes, media_type) = self.fetch_manifest(source, &tag_or_digest).await?;
        let top_digest = Digest::of(&bytes);
        if let Some(w) = &wanted {
            if *w != top_digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest {}", reference.whole()),
                    expected: w.clone(),
                    actual: top_digest,
                });
            }
        }
        let media_type = media_type.unwrap_or_else(|| sniff_media_type(&bytes));
        let (manifest_digest, index_digest, manifest_bytes) = match media_type.as_str() {
            MT_OCI_INDEX | MT_DOCKER_LIST => {
                let index: ImageIndex = parse_json("image index", &bytes)?;
                let desc = self.platform.select(&index).ok_or_else(|| RegistryError::NoPlatform {
                    digest: top_digest.clone(),
                    platform: self.platform.clone(),
                    available: Platform::list(&index),
                })?;
                let child: Digest = parse_digest("index entry", desc.digest().as_ref())?;
                let (child_bytes, _) = self.fetch_manifest(source, &child.to_string()).await?;
                verify("platform manifest", desc, &child_bytes)?;
                (child, Some(top_digest), child_bytes)
            }
            MT_OCI_MANIFEST | MT_DOCKER_MANIFEST => (top_digest, None, bytes),
            other => return Err(RegistryError::MediaType { what: "manifest".into(), media_type: other.to_owned() }),
        };
        let manifest: ImageManifest = parse_json("image manifest", &manifest_bytes)?;
        let config_desc = manifest.config();
        let config_mt = config_desc.media_type().to_string();
        if !matches!(
            config_mt.as_str(),
            "application/vnd.oci.image.config.v1+json" | "application/vnd.docker.container.image.v1+json"
        ) {
            return Err(RegistryError::MediaType { what: "image config".into(), media_type: config_mt });
        }
        let config_digest = parse_digest("config descriptor", config_desc.digest().as_ref())?;
        if config_desc.size() > CONFIG_LIMIT {
            return Err(RegistryError::TooLarge { url: format!("config {config_digest}"), limit: CONFIG_LIMIT });
        }
        let resp =
            self.http.get(&source.registry, &source.repository, &format!("blobs/{config_digest}"), &[], None).await?;
        let config_bytes = read_limited(resp, config_desc.size(), self.http.body_timeout()).await?;
        verify("image config", config_desc, &config_bytes)?;
        let config: ImageConfiguration = parse_json("image config", &config_bytes)?;
        let diff_ids = config.rootfs().diff_ids().len();
        if diff_ids != manifest.layers().len() {
            return Err(RegistryError::Malformed {
                what: "image".into(),
                reason: format!(
                    "{} layers in the manifest but {diff_ids} diff_ids in the config",
                    manifest.layers().len()
                ),
            });
        }
        Ok(ResolvedImage {
            source: source.clone(),
            manifest_digest,
            index_digest,
            manifest,
            manifest_bytes,
            config_digest,
            config,
            config_bytes,
        })
    }

    async fn fetch_manifest(
        &self,
        source: &Source,
        tag_or_digest: &str,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let resp = self
            .http
            .get(&source.registry, &source.repository, &format!("manifests/{tag_or_digest}"), MANIFEST_ACCEPT, None)
            .await?;
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .filter(|v| MANIFEST_ACCEPT.contains(&v.as_str()));
        Ok((read_limited(resp, MANIFEST_LIMIT, self.http.body_timeout()).await?, media_type))
    }

    /// GETs `/v2/<repository>/<path>` on `source` and reads at most `limit`
    /// bytes, with the response's media type. For signature lookups (cosign
    /// `.sig` manifests and payloads, the referrers API).
    pub async fn get_limited(
        &self,
        source: &Source,
        path: &str,
        accept: &[&str],
        limit: u64,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let resp = self.http.get(&source.registry, &source.repository, path, accept, None).await?;
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        Ok((read_limited(resp, limit, self.http.body_timeout()).await?, media_type))
    }

    /// Opens a layer blob at byte `offset`. Returns the response and the
    /// offset its body actually starts at (0 when the registry ignored Range).
    pub async fn open_blob(
        &self,
        source: &Source,
        digest: &Digest,
        offset: u64,
    ) -> Result<(Response, u64), RegistryError> {
        let range = (offset > 0).then_some(offset);
        let resp = self.http.get(&source.registry, &source.repository, &format!("blobs/{digest}"), &[], range).await?;
        let start = if resp.status() == StatusCode::PARTIAL_CONTENT { offset } else { 0 };
        Ok((resp, start))
    }
}

pub(crate) fn sniff_media_type(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe { media_type: Some(mt), .. }) => mt,
        Ok(Probe { manifests: Some(_), .. }) => MT_OCI_INDEX.to_owned(),
        _ => MT_OCI_MANIFEST.to_owned(),
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Malformed { what: what.to_owned(), reason: e.to_string() })
}

pub(crate) fn parse_digest(what: &str, s: &str) -> Result<Digest, RegistryError> {
    s.parse().map_err(|e| RegistryError::Malformed { what: what.to_owned(), reason: format!("{e}") })
}

/// Checks `bytes` against a descriptor's size and digest.
pub(crate) fn verify(what: &str, desc: &Descriptor, bytes: &[u8]) -> Result<(), RegistryError> {
    let expected = parse_digest(what, desc.digest().as_ref())?;
    if bytes.len() as u64 != desc.size() {
        return Err(RegistryError::SizeMismatch {
            what: format!("{what} {expected}"),
            expected: desc.size(),
            actual: bytes.len() as u64,
        });
    }
    let actual = Digest::of(bytes);
    if actual != expected {
        return Err(RegistryError::DigestMismatch { what: what.to_owned(), expected, actual });
    }
    Ok(())
}

/// Layer compression, from the descriptor's media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Maps a layer media type to its compression; encrypted and unknown types are refused here.
pub fn layer_compression(media_type: &MediaType) -> Result<Compression, RegistryError> {
    let mt = media_type.to_string();
    match mt.as_str() {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
            Ok(Compression::None)
        }
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Compression::Zstd),
        m if m.ends_with("+encrypted") => Err(RegistryError::MediaType {
            what: "layer (encrypted; a decryption key is needed)".into(),
            media_type: mt,
        }),
        _ => Err(RegistryError::MediaType { what: "layer".into(), media_type: mt }),
    }
}

/// A layer media type: its compression, and whether the blob is ocicrypt-encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerMedia {
    pub compression: Compression,
    pub encrypted: bool,
}

/// Like [`layer_compression`], but also accepts the ocicrypt `+encrypted` forms
/// (`tar`, `tar+gzip`, `tar+zstd`, Docker `rootfs.diff.tar.gzip`).
pub fn layer_media(media_type: &MediaType) -> Result<LayerMedia, RegistryError> {
    let mt = media_type.to_string();
    let inner = match mt.as_str() {
        "application/vnd.oci.image.layer.v1.tar+encrypted" => "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted" => "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd+encrypted" => "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted" => {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        }
        m if m.ends_with("+encrypted") => {
            return Err(RegistryError::MediaType { what: "encrypted layer".into(), media_type: mt })
        }
        _ => return Ok(LayerMedia { compression: layer_compression(media_type)?, encrypted: false }),
    };
    Ok(LayerMedia { compression: layer_compression(&MediaType::from(inner))?, encrypted: true })
}

#[cfg(test)]
mod layer_media_tests {
    use super::*;

    #[test]
    fn maps_encrypted_media_types_to_their_compression() {
        let m = |s: &str| layer_media(&MediaType::from(s));
        for (mt, c) in [
            ("application/vnd.oci.image.layer.v1.tar+encrypted", Compression::None),
            ("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", Compression::Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd+encrypted", Compression::Zstd),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted", Compression::Gzip),
        ] {
            assert_eq!(m(mt).unwrap(), LayerMedia { compression: c, encrypted: true }, "{mt}");
        }
        assert_eq!(
            m("application/vnd.oci.image.layer.v1.tar+gzip").unwrap(),
            LayerMedia { compression: Compression::Gzip, encrypted: false }
        );
        for bad in [
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip+encrypted",
            "application/vnd.oci.image.layer.v1.tar+bzip2+encrypted",
            "+encrypted",
            "application/octet-stream",
        ] {
            assert!(m(bad).is_err(), "{bad}");
        }
    }
}
