//! Tar streams for layers: entries (files, dirs, links, whiteouts, devices, xattrs), written
//! verbatim so tests can also build hostile archives, plus layer compression.

use super::layout::{MT_LAYER_GZIP, MT_LAYER_TAR, MT_LAYER_ZSTD};
use std::io::Write;

/// Default mtime of tar entries (2023-11-14).
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    /// Several concatenated gzip members (at least 2), as some producers write.
    GzipMultiMember,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MT_LAYER_TAR,
            Compression::Gzip | Compression::GzipMultiMember => MT_LAYER_GZIP,
            Compression::Zstd => MT_LAYER_ZSTD,
        }
    }
}

/// Compresses a tar stream as a layer blob.
pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => gz(tar),
        Compression::GzipMultiMember => {
            let members = (tar.len().div_ceil(1 << 20)).max(2);
            tar.chunks(tar.len().div_ceil(members).max(1)).flat_map(gz).collect()
        }
        Compression::Zstd => zstd::stream::encode_all(tar, 3).unwrap(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    Fifo,
}

/// One tar entry. The path is written verbatim (no normalisation), so tests can also build
/// hostile archives (`../x`, `/abs`) as long as the path fits in 100 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Written as PAX `SCHILY.xattr.<name>` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl TarEntry {
    fn new(path: &str, kind: EntryKind, mode: u32) -> Self {
        TarEntry { path: path.to_string(), kind, mode, uid: 0, gid: 0, mtime: DEFAULT_MTIME, xattrs: Vec::new() }
    }
    /// Regular file, mode 0644.
    pub fn file(path: &str, content: impl Into<Vec<u8>>) -> Self {
        Self::new(path, EntryKind::File(content.into()), 0o644)
    }
    /// Directory, mode 0755; a trailing `/` is added if missing.
    pub fn dir(path: &str) -> Self {
        let p = if path.ends_with('/') { path.to_string() } else { format!("{path}/") };
        Self::new(&p, EntryKind::Dir, 0o755)
    }
    pub fn symlink(path: &str, target: &str) -> Self {
        Self::new(path, EntryKind::Symlink(target.into()), 0o777)
    }
    /// Hard link to `target` (a path inside the archive).
    pub fn hardlink(path: &str, target: &str) -> Self {
        Self::new(path, EntryKind::Hardlink(target.into()), 0o644)
    }
    /// Whiteout deleting `path` from lower layers: empty file `dir/.wh.name`.
    pub fn whiteout(path: &str) -> Self {
        let path = path.trim_end_matches('/');
        let wh = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        Self::file(&wh, Vec::new())
    }
    /// Opaque-directory marker `dir/.wh..wh..opq`.
    pub fn opaque(dir: &str) -> Self {
        Self::file(&format!("{}/.wh..wh..opq", dir.trim_end_matches('/')), Vec::new())
    }
    pub fn char_device(path: &str, major: u32, minor: u32) -> Self {
        Self::new(path, EntryKind::CharDevice(major, minor), 0o666)
    }
    pub fn block_device(path: &str, major: u32, minor: u32) -> Self {
        Self::new(path, EntryKind::BlockDevice(major, minor), 0o660)
    }
    pub fn fifo(path: &str) -> Self {
        Self::new(path, EntryKind::Fifo, 0o644)
    }
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }
    pub fn xattr(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.xattrs.push((name.into(), value.into()));
        self
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut n = base + base.to_string().len();
    while base + n.to_string().len() != n {
        n = base + n.to_string().len();
    }
    let mut r = format!("{n} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn append_entry(b: &mut tar::Builder<Vec<u8>>, e: &TarEntry) -> std::io::Result<()> {
    if !e.xattrs.is_empty() {
        let data: Vec<u8> = e.xattrs.iter().flat_map(|(k, v)| pax_record(&format!("SCHILY.xattr.{k}"), v)).collect();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        let name = format!("PaxHeaders/{}", e.path.trim_end_matches('/').rsplit('/').next().unwrap_or("x"));
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name.as_bytes()[..n]);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data.as_slice())?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(e.mtime);
    h.set_size(0);
    let (ty, data, link): (tar::EntryType, &[u8], Option<&str>) = match &e.kind {
        EntryKind::File(c) => (tar::EntryType::Regular, c, None),
        EntryKind::Dir => (tar::EntryType::Directory, &[], None),
        EntryKind::Symlink(t) => (tar::EntryType::Symlink, &[], Some(t)),
        EntryKind::Hardlink(t) => (tar::EntryType::Link, &[], Some(t)),
        EntryKind::CharDevice(..) => (tar::EntryType::Char, &[], None),
        EntryKind::BlockDevice(..) => (tar::EntryType::Block, &[], None),
        EntryKind::Fifo => (tar::EntryType::Fifo, &[], None),
    };
    h.set_entry_type(ty);
    h.set_size(data.len() as u64);
    if let EntryKind::CharDevice(ma, mi) | EntryKind::BlockDevice(ma, mi) = e.kind {
        h.set_device_major(ma)?;
        h.set_device_minor(mi)?;
    }
    let short = e.path.len() <= 100 && link.is_none_or(|l| l.len() <= 100);
    if short {
        h.as_old_mut().name[..e.path.len()].copy_from_slice(e.path.as_bytes());
        if let Some(l) = link {
            h.set_link_name_literal(l)?;
        }
        h.set_cksum();
        b.append(&h, data)
    } else if let Some(l) = link {
        b.append_link(&mut h, &e.path, l)
    } else {
        b.append_data(&mut h, &e.path, data)
    }
}

/// Serialises entries as a tar stream (with the two zero end blocks).
pub fn tar_bytes(entries: &[TarEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        append_entry(&mut b, e).unwrap_or_else(|err| panic!("tar entry {}: {err}", e.path));
    }
    b.into_inner().unwrap()
}

/// Deterministic incompressible bytes (xorshift64*), e.g. for layers that must not shrink.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// True if `elf` is an ELF file without a PT_INTERP program header (statically linked).
pub fn is_static_elf(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false; // only ELF64 is checked
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4).is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != 3)
    })
}
