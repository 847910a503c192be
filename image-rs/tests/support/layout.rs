//! An OCI image layout writer, so tests build images without network or external tools.
//! Output is deterministic (fixed mtimes and `created`, gzip header without mtime), so digests
//! are stable across runs.

use super::sha256_digest;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

pub use super::tarball::{compress, is_static_elf, noise, tar_bytes, Compression, EntryKind, TarEntry, DEFAULT_MTIME};

pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// `created` of every config and history entry.
pub const CREATED: &str = "2024-01-01T00:00:00Z";

#[derive(Clone, Debug)]
enum LayerContent {
    Entries(Vec<TarEntry>),
    Tar(Vec<u8>),
}

/// A layer to build: tar entries (or a ready tar stream) plus a compression.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    content: LayerContent,
    compression: Compression,
    media_type: Option<String>,
    annotations: BTreeMap<String, String>,
}

/// A built layer: blob bytes and digests.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    pub media_type: String,
    /// Compressed bytes as stored in the registry.
    pub blob: Vec<u8>,
    /// `sha256:` of `blob`.
    pub digest: String,
    pub size: u64,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    pub tar: Vec<u8>,
    pub annotations: BTreeMap<String, String>,
}

impl LayerSpec {
    pub fn new(compression: Compression) -> Self {
        Self::entries(Vec::new(), compression)
    }
    pub fn entries(entries: Vec<TarEntry>, compression: Compression) -> Self {
        LayerSpec {
            content: LayerContent::Entries(entries),
            compression,
            media_type: None,
            annotations: BTreeMap::new(),
        }
    }
    /// A layer from a hand-made tar stream.
    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> Self {
        LayerSpec { content: LayerContent::Tar(tar), compression, media_type: None, annotations: BTreeMap::new() }
    }
    pub fn entry(mut self, e: TarEntry) -> Self {
        match &mut self.content {
            LayerContent::Entries(v) => v.push(e),
            LayerContent::Tar(_) => panic!("LayerSpec::entry on a raw-tar layer"),
        }
        self
    }
    /// Overrides the descriptor media type (e.g. Docker's `…rootfs.diff.tar.gzip`).
    pub fn media_type(mut self, mt: &str) -> Self {
        self.media_type = Some(mt.into());
        self
    }
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }
    pub fn build(&self) -> BuiltLayer {
        let tar = match &self.content {
            LayerContent::Entries(e) => tar_bytes(e),
            LayerContent::Tar(t) => t.clone(),
        };
        let blob = compress(&tar, self.compression);
        BuiltLayer {
            media_type: self.media_type.clone().unwrap_or_else(|| self.compression.media_type().into()),
            digest: sha256_digest(&blob),
            size: blob.len() as u64,
            diff_id: sha256_digest(&tar),
            blob,
            tar,
            annotations: self.annotations.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// "os/arch[/variant]", e.g. "linux/arm64/v8".
    pub fn parse(s: &str) -> Platform {
        let mut it = s.split('/');
        let os = it.next().unwrap_or("linux").to_string();
        let architecture = it.next().expect("platform needs os/arch").to_string();
        Platform { os, architecture, variant: it.next().map(str::to_string) }
    }
    pub fn json(&self) -> Value {
        let mut v = json!({"os": self.os, "architecture": self.architecture});
        if let Some(var) = &self.variant {
            v["variant"] = json!(var);
        }
        v
    }
}

type Hook = Arc<dyn Fn(&mut Value) + Send + Sync>;

/// Builds an image: layers + runtime config. Platform defaults to linux/amd64.
#[derive(Clone)]
pub struct ImageBuilder {
    layers: Vec<LayerSpec>,
    platform: Platform,
    config: Map<String, Value>,
    manifest_annotations: BTreeMap<String, String>,
    config_hook: Option<Hook>,
    manifest_hook: Option<Hook>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// A built image: blobs and digests.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub platform: Platform,
    pub layers: Vec<BuiltLayer>,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

impl BuiltImage {
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }
    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
    /// Every blob of the image (layers, config, manifest).
    pub fn blobs(&self) -> Vec<&[u8]> {
        let mut v: Vec<&[u8]> = self.layers.iter().map(|l| l.blob.as_slice()).collect();
        v.push(&self.config);
        v.push(&self.manifest);
        v
    }
    /// Writes blobs into `dir/blobs/sha256` and tags the manifest as `tag` in `dir/index.json`
    /// (other tags already there are kept).
    pub fn write_to_layout(&self, dir: &Path, tag: &str) {
        for b in self.blobs() {
            write_blob(dir, b);
        }
        add_ref(dir, tag, MT_MANIFEST, &self.manifest_digest, self.manifest.len());
    }
}

impl ImageBuilder {
    pub fn new() -> Self {
        ImageBuilder {
            layers: Vec::new(),
            platform: Platform::parse("linux/amd64"),
            config: Map::new(),
            manifest_annotations: BTreeMap::new(),
            config_hook: None,
            manifest_hook: None,
        }
    }
    pub fn layer(mut self, l: LayerSpec) -> Self {
        self.layers.push(l);
        self
    }
    pub fn platform(mut self, p: Platform) -> Self {
        self.platform = p;
        self
    }
    fn set(mut self, k: &str, v: Value) -> Self {
        self.config.insert(k.into(), v);
        self
    }
    fn map_entry(mut self, k: &str, key: &str, v: Value) -> Self {
        let m = self.config.entry(k.to_string()).or_insert_with(|| json!({}));
        m[key] = v;
        self
    }
    pub fn entrypoint(self, v: &[&str]) -> Self {
        self.set("Entrypoint", json!(v))
    }
    pub fn cmd(self, v: &[&str]) -> Self {
        self.set("Cmd", json!(v))
    }
    /// Appends "K=V".
    pub fn env(mut self, kv: &str) -> Self {
        let e = self.config.entry("Env".to_string()).or_insert_with(|| json!([]));
        e.as_array_mut().unwrap().push(json!(kv));
        self
    }
    pub fn working_dir(self, d: &str) -> Self {
        self.set("WorkingDir", json!(d))
    }
    pub fn user(self, u: &str) -> Self {
        self.set("User", json!(u))
    }
    pub fn volume(self, path: &str) -> Self {
        self.map_entry("Volumes", path, json!({}))
    }
    pub fn label(self, k: &str, v: &str) -> Self {
        self.map_entry("Labels", k, json!(v))
    }
    /// e.g. "8080/tcp"
    pub fn expose(self, port: &str) -> Self {
        self.map_entry("ExposedPorts", port, json!({}))
    }
    pub fn stop_signal(self, s: &str) -> Self {
        self.set("StopSignal", json!(s))
    }
    pub fn manifest_annotation(mut self, k: &str, v: &str) -> Self {
        self.manifest_annotations.insert(k.into(), v.into());
        self
    }
    /// Edits the config JSON after it is generated (e.g. to plant a wrong diff_id).
    pub fn map_config(mut self, f: impl Fn(&mut Value) + Send + Sync + 'static) -> Self {
        self.config_hook = Some(Arc::new(f));
        self
    }
    /// Edits the manifest JSON after it is generated (e.g. to lie about a layer size).
    pub fn map_manifest(mut self, f: impl Fn(&mut Value) + Send + Sync + 'static) -> Self {
        self.manifest_hook = Some(Arc::new(f));
        self
    }

    pub fn build(&self) -> BuiltImage {
        let layers: Vec<BuiltLayer> = self.layers.iter().map(LayerSpec::build).collect();
        let mut config = self.platform.json();
        config["created"] = json!(CREATED);
        config["config"] = Value::Object(self.config.clone());
        config["rootfs"] = json!({"type": "layers", "diff_ids": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()});
        config["history"] = json!((0..layers.len())
            .map(|i| json!({"created": CREATED, "created_by": format!("image-rs test fixture layer {i}")}))
            .collect::<Vec<_>>());
        if let Some(h) = &self.config_hook {
            h(&mut config);
        }
        let config = serde_json::to_vec(&config).unwrap();
        let config_digest = sha256_digest(&config);
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers.iter().map(|l| {
                let mut d = json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size});
                if !l.annotations.is_empty() {
                    d["annotations"] = json!(l.annotations);
                }
                d
            }).collect::<Vec<_>>(),
        });
        if !self.manifest_annotations.is_empty() {
            manifest["annotations"] = json!(self.manifest_annotations);
        }
        if let Some(h) = &self.manifest_hook {
            h(&mut manifest);
        }
        let manifest = serde_json::to_vec(&manifest).unwrap();
        BuiltImage {
            platform: self.platform.clone(),
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            config,
            layers,
        }
    }

    /// Builds and writes an OCI layout at `dir` (created if needed) with the manifest tagged `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> BuiltImage {
        let img = self.build();
        img.write_to_layout(dir, tag);
        img
    }
}

/// Writes `data` as `dir/blobs/sha256/<hex>` (creating the layout skeleton); returns its digest.
pub fn write_blob(dir: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(&digest["sha256:".len()..]), data).unwrap();
    digest
}

/// Adds (or replaces) the `index.json` entry named `tag`, creating `oci-layout` if needed.
fn add_ref(dir: &Path, tag: &str, media_type: &str, digest: &str, size: usize) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let path = dir.join("index.json");
    let mut index = match fs::read(&path) {
        Ok(b) => serde_json::from_slice::<Value>(&b).expect("existing index.json"),
        Err(_) => json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}),
    };
    let list = index["manifests"].as_array_mut().unwrap();
    list.retain(|m| m["annotations"][REF_NAME] != json!(tag));
    list.push(json!({"mediaType": media_type, "digest": digest, "size": size, "annotations": {REF_NAME: tag}}));
    fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A built image index and its images.
#[derive(Clone, Debug)]
pub struct BuiltIndex {
    pub images: Vec<BuiltImage>,
    pub index: Vec<u8>,
    pub index_digest: String,
}

/// Writes a multi-platform image: each builder is built for its platform, and an image index
/// listing them (with `platform`) is tagged `tag` in `dir/index.json`.
pub fn write_index_layout(dir: &Path, tag: &str, images: &[(Platform, ImageBuilder)]) -> BuiltIndex {
    let images: Vec<BuiltImage> = images.iter().map(|(p, b)| b.clone().platform(p.clone()).build()).collect();
    for img in &images {
        for b in img.blobs() {
            write_blob(dir, b);
        }
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": images.iter().map(|i| json!({
            "mediaType": MT_MANIFEST,
            "digest": i.manifest_digest,
            "size": i.manifest.len(),
            "platform": i.platform.json(),
        })).collect::<Vec<_>>(),
    });
    let index = serde_json::to_vec(&index).unwrap();
    let index_digest = write_blob(dir, &index);
    add_ref(dir, tag, MT_INDEX, &index_digest, index.len());
    BuiltIndex { images, index, index_digest }
}

/// Applets symlinked to busybox by [`busybox_rootfs_layer`].
pub const BUSYBOX_APPLETS: &[&str] =
    &["sh", "echo", "cat", "ls", "true", "false", "sleep", "env", "id", "pwd", "mkdir", "stat", "test", "touch"];

/// A minimal runnable rootfs: static `/bin/busybox` (from the host's busybox-static) with applet
/// symlinks in `bin/`, plus `etc/passwd`, `etc/group`, `tmp` (1777), `proc`, `sys`, `dev`, `root`.
/// Call `support::require_tool("busybox")` first; panics if the host busybox is dynamic.
pub fn busybox_rootfs_layer(compression: Compression) -> LayerSpec {
    let path = super::find_tool("busybox").expect("busybox not installed (apt-get install busybox-static)");
    let path = fs::canonicalize(&path).unwrap_or(path);
    let bin = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(is_static_elf(&bin), "{} is dynamically linked: install busybox-static", path.display());
    let mut l = LayerSpec::new(compression);
    for d in ["bin", "etc", "proc", "sys", "dev"] {
        l = l.entry(TarEntry::dir(d));
    }
    l = l.entry(TarEntry::dir("tmp").mode(0o1777)).entry(TarEntry::dir("root").mode(0o700));
    l = l.entry(TarEntry::file("bin/busybox", bin).mode(0o755));
    for a in BUSYBOX_APPLETS {
        l = l.entry(TarEntry::symlink(&format!("bin/{a}"), "busybox"));
    }
    l.entry(TarEntry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"))
        .entry(TarEntry::file("etc/group", "root:x:0:\nnogroup:x:65534:\n"))
}
