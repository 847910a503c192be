//! IBM Secure Execution (s390x): the Ultravisor measures the guest in answer
//! to an attestation request block (ARCB) that the verifier built and the KBS
//! sent as the challenge nonce (JSON `SeAttestationRequest`). The binding hash
//! (SHA-512) becomes the user data of the measurement.
//!
//! Evidence: the `SeAttestationResponse` JSON Trustee's SE verifier reads
//! (`measurement`, `additional_data`, `user_data`, `cuid`,
//! `encr_measurement_key`, `encr_request_nonce`, `image_hdr_tags`, base64).
//!
//! Must never pass a length to the Ultravisor that is larger than the buffer
//! behind it, nor accept request sizes beyond the kernel's limits.

use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::device::{iowr, KernelIo};
use super::{Attester, AttesterError, EvidenceRequest, TeeKind, REPORT_DATA_LEN};

pub const UV_DEVICE: &str = "/dev/uv";

/// `struct uvio_ioctl_cb` (arch/s390/include/uapi/asm/uvdevice.h).
#[repr(C)]
pub struct UvioIoctlCb {
    pub flags: u32,
    pub uv_rc: u16,
    pub uv_rrc: u16,
    pub argument_addr: u64,
    pub argument_len: u32,
    pub reserved14: [u8; 0x40 - 0x14],
}

/// `struct uvio_attest`.
#[repr(C)]
pub struct UvioAttest {
    pub arcb_addr: u64,
    pub meas_addr: u64,
    pub add_data_addr: u64,
    pub user_data: [u8; 0x100],
    pub config_uid: [u8; 0x10],
    pub arcb_len: u32,
    pub meas_len: u32,
    pub add_data_len: u32,
    pub user_data_len: u16,
    pub reserved136: u16,
}

/// `UVIO_IOCTL_ATT = _IOWR('u', 1, struct uvio_ioctl_cb)`.
pub const UVIO_IOCTL_ATT: u64 = iowr(b'u', 1, std::mem::size_of::<UvioIoctlCb>());
/// UV return code "executed successfully".
pub const UVC_RC_EXECUTED: u16 = 0x0001;
/// Kernel limits (UVIO_ATT_ARCB_MAX_LEN, _MEASUREMENT_MAX_LEN, _ADDITIONAL_MAX_LEN).
pub const ARCB_MAX: usize = 8 * 4096;
pub const MEASUREMENT_MAX: usize = 64;
pub const ADDITIONAL_MAX: usize = 0x8000;

mod b64 {
    use super::*;
    pub fn ser<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// The challenge the KBS sends for SE, as JSON in `nonce`.
#[derive(Debug, Deserialize)]
pub struct SeAttestationRequest {
    #[serde(deserialize_with = "b64::de")]
    pub request_blob: Vec<u8>,
    pub measurement_size: u32,
    pub additional_size: u32,
    #[serde(deserialize_with = "b64::de")]
    pub encr_measurement_key: Vec<u8>,
    #[serde(deserialize_with = "b64::de")]
    pub encr_request_nonce: Vec<u8>,
    #[serde(deserialize_with = "b64::de")]
    pub image_hdr_tags: Vec<u8>,
}

#[derive(Debug, Serialize)]
struct SeAttestationResponse {
    #[serde(serialize_with = "b64::ser")]
    measurement: Vec<u8>,
    #[serde(serialize_with = "b64::ser")]
    additional_data: Vec<u8>,
    #[serde(serialize_with = "b64::ser")]
    user_data: Vec<u8>,
    #[serde(serialize_with = "b64::ser")]
    cuid: Vec<u8>,
    #[serde(serialize_with = "b64::ser")]
    encr_measurement_key: Vec<u8>,
    #[serde(serialize_with = "b64::ser")]
    encr_request_nonce: Vec<u8>,
    #[serde(serialize_with = "b64::ser")]
    image_hdr_tags: Vec<u8>,
}

#[derive(Debug)]
pub struct SeAttester {
    io: Arc<dyn KernelIo>,
    device: PathBuf,
}

impl SeAttester {
    pub fn new(io: Arc<dyn KernelIo>) -> Self {
        Self::with_device(io, UV_DEVICE)
    }

    pub fn with_device(io: Arc<dyn KernelIo>, device: impl Into<PathBuf>) -> Self {
        Self { io, device: device.into() }
    }
}

impl Attester for SeAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Se
    }

    fn evidence(&self, req: &EvidenceRequest<'_>) -> Result<serde_json::Value, AttesterError> {
        let nonce = req.kbs_nonce.ok_or_else(|| {
            AttesterError::Invalid(
                "SE evidence needs the KBS challenge (the attestation request travels in the nonce)".into(),
            )
        })?;
        let request: SeAttestationRequest = serde_json::from_str(nonce)
            .map_err(|e| AttesterError::Malformed(format!("KBS nonce is not an SE attestation request: {e}")))?;
        if req.report_data.len() > REPORT_DATA_LEN {
            return Err(AttesterError::ReportDataTooLong(req.report_data.len()));
        }
        let (meas_len, add_len) = (request.measurement_size as usize, request.additional_size as usize);
        if request.request_blob.is_empty() || request.request_blob.len() > ARCB_MAX {
            return Err(AttesterError::Malformed(format!(
                "SE request blob is {} bytes (1..={ARCB_MAX})",
                request.request_blob.len()
            )));
        }
        if meas_len == 0 || meas_len > MEASUREMENT_MAX || add_len > ADDITIONAL_MAX {
            return Err(AttesterError::Malformed(format!(
                "SE sizes out of range: measurement {meas_len} (1..={MEASUREMENT_MAX}), additional {add_len} (..={ADDITIONAL_MAX})"
            )));
        }
        let mut user_data = [0u8; 0x100];
        user_data[..REPORT_DATA_LEN].copy_from_slice(&super::pad_report_data(req.report_data)?);
        let mut arcb = request.request_blob.clone();
        let mut measurement = vec![0u8; meas_len];
        let mut additional = vec![0u8; add_len];
        let mut attest = Box::new(UvioAttest {
            arcb_addr: arcb.as_mut_ptr() as u64,
            meas_addr: measurement.as_mut_ptr() as u64,
            add_data_addr: if add_len == 0 { 0 } else { additional.as_mut_ptr() as u64 },
            user_data,
            config_uid: [0; 0x10],
            arcb_len: arcb.len() as u32,
            meas_len: meas_len as u32,
            add_data_len: add_len as u32,
            user_data_len: REPORT_DATA_LEN as u16,
            reserved136: 0,
        });
        let mut cb = UvioIoctlCb {
            flags: 0,
            uv_rc: 0,
            uv_rrc: 0,
            argument_addr: &mut *attest as *mut UvioAttest as u64,
            argument_len: std::mem::size_of::<UvioAttest>() as u32,
            reserved14: [0; 0x40 - 0x14],
        };
        // SAFETY: every address points at a live buffer of the stated length.
        unsafe { self.io.ioctl(&self.device, UVIO_IOCTL_ATT, &mut cb as *mut UvioIoctlCb as *mut c_void) }
            .map_err(|e| AttesterError::io("UVIO_IOCTL_ATT on", &self.device, e))?;
        if cb.uv_rc != UVC_RC_EXECUTED {
            return Err(AttesterError::Malformed(format!(
                "Ultravisor refused the attestation request: rc {:#06x} rrc {:#06x}",
                cb.uv_rc, cb.uv_rrc
            )));
        }
        let response = SeAttestationResponse {
            measurement,
            additional_data: {
                // The Ultravisor reports how much of the buffer it filled.
                additional.truncate(attest.add_data_len as usize);
                additional
            },
            user_data: user_data[..REPORT_DATA_LEN].to_vec(),
            cuid: attest.config_uid.to_vec(),
            encr_measurement_key: request.encr_measurement_key,
            encr_request_nonce: request.encr_request_nonce,
            image_hdr_tags: request.image_hdr_tags,
        };
        serde_json::to_value(response).map_err(|e| AttesterError::Malformed(e.to_string()))
    }

    fn register_digest_len(&self) -> usize {
        64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvio_structs_match_the_kernel_header() {
        assert_eq!(std::mem::size_of::<UvioIoctlCb>(), 0x40);
        assert_eq!(std::mem::size_of::<UvioAttest>(), 0x138);
        assert_eq!(std::mem::offset_of!(UvioAttest, config_uid), 0x118);
        assert_eq!(std::mem::offset_of!(UvioAttest, user_data_len), 0x134);
        assert_eq!(UVIO_IOCTL_ATT, 0xC040_7501);
    }
}
