//! The image client: the one way callers (the `image-pull` CLI, the
//! confidential-data-hub daemon) pull an image into a bundle. Built from a
//! typed [`ImageClientConfig`]; every pull goes through the signature policy
//! (`Puller::pull_verified`), cache hit or not.
//!
//! One client shares one [`Puller`], so concurrent pulls that share layers
//! fetch each layer once. Policy, registries.d and registry credentials may
//! live in the KBS (`kbs:///` URIs): they are fetched on the first pull (not
//! at construction, so a daemon starts before the attestation-agent is up) and
//! kept once loaded. A failed pull never leaves a bundle behind: a bundle
//! directory this pull created is removed again.

use std::collections::HashSet;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_spec::distribution::Reference;
use tokio::sync::OnceCell;

use crate::bundle::{create_bundle, remove_bundle_rootfs, BundleError, RootfsKind, RootfsMode};
use crate::digest::Digest;
use crate::keysource::{KeySource, NoKeySource};
use crate::ocicrypt::{DecryptConfig, DecryptionKey};
use crate::pull::{parse_reference, PullError, PullOptions, Puller};
use crate::registry::auth::{AuthStore, Credentials};
use crate::registry::config::{ProxyConfig, RegistriesConfig};
use crate::registry::http::{Distribution, HttpOptions};
use crate::registry::{Platform, Registry, RegistryError};
use crate::signature::keys::read_named;
use crate::signature::{ImageVerifier, Policy, RegistriesD};
use crate::store::{LayerStore, StoreError};

/// Where the signature verifier finds simple-signing lookasides.
#[derive(Debug, Clone, Default)]
pub enum SigstoreConfig {
    #[default]
    None,
    /// A containers-registries.d directory of YAML files.
    Dir(PathBuf),
    /// One registries.d YAML document: a file, `file:///…`, or `kbs:///…`.
    Resource(String),
}

/// Everything a client needs, typed. `Default` is a client with no policy
/// (accept anything, with a warning per pull), no keys and the host platform.
#[derive(Clone)]
pub struct ImageClientConfig {
    /// Store for layers and image records.
    pub work_dir: PathBuf,
    /// containers-policy.json: a file, `file:///…`, or `kbs:///…`. None: accept
    /// every image unverified, with a warning naming it on every pull.
    pub signature_policy: Option<String>,
    /// With no `signature_policy`, refuse every pull instead of accepting it.
    pub require_signature_policy: bool,
    pub sigstore_config: SigstoreConfig,
    /// auth.json with registry credentials: a file, `file:///…`, or `kbs:///…`.
    pub registry_auth: Option<String>,
    /// Credentials for every registry, over `registry_auth`.
    pub creds_override: Option<Credentials>,
    /// Mirrors, remapping, insecure/blocked registries, proxy, CA files.
    pub registries: RegistriesConfig,
    /// Extra root certificates (PEM) trusted for registries.
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// Overrides `registries.proxy` when set.
    pub proxy: Option<ProxyConfig>,
    /// Registries (host[:port]) that may be spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub max_concurrent_layers: usize,
    /// Most bytes of file content one layer may unpack.
    pub max_layer_bytes: Option<u64>,
    /// Free space kept on the store's filesystem while unpacking: this share
    /// of its size, capped at `free_space_reserve_bytes` (None: the defaults,
    /// 5% and 64 MiB). The store is guest RAM on a tmpfs.
    pub free_space_reserve_percent: Option<u64>,
    pub free_space_reserve_bytes: Option<u64>,
    /// A blob fetch slower than this many bytes/s over the pipeline's rate
    /// window is abandoned and resumed (None: the default, 1 KiB/s; 0: off).
    pub min_transfer_rate: Option<u64>,
    /// Resolves `kbs:///` URIs (policy, keys, credentials, layer KEKs); the
    /// attestation-agent in a guest.
    pub key_source: Arc<dyn KeySource>,
    /// Private keys for encrypted layers (JWE recipients).
    pub decryption_keys: Arc<Vec<DecryptionKey>>,
    pub platform: Platform,
    pub rootfs: RootfsMode,
    /// Overall limit of one pull (resolve, verify, fetch, bundle).
    pub pull_deadline: Option<Duration>,
}

impl Default for ImageClientConfig {
    fn default() -> Self {
        ImageClientConfig {
            work_dir: PathBuf::from("/run/image-rs"),
            signature_policy: None,
            require_signature_policy: false,
            sigstore_config: SigstoreConfig::None,
            registry_auth: None,
            creds_override: None,
            registries: RegistriesConfig::default(),
            extra_root_certificates: Vec::new(),
            proxy: None,
            insecure_registries: Vec::new(),
            max_concurrent_layers: 3,
            max_layer_bytes: None,
            free_space_reserve_percent: None,
            free_space_reserve_bytes: None,
            min_transfer_rate: None,
            key_source: Arc::new(NoKeySource),
            decryption_keys: Arc::new(Vec::new()),
            platform: Platform::host(),
            rootfs: RootfsMode::Auto,
            pull_deadline: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot load the {what} {origin}: {reason}")]
    Load { what: &'static str, origin: String, reason: String },
    #[error("no signature policy is configured and one is required: refusing to pull {image}")]
    PolicyRequired { image: String },
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("bundle {path}: {source}")]
    Bundle { path: PathBuf, source: BundleError },
    #[error("pull of {image} did not finish within its {after:?} deadline")]
    Deadline { image: String, after: Duration },
    #[error("opening store {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("bundle task for {image} failed: {reason}")]
    Task { image: String, reason: String },
}

/// One image pulled into a bundle.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference as pulled (normalised).
    pub reference: String,
    pub manifest_digest: Digest,
    pub layers: usize,
    /// Layers this pull fetched (the rest were in the store).
    pub layers_fetched: usize,
    pub rootfs: RootfsKind,
    /// True when no signature policy was configured and the image was accepted unverified.
    pub unverified: bool,
    pub elapsed: Duration,
}

/// Built on the first pull: the shared puller and the loaded policy.
struct Ready {
    puller: Puller,
    verifier: ImageVerifier,
}

pub struct ImageClient {
    config: ImageClientConfig,
    ready: OnceCell<Arc<Ready>>,
}

impl ImageClient {
    pub fn new(config: ImageClientConfig) -> Self {
        ImageClient { config, ready: OnceCell::new() }
    }

    pub fn config(&self) -> &ImageClientConfig {
        &self.config
    }

    /// True when pulls are checked against a configured signature policy.
    pub fn has_signature_policy(&self) -> bool {
        self.config.signature_policy.is_some()
    }

    /// Pulls `image` (policy, layers, decryption) and builds `bundle_dir`
    /// (config.json and rootfs/). On failure nothing this pull created is left
    /// under `bundle_dir`.
    pub async fn pull(&self, image: &str, bundle_dir: &Path) -> Result<PulledImage, ClientError> {
        let started = Instant::now();
        let reference = parse_reference(image)?;
        if self.config.signature_policy.is_none() && self.config.require_signature_policy {
            return Err(ClientError::PolicyRequired { image: reference.whole() });
        }
        let existed = bundle_dir.symlink_metadata().is_ok();
        let deadline = self.config.pull_deadline.map(|after| (tokio::time::Instant::from_std(started + after), after));
        let result = self.pull_into(&reference, bundle_dir, started, deadline).await;
        if result.is_err() && !existed {
            let _ = std::fs::remove_dir_all(bundle_dir);
        }
        result
    }

    /// The deadline bounds the network part (policy, manifest, layers); the
    /// local bundle step is not cancellable, so it is always awaited and, when
    /// it ends past the deadline, undone: never left half-written.
    async fn pull_into(
        &self,
        reference: &Reference,
        bundle_dir: &Path,
        started: Instant,
        deadline: Option<(tokio::time::Instant, Duration)>,
    ) -> Result<PulledImage, ClientError> {
        let expired =
            || ClientError::Deadline { image: reference.whole(), after: deadline.map(|d| d.1).unwrap_or_default() };
        let fetch = async {
            let ready = self.ready.get_or_try_init(|| async { self.build().await.map(Arc::new) }).await?.clone();
            Ok::<_, ClientError>(ready.puller.pull_verified(reference, &ready.verifier).await?)
        };
        let pulled = match deadline {
            Some((at, _)) => tokio::time::timeout_at(at, fetch).await.map_err(|_| expired())??,
            None => fetch.await?,
        };

        let (bundle, layer_dirs, config, mode) =
            (bundle_dir.to_owned(), pulled.layer_dirs.clone(), pulled.resolved.config.clone(), self.config.rootfs);
        let task = tokio::task::spawn_blocking(move || create_bundle(&bundle, &layer_dirs, &config, mode));
        let kind = task
            .await
            .map_err(|e| ClientError::Task { image: reference.whole(), reason: e.to_string() })?
            .map_err(|source| ClientError::Bundle { path: bundle_dir.to_owned(), source })?;
        if deadline.is_some_and(|(at, _)| tokio::time::Instant::now() > at) {
            remove_bundle_rootfs(bundle_dir, kind);
            let _ = std::fs::remove_file(bundle_dir.join("config.json"));
            return Err(expired());
        }
        Ok(PulledImage {
            reference: reference.whole(),
            manifest_digest: pulled.record.manifest_digest.clone(),
            layers: pulled.layer_dirs.len(),
            layers_fetched: pulled.layers_fetched,
            rootfs: kind,
            unverified: self.config.signature_policy.is_none(),
            elapsed: started.elapsed(),
        })
    }

    /// Loads policy, lookaside config and credentials, and builds the puller.
    async fn build(&self) -> Result<Ready, ClientError> {
        let c = &self.config;
        let keys = c.key_source.clone();
        let registries_d = match &c.sigstore_config {
            SigstoreConfig::None => RegistriesD::default(),
            SigstoreConfig::Dir(dir) => RegistriesD::load_dir(dir)
                .map_err(|e| load_err("registries.d", &dir.display().to_string(), e.to_string()))?,
            SigstoreConfig::Resource(origin) => {
                let bytes =
                    read_source(origin, keys.as_ref()).await.map_err(|r| load_err("sigstore config", origin, r))?;
                let mut rd = RegistriesD::default();
                rd.merge(&bytes).map_err(|r| load_err("sigstore config", origin, r))?;
                rd
            }
        };
        let verifier = match &c.signature_policy {
            Some(origin) => {
                let bytes =
                    read_source(origin, keys.as_ref()).await.map_err(|r| load_err("signature policy", origin, r))?;
                let policy = Policy::from_json(origin, &bytes)
                    .map_err(|e| load_err("signature policy", origin, e.to_string()))?;
                ImageVerifier::new(policy, origin, registries_d, keys.clone())
            }
            None => ImageVerifier::builtin_accept_anything(registries_d, keys.clone()),
        };
        let auth = match &c.registry_auth {
            Some(origin) => load_auth(origin, &c.work_dir, keys.as_ref()).await?,
            None => AuthStore::default(),
        };
        let mut extra_ca_pems = c.extra_root_certificates.clone();
        for p in &c.registries.ca_files {
            extra_ca_pems
                .push(std::fs::read(p).map_err(|e| load_err("CA file", &p.display().to_string(), e.to_string()))?);
        }
        let mut insecure_hosts: HashSet<String> = c.registries.insecure_hosts().into_iter().collect();
        insecure_hosts.extend(c.insecure_registries.iter().cloned());
        let http = Distribution::new(HttpOptions {
            extra_ca_pems,
            proxy: c.proxy.clone().unwrap_or_else(|| c.registries.proxy.clone()),
            insecure_hosts,
            auth,
            creds_override: c.creds_override.clone(),
            ..HttpOptions::default()
        })
        .map_err(|e: RegistryError| PullError::from(e))?;
        let registry = Registry::new(http, c.registries.clone(), c.platform.clone());
        let store = Arc::new(
            LayerStore::open(&c.work_dir).map_err(|source| ClientError::Store { path: c.work_dir.clone(), source })?,
        );
        let mut opts = PullOptions { max_concurrent_layers: c.max_concurrent_layers, ..PullOptions::default() };
        if let Some(max) = c.max_layer_bytes {
            opts.pipeline.limits.max_bytes = max;
        }
        if let Some(p) = c.free_space_reserve_percent {
            opts.pipeline.limits.free_space_reserve_percent = p;
        }
        if let Some(b) = c.free_space_reserve_bytes {
            opts.pipeline.limits.free_space_reserve_bytes = b;
        }
        if let Some(r) = c.min_transfer_rate {
            opts.pipeline.min_transfer_rate = r;
        }
        let decrypt = DecryptConfig { keys: c.decryption_keys.clone(), key_source: keys };
        Ok(Ready { puller: Puller::new(registry, store, opts).with_decryption(decrypt), verifier })
    }
}

fn load_err(what: &'static str, origin: &str, reason: String) -> ClientError {
    ClientError::Load { what, origin: origin.to_owned(), reason }
}

/// Bytes of a file, a `file:///` URI or a `kbs:///` resource (size-bounded).
async fn read_source(origin: &str, keys: &dyn KeySource) -> Result<Vec<u8>, String> {
    read_named(origin.strip_prefix("file://").unwrap_or(origin), keys).await
}

/// auth.json from a file or the KBS. A KBS copy is parsed from a private
/// file in the work dir (0600), removed right after.
async fn load_auth(origin: &str, work_dir: &Path, keys: &dyn KeySource) -> Result<AuthStore, ClientError> {
    let what = "registry credentials";
    if !origin.starts_with("kbs://") {
        let path = Path::new(origin.strip_prefix("file://").unwrap_or(origin));
        return AuthStore::load(path).map_err(|e| load_err(what, origin, e.to_string()));
    }
    let bytes = read_source(origin, keys).await.map_err(|r| load_err(what, origin, r))?;
    let write = || -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(work_dir)?;
        let path = work_dir.join(format!(".auth-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        f.write_all(&bytes)?;
        Ok(path)
    };
    let path = write().map_err(|e| load_err(what, origin, format!("staging in {}: {e}", work_dir.display())))?;
    let loaded = AuthStore::load(&path);
    let _ = std::fs::remove_file(&path);
    loaded.map_err(|e| load_err(what, origin, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn required_policy_refuses_before_touching_anything() {
        let dir = tempfile::tempdir().unwrap();
        let client = ImageClient::new(ImageClientConfig {
            work_dir: dir.path().join("work"),
            require_signature_policy: true,
            ..ImageClientConfig::default()
        });
        let bundle = dir.path().join("bundle");
        let err = client.pull("registry.invalid/app:1", &bundle).await.unwrap_err();
        assert!(matches!(err, ClientError::PolicyRequired { .. }), "{err}");
        assert!(err.to_string().contains("registry.invalid/app:1"), "{err}");
        assert!(!bundle.exists() && !dir.path().join("work").exists());
    }

    #[tokio::test]
    async fn unreadable_policy_names_its_origin_and_leaves_no_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let client = ImageClient::new(ImageClientConfig {
            work_dir: dir.path().join("work"),
            signature_policy: Some("kbs:///default/security-policy/test".into()),
            ..ImageClientConfig::default()
        });
        let bundle = dir.path().join("bundle");
        let err = client.pull("registry.invalid/app:1", &bundle).await.unwrap_err().to_string();
        assert!(err.contains("cannot load the signature policy kbs:///default/security-policy/test"), "{err}");
        assert!(err.contains("no key source"), "{err}");
        assert!(!bundle.exists());
    }

    #[tokio::test]
    async fn kbs_auth_file_is_parsed_and_removed() {
        struct One(Vec<u8>);
        #[async_trait::async_trait]
        impl KeySource for One {
            async fn get_resource(
                &self,
                _: &crate::keysource::ResourceUri,
            ) -> Result<crate::keysource::Secret, crate::keysource::KeySourceError> {
                Ok(zeroize::Zeroizing::new(self.0.clone()))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let json = br#"{"auths":{"reg.example":{"username":"u","password":"p"}}}"#.to_vec();
        let store = load_auth("kbs:///default/credential/test", dir.path(), &One(json)).await.unwrap();
        assert_eq!(store.lookup("reg.example", "app").map(|c| c.username.as_str()), Some("u"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the staged copy is removed");
    }
}
