//! Container bundles: `BUNDLE/rootfs` (an overlayfs mount of the image's
//! committed layers with a private upper dir, or a flattened copy when
//! overlayfs is unavailable) plus `BUNDLE/config.json` generated from the
//! image config.
//!
//! A bundle is built only from verified, committed layers, and a failed
//! bundle leaves nothing half-made behind.

mod spec;
mod user;

use std::path::{Path, PathBuf};

pub use spec::{runtime_spec, SpecError};
pub use user::{resolve as resolve_user, ResolvedUser, UserError};

use oci_spec::image::ImageConfiguration;

use crate::unpack::{self, UnpackError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsMode {
    /// overlayfs if the kernel allows, else a flattened copy.
    Auto,
    Overlay,
    Flatten,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsKind {
    Overlay,
    Flattened,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle directory {path}: {reason}")]
    Dir { path: PathBuf, reason: String },
    #[error("overlay mount on {path} failed: {source}")]
    Mount { path: PathBuf, source: std::io::Error },
    #[error("flattening layers into {path}: {source}")]
    Flatten { path: PathBuf, source: UnpackError },
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Builds `bundle_dir` from committed layer directories (bottom first).
pub fn create_bundle(
    bundle_dir: &Path,
    layer_dirs: &[PathBuf],
    image: &ImageConfiguration,
    mode: RootfsMode,
) -> Result<RootfsKind, BundleError> {
    prepare_dir(bundle_dir)?;
    let rootfs = bundle_dir.join("rootfs");
    let kind = match build_rootfs(bundle_dir, &rootfs, layer_dirs, mode) {
        Ok(k) => k,
        Err(e) => {
            let _ = std::fs::remove_dir_all(bundle_dir.join("rootfs"));
            return Err(e);
        }
    };
    let result = (|| {
        let user =
            resolve_user(&rootfs, image.config().as_ref().and_then(|c| c.user().clone()).as_deref().unwrap_or(""))?;
        let spec = runtime_spec(image, &user, "rootfs")?;
        let path = bundle_dir.join("config.json");
        let json =
            serde_json::to_vec_pretty(&spec).map_err(|e| SpecError::Build(format!("serialising config.json: {e}")))?;
        std::fs::write(&path, json).map_err(|source| BundleError::Write { path, source })
    })();
    if let Err(e) = result {
        remove_bundle_rootfs(bundle_dir, kind);
        return Err(e);
    }
    Ok(kind)
}

/// Unmounts (if needed) and removes a bundle's rootfs and overlay dirs.
pub fn remove_bundle_rootfs(bundle_dir: &Path, kind: RootfsKind) {
    let rootfs = bundle_dir.join("rootfs");
    if kind == RootfsKind::Overlay {
        let _ = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH);
    }
    for sub in ["rootfs", "upper", "work"] {
        let _ = std::fs::remove_dir_all(bundle_dir.join(sub));
    }
}

fn prepare_dir(bundle_dir: &Path) -> Result<(), BundleError> {
    let err = |reason: String| BundleError::Dir { path: bundle_dir.to_owned(), reason };
    std::fs::create_dir_all(bundle_dir).map_err(|e| err(format!("cannot create: {e}")))?;
    for sub in ["rootfs", "config.json"] {
        if bundle_dir.join(sub).symlink_metadata().is_ok() {
            return Err(err(format!("already contains {sub}; refusing to overwrite a bundle")));
        }
    }
    Ok(())
}

fn build_rootfs(
    bundle_dir: &Path,
    rootfs: &Path,
    layers: &[PathBuf],
    mode: RootfsMode,
) -> Result<RootfsKind, BundleError> {
    std::fs::create_dir(rootfs).map_err(|e| BundleError::Dir { path: rootfs.to_owned(), reason: e.to_string() })?;
    if mode != RootfsMode::Flatten && !layers.is_empty() {
        match mount_overlay(bundle_dir, rootfs, layers) {
            Ok(()) => return Ok(RootfsKind::Overlay),
            Err(e) if mode == RootfsMode::Overlay => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "overlayfs unavailable; flattening the layers into a copy");
                for sub in ["upper", "work"] {
                    let _ = std::fs::remove_dir_all(bundle_dir.join(sub));
                }
            }
        }
    }
    unpack::flatten_layers(layers, rootfs)
        .map_err(|source| BundleError::Flatten { path: rootfs.to_owned(), source })?;
    Ok(RootfsKind::Flattened)
}

fn mount_overlay(bundle_dir: &Path, rootfs: &Path, layers: &[PathBuf]) -> Result<(), BundleError> {
    let upper = bundle_dir.join("upper");
    let work = bundle_dir.join("work");
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(|e| BundleError::Dir { path: d.clone(), reason: e.to_string() })?;
    }
    // lowerdir lists the top-most layer first.
    let lower: Vec<String> = layers.iter().rev().map(|p| escape_overlay_path(p)).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        escape_overlay_path(&upper),
        escape_overlay_path(&work)
    );
    let data = std::ffi::CString::new(data).map_err(|e| BundleError::Mount {
        path: rootfs.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    rustix::mount::mount("overlay", rootfs, "overlay", rustix::mount::MountFlags::empty(), Some(data.as_c_str()))
        .map_err(|e| BundleError::Mount { path: rootfs.to_owned(), source: e.into() })
}

/// overlayfs splits options on ',' and lowerdir on ':'; escape both.
fn escape_overlay_path(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "\\\\").replace(':', "\\:").replace(',', "\\,")
}
