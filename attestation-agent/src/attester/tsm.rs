//! configfs-tsm reports (`/sys/kernel/config/tsm/report`, Linux 6.7+): the
//! vendor-neutral way to get a TDX quote or an SNP report.
//!
//! One report = one item directory: `mkdir`, check `provider`, write the
//! 64-byte `inblob`, read `generation`, read `outblob` (and `auxblob`), read
//! `generation` again, `rmdir`. A generation that moved means another writer
//! touched our item between the write and the read, so the blob may not bind
//! our report_data: that is an error, never a silently wrong report.
//!
//! Must never return an outblob without having checked the provider and the
//! generation, and never leaves its item directory behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::device::KernelIo;
use super::AttesterError;

/// Where the kernel mounts the report interface.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";

static ITEM_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The blobs of one configfs-tsm report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsmReport {
    pub outblob: Vec<u8>,
    /// SNP: the certificate table (GUID table format); TDX: absent.
    pub auxblob: Option<Vec<u8>>,
}

/// Produces a report from `provider` ("tdx_guest" or "sev_guest") binding
/// `inblob` (exactly 64 bytes).
pub fn get_report(
    io: &dyn KernelIo,
    root: &Path,
    provider: &str,
    inblob: &[u8; 64],
    want_aux: bool,
) -> Result<TsmReport, AttesterError> {
    let name = format!("cvm-aa-{}-{}", std::process::id(), ITEM_COUNTER.fetch_add(1, Ordering::Relaxed));
    let dir = root.join(name);
    io.create_dir(&dir).map_err(|e| AttesterError::io("create configfs-tsm report item", &dir, e))?;
    let result = report_in(io, &dir, provider, inblob, want_aux);
    if let Err(err) = io.remove_dir(&dir) {
        tracing::warn!(dir = %dir.display(), %err, "could not remove configfs-tsm report item");
    }
    result
}

fn report_in(
    io: &dyn KernelIo,
    dir: &Path,
    provider: &str,
    inblob: &[u8; 64],
    want_aux: bool,
) -> Result<TsmReport, AttesterError> {
    let attr = |name: &str| -> PathBuf { dir.join(name) };
    let found = io.read(&attr("provider")).map_err(|e| AttesterError::io("read", &attr("provider"), e))?;
    let found = String::from_utf8_lossy(&found).trim().to_owned();
    if found != provider {
        return Err(AttesterError::WrongProvider { expected: provider.to_owned(), found });
    }
    io.write(&attr("inblob"), inblob).map_err(|e| AttesterError::io("write", &attr("inblob"), e))?;
    let before = read_generation(io, &attr("generation"))?;
    let outblob = io.read(&attr("outblob")).map_err(|e| AttesterError::io("read", &attr("outblob"), e))?;
    let auxblob = if want_aux {
        match io.read(&attr("auxblob")) {
            Ok(aux) if aux.is_empty() => None,
            Ok(aux) => Some(aux),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(AttesterError::io("read", &attr("auxblob"), e)),
        }
    } else {
        None
    };
    let after = read_generation(io, &attr("generation"))?;
    if before != after {
        return Err(AttesterError::GenerationChanged { before, after });
    }
    if outblob.is_empty() {
        return Err(AttesterError::Malformed("configfs-tsm outblob is empty".into()));
    }
    Ok(TsmReport { outblob, auxblob })
}

fn read_generation(io: &dyn KernelIo, path: &Path) -> Result<u64, AttesterError> {
    let raw = io.read(path).map_err(|e| AttesterError::io("read", path, e))?;
    let text = String::from_utf8_lossy(&raw);
    text.trim()
        .parse::<u64>()
        .map_err(|_| AttesterError::Malformed(format!("{} holds {:?}, not a number", path.display(), text.trim())))
}

/// Whether the report interface is there and backed by `provider`-capable
/// hardware (the directory exists; the provider is checked per report).
pub fn available(io: &dyn KernelIo, root: &Path) -> bool {
    io.exists(root)
}
