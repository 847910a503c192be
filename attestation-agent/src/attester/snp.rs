//! AMD SEV-SNP: the attestation report and its certificate chain, from
//! configfs-tsm (provider `sev_guest`: `outblob` = report, `auxblob` = cert
//! table) when the kernel has it, else `/dev/sev-guest` SNP_GET_EXT_REPORT.
//!
//! Evidence: `{"attestation_report": <sev AttestationReport>, "cert_chain":
//! [<sev CertTableEntry>] | null}`, serialized with the `sev` crate's types,
//! which is what Trustee's SNP verifier deserializes.
//!
//! Must never trust an offset or length in the certificate table without
//! checking it against the buffer, and never asks for an unbounded buffer.

use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::CertTableEntry;
use sev::parser::ByteParser;

use super::device::{iowr, KernelIo};
use super::{pad_report_data, tsm, Attester, AttesterError, EvidenceRequest, TeeKind};

pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";
/// Size of an SNP attestation report.
pub const REPORT_LEN: usize = 0x4A0;
pub const REPORT_DATA_OFFSET: usize = 0x50;
pub const HOST_DATA_OFFSET: usize = 0xC0;
pub const HOST_DATA_LEN: usize = 32;

/// `struct snp_report_req` (include/uapi/linux/sev-guest.h).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SnpReportReq {
    pub user_data: [u8; 64],
    pub vmpl: u32,
    pub rsvd: [u8; 28],
}

/// `struct snp_ext_report_req`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SnpExtReportReq {
    pub data: SnpReportReq,
    pub certs_address: u64,
    pub certs_len: u32,
}

/// `struct snp_report_resp`: the firmware's MSG_REPORT_RSP (status u32,
/// report_size u32, 24 reserved bytes, then the report).
#[repr(C)]
pub struct SnpReportResp {
    pub data: [u8; 4000],
}

/// `struct snp_guest_request_ioctl`.
#[repr(C)]
pub struct SnpGuestRequestIoctl {
    pub msg_version: u8,
    pub req_data: u64,
    pub resp_data: u64,
    /// fw_error in the low 32 bits, vmm_error in the high 32 bits.
    pub exitinfo2: u64,
}

/// `SNP_GET_EXT_REPORT = _IOWR('S', 0x2, struct snp_guest_request_ioctl)`.
pub const SNP_GET_EXT_REPORT: u64 = iowr(b'S', 2, std::mem::size_of::<SnpGuestRequestIoctl>());
/// vmm_error: the certificate buffer was too small; `certs_len` holds the need.
pub const SNP_GUEST_VMM_ERR_INVALID_LEN: u64 = 1;
const PAGE: usize = 4096;
/// Largest certificate buffer we hand the kernel (the VCEK chain is ~5 KiB).
pub const MAX_CERTS_LEN: usize = 256 * 1024;
const CERT_ENTRY_LEN: usize = 24;

#[derive(Serialize)]
struct SnpEvidence {
    attestation_report: AttestationReport,
    cert_chain: Option<Vec<CertTableEntry>>,
}

#[derive(Debug)]
pub struct SnpAttester {
    io: Arc<dyn KernelIo>,
    tsm_root: PathBuf,
    device: PathBuf,
}

impl SnpAttester {
    pub fn new(io: Arc<dyn KernelIo>) -> Self {
        Self::with_paths(io, tsm::TSM_REPORT_ROOT, SEV_GUEST_DEVICE)
    }

    pub fn with_paths(io: Arc<dyn KernelIo>, tsm_root: impl Into<PathBuf>, device: impl Into<PathBuf>) -> Self {
        Self { io, tsm_root: tsm_root.into(), device: device.into() }
    }

    /// Raw report and raw certificate table binding `report_data`.
    pub fn raw_report(&self, report_data: &[u8; 64]) -> Result<([u8; REPORT_LEN], Option<Vec<u8>>), AttesterError> {
        let (report, certs) = if tsm::available(self.io.as_ref(), &self.tsm_root) {
            let r = tsm::get_report(self.io.as_ref(), &self.tsm_root, "sev_guest", report_data, true)?;
            (r.outblob, r.auxblob)
        } else {
            self.ext_report_ioctl(report_data)?
        };
        let Some(fixed) = report.first_chunk::<REPORT_LEN>() else {
            return Err(AttesterError::Malformed(format!(
                "SNP report is {} bytes, expected {REPORT_LEN}",
                report.len()
            )));
        };
        if fixed[REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + 64] != report_data[..] {
            return Err(AttesterError::Malformed("SNP report does not carry the report_data we asked for".into()));
        }
        Ok((*fixed, certs))
    }

    fn ext_report_ioctl(&self, report_data: &[u8; 64]) -> Result<(Vec<u8>, Option<Vec<u8>>), AttesterError> {
        let mut certs_len = 4 * PAGE;
        loop {
            let mut certs = vec![0u8; certs_len];
            let mut req = SnpExtReportReq {
                data: SnpReportReq { user_data: *report_data, vmpl: 0, rsvd: [0; 28] },
                certs_address: certs.as_mut_ptr() as u64,
                certs_len: certs_len as u32,
            };
            let mut resp = Box::new(SnpReportResp { data: [0; 4000] });
            let mut ioctl = SnpGuestRequestIoctl {
                msg_version: 1,
                req_data: &mut req as *mut SnpExtReportReq as u64,
                resp_data: &mut *resp as *mut SnpReportResp as u64,
                exitinfo2: 0,
            };
            // SAFETY: every pointer refers to a live buffer of the stated size.
            let rc = unsafe {
                self.io.ioctl(&self.device, SNP_GET_EXT_REPORT, &mut ioctl as *mut SnpGuestRequestIoctl as *mut c_void)
            };
            if let Err(err) = rc {
                if ioctl.exitinfo2 >> 32 == SNP_GUEST_VMM_ERR_INVALID_LEN {
                    let need = req.certs_len as usize;
                    if need <= certs_len || need > MAX_CERTS_LEN {
                        return Err(AttesterError::Malformed(format!(
                            "host asks for a {need}-byte certificate buffer (we offered {certs_len}, limit {MAX_CERTS_LEN})"
                        )));
                    }
                    certs_len = need.div_ceil(PAGE) * PAGE;
                    continue;
                }
                return Err(AttesterError::Io {
                    op: "SNP_GET_EXT_REPORT on",
                    path: format!("{} (exitinfo2 {:#x})", self.device.display(), ioctl.exitinfo2),
                    source: err,
                });
            }
            let [s0, s1, s2, s3, z0, z1, z2, z3, ..] = resp.data;
            let status = u32::from_le_bytes([s0, s1, s2, s3]);
            let size = u32::from_le_bytes([z0, z1, z2, z3]) as usize;
            if status != 0 {
                return Err(AttesterError::Malformed(format!("SNP firmware report status {status:#x}")));
            }
            if size < REPORT_LEN || 32 + size > resp.data.len() {
                return Err(AttesterError::Malformed(format!("SNP firmware report size {size}")));
            }
            let report = resp.data[32..32 + REPORT_LEN].to_vec();
            let certs = if certs.iter().all(|b| *b == 0) { None } else { Some(certs) };
            return Ok((report, certs));
        }
    }
}

/// Parses the GUID table of an extended report (entries of GUID, offset,
/// length; an all-zero GUID ends it). Offsets are from the table start.
pub fn parse_cert_table(table: &[u8]) -> Result<Vec<CertTableEntry>, AttesterError> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    loop {
        let entry = table
            .get(at..)
            .and_then(<[u8]>::first_chunk::<CERT_ENTRY_LEN>)
            .ok_or_else(|| AttesterError::Malformed("SNP certificate table is not terminated".into()))?;
        let [guid @ .., o0, o1, o2, o3, l0, l1, l2, l3] = entry;
        if guid.iter().all(|b| *b == 0) {
            break;
        }
        let offset = u32::from_le_bytes([*o0, *o1, *o2, *o3]) as usize;
        let length = u32::from_le_bytes([*l0, *l1, *l2, *l3]) as usize;
        let data = offset.checked_add(length).and_then(|end| table.get(offset..end)).ok_or_else(|| {
            AttesterError::Malformed(format!(
                "SNP certificate entry {} points at {offset}+{length}, outside the {}-byte table",
                entries.len(),
                table.len()
            ))
        })?;
        let uuid = uuid::Uuid::from_bytes(*guid);
        let cert =
            CertTableEntry::from_guid(&uuid, data.to_vec()).map_err(|e| AttesterError::Malformed(e.to_string()))?;
        entries.push(cert);
        at += CERT_ENTRY_LEN;
        if entries.len() > 64 {
            return Err(AttesterError::Malformed("SNP certificate table has more than 64 entries".into()));
        }
    }
    Ok(entries)
}

impl Attester for SnpAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }

    fn evidence(&self, req: &EvidenceRequest<'_>) -> Result<serde_json::Value, AttesterError> {
        let report_data = pad_report_data(req.report_data)?;
        let (raw, certs) = self.raw_report(&report_data)?;
        let attestation_report = AttestationReport::from_bytes(&raw)
            .map_err(|e| AttesterError::Malformed(format!("SNP report does not parse: {e}")))?;
        let cert_chain = certs.as_deref().map(parse_cert_table).transpose()?;
        serde_json::to_value(SnpEvidence { attestation_report, cert_chain })
            .map_err(|e| AttesterError::Malformed(e.to_string()))
    }

    fn initdata_field(&self) -> Result<Vec<u8>, AttesterError> {
        let (raw, _) = self.raw_report(&[0; 64])?;
        Ok(raw[HOST_DATA_OFFSET..HOST_DATA_OFFSET + HOST_DATA_LEN].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_report_structs_match_the_kernel_header() {
        assert_eq!(std::mem::size_of::<SnpReportReq>(), 96);
        assert_eq!(std::mem::size_of::<SnpExtReportReq>(), 112);
        assert_eq!(std::mem::size_of::<SnpGuestRequestIoctl>(), 32);
        assert_eq!(SNP_GET_EXT_REPORT, 0xC020_5302);
    }

    #[test]
    fn cert_table_rejects_entries_pointing_outside() {
        let mut table = vec![0u8; 48 + 8];
        table[..16].copy_from_slice(&[0x63; 16]);
        table[16..20].copy_from_slice(&48u32.to_le_bytes());
        table[20..24].copy_from_slice(&1000u32.to_le_bytes());
        let err = parse_cert_table(&table).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }

    #[test]
    fn cert_table_without_terminator_is_refused() {
        let mut table = vec![0u8; 30];
        table[..16].copy_from_slice(&[0x63; 16]);
        table[20..24].copy_from_slice(&4u32.to_le_bytes());
        assert!(parse_cert_table(&table).unwrap_err().to_string().contains("not terminated"));
    }

    #[test]
    fn cert_table_shorter_than_one_entry_is_refused() {
        for len in [0, 1, 16, CERT_ENTRY_LEN - 1] {
            let table = vec![0x63u8; len];
            let err = parse_cert_table(&table).unwrap_err();
            assert!(err.to_string().contains("not terminated"), "{len} bytes: {err}");
        }
    }
}
