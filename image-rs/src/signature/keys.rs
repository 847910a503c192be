//! Key material named by a policy: `keyPath` (a file, or a `kbs:///` URI
//! resolved through the [`KeySource`]) or inline base64 `keyData`. Sizes
//! are bounded; key bytes are never logged.

use base64::Engine as _;

use crate::keysource::{KeySource, ResourceUri};

/// Largest keyring or public key we read.
pub const KEY_LIMIT: usize = 1024 * 1024;

/// Reads a policy file or key named by `path`: a local path or a `kbs://` URI.
pub async fn read_named(path: &str, keys: &dyn KeySource) -> Result<Vec<u8>, String> {
    if path.starts_with("kbs://") {
        let uri: ResourceUri = path.parse().map_err(|e| format!("{e}"))?;
        let bytes = keys.get_resource(&uri).await.map_err(|e| e.to_string())?;
        if bytes.len() > KEY_LIMIT {
            return Err(format!("{path}: {} bytes, over the {KEY_LIMIT}-byte limit", bytes.len()));
        }
        return Ok(bytes.to_vec());
    }
    let meta = tokio::fs::metadata(path).await.map_err(|e| format!("{path}: {e}"))?;
    if meta.len() > KEY_LIMIT as u64 {
        return Err(format!("{path}: {} bytes, over the {KEY_LIMIT}-byte limit", meta.len()));
    }
    tokio::fs::read(path).await.map_err(|e| format!("{path}: {e}"))
}

/// Decodes inline `keyData` (standard base64).
pub fn decode_key_data(data: &str) -> Result<Vec<u8>, String> {
    if data.len() > KEY_LIMIT * 2 {
        return Err("keyData is over the size limit".into());
    }
    base64::engine::general_purpose::STANDARD.decode(data.trim()).map_err(|e| format!("keyData is not base64: {e}"))
}

/// All key blobs of a requirement: each path (file or kbs URI), then each inline datum.
pub async fn load_all(paths: &[&str], datas: &[&str], keys: &dyn KeySource) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for p in paths {
        out.push(((*p).to_owned(), read_named(p, keys).await?));
    }
    for (i, d) in datas.iter().enumerate() {
        out.push((format!("keyData[{i}]"), decode_key_data(d)?));
    }
    Ok(out)
}
