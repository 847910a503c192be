//! The hub: what each RPC does, independent of ttrpc. Image pulls go through
//! one shared [`ImageClient`] (signature policy on every pull, one fetch per
//! layer across concurrent pulls), are recorded in the runtime measurements,
//! and are undone when anything after the pull fails. Resources come from the
//! KBS through the attestation-agent; the TEE key never leaves the agent.
//!
//! Sealed secrets (vault and envelope types, provider kbs) are verified and
//! resolved the same way: an envelope's KEK is a KBS resource.
//!
//! Never logs resource bytes; never leaves a bundle behind on a failed pull.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use image_rs::bundle::RootfsMode;
use image_rs::client::{ClientError, ImageClient, ImageClientConfig, PulledImage, SigstoreConfig};
use image_rs::keysource::{AaKeySource, KeySource, KeySourceError, ResourceUri, Secret};
use image_rs::ocicrypt::OcicryptError;
use image_rs::pipeline::LayerError;
use image_rs::pull::PullError;
use image_rs::registry::{Platform, RegistryError};
use image_rs::signature::SignatureError;

use crate::config::CdhConfig;
use crate::measure::{MeasureError, Measured, Measurer};
use crate::secret;

/// How long one GetResource may wait on the attestation-agent.
const RESOURCE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_BUNDLE_PATH: usize = 4096;

/// A refused or failed request: a status code and a message naming the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubError {
    pub code: ttrpc::Code,
    pub message: String,
}

impl HubError {
    fn new(code: ttrpc::Code, message: impl Into<String>) -> Self {
        HubError { code, message: message.into() }
    }
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

pub struct Hub {
    images: ImageClient,
    keys: Arc<dyn KeySource>,
    measurer: Measurer,
    /// Bundle paths being pulled into: a second pull into one is refused,
    /// so one pull's cleanup never removes another's bundle.
    bundles: Mutex<HashSet<PathBuf>>,
}

impl Hub {
    /// Builds the hub from `cdh.toml`; nothing is fetched yet (the policy and
    /// credentials are loaded on the first pull).
    pub fn new(config: &CdhConfig) -> anyhow::Result<Self> {
        let keys: Arc<dyn KeySource> = Arc::new(AaKeySource::new(config.aa.aa_socket.clone(), RESOURCE_TIMEOUT));
        Self::with_key_source(config, keys)
    }

    pub fn with_key_source(config: &CdhConfig, keys: Arc<dyn KeySource>) -> anyhow::Result<Self> {
        let image = &config.image;
        let registries = config.registries()?;
        let client = ImageClient::new(ImageClientConfig {
            work_dir: image.work_dir.clone(),
            signature_policy: image.image_security_policy_uri.clone(),
            require_signature_policy: image.require_signature_policy,
            sigstore_config: image.sigstore_config_uri.clone().map(SigstoreConfig::Resource).unwrap_or_default(),
            registry_auth: image.authenticated_registry_credentials_uri.clone(),
            creds_override: None,
            registries,
            extra_root_certificates: image.extra_root_certificates.iter().map(|c| c.as_bytes().to_vec()).collect(),
            proxy: config.proxy(),
            insecure_registries: Vec::new(),
            max_concurrent_layers: image.max_concurrent_layer_downloads_per_image,
            max_layer_bytes: None,
            free_space_reserve_percent: image.free_space_reserve_percent,
            free_space_reserve_bytes: image.free_space_reserve_bytes,
            min_transfer_rate: image.min_transfer_rate,
            key_source: keys.clone(),
            decryption_keys: Arc::new(Vec::new()),
            platform: Platform::host(),
            rootfs: RootfsMode::Auto,
            pull_deadline: config.pull_deadline(),
        });
        Ok(Hub {
            images: client,
            keys,
            measurer: Measurer::new(config.aa.aa_socket.clone()),
            bundles: Mutex::default(),
        })
    }

    /// PullImage: pull, measure, answer the manifest digest.
    pub async fn pull_image(&self, image_url: &str, bundle_path: &str) -> Result<PulledImage, HubError> {
        let bundle = checked_bundle_path(bundle_path)?;
        let _claim = BundleClaim::take(&self.bundles, &bundle)?;
        if !self.images.has_signature_policy() && !self.images.config().require_signature_policy {
            tracing::warn!(
                image = image_url,
                "no image_security_policy_uri configured: pulling without signature verification"
            );
        }
        let pulled = self.images.pull(image_url, &bundle).await.map_err(|e| pull_status(image_url, &e))?;
        let digest = pulled.manifest_digest.to_string();
        match self.measurer.pull_image(image_url, &digest).await {
            Ok(Measured::Extended) => {
                tracing::info!(image = image_url, %digest, "pull recorded in the runtime measurements")
            }
            Ok(Measured::NotSupported) => {
                tracing::warn!(image = image_url, "runtime measurement not supported here; pull not measured")
            }
            Ok(Measured::NoAgent) => {
                tracing::warn!(image = image_url, "no attestation-agent socket; pull not measured")
            }
            Err(e) => {
                remove_bundle(&bundle);
                let code = match e {
                    MeasureError::Unreachable { .. } => ttrpc::Code::UNAVAILABLE,
                    MeasureError::Refused(_) => ttrpc::Code::INTERNAL,
                };
                return Err(HubError::new(code, format!("PullImage {image_url}: runtime measurement: {e}")));
            }
        }
        tracing::info!(image = image_url, %digest, layers = pulled.layers, fetched = pulled.layers_fetched, secs = pulled.elapsed.as_secs_f64(), "pulled");
        Ok(pulled)
    }

    /// UnsealSecret: a signed vault secret whose value lives in the KBS, or a
    /// signed envelope whose data key is wrapped by a KEK the KBS holds.
    pub async fn unseal_secret(&self, sealed: &[u8]) -> Result<Secret, HubError> {
        use crate::secret::SealedError;
        secret::unseal(sealed, self.keys.as_ref()).await.map_err(|e| {
            let code = match &e {
                SealedError::Malformed(_) => ttrpc::Code::INVALID_ARGUMENT,
                SealedError::Signature(_) | SealedError::Decrypt(_) => ttrpc::Code::PERMISSION_DENIED,
                SealedError::Unsupported(_) => ttrpc::Code::UNIMPLEMENTED,
                SealedError::Key { source, .. } | SealedError::Fetch { source, .. } => key_source_code(source),
            };
            HubError::new(code, format!("UnsealSecret: {e}"))
        })
    }

    /// GetResource: `kbs:///<repository>/<type>/<tag>` through the attestation-agent.
    pub async fn get_resource(&self, path: &str) -> Result<Secret, HubError> {
        let uri: ResourceUri =
            path.parse().map_err(|e| HubError::new(ttrpc::Code::INVALID_ARGUMENT, format!("GetResource: {e}")))?;
        self.keys.get_resource(&uri).await.map_err(|e| {
            HubError::new(key_source_code(&e), format!("GetResource: KBS through the attestation-agent: {e}"))
        })
    }
}

fn key_source_code(e: &KeySourceError) -> ttrpc::Code {
    match e {
        KeySourceError::NotFound { .. } => ttrpc::Code::NOT_FOUND,
        KeySourceError::Denied { .. } => ttrpc::Code::PERMISSION_DENIED,
        KeySourceError::Unavailable { .. } => ttrpc::Code::UNAVAILABLE,
        KeySourceError::NoSource { .. } => ttrpc::Code::FAILED_PRECONDITION,
    }
}

/// The bundle path must be absolute and plain (no `..`, no NUL).
fn checked_bundle_path(path: &str) -> Result<PathBuf, HubError> {
    let bad =
        |why: &str| HubError::new(ttrpc::Code::INVALID_ARGUMENT, format!("PullImage: bundle_path {path:?} {why}"));
    if path.len() > MAX_BUNDLE_PATH || path.contains('\0') {
        return Err(bad("is too long or contains NUL"));
    }
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(bad("must be an absolute path without .."));
    }
    Ok(p.to_owned())
}

/// A bundle path reserved by one pull until dropped.
struct BundleClaim<'a> {
    set: &'a Mutex<HashSet<PathBuf>>,
    path: PathBuf,
}

impl<'a> BundleClaim<'a> {
    fn take(set: &'a Mutex<HashSet<PathBuf>>, path: &Path) -> Result<Self, HubError> {
        if !set.lock().unwrap_or_else(|p| p.into_inner()).insert(path.to_owned()) {
            return Err(HubError::new(
                ttrpc::Code::ABORTED,
                format!("PullImage: a pull into {} is already in progress", path.display()),
            ));
        }
        Ok(BundleClaim { set, path: path.to_owned() })
    }
}

impl Drop for BundleClaim<'_> {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.path);
    }
}

/// Undoes a finished bundle (overlay unmounted, files removed).
fn remove_bundle(bundle: &Path) {
    let kind = if is_mount_point(&bundle.join("rootfs")) {
        image_rs::bundle::RootfsKind::Overlay
    } else {
        image_rs::bundle::RootfsKind::Flattened
    };
    image_rs::bundle::remove_bundle_rootfs(bundle, kind);
    let _ = std::fs::remove_file(bundle.join("config.json"));
    let _ = std::fs::remove_dir(bundle);
}

fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), path.parent().map(std::fs::metadata)) {
        (Ok(m), Some(Ok(parent))) => m.dev() != parent.dev(),
        _ => false,
    }
}

/// A pull failure as a status whose message starts with the cause.
fn pull_status(image: &str, err: &ClientError) -> HubError {
    use ttrpc::Code;
    let text = err.to_string();
    let (code, cause) = match err {
        ClientError::PolicyRequired { .. } => (Code::FAILED_PRECONDITION, "signature policy"),
        ClientError::Load { what, .. } if key_source_unreachable(&text) => (Code::UNAVAILABLE, unreachable_cause(what)),
        ClientError::Load { what: "signature policy", .. } => (Code::FAILED_PRECONDITION, "signature policy"),
        ClientError::Load { .. } => (Code::FAILED_PRECONDITION, "configuration"),
        ClientError::Deadline { .. } => (Code::DEADLINE_EXCEEDED, "deadline"),
        ClientError::Bundle { .. } if text.contains("refusing to overwrite") => (Code::ALREADY_EXISTS, "bundle"),
        ClientError::Bundle { .. } | ClientError::Task { .. } | ClientError::Store { .. } => (Code::INTERNAL, "bundle"),
        ClientError::Pull(e) => pull_error_status(e, &text),
    };
    HubError::new(code, format!("PullImage {image}: {cause}: {text}"))
}

fn pull_error_status(err: &PullError, text: &str) -> (ttrpc::Code, &'static str) {
    use ttrpc::Code;
    match err {
        PullError::Reference { .. } => (Code::INVALID_ARGUMENT, "image reference"),
        PullError::Signature(SignatureError::Rejected { .. }) => (Code::PERMISSION_DENIED, "signature policy"),
        PullError::Signature(_) if key_source_unreachable(text) => (Code::UNAVAILABLE, unreachable_cause("policy")),
        PullError::Signature(_) => (Code::FAILED_PRECONDITION, "signature policy"),
        PullError::Decrypt(_) | PullError::Layer(LayerError::Decrypt(_)) if key_source_unreachable(text) => {
            (Code::UNAVAILABLE, "decryption key: KBS/attestation-agent unreachable")
        }
        PullError::Decrypt(OcicryptError::Hmac { .. })
        | PullError::Layer(LayerError::Decrypt(OcicryptError::Hmac { .. })) => (Code::DATA_LOSS, "digest mismatch"),
        PullError::Decrypt(_) | PullError::Layer(LayerError::Decrypt(_)) => (Code::PERMISSION_DENIED, "decryption key"),
        PullError::Registry(e) | PullError::Layer(LayerError::Registry(e)) => registry_status(e),
        PullError::Layer(
            LayerError::BlobDigest { .. }
            | LayerError::DiffId { .. }
            | LayerError::BlobSize { .. }
            | LayerError::Oversized { .. },
        ) => (Code::DATA_LOSS, "digest mismatch"),
        PullError::Layer(LayerError::RetriesExhausted { .. }) => (Code::UNAVAILABLE, "registry unreachable"),
        PullError::Layer(_) | PullError::Store(_) => (Code::INTERNAL, "layer"),
    }
}

fn registry_status(err: &RegistryError) -> (ttrpc::Code, &'static str) {
    use ttrpc::Code;
    match err {
        RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => {
            (Code::DATA_LOSS, "digest mismatch")
        }
        RegistryError::NotFound { .. } => (Code::NOT_FOUND, "registry"),
        RegistryError::Unauthorized { .. } => (Code::PERMISSION_DENIED, "registry credentials"),
        RegistryError::Transport { .. } | RegistryError::AllSourcesFailed { .. } | RegistryError::Tls(_) => {
            (Code::UNAVAILABLE, "registry unreachable")
        }
        RegistryError::Blocked(_) => (Code::PERMISSION_DENIED, "registry blocked"),
        _ => (Code::FAILED_PRECONDITION, "registry"),
    }
}

/// The key source could not reach the attestation-agent or the KBS.
fn key_source_unreachable(text: &str) -> bool {
    text.contains("cannot connect to the attestation-agent")
        || text.contains("did not accept within")
        || (text.contains("could not be fetched") && (text.contains("attestation-agent") || text.contains("KBS")))
}

fn unreachable_cause(what: &str) -> &'static str {
    match what {
        "signature policy" | "policy" => "signature policy: KBS/attestation-agent unreachable",
        _ => "KBS/attestation-agent unreachable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_paths_must_be_absolute_and_plain() {
        assert!(checked_bundle_path("/run/kata-containers/c1").is_ok());
        for bad in ["relative/b", "/run/../etc", "", "/a\0b"] {
            let err = checked_bundle_path(bad).unwrap_err();
            assert_eq!(err.code, ttrpc::Code::INVALID_ARGUMENT, "{bad:?}");
            assert!(err.message.contains("bundle_path"), "{err}");
        }
    }

    #[test]
    fn a_bundle_path_is_claimed_by_one_pull_at_a_time() {
        let set = Mutex::default();
        let first = BundleClaim::take(&set, Path::new("/b")).unwrap();
        let err = BundleClaim::take(&set, Path::new("/b")).err().unwrap();
        assert_eq!(err.code, ttrpc::Code::ABORTED);
        drop(first);
        assert!(BundleClaim::take(&set, Path::new("/b")).is_ok());
    }

    #[test]
    fn statuses_name_the_cause() {
        let e = pull_status("r/a:1", &ClientError::PolicyRequired { image: "r/a:1".into() });
        assert_eq!(e.code, ttrpc::Code::FAILED_PRECONDITION);
        assert!(e.message.starts_with("PullImage r/a:1: signature policy:"), "{e}");
        let e = pull_status(
            "r/a:1",
            &ClientError::Load {
                what: "signature policy",
                origin: "kbs:///default/security-policy/test".into(),
                reason: "resource kbs:///default/security-policy/test could not be fetched: cannot connect to the attestation-agent at unix:///x: refused".into(),
            },
        );
        assert_eq!(e.code, ttrpc::Code::UNAVAILABLE);
        assert!(e.message.contains("signature policy: KBS/attestation-agent unreachable"), "{e}");
    }
}
