//! Pulling an image: resolve (verified manifest and config), then fetch the
//! layers that are not in the store yet, concurrently, each at most once
//! across concurrent pulls (in-process map of per-layer locks, plus a file
//! lock across processes), then record the image.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::stream::{FuturesOrdered, StreamExt};
use oci_spec::distribution::Reference;

use crate::digest::Digest;
use crate::ocicrypt::{self, DecryptConfig, OcicryptError};
use crate::pipeline::{fetch_layer, LayerError, LayerJob, PipelineOptions};
use crate::registry::{layer_media, parse_digest, Registry, RegistryError, ResolvedImage};
use crate::signature::{ImageVerifier, SignatureError};
use crate::store::{chain_ids, ImageRecord, LayerStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Decrypt(#[from] OcicryptError),
}

#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Layers fetched at once. Unpacking is CPU-bound and the guest has few
    /// vCPUs; one more than two keeps the network busy while two unpack.
    pub max_concurrent_layers: usize,
    pub pipeline: PipelineOptions,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { max_concurrent_layers: 3, pipeline: PipelineOptions::default() }
    }
}

pub struct Puller {
    registry: Registry,
    store: Arc<LayerStore>,
    opts: PullOptions,
    /// chain id → lock held while one task fetches that layer.
    inflight: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Keys for encrypted layers (none by default: encrypted images fail closed).
    decrypt: DecryptConfig,
}

/// The result of a pull: the image record and its layer directories.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub record: ImageRecord,
    pub resolved: ResolvedImage,
    /// Committed layer directories, bottom first.
    pub layer_dirs: Vec<PathBuf>,
    pub layers_fetched: usize,
}

pub fn parse_reference(s: &str) -> Result<Reference, PullError> {
    s.parse::<Reference>().map_err(|e| PullError::Reference { reference: s.to_owned(), reason: e.to_string() })
}

impl Puller {
    pub fn new(registry: Registry, store: Arc<LayerStore>, opts: PullOptions) -> Self {
        Puller { registry, store, opts, inflight: Mutex::new(HashMap::new()), decrypt: DecryptConfig::default() }
    }

    /// Sets the private keys and key source used to unwrap encrypted layers.
    pub fn with_decryption(mut self, decrypt: DecryptConfig) -> Self {
        self.decrypt = decrypt;
        self
    }

    pub fn store(&self) -> &LayerStore {
        &self.store
    }

    /// Resolves `reference` against the registry (always: the manifest is
    /// re-verified on every pull, cached layers or not).
    pub async fn resolve(&self, reference: &Reference) -> Result<ResolvedImage, PullError> {
        Ok(self.registry.resolve(reference).await?)
    }

    /// The one pull entry point that checks signatures: resolve, evaluate the
    /// signature policy on the verified manifest, and only then fetch layers.
    /// The policy runs on every call, even when every layer is in the store.
    pub async fn pull_verified(
        &self,
        reference: &Reference,
        verifier: &ImageVerifier,
    ) -> Result<PulledImage, PullError> {
        let resolved = self.resolve(reference).await?;
        tracing::info!(reference = %reference.whole(), manifest = %resolved.manifest_digest, layers = resolved.manifest.layers().len(), "resolved");
        verifier.verify(&self.registry, reference, &resolved).await?;
        self.pull_resolved(reference, resolved).await
    }

    /// Pulls a resolved image's missing layers and records the image. Private
    /// to the crate: callers go through [`Puller::pull_verified`], so nothing
    /// outside can skip the signature policy.
    pub(crate) async fn pull_resolved(
        &self,
        reference: &Reference,
        resolved: ResolvedImage,
    ) -> Result<PulledImage, PullError> {
        let diff_ids: Vec<Digest> = resolved
            .config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| parse_digest("config diff_id", d))
            .collect::<Result<_, _>>()?;
        let layers = resolved.manifest.layers();
        // `Registry::resolve` refuses such an image already; checked again
        // because the record and the bundle use one chain ID per diff_id.
        if layers.len() != diff_ids.len() {
            return Err(RegistryError::Malformed {
                what: "image".into(),
                reason: format!(
                    "{} layers in the manifest but {} diff_ids in the config",
                    layers.len(),
                    diff_ids.len()
                ),
            }
            .into());
        }
        let chains = chain_ids(&diff_ids);
        // (encrypted?, job), bottom layer first.
        let mut jobs = Vec::with_capacity(chains.len());
        let mut encrypted = Vec::new();
        for (i, ((desc, diff_id), chain_id)) in layers.iter().zip(&diff_ids).zip(&chains).enumerate() {
            let lower_roots = chains.iter().take(i).rev().map(|c| self.store.layer_path(c)).collect();
            let media = layer_media(desc.media_type())?;
            let blob_digest = parse_digest("layer descriptor", desc.digest().as_ref())?;
            if media.encrypted {
                encrypted.push((blob_digest.clone(), desc.annotations().as_ref()));
            }
            let job = LayerJob {
                source: resolved.source.clone(),
                blob_digest,
                blob_size: desc.size(),
                compression: media.compression,
                diff_id: diff_id.clone(),
                chain_id: chain_id.clone(),
                lower_roots,
                decryption: None,
            };
            jobs.push((media.encrypted, job));
        }
        // Key release is the gate: every encrypted layer's key is unwrapped
        // here, before any layer is fetched or a cached one is reused.
        if !encrypted.is_empty() {
            // One key per encrypted layer, in order (or an error).
            let keys = ocicrypt::unwrap_layer_keys(&encrypted, &self.decrypt).await?;
            for ((_, job), key) in jobs.iter_mut().filter(|(is_encrypted, _)| *is_encrypted).zip(keys) {
                job.decryption = Some(Arc::new(key));
            }
        }
        let jobs: Vec<LayerJob> = jobs.into_iter().map(|(_, job)| job).collect();

        let mut fetched = 0usize;
        let mut pending = jobs.iter();
        let mut running = FuturesOrdered::new();
        loop {
            while running.len() < self.opts.max_concurrent_layers.max(1) {
                let Some(job) = pending.next() else { break };
                running.push_back(self.ensure_layer(job));
            }
            match running.next().await {
                Some(Ok(was_fetched)) => fetched += usize::from(was_fetched),
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }

        let record = ImageRecord {
            manifest_digest: resolved.manifest_digest.clone(),
            references: vec![reference.whole()],
            config_digest: resolved.config_digest.clone(),
            chain_ids: chains.clone(),
            config: serde_json::from_slice(&resolved.config_bytes).unwrap_or(serde_json::Value::Null),
        };
        self.store.put_image(&record)?;
        let layer_dirs = chains.iter().map(|c| self.store.layer_path(c)).collect();
        Ok(PulledImage { record, resolved, layer_dirs, layers_fetched: fetched })
    }

    /// Makes sure one layer is committed; true when this call fetched it.
    async fn ensure_layer(&self, job: &LayerJob) -> Result<bool, LayerError> {
        let lock = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(job.chain_id.clone()).or_default().clone()
        };
        let _in_process = lock.lock().await;
        if self.store.layer(&job.chain_id)?.is_some() {
            tracing::debug!(layer = %job.blob_digest, "layer already in the store");
            return Ok(false);
        }
        let store = self.store.clone();
        let chain = job.chain_id.clone();
        let _cross_process = tokio::task::spawn_blocking(move || store.lock_layer(&chain))
            .await
            .map_err(|e| LayerError::Task { digest: job.blob_digest.clone(), reason: e.to_string() })??;
        if self.store.layer(&job.chain_id)?.is_some() {
            return Ok(false);
        }
        fetch_layer(&self.registry, &self.store, job, &self.opts.pipeline).await?;
        Ok(true)
    }
}
