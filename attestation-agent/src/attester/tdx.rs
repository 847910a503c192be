//! Intel TDX: the quote comes from configfs-tsm (provider `tdx_guest`), the
//! TDREPORT (MRCONFIGID, RTMRs) from the `/dev/tdx_guest` ioctl
//! TDX_CMD_GET_REPORT0, runtime measurements go to RTMRs through the kernel's
//! sysfs measurement files.
//!
//! Evidence: `{"cc_eventlog": base64 CCEL | null, "quote": base64,
//! "aa_eventlog": AAEL text | null}` (Trustee's TDX verifier).
//!
//! Must never produce a quote whose report_data is not the caller's,
//! zero-padded.

use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;

use super::device::{iowr, KernelIo};
use super::{pad_report_data, tsm, Attester, AttesterError, EvidenceRequest, TeeKind};

pub const TDX_GUEST_DEVICE: &str = "/dev/tdx_guest";
/// The CC event log ACPI table (firmware and kernel measurements).
pub const CCEL_PATH: &str = "/sys/firmware/acpi/tables/data/CCEL";
/// Per-RTMR extend/read files (Linux 6.16+, `tdx_guest` measurement sysfs).
pub const RTMR_SYSFS_DIR: &str = "/sys/class/misc/tdx_guest/measurements";

pub const TDREPORT_LEN: usize = 1024;
/// `struct tdx_report_req { __u8 reportdata[64]; __u8 tdreport[1024]; }`.
#[repr(C)]
pub struct TdxReportReq {
    pub reportdata: [u8; 64],
    pub tdreport: [u8; TDREPORT_LEN],
}

/// `TDX_CMD_GET_REPORT0 = _IOWR('T', 1, struct tdx_report_req)` = 0xC4405401.
pub const TDX_CMD_GET_REPORT0: u64 = iowr(b'T', 1, std::mem::size_of::<TdxReportReq>());

/// Offsets inside the TDREPORT: REPORTMACSTRUCT (256 bytes, REPORTDATA at
/// 128), TEE_TCB_INFO (256), then TDINFO at 512.
pub const TDREPORT_REPORTDATA: usize = 128;
const TDINFO: usize = 512;
/// TDINFO: ATTRIBUTES(8) XFAM(8) MRTD(48) MRCONFIGID(48) MROWNER(48)
/// MROWNERCONFIG(48) RTMR[4](48 each).
pub const TDREPORT_MRCONFIGID: usize = TDINFO + 8 + 8 + 48;
pub const TDREPORT_RTMR0: usize = TDINFO + 8 + 8 + 48 * 4;

#[derive(Serialize)]
struct TdxEvidence {
    cc_eventlog: Option<String>,
    quote: String,
    aa_eventlog: Option<String>,
}

#[derive(Debug)]
pub struct TdxAttester {
    io: Arc<dyn KernelIo>,
    tsm_root: PathBuf,
    device: PathBuf,
    ccel: PathBuf,
    rtmr_dir: PathBuf,
}

impl TdxAttester {
    pub fn new(io: Arc<dyn KernelIo>) -> Self {
        Self::with_paths(io, tsm::TSM_REPORT_ROOT, TDX_GUEST_DEVICE, CCEL_PATH, RTMR_SYSFS_DIR)
    }

    pub fn with_paths(
        io: Arc<dyn KernelIo>,
        tsm_root: impl Into<PathBuf>,
        device: impl Into<PathBuf>,
        ccel: impl Into<PathBuf>,
        rtmr_dir: impl Into<PathBuf>,
    ) -> Self {
        Self { io, tsm_root: tsm_root.into(), device: device.into(), ccel: ccel.into(), rtmr_dir: rtmr_dir.into() }
    }

    /// The 1024-byte TDREPORT binding `report_data`.
    pub fn tdreport(&self, report_data: &[u8; 64]) -> Result<[u8; TDREPORT_LEN], AttesterError> {
        let mut req = Box::new(TdxReportReq { reportdata: *report_data, tdreport: [0; TDREPORT_LEN] });
        // SAFETY: `req` is the struct TDX_CMD_GET_REPORT0 encodes; it lives across the call.
        unsafe { self.io.ioctl(&self.device, TDX_CMD_GET_REPORT0, &mut *req as *mut TdxReportReq as *mut c_void) }
            .map_err(|e| AttesterError::io("TDX_CMD_GET_REPORT0 on", &self.device, e))?;
        if req.tdreport[TDREPORT_REPORTDATA..TDREPORT_REPORTDATA + 64] != report_data[..] {
            return Err(AttesterError::Malformed("TDREPORT does not carry the report_data we asked for".into()));
        }
        Ok(req.tdreport)
    }

    fn rtmr_file(&self, index: u64) -> Result<PathBuf, AttesterError> {
        if index > 3 {
            return Err(AttesterError::Invalid(format!("RTMR index {index} out of range (0..=3)")));
        }
        Ok(self.rtmr_dir.join(format!("rtmr{index}:sha384")))
    }
}

impl Attester for TdxAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Tdx
    }

    fn evidence(&self, req: &EvidenceRequest<'_>) -> Result<serde_json::Value, AttesterError> {
        let inblob = pad_report_data(req.report_data)?;
        let report = tsm::get_report(self.io.as_ref(), &self.tsm_root, "tdx_guest", &inblob, false)?;
        let cc_eventlog = match self.io.read(&self.ccel) {
            Ok(bytes) => Some(STANDARD.encode(bytes)),
            Err(err) => {
                tracing::warn!(path = %self.ccel.display(), %err, "no CC event log; evidence carries the quote only");
                None
            }
        };
        let evidence = TdxEvidence {
            cc_eventlog,
            quote: STANDARD.encode(&report.outblob),
            aa_eventlog: req.aa_eventlog.map(str::to_owned),
        };
        serde_json::to_value(evidence).map_err(|e| AttesterError::Malformed(e.to_string()))
    }

    fn extend_register(&self, index: u64, digest: &[u8]) -> Result<(), AttesterError> {
        if digest.len() != 48 {
            return Err(AttesterError::Invalid(format!("RTMR digests are 48 bytes (SHA-384), got {}", digest.len())));
        }
        let file = self.rtmr_file(index)?;
        if !self.io.exists(&file) {
            return Err(AttesterError::Unsupported {
                tee: TeeKind::Tdx,
                what: "RTMR extension on this kernel (no /sys/class/misc/tdx_guest/measurements; needs Linux 6.16+)",
            });
        }
        self.io.write(&file, digest).map_err(|e| AttesterError::io("extend RTMR via", &file, e))
    }

    fn read_register(&self, index: u64) -> Result<Vec<u8>, AttesterError> {
        let file = self.rtmr_file(index)?;
        if self.io.exists(&file) {
            let value = self.io.read(&file).map_err(|e| AttesterError::io("read RTMR from", &file, e))?;
            if value.len() != 48 {
                return Err(AttesterError::Malformed(format!(
                    "{} holds {} bytes, not 48",
                    file.display(),
                    value.len()
                )));
            }
            return Ok(value);
        }
        let report = self.tdreport(&[0; 64])?;
        let at = TDREPORT_RTMR0 + 48 * index as usize;
        report
            .get(at..at + 48)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| AttesterError::Invalid(format!("RTMR index {index} out of range (0..=3)")))
    }

    fn initdata_field(&self) -> Result<Vec<u8>, AttesterError> {
        let report = self.tdreport(&[0; 64])?;
        Ok(report[TDREPORT_MRCONFIGID..TDREPORT_MRCONFIGID + 48].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_report0_request_number_matches_the_kernel_header() {
        assert_eq!(std::mem::size_of::<TdxReportReq>(), 1088);
        assert_eq!(TDX_CMD_GET_REPORT0, 0xC440_5401);
        assert_eq!(TDREPORT_MRCONFIGID, 576);
        assert_eq!(TDREPORT_RTMR0, 720);
    }
}
