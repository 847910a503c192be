//! Loads the kernel modules the image ships (virtio, vsock, ...) in dependency
//! order, before the agent listens.
//!
//! The rootfs build writes, under `/lib/modules/<kernel release>/`:
//! `modules.dep` (depmod's format, trimmed to the shipped modules, already
//! decompressed to plain `.ko`) and `modules.load` (the modules to load, one
//! name a line). Here we resolve each wanted module's dependencies depth-first
//! (dependencies first, each module once) and hand every file to
//! `finit_module(2)`. A module the kernel already has, or one whose device is
//! absent (ENODEV), is fine.
//!
//! Never loads a file outside the modules directory, and never loops: paths
//! with `..` or absolute paths, unknown names and dependency cycles are errors.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

pub const MODULES_DIR: &str = "/lib/modules";

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("modules.dep line {line}: {reason}")]
    Dep { line: usize, reason: String },
    #[error("module {0:?} is wanted by modules.load but not listed in modules.dep")]
    Unknown(String),
    #[error("module dependency cycle through {0:?}")]
    Cycle(String),
    #[error("cannot load kernel module {path}: {source}")]
    Load { path: PathBuf, source: io::Error },
    #[error("the image has kernel modules for {image:?} but the running kernel is {running:?}; rebuild the rootfs for this kernel")]
    WrongKernel { image: Vec<String>, running: String },
}

/// `modules.dep`: module name → (relative path, direct dependencies by name).
#[derive(Debug, Default)]
pub struct DepTable {
    entries: HashMap<String, (PathBuf, Vec<String>)>,
}

/// Name the kernel uses for a module file: basename without `.ko`, `-` as `_`.
pub fn module_name(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    let stem = base.strip_suffix(".ko")?;
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

fn relative_path(line: usize, p: &str) -> Result<PathBuf, ModuleError> {
    let path = Path::new(p);
    if p.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(ModuleError::Dep { line, reason: format!("path {p:?} is not a plain relative path") });
    }
    Ok(path.to_owned())
}

impl DepTable {
    pub fn parse(text: &str) -> Result<Self, ModuleError> {
        let mut entries = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            let (module, deps) =
                raw.split_once(':').ok_or_else(|| ModuleError::Dep { line, reason: "missing ':'".into() })?;
            let path = relative_path(line, module.trim())?;
            let name = module_name(module.trim())
                .ok_or_else(|| ModuleError::Dep { line, reason: format!("{module:?} is not a .ko file") })?;
            let mut dep_names = Vec::new();
            for d in deps.split_whitespace() {
                relative_path(line, d)?;
                dep_names.push(
                    module_name(d)
                        .ok_or_else(|| ModuleError::Dep { line, reason: format!("{d:?} is not a .ko file") })?,
                );
            }
            entries.insert(name, (path, dep_names));
        }
        Ok(DepTable { entries })
    }

    /// Files to load for `wanted`, dependencies before dependants, each once.
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<PathBuf>, ModuleError> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        let mut in_progress = HashSet::new();
        for name in wanted {
            self.visit(&name.replace('-', "_"), &mut done, &mut in_progress, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut HashSet<String>,
        in_progress: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<(), ModuleError> {
        if done.contains(name) {
            return Ok(());
        }
        if !in_progress.insert(name.to_owned()) {
            return Err(ModuleError::Cycle(name.to_owned()));
        }
        let (path, deps) = self.entries.get(name).ok_or_else(|| ModuleError::Unknown(name.to_owned()))?;
        for dep in deps {
            self.visit(dep, done, in_progress, order)?;
        }
        in_progress.remove(name);
        done.insert(name.to_owned());
        order.push(path.clone());
        Ok(())
    }
}

/// Names from `modules.load`: one a line, `#` comments.
pub fn parse_load_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn read(path: &Path) -> Result<String, ModuleError> {
    std::fs::read_to_string(path).map_err(|source| ModuleError::Read { path: path.to_owned(), source })
}

/// `uname -r` of the running kernel.
fn kernel_release() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_owned())
}

/// Loads every module `<root>/<release>/modules.load` asks for. An image
/// without a directory for any kernel (no modules shipped) loads nothing.
/// Returns how many modules were inserted.
pub fn load_from_image(root: &Path) -> Result<usize, ModuleError> {
    let running =
        kernel_release().map_err(|source| ModuleError::Read { path: "/proc/sys/kernel/osrelease".into(), source })?;
    let dir = root.join(&running);
    if !dir.is_dir() {
        let image: Vec<String> = std::fs::read_dir(root)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if image.is_empty() {
            tracing::info!("init: the image ships no kernel modules");
            return Ok(0);
        }
        return Err(ModuleError::WrongKernel { image, running });
    }
    let deps = DepTable::parse(&read(&dir.join("modules.dep"))?)?;
    let wanted = parse_load_list(&read(&dir.join("modules.load"))?);
    let mut inserted = 0;
    for rel in deps.load_order(&wanted)? {
        let path = dir.join(&rel);
        if insert(&path)? {
            inserted += 1;
        }
    }
    Ok(inserted)
}

/// `finit_module(2)`; `Ok(false)` when the kernel already has the module, or
/// when the module refuses to load because its hardware is absent (ENODEV:
/// e.g. `sev-guest` in a VM that is not SEV-SNP).
fn insert(path: &Path) -> Result<bool, ModuleError> {
    let file = std::fs::File::open(path).map_err(|source| ModuleError::Load { path: path.to_owned(), source })?;
    let params = c"";
    // SAFETY: a valid open fd, a NUL-terminated empty parameter string, no flags.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc == 0 {
        tracing::debug!(module = %path.display(), "init: module loaded");
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) => return Ok(false),
        Some(libc::ENODEV) => {
            tracing::info!(module = %path.display(), "init: module has no device in this VM, skipped");
            return Ok(false);
        }
        _ => {}
    }
    Err(ModuleError::Load { path: path.to_owned(), source: err })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
";

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths.iter().map(|p| module_name(p.to_str().unwrap()).unwrap()).collect()
    }

    #[test]
    fn dependencies_come_first_and_each_module_once() {
        let t = DepTable::parse(DEP).unwrap();
        let order =
            names(&t.load_order(&parse_load_list("virtio_pci\n# vsock\nvmw_vsock_virtio_transport\n")).unwrap());
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap();
        assert_eq!(order.len(), 8, "{order:?}");
        assert!(pos("virtio_ring") < pos("virtio"));
        assert!(pos("virtio") < pos("virtio_pci"));
        assert!(pos("vsock") < pos("vmw_vsock_virtio_transport_common"));
        assert!(pos("vmw_vsock_virtio_transport_common") < pos("vmw_vsock_virtio_transport"));
    }

    #[test]
    fn dashes_and_underscores_name_the_same_module() {
        let t = DepTable::parse("kernel/a/virtio-rng.ko:\n").unwrap();
        assert_eq!(names(&t.load_order(&["virtio-rng".into()]).unwrap()), vec!["virtio_rng"]);
    }

    #[test]
    fn unknown_module_is_named() {
        let t = DepTable::parse(DEP).unwrap();
        let err = t.load_order(&["nope".into()]).unwrap_err().to_string();
        assert!(err.contains("\"nope\""), "{err}");
    }

    #[test]
    fn cycles_are_errors_not_loops() {
        let t = DepTable::parse("a.ko: b.ko\nb.ko: a.ko\n").unwrap();
        assert!(matches!(t.load_order(&["a".into()]), Err(ModuleError::Cycle(_))));
    }

    #[test]
    fn paths_outside_the_modules_dir_are_refused() {
        for bad in
            ["../../etc/evil.ko:", "/abs/evil.ko:", "ok.ko: ../x.ko", "kernel/../a.ko:", "noext:", "a.ko b.ko", ".ko:"]
        {
            assert!(DepTable::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn a_missing_dependency_is_reported() {
        let t = DepTable::parse("kernel/a.ko: kernel/b.ko\n").unwrap();
        assert!(matches!(t.load_order(&["a".into()]), Err(ModuleError::Unknown(n)) if n == "b"));
    }
}
