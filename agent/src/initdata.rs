//! initdata: the tenant's configuration for this guest (`aa.toml`, `cdh.toml`,
//! `policy.rego`), delivered by the host as a block device whose digest the
//! TEE measures (TDX MRCONFIGID, SNP HOST_DATA), so the attestation-agent can
//! prove which configuration the guest runs with.
//!
//! Device layout, as kata's runtime writes it: the 8 bytes `initdata`, a
//! little-endian u64 length, then that many bytes of gzip whose content is the
//! initdata TOML document (`version = "0.1.0"`, `algorithm`, `[data]`). The
//! digest is taken over the decompressed document's bytes exactly as read.
//!
//! The device comes from the host: every length is bounded before anything is
//! allocated, and a malformed device is an error (the agent then refuses to
//! serve rather than run without the tenant's policy). Nothing here follows a
//! symlink in /dev or reads a device that does not start with the magic.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256, Sha384, Sha512};

/// Where the extracted files go (kata's and guest-components' path).
pub const INITDATA_DIR: &str = "/run/confidential-containers/initdata";
pub const MAGIC: &[u8; 8] = b"initdata";
pub const VERSION: &str = "0.1.0";
/// Largest compressed payload accepted (genpolicy policies run to a few MiB
/// and compress well).
pub const MAX_COMPRESSED: u64 = 8 << 20;
/// Largest initdata document accepted, decompressed.
pub const MAX_DOCUMENT: u64 = 32 << 20;

pub const AA_CONFIG: &str = "aa.toml";
pub const CDH_CONFIG: &str = "cdh.toml";
pub const POLICY: &str = "policy.rego";

#[derive(Debug, thiserror::Error)]
pub enum InitdataError {
    #[error("initdata device {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("initdata device {path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("initdata document: {0}")]
    Document(String),
}

/// A parsed, validated initdata document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initdata {
    pub algorithm: String,
    pub data: BTreeMap<String, String>,
    /// The document's digest with `algorithm`, what the TEE measured.
    pub digest: Vec<u8>,
    /// The document as read (written out for the attestation-agent).
    pub raw: Vec<u8>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: String,
    algorithm: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

impl Initdata {
    /// Parses and validates the TOML document.
    pub fn parse(raw: Vec<u8>) -> Result<Initdata, InitdataError> {
        let bad = |reason: String| InitdataError::Document(reason);
        let text = std::str::from_utf8(&raw).map_err(|_| bad("not UTF-8".into()))?;
        let doc: Document = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if doc.version != VERSION {
            return Err(bad(format!("version {:?} is not supported (expected {VERSION:?})", doc.version)));
        }
        let digest = match doc.algorithm.as_str() {
            "sha256" => Sha256::digest(&raw).to_vec(),
            "sha384" => Sha384::digest(&raw).to_vec(),
            "sha512" => Sha512::digest(&raw).to_vec(),
            other => return Err(bad(format!("algorithm {other:?} is not one of sha256, sha384, sha512"))),
        };
        Ok(Initdata { algorithm: doc.algorithm, data: doc.data, digest, raw })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(String::as_str)
    }

    /// Writes the document and the component configs to `dir` (0600 files in
    /// a 0700 directory): `initdata.toml`, `aa.toml`, `cdh.toml`, `policy.rego`.
    pub fn extract(&self, dir: &Path) -> Result<(), InitdataError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |source| InitdataError::Io { path: dir.to_owned(), source };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        let write = |name: &str, bytes: &[u8]| -> Result<(), InitdataError> {
            use std::io::Write;
            let path = dir.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|source| InitdataError::Io { path: path.clone(), source })?;
            f.write_all(bytes).map_err(|source| InitdataError::Io { path, source })
        };
        write("initdata.toml", &self.raw)?;
        for key in [AA_CONFIG, CDH_CONFIG, POLICY] {
            if let Some(v) = self.get(key) {
                write(key, v.as_bytes())?;
            }
        }
        Ok(())
    }
}

/// Reads the initdata document from a device (or an image file) in kata's layout.
pub fn read_device(path: &Path) -> Result<Vec<u8>, InitdataError> {
    let io = |source| InitdataError::Io { path: path.to_owned(), source };
    let format = |reason: String| InitdataError::Format { path: path.to_owned(), reason };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut header = [0u8; 16];
    f.read_exact(&mut header).map_err(|e| format(format!("shorter than its 16-byte header ({e})")))?;
    if &header[..8] != MAGIC {
        return Err(format("does not start with the initdata magic".into()));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[8..]);
    let len = u64::from_le_bytes(len);
    if len == 0 || len > MAX_COMPRESSED {
        return Err(format(format!("payload length {len} is outside 1..={MAX_COMPRESSED}")));
    }
    let mut compressed = Vec::new();
    f.take(len).read_to_end(&mut compressed).map_err(io)?;
    if compressed.len() as u64 != len {
        return Err(format(format!("payload truncated: {} of {len} bytes", compressed.len())));
    }
    let mut doc = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .take(MAX_DOCUMENT + 1)
        .read_to_end(&mut doc)
        .map_err(|e| format(format!("payload is not valid gzip: {e}")))?;
    if doc.len() as u64 > MAX_DOCUMENT {
        return Err(format(format!("document larger than {MAX_DOCUMENT} bytes")));
    }
    Ok(doc)
}

/// The first block device in `dev` named `vd*` or `sd*` (virtio-blk,
/// virtio-scsi) that starts with the initdata magic.
pub fn find_device(dev: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut names: Vec<PathBuf> = std::fs::read_dir(dev)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            (name.starts_with("vd") || name.starts_with("sd")) && e.file_type().is_ok_and(|t| t.is_block_device())
            // symlinks are not block devices
        })
        .map(|e| e.path())
        .collect();
    names.sort();
    names.into_iter().find(|p| {
        let mut magic = [0u8; 8];
        std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == MAGIC
    })
}

/// The initdata this agent starts with: as PID 1, the device found in /dev;
/// otherwise only an image named explicitly (`--initdata-device`, for tests
/// and development). The files are extracted to `extract_to` (as PID 1,
/// [`INITDATA_DIR`]) for the guest components.
/// `Ok(None)`: no initdata. A device that is there but malformed is an error.
pub fn load(pid1: bool, explicit: Option<&Path>, extract_to: Option<&Path>) -> Result<Option<Initdata>, InitdataError> {
    let device = match (pid1, explicit) {
        (_, Some(p)) if !pid1 => p.to_owned(),
        (true, _) => match find_device(Path::new("/dev")) {
            Some(d) => d,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    let init = Initdata::parse(read_device(&device)?)?;
    if let Some(dir) = extract_to {
        init.extract(dir)?;
    }
    tracing::info!(device = %device.display(), algorithm = %init.algorithm, digest = %hex::encode(&init.digest),
        keys = ?init.data.keys().collect::<Vec<_>>(), extracted_to = ?extract_to, "initdata");
    Ok(Some(init))
}

/// Builds a device image (the layout above) of `document`: for tests and the
/// VM harness, which attach it as kata's runtime does.
pub fn device_image(document: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(document);
    let payload = gz.finish().unwrap_or_default();
    let mut img = MAGIC.to_vec();
    img.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    img.extend_from_slice(&payload);
    // Block devices come in whole sectors.
    img.resize(img.len().div_ceil(512) * 512, 0);
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\n'''\n\"aa.toml\" = \"[token_configs]\"\n";

    #[test]
    fn a_device_image_round_trips_and_the_digest_is_over_the_document_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("initdata.img");
        std::fs::write(&img, device_image(DOC.as_bytes())).unwrap();
        let raw = read_device(&img).unwrap();
        assert_eq!(raw, DOC.as_bytes());
        let init = Initdata::parse(raw).unwrap();
        assert_eq!(init.digest, Sha384::digest(DOC.as_bytes()).to_vec());
        assert_eq!(init.get(POLICY), Some("package agent_policy\n"));
        let out = dir.path().join("out");
        init.extract(&out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("aa.toml")).unwrap(), "[token_configs]");
        assert!(!out.join("cdh.toml").exists());
        assert_eq!(std::fs::read(out.join("initdata.toml")).unwrap(), DOC.as_bytes());
    }

    #[test]
    fn malformed_devices_are_refused_with_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("bad.img");
        let good = device_image(DOC.as_bytes());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"initdat".to_vec(), "header"),
            ([b"notinit!".as_slice(), &[0; 8]].concat(), "magic"),
            ([MAGIC.as_slice(), &u64::MAX.to_le_bytes()].concat(), "outside"),
            ([MAGIC.as_slice(), &0u64.to_le_bytes()].concat(), "outside"),
            (good[..24].to_vec(), "truncated"),
            ([MAGIC.as_slice(), &4u64.to_le_bytes(), b"abcd"].concat(), "gzip"),
        ];
        for (bytes, needle) in cases {
            std::fs::write(&img, &bytes).unwrap();
            let err = read_device(&img).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("bad.img"), "{needle}: {err}");
        }
        // A gzip bomb stops at the document limit instead of filling memory.
        let bomb = {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..(MAX_DOCUMENT >> 20) + 1 {
                gz.write_all(&zeros).unwrap();
            }
            gz.finish().unwrap()
        };
        std::fs::write(&img, [MAGIC.as_slice(), &(bomb.len() as u64).to_le_bytes(), &bomb].concat()).unwrap();
        assert!(read_device(&img).unwrap_err().to_string().contains("larger than"));
    }

    #[test]
    fn documents_with_another_version_algorithm_or_shape_are_refused() {
        for (doc, needle) in [
            ("version = \"0.2.0\"\nalgorithm = \"sha256\"\n", "version"),
            ("version = \"0.1.0\"\nalgorithm = \"md5\"\n", "md5"),
            ("version = \"0.1.0\"\nalgorithm = \"sha256\"\nextra = 1\n", "extra"),
            ("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nx = 1\n", "x"),
        ] {
            let err = Initdata::parse(doc.as_bytes().to_vec()).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let minimal = Initdata::parse(b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n".to_vec()).unwrap();
        assert!(minimal.data.is_empty() && minimal.digest.len() == 32);
    }

    #[test]
    fn only_block_devices_with_the_magic_are_found() {
        // /dev of the test host: no initdata device there.
        assert_eq!(find_device(Path::new("/nonexistent")), None);
        let dir = tempfile::tempdir().unwrap();
        // Regular files named like disks are not block devices.
        std::fs::write(dir.path().join("vda"), device_image(DOC.as_bytes())).unwrap();
        assert_eq!(find_device(dir.path()), None);
    }
}
