//! Initdata: the TOML document the host hands the guest at launch (policy,
//! KBS location, agent configs) and whose digest the hardware measured into
//! TDX MRCONFIGID (48 bytes) or SNP HOST_DATA (32 bytes). The agent refuses to
//! start when the file it was given does not match that measurement.
//!
//! Format (CoCo initdata spec): `version = "0.1.0"`, `algorithm = "sha256" |
//! "sha384" | "sha512"`, `[data]` of strings. The digest is taken over the
//! file's bytes, zero-padded to the field (a digest longer than the field is
//! a mismatch, never truncated).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::attester::{Attester, AttesterError};

/// Largest initdata document accepted.
pub const MAX_INITDATA: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum InitdataError {
    #[error("cannot read initdata {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("initdata {path} is larger than {MAX_INITDATA} bytes")]
    TooLarge { path: PathBuf },
    #[error("initdata is not valid: {0}")]
    Parse(String),
    #[error("initdata algorithm {0:?} is not supported (sha256, sha384, sha512)")]
    Algorithm(String),
    #[error("cannot read the hardware initdata measurement: {0}")]
    Hardware(#[from] AttesterError),
    #[error("initdata digest {digest} does not match the hardware measurement {measured}: refusing to start with configuration the TEE did not measure")]
    Mismatch { digest: String, measured: String },
}

#[derive(Debug, Deserialize)]
struct Document {
    version: String,
    algorithm: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// A parsed initdata document with its raw text (sent to the KBS as is).
#[derive(Debug, Clone)]
pub struct Initdata {
    pub raw: String,
    pub algorithm: String,
    pub data: BTreeMap<String, String>,
}

impl Initdata {
    pub fn load(path: &Path) -> Result<Self, InitdataError> {
        let meta = std::fs::metadata(path).map_err(|source| InitdataError::Read { path: path.into(), source })?;
        if meta.len() > MAX_INITDATA {
            return Err(InitdataError::TooLarge { path: path.into() });
        }
        let raw = std::fs::read_to_string(path).map_err(|source| InitdataError::Read { path: path.into(), source })?;
        Self::parse(raw)
    }

    pub fn parse(raw: String) -> Result<Self, InitdataError> {
        let doc: Document = toml::from_str(&raw).map_err(|e| InitdataError::Parse(e.to_string()))?;
        if doc.version.is_empty() {
            return Err(InitdataError::Parse("empty version".into()));
        }
        digest(&doc.algorithm, b"")?;
        Ok(Self { raw, algorithm: doc.algorithm, data: doc.data })
    }

    pub fn digest(&self) -> Vec<u8> {
        digest(&self.algorithm, self.raw.as_bytes()).expect("algorithm checked at parse")
    }

    /// Compares the digest with the attester's measurement field.
    pub fn verify(&self, attester: &dyn Attester) -> Result<(), InitdataError> {
        let measured = attester.initdata_field()?;
        let digest = self.digest();
        let mut expected = vec![0u8; measured.len()];
        let matches = digest.len() <= measured.len() && {
            expected[..digest.len()].copy_from_slice(&digest);
            expected == measured
        };
        if !matches {
            return Err(InitdataError::Mismatch { digest: hex::encode(&digest), measured: hex::encode(&measured) });
        }
        Ok(())
    }
}

fn digest(algorithm: &str, bytes: &[u8]) -> Result<Vec<u8>, InitdataError> {
    Ok(match algorithm {
        "sha256" => Sha256::digest(bytes).to_vec(),
        "sha384" => Sha384::digest(bytes).to_vec(),
        "sha512" => Sha512::digest(bytes).to_vec(),
        other => return Err(InitdataError::Algorithm(other.into())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attester::sample::SampleAttester;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = \"x\"\n";

    #[test]
    fn matching_digest_is_accepted() {
        let init = Initdata::parse(DOC.into()).unwrap();
        let attester = SampleAttester { initdata: Some(init.digest()), ..Default::default() };
        init.verify(&attester).unwrap();
    }

    #[test]
    fn sha256_digest_is_zero_padded_into_a_48_byte_field() {
        let init = Initdata::parse(DOC.replace("sha384", "sha256")).unwrap();
        let mut field = init.digest();
        field.resize(48, 0);
        init.verify(&SampleAttester { initdata: Some(field), ..Default::default() }).unwrap();
    }

    #[test]
    fn mismatch_refuses() {
        let init = Initdata::parse(DOC.into()).unwrap();
        let err = init.verify(&SampleAttester { initdata: Some(vec![0; 48]), ..Default::default() }).unwrap_err();
        assert!(matches!(err, InitdataError::Mismatch { .. }), "{err}");
        // sha384 does not fit a 32-byte HOST_DATA: mismatch, not truncation.
        let short = init.digest()[..32].to_vec();
        assert!(init.verify(&SampleAttester { initdata: Some(short), ..Default::default() }).is_err());
    }

    #[test]
    fn rejects_unknown_algorithm_and_garbage() {
        assert!(matches!(Initdata::parse(DOC.replace("sha384", "md5")), Err(InitdataError::Algorithm(_))));
        assert!(Initdata::parse("not toml [".into()).is_err());
    }
}
