//! The sample TEE: no hardware, evidence `{"svn", "report_data"}` with the
//! binding hash as is (base64 standard), which is what Trustee's sample
//! verifier checks. For development and tests only; it is built only when the
//! config says `type = "sample"`.
//!
//! Its "registers" live in this process's memory: they prove nothing and vanish
//! with it.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha384};

use super::{Attester, AttesterError, EvidenceRequest, TeeKind, REPORT_DATA_LEN};

#[derive(Debug, Default)]
pub struct SampleAttester {
    /// Registers start at zero, like RTMRs at boot.
    pub registers: Mutex<HashMap<u64, [u8; 48]>>,
    /// What `initdata_field` reports (tests set it; zero by default).
    pub initdata: Option<Vec<u8>>,
}

impl Attester for SampleAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Sample
    }

    fn evidence(&self, req: &EvidenceRequest<'_>) -> Result<serde_json::Value, AttesterError> {
        if req.report_data.len() > REPORT_DATA_LEN {
            return Err(AttesterError::ReportDataTooLong(req.report_data.len()));
        }
        Ok(serde_json::json!({
            "svn": "1",
            "report_data": STANDARD.encode(req.report_data),
        }))
    }

    fn extend_register(&self, index: u64, digest: &[u8]) -> Result<(), AttesterError> {
        let mut regs = self.registers.lock().unwrap_or_else(|p| p.into_inner());
        let reg = regs.entry(index).or_insert([0; 48]);
        let mut h = Sha384::new();
        h.update(*reg);
        h.update(digest);
        reg.copy_from_slice(&h.finalize());
        Ok(())
    }

    fn read_register(&self, index: u64) -> Result<Vec<u8>, AttesterError> {
        let regs = self.registers.lock().unwrap_or_else(|p| p.into_inner());
        Ok(regs.get(&index).copied().unwrap_or([0; 48]).to_vec())
    }

    fn initdata_field(&self) -> Result<Vec<u8>, AttesterError> {
        self.initdata
            .clone()
            .ok_or(AttesterError::Unsupported { tee: TeeKind::Sample, what: "an initdata measurement field" })
    }
}
