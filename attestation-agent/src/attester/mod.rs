//! Attesters: one per TEE, all behind [`Attester`]. An attester turns
//! report_data (the binding hash of a KBS handshake, or a caller's runtime
//! data) into evidence JSON in the shape Trustee's verifier for that TEE
//! reads, and owns the TEE's measurement registers.
//!
//! Selection: `[attester] type` in the config, or detection of the hardware
//! for `auto`. Detection never picks `sample`: a development attester is used
//! only when the configuration names it.
//!
//! Attesters never touch a device except through [`device::KernelIo`].

pub mod device;
pub mod sample;
pub mod se;
pub mod snp;
pub mod tdx;
pub mod tsm;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use self::device::KernelIo;

/// Size of the report_data field of TDX, SNP and SE reports.
pub const REPORT_DATA_LEN: usize = 64;

/// The TEE platforms this agent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeeKind {
    Tdx,
    Snp,
    Se,
    AzSnpVtpm,
    AzTdxVtpm,
    Sample,
}

impl TeeKind {
    /// The name used on the wire (KBS `tee`, GetTeeType).
    pub fn as_str(self) -> &'static str {
        match self {
            TeeKind::Tdx => "tdx",
            TeeKind::Snp => "snp",
            TeeKind::Se => "se",
            TeeKind::AzSnpVtpm => "az-snp-vtpm",
            TeeKind::AzTdxVtpm => "az-tdx-vtpm",
            TeeKind::Sample => "sample",
        }
    }

    /// The kbs-types value sent in the auth request.
    pub fn kbs_tee(self) -> kbs_types::Tee {
        match self {
            TeeKind::Tdx => kbs_types::Tee::Tdx,
            TeeKind::Snp => kbs_types::Tee::Snp,
            TeeKind::Se => kbs_types::Tee::Se,
            TeeKind::AzSnpVtpm => kbs_types::Tee::AzSnpVtpm,
            TeeKind::AzTdxVtpm => kbs_types::Tee::AzTdxVtpm,
            TeeKind::Sample => kbs_types::Tee::Sample,
        }
    }
}

impl fmt::Display for TeeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the attester is asked to bind.
#[derive(Debug, Clone, Copy)]
pub struct EvidenceRequest<'a> {
    /// At most 64 bytes; hardware attesters zero-pad it into report_data.
    pub report_data: &'a [u8],
    /// The KBS challenge nonce, for TEEs whose request travels in it (SE).
    pub kbs_nonce: Option<&'a str>,
    /// The runtime event log (AAEL text), for TEEs whose evidence carries it.
    pub aa_eventlog: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: std::io::Error },
    #[error("configfs-tsm report provider is {found:?}, expected {expected:?}: this is not the TEE the config names")]
    WrongProvider { expected: String, found: String },
    #[error("configfs-tsm generation moved from {before} to {after} while reading the report: another process wrote to our report item; retry")]
    GenerationChanged { before: u64, after: u64 },
    #[error("report_data is {0} bytes; at most 64 fit in a TEE report")]
    ReportDataTooLong(usize),
    #[error("malformed TEE output: {0}")]
    Malformed(String),
    #[error("{tee} attester: {what} is not supported")]
    Unsupported { tee: TeeKind, what: &'static str },
    #[error("no TEE detected (looked for /dev/tdx_guest, configfs-tsm, /dev/sev-guest, /dev/uv); set [attester] type explicitly (\"sample\" only for development)")]
    NoTeeDetected,
    #[error("{0}")]
    Invalid(String),
}

impl AttesterError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        AttesterError::Io { op, path: path.display().to_string(), source }
    }
}

/// One TEE's evidence and measurement registers.
///
/// Calls block on the kernel; async callers run them in `spawn_blocking`.
pub trait Attester: Send + Sync + fmt::Debug {
    fn tee(&self) -> TeeKind;

    /// Evidence JSON binding `req.report_data`.
    fn evidence(&self, req: &EvidenceRequest<'_>) -> Result<serde_json::Value, AttesterError>;

    /// Digest length of the runtime measurement registers (48 for RTMRs).
    fn register_digest_len(&self) -> usize {
        48
    }

    /// Extends runtime measurement register `index` with `digest`.
    fn extend_register(&self, index: u64, digest: &[u8]) -> Result<(), AttesterError> {
        let _ = (index, digest);
        Err(AttesterError::Unsupported { tee: self.tee(), what: "extending runtime measurement registers" })
    }

    /// Current value of runtime measurement register `index`.
    fn read_register(&self, index: u64) -> Result<Vec<u8>, AttesterError> {
        let _ = index;
        Err(AttesterError::Unsupported { tee: self.tee(), what: "reading runtime measurement registers" })
    }

    /// The hardware field that measures initdata: TDX MRCONFIGID (48 bytes),
    /// SNP HOST_DATA (32 bytes).
    fn initdata_field(&self) -> Result<Vec<u8>, AttesterError> {
        Err(AttesterError::Unsupported { tee: self.tee(), what: "an initdata measurement field" })
    }
}

/// `[attester] type` of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttesterChoice {
    #[default]
    Auto,
    Tdx,
    Snp,
    Se,
    AzSnpVtpm,
    AzTdxVtpm,
    Sample,
}

/// Builds the attester the config asks for; `Auto` detects the hardware and
/// never falls back to `sample`.
pub fn build(choice: AttesterChoice, io: Arc<dyn KernelIo>) -> Result<Arc<dyn Attester>, AttesterError> {
    let kind = match choice {
        AttesterChoice::Auto => detect(io.as_ref())?,
        AttesterChoice::Tdx => TeeKind::Tdx,
        AttesterChoice::Snp => TeeKind::Snp,
        AttesterChoice::Se => TeeKind::Se,
        AttesterChoice::AzSnpVtpm => TeeKind::AzSnpVtpm,
        AttesterChoice::AzTdxVtpm => TeeKind::AzTdxVtpm,
        AttesterChoice::Sample => TeeKind::Sample,
    };
    Ok(match kind {
        TeeKind::Tdx => Arc::new(tdx::TdxAttester::new(io)),
        TeeKind::Snp => Arc::new(snp::SnpAttester::new(io)),
        TeeKind::Se => Arc::new(se::SeAttester::new(io)),
        TeeKind::Sample => {
            tracing::warn!("using the SAMPLE attester: evidence proves nothing; development only");
            Arc::new(sample::SampleAttester::default())
        }
        TeeKind::AzSnpVtpm | TeeKind::AzTdxVtpm => {
            // The Azure vTPM evidence needs a TPM 2.0 stack (tss-esapi links
            // the C tpm2-tss libraries) and the Azure IMDS/HCL report parser;
            // neither is available as pure Rust on crates.io.
            return Err(AttesterError::Unsupported {
                tee: kind,
                what: "this build (no pure-Rust TPM stack for the Azure vTPM)",
            });
        }
    })
}

/// Which TEE this guest runs in, from the devices the kernel exposes.
pub fn detect(io: &dyn KernelIo) -> Result<TeeKind, AttesterError> {
    if io.exists(Path::new(tdx::TDX_GUEST_DEVICE)) {
        return Ok(TeeKind::Tdx);
    }
    if io.exists(Path::new(snp::SEV_GUEST_DEVICE)) || io.exists(Path::new("/sys/devices/platform/sev-guest")) {
        return Ok(TeeKind::Snp);
    }
    if io.exists(Path::new(se::UV_DEVICE)) {
        if let Ok(flag) = io.read(Path::new("/sys/firmware/uv/prot_virt_guest")) {
            if flag.first() == Some(&b'1') {
                return Ok(TeeKind::Se);
            }
        }
    }
    Err(AttesterError::NoTeeDetected)
}

/// report_data zero-padded to the 64-byte hardware field.
pub fn pad_report_data(data: &[u8]) -> Result<[u8; REPORT_DATA_LEN], AttesterError> {
    let mut out = [0u8; REPORT_DATA_LEN];
    let Some(prefix) = out.get_mut(..data.len()) else {
        return Err(AttesterError::ReportDataTooLong(data.len()));
    };
    prefix.copy_from_slice(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_data_is_zero_padded_and_never_longer_than_the_field() {
        let padded = pad_report_data(&[7; 10]).unwrap();
        assert_eq!(padded[..10], [7; 10]);
        assert_eq!(padded[10..], [0; REPORT_DATA_LEN - 10]);
        assert_eq!(pad_report_data(&[1; REPORT_DATA_LEN]).unwrap(), [1; REPORT_DATA_LEN]);
        let err = pad_report_data(&[1; REPORT_DATA_LEN + 1]).unwrap_err();
        assert!(matches!(err, AttesterError::ReportDataTooLong(65)), "{err}");
        assert!(err.to_string().contains("at most 64"), "{err}");
    }
}
