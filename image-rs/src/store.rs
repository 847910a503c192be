//! The on-disk layer and image store under the work directory:
//!
//! ```text
//! layers/<chain-id hex>/        committed layer, overlayfs format, immutable
//! layers/<chain-id hex>.json    what was verified: diff_id, compressed digest, sizes
//! staging/<chain-id hex>.<pid>.<n>/  unpack in progress: never visible as a layer
//! images/<manifest hex>.json    image record: references, config, chain ids
//! locks/<chain-id hex>.lock     cross-process "one fetch per layer" lock
//! ```
//!
//! Layers are keyed by chain ID (OCI image-spec: the digest of the layer and
//! all below it), not bare diff_id: a hardlink in a layer may point at a file
//! of a lower layer, so an unpacked layer directory depends on its parents.
//! Identical layer stacks (the common base-image case) are shared.
//!
//! A layer directory appears only through `commit_verified`, which is called
//! after every digest of that layer has been checked.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {op}: {source}")]
    Io { path: PathBuf, op: &'static str, source: io::Error },
    #[error("store record {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { path: path.to_owned(), op, source }
}

/// What was verified about a committed layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub chain_id: Digest,
    pub diff_id: Digest,
    /// Digest of the blob it was unpacked from (compressed form).
    pub blob_digest: Digest,
    pub blob_size: u64,
    pub unpacked_bytes: u64,
}

/// An image as pulled: enough to build bundles without the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub manifest_digest: Digest,
    pub references: Vec<String>,
    pub config_digest: Digest,
    /// Chain IDs, bottom layer first.
    pub chain_ids: Vec<Digest>,
    pub config: serde_json::Value,
}

/// Chain IDs for `diff_ids` (bottom first), per OCI image-spec.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => Digest::of(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

pub struct LayerStore {
    root: PathBuf,
    seq: AtomicU64,
}

/// An unpack in progress; removed on drop unless committed.
pub struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Err(err) = fs::remove_dir_all(&self.path) {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), %err, "could not remove staging directory");
            }
        }
    }
}

/// Holds the cross-process lock of one layer until dropped.
pub struct LayerLock {
    _file: fs::File,
}

impl LayerStore {
    /// Opens (creating) the store and removes staging left by dead processes.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for sub in ["layers", "staging", "images", "locks"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p, "create directory"))?;
        }
        let store = LayerStore { root: root.to_owned(), seq: AtomicU64::new(0) };
        store.remove_dead_staging();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layer_path(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("layers").join(chain_id.hex())
    }

    fn layer_record_path(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("layers").join(format!("{}.json", chain_id.hex()))
    }

    /// The committed layer's record, if it is in the store.
    pub fn layer(&self, chain_id: &Digest) -> Result<Option<LayerRecord>, StoreError> {
        let rec = self.layer_record_path(chain_id);
        if !self.layer_path(chain_id).is_dir() {
            return Ok(None);
        }
        read_json(&rec)
    }

    /// Takes the cross-process lock for fetching `chain_id` (blocking).
    pub fn lock_layer(&self, chain_id: &Digest) -> Result<LayerLock, StoreError> {
        let p = self.root.join("locks").join(format!("{}.lock", chain_id.hex()));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(&p, "open lock"))?;
        rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::LockExclusive).map_err(|e| StoreError::Io {
            path: p.clone(),
            op: "flock",
            source: e.into(),
        })?;
        Ok(LayerLock { _file: file })
    }

    /// A fresh, empty staging directory for `chain_id`.
    pub fn begin(&self, chain_id: &Digest) -> Result<Staging, StoreError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let p = self.root.join("staging").join(format!("{}.{}.{n}", chain_id.hex(), std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir(&p).map_err(io_err(&p, "create staging directory"))?;
        Ok(Staging { path: p, committed: false })
    }

    /// Makes a fully verified layer visible: record first (fsynced), then the
    /// atomic rename of the directory, which is what `layer()` looks for.
    /// On an error, the staging directory is removed (when `staging` drops).
    pub fn commit_verified(&self, mut staging: Staging, record: &LayerRecord) -> Result<PathBuf, StoreError> {
        let to = self.layer_path(&record.chain_id);
        write_json_atomic(&self.layer_record_path(&record.chain_id), record)?;
        if to.exists() {
            // Another process committed the same chain while we worked; keep
            // theirs (ours is removed when `staging` drops).
            return Ok(to);
        }
        fs::rename(&staging.path, &to).map_err(io_err(&to, "commit layer"))?;
        staging.committed = true;
        Ok(to)
    }

    pub fn put_image(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let p = self.root.join("images").join(format!("{}.json", record.manifest_digest.hex()));
        let mut merged = record.clone();
        if let Some(old) = read_json::<ImageRecord>(&p)? {
            for r in old.references {
                if !merged.references.contains(&r) {
                    merged.references.push(r);
                }
            }
        }
        write_json_atomic(&p, &merged)
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir, "list images"))? {
            let e = e.map_err(io_err(&dir, "list images"))?;
            if e.path().extension().is_some_and(|x| x == "json") {
                if let Some(r) = read_json(&e.path())? {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Removes layers no image record references, and dead staging.
    pub fn gc(&self) -> Result<GcStats, StoreError> {
        let mut keep = std::collections::HashSet::new();
        for img in self.images()? {
            keep.extend(img.chain_ids.iter().map(Digest::hex));
        }
        let dir = self.root.join("layers");
        let mut stats = GcStats::default();
        for e in fs::read_dir(&dir).map_err(io_err(&dir, "list layers"))? {
            let e = e.map_err(io_err(&dir, "list layers"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let hex = name.trim_end_matches(".json");
            if keep.contains(hex) {
                continue;
            }
            let path = e.path();
            // Names that are not a chain id are debris nobody can be fetching.
            let _lock = match format!("sha256:{hex}").parse::<Digest>() {
                Ok(chain) => Some(self.lock_layer(&chain)?),
                Err(_) => None,
            };
            if path.is_dir() {
                fs::remove_dir_all(&path).map_err(io_err(&path, "remove layer"))?;
                stats.layers_removed += 1;
            } else {
                fs::remove_file(&path).map_err(io_err(&path, "remove layer record"))?;
            }
        }
        stats.staging_removed = self.remove_dead_staging();
        Ok(stats)
    }

    fn remove_dead_staging(&self) -> u64 {
        let dir = self.root.join("staging");
        let Ok(entries) = fs::read_dir(&dir) else { return 0 };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: Option<i32> = name.split('.').nth(1).and_then(|p| p.parse().ok());
            let alive =
                pid.is_some_and(|pid| pid as u32 == std::process::id() || Path::new(&format!("/proc/{pid}")).exists());
            if !alive && fs::remove_dir_all(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcStats {
    pub layers_removed: u64,
    pub staging_removed: u64,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt { path: path.to_owned(), reason: e.to_string() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io { path: path.to_owned(), op: "read", source: e }),
    }
}

fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Io {
        path: path.to_owned(),
        op: "serialise record",
        source: e.into(),
    })?;
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp, "create"))?;
    f.write_all(&bytes).map_err(io_err(&tmp, "write"))?;
    f.sync_all().map_err(io_err(&tmp, "fsync"))?;
    fs::rename(&tmp, path).map_err(io_err(path, "rename"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64)).parse().unwrap()
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let ids = chain_ids(&[d('a'), d('b')]);
        assert_eq!(ids[0], d('a'));
        assert_eq!(ids[1], Digest::of(format!("{} {}", d('a'), d('b')).as_bytes()));
    }

    #[test]
    fn staging_is_invisible_until_committed_and_removed_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        let chain = d('c');
        let s = store.begin(&chain).unwrap();
        fs::write(s.path().join("f"), b"x").unwrap();
        assert!(store.layer(&chain).unwrap().is_none());
        let staged = s.path().to_owned();
        drop(s);
        assert!(!staged.exists());

        let s = store.begin(&chain).unwrap();
        fs::write(s.path().join("f"), b"x").unwrap();
        let rec = LayerRecord {
            chain_id: chain.clone(),
            diff_id: chain.clone(),
            blob_digest: d('e'),
            blob_size: 1,
            unpacked_bytes: 1,
        };
        let p = store.commit_verified(s, &rec).unwrap();
        assert_eq!(fs::read(p.join("f")).unwrap(), b"x");
        assert_eq!(store.layer(&chain).unwrap(), Some(rec));
    }

    #[test]
    fn gc_keeps_referenced_layers_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        for c in ['1', '2'] {
            let s = store.begin(&d(c)).unwrap();
            let rec = LayerRecord { chain_id: d(c), diff_id: d(c), blob_digest: d(c), blob_size: 0, unpacked_bytes: 0 };
            store.commit_verified(s, &rec).unwrap();
        }
        store
            .put_image(&ImageRecord {
                manifest_digest: d('d'),
                references: vec!["r:1".into()],
                config_digest: d('f'),
                chain_ids: vec![d('1')],
                config: serde_json::json!({}),
            })
            .unwrap();
        let stats = store.gc().unwrap();
        assert_eq!(stats.layers_removed, 1);
        assert!(store.layer(&d('1')).unwrap().is_some());
        assert!(store.layer(&d('2')).unwrap().is_none());
        assert!(!store.layer_record_path(&d('2')).exists());
    }
}
