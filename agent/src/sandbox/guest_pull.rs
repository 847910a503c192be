//! kata's `image_guest_pull` storage: the container's root filesystem is
//! pulled inside the guest by the confidential data hub, never shared from
//! the host. kata's shim sends, per container, a storage with driver
//! `image_guest_pull`, source = the image reference (`pause` for the pod's
//! sandbox container), fstype `overlay`, mount point
//! `/run/kata-containers/<cid>/rootfs`, and one driver option
//! `image_guest_pull=<JSON {"metadata": {annotation: value}}>` carrying the
//! pod's annotations.
//!
//! As kata's agent: a sandbox container (annotation
//! `io.kubernetes.cri.container-type` or `io.kubernetes.cri-o.ContainerType`
//! = `sandbox`) gets the pause bundle baked into the guest image (its program
//! copied into `<base>/<cid>/rootfs`, its process replacing the host's); any
//! other container is pulled by the data hub's PullImage with bundle_path
//! `<base>/<cid>`, which mounts the image at `<bundle>/rootfs` and writes the
//! image's runtime config to `<bundle>/config.json`.
//!
//! Never trusts the driver options (bounded, parsed strictly, refused by
//! name), never creates anything outside `<base>/<cid>`, and never leaves a
//! pulled rootfs mounted once the storage is undone.

use std::collections::HashMap;
use std::io::Read as _;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::Instant;

use super::storage::{mount_point_under, Prepared};
use crate::container::RuntimeError;
use crate::image_pull::{ImagePuller, PullCounters, PullError};
use crate::mount::beneath;

pub const DRIVER: &str = "image_guest_pull";
/// kata's pause bundle in the guest image: `config.json` and `rootfs/`.
pub const DEFAULT_PAUSE_BUNDLE: &str = "/pause_bundle";
/// The annotations kata reads to tell a pod's sandbox container.
const CONTAINER_TYPE_KEYS: [&str; 2] = ["io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType"];
/// Bounds on what the host sends (a pod's annotations are at most 256 KiB in Kubernetes).
const OPTION_MAX: usize = 512 * 1024;
const METADATA_MAX_ENTRIES: usize = 4096;
const SOURCE_MAX: usize = 4096;
/// Bounds on the bundle's config.json and the pause program.
const CONFIG_MAX: u64 = 1024 * 1024;
const PAUSE_MAX: u64 = 64 * 1024 * 1024;
const LIST_MAX: usize = 4096;

/// The driver's collaborators: where storages live, who pulls, where the
/// pause bundle is, what is counted.
pub struct GuestPull<'a> {
    pub base: &'a Path,
    pub puller: &'a dyn ImagePuller,
    pub pause_bundle: &'a Path,
    pub counters: &'a PullCounters,
}

/// The part of an OCI runtime `config.json` the agent takes from a bundle.
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
pub struct BundleProcess {
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub user: Option<BundleUser>,
}

#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
pub struct BundleUser {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default, rename = "additionalGids")]
    pub additional_gids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct BundleConfig {
    process: Option<BundleProcess>,
}

/// What a prepared image_guest_pull storage means for the container's process.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageProcess {
    /// The pause bundle's process: replaces the host's for a sandbox container.
    Pause(BundleProcess),
    /// The pulled image's config: fills what the host left empty.
    Image(BundleProcess),
}

/// kata's `ImagePullVolume`; unknown keys are ignored as kata's serde does.
#[derive(serde::Deserialize)]
struct ImagePullVolume {
    #[serde(default)]
    metadata: HashMap<String, String>,
}

fn invalid(msg: String) -> RuntimeError {
    RuntimeError::InvalidArgument(msg)
}

/// The metadata of the first `image_guest_pull=` driver option (kata takes the first).
pub fn parse_metadata(s: &protos::agent::Storage) -> Result<HashMap<String, String>, RuntimeError> {
    let json = s
        .driver_options
        .iter()
        .find_map(|o| o.split_once('=').filter(|(k, _)| *k == DRIVER).map(|(_, v)| v))
        .ok_or_else(|| invalid(format!("{DRIVER} storage: driver_options has no {DRIVER}=<json> entry")))?;
    if json.len() > OPTION_MAX {
        return Err(invalid(format!(
            "{DRIVER} storage: driver_options {DRIVER} is {} bytes (at most {OPTION_MAX})",
            json.len()
        )));
    }
    let v: ImagePullVolume = serde_json::from_str(json).map_err(|e| {
        invalid(format!("{DRIVER} storage: driver_options {DRIVER} is not kata's ImagePullVolume JSON: {e}"))
    })?;
    if v.metadata.len() > METADATA_MAX_ENTRIES {
        return Err(invalid(format!(
            "{DRIVER} storage: driver_options {DRIVER} has {} metadata entries (at most {METADATA_MAX_ENTRIES})",
            v.metadata.len()
        )));
    }
    Ok(v.metadata)
}

/// kata's `is_sandbox`: a CRI container-type annotation says `sandbox`.
pub fn is_sandbox(annotations: &HashMap<String, String>) -> bool {
    CONTAINER_TYPE_KEYS.iter().any(|k| annotations.get(*k).is_some_and(|v| v == "sandbox"))
}

fn check_source(src: &str) -> Result<(), RuntimeError> {
    if src.is_empty() || src.len() > SOURCE_MAX || src.chars().any(|c| c.is_control() || c.is_whitespace()) {
        let shown: String = src.chars().take(128).collect();
        return Err(invalid(format!(
            "{DRIVER} storage: source {shown:?} is not an image reference (non-empty, at most {SOURCE_MAX} bytes, no spaces or control characters)"
        )));
    }
    Ok(())
}

/// Reads a bounded JSON runtime config and takes its process.
fn read_bundle_process(config: &Path) -> Result<BundleProcess, String> {
    let f = std::fs::File::open(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut text = Vec::new();
    f.take(CONFIG_MAX + 1).read_to_end(&mut text).map_err(|e| format!("{}: {e}", config.display()))?;
    if text.len() as u64 > CONFIG_MAX {
        return Err(format!("{} is larger than {CONFIG_MAX} bytes", config.display()));
    }
    let cfg: BundleConfig =
        serde_json::from_slice(&text).map_err(|e| format!("{} is not an OCI runtime config: {e}", config.display()))?;
    let p = cfg.process.ok_or_else(|| format!("{} has no process", config.display()))?;
    if p.args.len() > LIST_MAX
        || p.env.len() > LIST_MAX
        || p.user.as_ref().is_some_and(|u| u.additional_gids.len() > LIST_MAX)
    {
        return Err(format!("{} has more than {LIST_MAX} args, env entries or groups", config.display()));
    }
    Ok(p)
}

impl GuestPull<'_> {
    /// Prepares the storage for container `cid`: the rootfs mounted (or, for
    /// the sandbox container, the pause rootfs written) at the mount point.
    pub async fn prepare(
        &self,
        cid: &str,
        s: &protos::agent::Storage,
    ) -> Result<(Prepared, ImageProcess), RuntimeError> {
        let metadata = parse_metadata(s)?;
        let rel = mount_point_under(self.base, &s.mount_point)?;
        if rel != Path::new(cid).join("rootfs") {
            return Err(invalid(format!(
                "{DRIVER} storage: mount_point {:?} must be {}/{cid}/rootfs (the rootfs of container {cid})",
                s.mount_point,
                self.base.display()
            )));
        }
        let bundle = self.base.join(cid);
        if is_sandbox(&metadata) {
            let process = self.unpack_pause(cid)?;
            tracing::info!(container = cid, pause_bundle = %self.pause_bundle.display(), "sandbox rootfs from the guest's pause bundle");
            return Ok((Prepared::GuestPull { bundle }, ImageProcess::Pause(process)));
        }
        check_source(&s.source)?;
        let base_fd = beneath::open_base(self.base)
            .map_err(|e| RuntimeError::Internal(format!("storage base {}: {e}", self.base.display())))?;
        beneath::mkdir_all_beneath(&base_fd, Path::new(cid)).map_err(|e| {
            invalid(format!(
                "{DRIVER} storage: bundle {}: {e} (a path component is a symlink or not a directory)",
                bundle.display()
            ))
        })?;
        let started = Instant::now();
        let result = self.puller.pull_image(&s.source, &bundle.display().to_string()).await;
        self.counters.record(&result, started.elapsed());
        let digest = match result {
            Ok(d) => d,
            Err(e) => {
                // The data hub leaves nothing under a refused bundle; the directory is ours.
                remove_bundle(&bundle);
                return Err(pull_error(&s.source, cid, e));
            }
        };
        let prepared = Prepared::GuestPull { bundle: bundle.clone() };
        match read_bundle_process(&bundle.join("config.json")) {
            Ok(p) => {
                tracing::info!(container = cid, image = %s.source, %digest, took_ms = started.elapsed().as_millis() as u64, "image pulled in the guest");
                Ok((prepared, ImageProcess::Image(p)))
            }
            Err(why) => {
                super::storage::undo(prepared);
                Err(RuntimeError::Internal(format!("{DRIVER} of {} for container {cid}: {why}", s.source)))
            }
        }
    }

    /// kata's `unpack_pause_image`: the bundle's program copied to
    /// `<base>/<cid>/rootfs/<args[0]>`, the bundle's process returned.
    fn unpack_pause(&self, cid: &str) -> Result<BundleProcess, RuntimeError> {
        let missing = |why: String| {
            RuntimeError::FailedPrecondition(format!(
                "{DRIVER} of the sandbox container {cid}: pause bundle {}: {why}",
                self.pause_bundle.display()
            ))
        };
        let process = read_bundle_process(&self.pause_bundle.join("config.json")).map_err(missing)?;
        let program = process.args.first().ok_or_else(|| missing("config.json has no process.args".into()))?;
        let (rel, name) = program
            .strip_prefix('/')
            .map(Path::new)
            .filter(|r| r.components().all(|c| matches!(c, std::path::Component::Normal(_))))
            .and_then(|r| r.file_name().map(|name| (r, Path::new(name))))
            .ok_or_else(|| missing(format!("args[0] {program:?} is not a clean absolute path")))?;
        let src = self.pause_bundle.join("rootfs").join(rel);
        let mut bytes = Vec::new();
        std::fs::File::open(&src)
            .and_then(|f| f.take(PAUSE_MAX + 1).read_to_end(&mut bytes))
            .map_err(|e| missing(format!("{}: {e}", src.display())))?;
        if bytes.len() as u64 > PAUSE_MAX {
            return Err(missing(format!("{} is larger than {PAUSE_MAX} bytes", src.display())));
        }
        let base_fd = beneath::open_base(self.base)
            .map_err(|e| RuntimeError::Internal(format!("storage base {}: {e}", self.base.display())))?;
        let rootfs_rel = Path::new(cid).join("rootfs");
        let write = || -> std::io::Result<()> {
            let dir = beneath::mkdir_all_beneath(&base_fd, &rootfs_rel.join(rel.parent().unwrap_or(Path::new(""))))?;
            let fd =
                beneath::open_beneath(&dir, name, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW)?;
            // SAFETY: fchmod on our fresh fd.
            if unsafe { libc::fchmod(fd.as_raw_fd(), 0o755) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: the fd is ours; File takes it over.
            let mut f = unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
            std::io::Write::write_all(&mut f, &bytes)
        };
        write().map_err(|e| {
            remove_bundle(&self.base.join(cid));
            invalid(format!("{DRIVER} of the sandbox container {cid}: pause rootfs under {}: {e}", self.base.display()))
        })?;
        Ok(process)
    }
}

/// A pull failure as the runtime error CreateContainer answers: the data
/// hub's code kept, its message quoted after the image and container.
fn pull_error(image: &str, cid: &str, e: PullError) -> RuntimeError {
    let text = format!("{DRIVER} of {image} for container {cid}: {}", e.message);
    match e.code {
        ttrpc::Code::INVALID_ARGUMENT => RuntimeError::InvalidArgument(text),
        ttrpc::Code::NOT_FOUND => RuntimeError::NotFound(text),
        ttrpc::Code::ALREADY_EXISTS => RuntimeError::AlreadyExists(text),
        ttrpc::Code::PERMISSION_DENIED => RuntimeError::PermissionDenied(text),
        ttrpc::Code::FAILED_PRECONDITION => RuntimeError::FailedPrecondition(text),
        ttrpc::Code::UNAVAILABLE => RuntimeError::Unavailable(text),
        ttrpc::Code::DEADLINE_EXCEEDED => RuntimeError::DeadlineExceeded(text),
        _ => RuntimeError::Internal(text),
    }
}

/// Undoes a guest-pulled bundle: the rootfs the data hub mounted is
/// unmounted (every stacked mount, detached), then what the pull or the
/// pause unpack wrote is removed and the bundle directory with it if empty.
/// Never recurses into a directory that is still a mount point.
pub fn remove_bundle(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    for _ in 0..8 {
        match rustix_umount(&rootfs) {
            Ok(()) => tracing::debug!(rootfs = %rootfs.display(), "guest-pulled rootfs unmounted"),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => {
                tracing::warn!(rootfs = %rootfs.display(), error = %e, "cannot unmount the guest-pulled rootfs; leaving the bundle");
                return;
            }
        }
    }
    for sub in ["rootfs", "upper", "work"] {
        let p = bundle.join(sub);
        if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            if let Err(e) = std::fs::remove_dir_all(&p) {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove part of a guest-pulled bundle");
            }
        }
    }
    let _ = std::fs::remove_file(bundle.join("config.json"));
    let _ = std::fs::remove_dir(bundle);
}

fn rustix_umount(p: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C string; MNT_DETACH|UMOUNT_NOFOLLOW on a path we built.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// kata's process override for a sandbox container (only when the OCI
/// annotations also say `sandbox`, as kata's `get_process` checks), or the
/// pulled image's config merged into what the host left empty.
pub fn apply(spec: &mut protos::oci::Spec, image: &ImageProcess) {
    match image {
        ImageProcess::Pause(p) => {
            if is_sandbox(&spec.Annotations) {
                let process = spec.Process.mut_or_insert_default();
                process.Args = p.args.clone();
                process.Env = p.env.clone();
                process.Cwd = if p.cwd.is_empty() { "/".into() } else { p.cwd.clone() };
                let user = p.user.clone().unwrap_or_default();
                process.User = Some(protos::oci::User {
                    UID: user.uid,
                    GID: user.gid,
                    AdditionalGids: user.additional_gids,
                    ..Default::default()
                })
                .into();
            }
        }
        ImageProcess::Image(p) => merge(spec.Process.mut_or_insert_default(), p),
    }
}

/// Fills the host's process from the image's: args only if the host gave
/// none, cwd only if the host left it empty or `/`, and each image variable
/// whose name the host did not set. The user stays the host's (uid 0 cannot
/// be told from "unset" on the wire, and kata's shim always sends the user).
pub fn merge(target: &mut protos::oci::Process, image: &BundleProcess) {
    if target.Args.is_empty() {
        target.Args = image.args.clone();
    }
    if (target.Cwd.is_empty() || target.Cwd == "/") && !image.cwd.is_empty() {
        target.Cwd = image.cwd.clone();
    }
    let name = |e: &str| e.split_once('=').map(|(n, _)| n.to_owned());
    let host: std::collections::HashSet<String> = target.Env.iter().filter_map(|e| name(e)).collect();
    for e in &image.env {
        if let Some(n) = name(e).filter(|n| !n.is_empty() && !host.contains(n)) {
            if target.Env.iter().all(|t| name(t).as_deref() != Some(&n)) {
                target.Env.push(e.clone());
            }
        }
    }
}

#[cfg(test)]
#[path = "guest_pull_tests.rs"]
mod tests;
