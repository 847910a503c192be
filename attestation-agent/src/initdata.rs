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

use crate::attester::{Attester, AttesterError, TeeKind};

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
    #[error(
        "initdata {bound} is already bound on this TEE (which has no initdata field); refusing to rebind it to {given}"
    )]
    Rebind { bound: String, given: String },
    #[error("initdata digest is {0} bytes; expected 1..=64 (a sha256/384/512 digest)")]
    DigestLength(usize),
    #[error("{tee} measures initdata in {expected} bytes, but the hardware field read is {found} bytes")]
    FieldLength { tee: TeeKind, expected: usize, found: usize },
}

/// How BindInitData ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The digest equals the hardware measurement field.
    Matched,
    /// The platform has no initdata field (SE, the sample attester without a
    /// configured field): accepted and recorded, proves nothing.
    Unsupported,
}

/// Size of the field a TEE measures initdata into; None: no such field.
pub fn field_len(tee: TeeKind) -> Option<usize> {
    match tee {
        TeeKind::Tdx => Some(48),
        TeeKind::Snp => Some(32),
        TeeKind::Se | TeeKind::AzSnpVtpm | TeeKind::AzTdxVtpm | TeeKind::Sample => None,
    }
}

/// `digest` zero-padded or truncated to `len` bytes (guest-components' rule).
pub fn fit_to_field(digest: &[u8], len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = digest.iter().copied().take(len).collect();
    out.resize(len, 0);
    out
}

/// Compares `digest` with the attester's initdata field: TDX MRCONFIGID (48
/// bytes), SNP HOST_DATA (32 bytes), the sample attester's configured field.
/// A platform without a field answers [`Binding::Unsupported`].
pub fn bind(attester: &dyn Attester, digest: &[u8]) -> Result<Binding, InitdataError> {
    if digest.is_empty() || digest.len() > 64 {
        return Err(InitdataError::DigestLength(digest.len()));
    }
    let measured = match attester.initdata_field() {
        Ok(field) => field,
        Err(AttesterError::Unsupported { .. }) => return Ok(Binding::Unsupported),
        Err(err) => return Err(err.into()),
    };
    let tee = attester.tee();
    let expected_len = field_len(tee).unwrap_or(measured.len());
    if measured.len() != expected_len {
        return Err(InitdataError::FieldLength { tee, expected: expected_len, found: measured.len() });
    }
    if fit_to_field(digest, expected_len) != measured {
        return Err(InitdataError::Mismatch { digest: hex::encode(digest), measured: hex::encode(&measured) });
    }
    Ok(Binding::Matched)
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

    /// The digest of the raw document. Fails only if `algorithm` was changed
    /// after [`Initdata::parse`] to one that is not supported.
    pub fn digest(&self) -> Result<Vec<u8>, InitdataError> {
        digest(&self.algorithm, self.raw.as_bytes())
    }

    /// Compares the digest with the attester's measurement field ([`bind`]).
    pub fn verify(&self, attester: &dyn Attester) -> Result<Binding, InitdataError> {
        bind(attester, &self.digest()?)
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
    use crate::attester::EvidenceRequest;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = \"x\"\n";

    #[test]
    fn matching_digest_is_accepted() {
        let init = Initdata::parse(DOC.into()).unwrap();
        let attester = SampleAttester { initdata: Some(init.digest().unwrap()), ..Default::default() };
        init.verify(&attester).unwrap();
    }

    #[test]
    fn sha256_digest_is_zero_padded_into_a_48_byte_field() {
        let init = Initdata::parse(DOC.replace("sha384", "sha256")).unwrap();
        let mut field = init.digest().unwrap();
        field.resize(48, 0);
        init.verify(&SampleAttester { initdata: Some(field), ..Default::default() }).unwrap();
    }

    #[test]
    fn digest_with_an_algorithm_changed_after_parse_is_an_error() {
        let mut init = Initdata::parse(DOC.into()).unwrap();
        init.algorithm = "md5".into();
        let err = init.digest().unwrap_err();
        assert!(matches!(err, InitdataError::Algorithm(ref a) if a == "md5"), "{err}");
        assert!(init.verify(&SampleAttester::default()).is_err());
    }

    #[test]
    fn mismatch_refuses() {
        let init = Initdata::parse(DOC.into()).unwrap();
        let err = init.verify(&SampleAttester { initdata: Some(vec![0; 48]), ..Default::default() }).unwrap_err();
        assert!(matches!(err, InitdataError::Mismatch { .. }), "{err}");
    }

    /// A TEE with a fixed initdata field, as the hardware reports it.
    #[derive(Debug)]
    struct Field(TeeKind, Vec<u8>);

    impl Attester for Field {
        fn tee(&self) -> TeeKind {
            self.0
        }
        fn evidence(&self, _: &EvidenceRequest<'_>) -> Result<serde_json::Value, AttesterError> {
            Ok(serde_json::Value::Null)
        }
        fn initdata_field(&self) -> Result<Vec<u8>, AttesterError> {
            Ok(self.1.clone())
        }
    }

    fn digest_of(alg: &str) -> Vec<u8> {
        digest(alg, DOC.as_bytes()).unwrap()
    }

    #[test]
    fn tdx_mrconfigid_takes_sha256_padded_sha384_exact_sha512_truncated() {
        let sha256 = digest_of("sha256");
        let mut padded = sha256.clone();
        padded.resize(48, 0);
        assert_eq!(bind(&Field(TeeKind::Tdx, padded.clone()), &sha256).unwrap(), Binding::Matched);
        // The padding is zeros: a field with the digest but other filler is a mismatch.
        let mut filled = padded.clone();
        filled[47] = 1;
        assert!(matches!(bind(&Field(TeeKind::Tdx, filled), &sha256), Err(InitdataError::Mismatch { .. })));

        let sha384 = digest_of("sha384");
        assert_eq!(bind(&Field(TeeKind::Tdx, sha384.clone()), &sha384).unwrap(), Binding::Matched);

        let sha512 = digest_of("sha512");
        assert_eq!(bind(&Field(TeeKind::Tdx, sha512[..48].to_vec()), &sha512).unwrap(), Binding::Matched);
        assert!(bind(&Field(TeeKind::Tdx, sha384), &sha512).is_err());
    }

    #[test]
    fn snp_host_data_takes_sha256_exact_and_longer_digests_truncated() {
        let sha256 = digest_of("sha256");
        assert_eq!(bind(&Field(TeeKind::Snp, sha256.clone()), &sha256).unwrap(), Binding::Matched);
        for alg in ["sha384", "sha512"] {
            let d = digest_of(alg);
            assert_eq!(bind(&Field(TeeKind::Snp, d[..32].to_vec()), &d).unwrap(), Binding::Matched, "{alg}");
            let mut other = d[..32].to_vec();
            other[0] ^= 1;
            assert!(bind(&Field(TeeKind::Snp, other), &d).is_err(), "{alg}");
        }
        assert_eq!(fit_to_field(&[1, 2, 3], 5), [1, 2, 3, 0, 0]);
        assert_eq!(fit_to_field(&[1, 2, 3], 2), [1, 2]);
    }

    #[test]
    fn a_hardware_field_of_the_wrong_size_is_an_error_not_a_match() {
        let sha256 = digest_of("sha256");
        let err = bind(&Field(TeeKind::Snp, [sha256.clone(), vec![0; 16]].concat()), &sha256).unwrap_err();
        assert!(matches!(err, InitdataError::FieldLength { expected: 32, found: 48, .. }), "{err}");
    }

    #[test]
    fn platforms_without_a_field_accept_and_bad_digests_are_refused() {
        let sample = SampleAttester::default();
        assert_eq!(bind(&sample, &digest_of("sha256")).unwrap(), Binding::Unsupported);
        assert!(matches!(bind(&sample, &[]), Err(InitdataError::DigestLength(0))));
        assert!(matches!(bind(&sample, &[0; 65]), Err(InitdataError::DigestLength(65))));
    }

    #[test]
    fn rejects_unknown_algorithm_and_garbage() {
        assert!(matches!(Initdata::parse(DOC.replace("sha384", "md5")), Err(InitdataError::Algorithm(_))));
        assert!(Initdata::parse("not toml [".into()).is_err());
    }
}
