//! The initdata disk, written as kata's runtime writes it
//! (`prepareInitdataImage` in virtcontainers/hypervisor.go) and attached as
//! kata's QEMU driver attaches it (`buildInitdataDevice`: a raw virtio-blk
//! PCI disk with id `initdata`).
//!
//! Layout: the 8 bytes `initdata`, the gzip payload's length as a
//! little-endian u64, the gzip of the TOML document, then zeros up to the next
//! 512-byte sector (none when it already ends on one).
//!
//! Written independently of the agent's reader (`cvm_agent::initdata`), so
//! the VM test checks one against the other.

use std::io::Write;
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"initdata";
pub const SECTOR: usize = 512;

/// The device image bytes of `document`.
pub fn device_image(document: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(document).expect("writing into a Vec");
    let payload = gz.finish().expect("writing into a Vec");
    let mut img = Vec::with_capacity(16 + payload.len() + SECTOR);
    img.extend_from_slice(MAGIC);
    img.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    img.extend_from_slice(&payload);
    let padded = img.len().div_ceil(SECTOR) * SECTOR;
    img.resize(padded, 0);
    img
}

/// Writes the device image of `document` to `path` (0640, as kata).
pub fn write_image(document: &[u8], path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o640).open(path)?;
    f.write_all(&device_image(document))
}

/// An initdata document (`version = "0.1.0"`, `algorithm`, `[data]`) with the
/// three files kata's agent extracts.
#[derive(Debug, Clone, Default)]
pub struct Document {
    pub algorithm: String,
    pub aa_toml: Option<String>,
    pub cdh_toml: Option<String>,
    pub policy_rego: Option<String>,
}

impl Document {
    pub fn new(algorithm: &str) -> Self {
        Document { algorithm: algorithm.to_owned(), ..Default::default() }
    }

    /// The TOML text, values as multi-line literal strings (kata's examples'
    /// shape) or, when a value contains `'''`, as an escaped basic string.
    pub fn render(&self) -> String {
        let mut out = format!("version = \"0.1.0\"\nalgorithm = \"{}\"\n\n[data]\n", self.algorithm);
        for (key, value) in
            [("aa.toml", &self.aa_toml), ("cdh.toml", &self.cdh_toml), ("policy.rego", &self.policy_rego)]
        {
            let Some(v) = value else { continue };
            if v.contains("'''") {
                out.push_str(&format!("\"{key}\" = {}\n", basic_string(v)));
            } else {
                // A newline right after the opening delimiter is trimmed by TOML.
                out.push_str(&format!("\"{key}\" = '''\n{v}'''\n"));
            }
        }
        out
    }
}

fn basic_string(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => s.push_str(&format!("\\u{:04X}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_kata_layout_and_the_agent_reads_it_back() {
        let mut doc = Document::new("sha384");
        doc.aa_toml = Some("[token_configs.kbs]\nurl = \"https://10.0.2.2:1\"\n".into());
        doc.policy_rego = Some("package agent_policy\n# has ''' inside\n\"q\"\\\n".into());
        let text = doc.render();
        let img = device_image(text.as_bytes());
        assert_eq!(&img[..8], MAGIC);
        let len = u64::from_le_bytes(img[8..16].try_into().unwrap()) as usize;
        assert_eq!(img.len(), (16 + len).div_ceil(SECTOR) * SECTOR);
        assert!(img[16 + len..].iter().all(|b| *b == 0));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.img");
        write_image(text.as_bytes(), &path).unwrap();
        let raw = cvm_agent::initdata::read_device(&path).unwrap();
        assert_eq!(raw, text.as_bytes());
        let parsed = cvm_agent::initdata::Initdata::parse(raw).unwrap();
        assert_eq!(parsed.get("aa.toml"), doc.aa_toml.as_deref());
        assert_eq!(parsed.get("policy.rego"), doc.policy_rego.as_deref());
        assert_eq!(parsed.get("cdh.toml"), None);
    }

    #[test]
    fn an_exactly_aligned_payload_gets_no_padding() {
        // Find a document whose gzip makes header + payload a whole sector.
        // Incompressible bytes: the payload grows by one byte per input byte.
        let mut x: u32 = 1;
        let noise: Vec<u8> = (0..1024)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect();
        for n in 400..600 {
            let img = device_image(&noise[..n]);
            let len = u64::from_le_bytes(img[8..16].try_into().unwrap()) as usize;
            if (16 + len) % SECTOR == 0 {
                assert_eq!(img.len(), 16 + len);
                return;
            }
        }
        panic!("no aligned payload found");
    }
}
