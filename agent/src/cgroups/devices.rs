//! Device access rules of the OCI spec (`linux.resources.devices`).
//!
//! On cgroup v1 they are written to `devices.allow`/`devices.deny` in spec
//! order. cgroup v2 has no devices file: the kernel asks a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the cgroup, once per
//! open or mknod of a device node. This module compiles the rules into such a
//! program (a straight line of compare-and-return blocks, as runc and crun
//! do) and attaches it.
//!
//! Semantics, the same on both versions: each requested access bit (m, r, w)
//! is decided by the last rule that matches the device and names that bit; a
//! bit no rule names is allowed (a new cgroup inherits its parent's
//! allow-all, so specs start with a deny-all rule). The request is allowed
//! when every bit is. So `c 1:3 r` followed by `c 1:3 w` grants a read-write
//! open, as v1's exception list does.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Access bits as the kernel reports them to the program (BPF_DEVCG_ACC_*).
pub const ACC_MKNOD: u8 = 1;
pub const ACC_READ: u8 = 2;
pub const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// Device kinds as the kernel reports them (BPF_DEVCG_DEV_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevKind {
    Block = 1,
    Char = 2,
}

/// One validated rule. `None` is a wildcard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: Option<DevKind>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceRuleError {
    #[error("device rule {index}: type {0:?} is not a, c or b", .value)]
    Type { index: usize, value: String },
    #[error("device rule {index}: access {0:?} is not a combination of r, w and m", .value)]
    Access { index: usize, value: String },
    #[error("device rule {index}: {what} {value} is out of range")]
    Number { index: usize, what: &'static str, value: i64 },
    #[error("{count} device rules exceed the limit of {MAX_RULES}; merge rules with wildcards")]
    TooMany { count: usize },
}

/// The most rules a spec may carry. Real specs list tens; the kernel's
/// verifier gives up (E2BIG) a little above a thousand, and a hostile host
/// should not make the agent spend seconds of kernel time verifying a
/// program it could never load.
pub const MAX_RULES: usize = 512;

impl DeviceRule {
    /// Validates one spec rule. An empty type or access means all, as in runc;
    /// a negative major or minor is the wildcard `*`.
    pub fn from_spec(index: usize, r: &protos::oci::LinuxDeviceCgroup) -> Result<DeviceRule, DeviceRuleError> {
        let kind = match r.Type.as_str() {
            "" | "a" => None,
            "c" => Some(DevKind::Char),
            "b" => Some(DevKind::Block),
            other => return Err(DeviceRuleError::Type { index, value: other.into() }),
        };
        let mut access = 0;
        for c in r.Access.chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => return Err(DeviceRuleError::Access { index, value: r.Access.clone() }),
            };
        }
        if access == 0 {
            access = ACC_ALL;
        }
        // Linux majors are 12 bits and minors 20; anything that does not fit
        // a BPF immediate (i32) cannot name a real device.
        let number = |what: &'static str, v: i64| -> Result<Option<u32>, DeviceRuleError> {
            match v {
                v if v < 0 => Ok(None),
                v if v <= i32::MAX as i64 => Ok(Some(v as u32)),
                value => Err(DeviceRuleError::Number { index, what, value }),
            }
        };
        let (major, minor) = match kind {
            // `a` covers every device whatever numbers the rule carries (v1 does the same).
            None => (None, None),
            Some(_) => (number("major", r.Major)?, number("minor", r.Minor)?),
        };
        Ok(DeviceRule { allow: r.Allow, kind, major, minor, access })
    }

    /// The cgroup v1 `devices.allow`/`devices.deny` line: `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        let kind = match self.kind {
            None => 'a',
            Some(DevKind::Char) => 'c',
            Some(DevKind::Block) => 'b',
        };
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let mut access = String::new();
        for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(c);
            }
        }
        format!("{kind} {}:{} {access}", num(self.major), num(self.minor))
    }
}

/// Validates every rule of a spec.
pub fn parse(rules: &[protos::oci::LinuxDeviceCgroup]) -> Result<Vec<DeviceRule>, DeviceRuleError> {
    if rules.len() > MAX_RULES {
        return Err(DeviceRuleError::TooMany { count: rules.len() });
    }
    rules.iter().enumerate().map(|(i, r)| DeviceRule::from_spec(i, r)).collect()
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst register in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used (linux/bpf.h, linux/bpf_common.h).
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU32_AND_K: u8 = 0x54; // dst &= imm
const ALU32_RSH_K: u8 = 0x74; // dst >>= imm
const ALU32_MOV_X: u8 = 0xbc; // dst = src
const ALU64_MOV_K: u8 = 0xb7; // dst = imm
const JNE_K: u8 = 0x55; // if dst != imm: pc += off
const JEQ_K: u8 = 0x15; // if dst == imm: pc += off
const EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

/// Compiles `rules` into a cgroup device program. Registers after the
/// prologue: r2 device kind, r3 requested access, r4 major, r5 minor (from
/// `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
/// `access_type = access << 16 | kind`).
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    // Last rule first. r3 holds the requested bits no later rule has decided
    // yet: a matching deny rule that names one of them denies; a matching
    // allow rule clears the bits it names and allows once none is left.
    for rule in rules.iter().rev() {
        let mut block = Vec::new();
        // Each check jumps to the next block on a mismatch; the offset is
        // patched once the block's length is known (marked with off = -1).
        if let Some(kind) = rule.kind {
            block.push(insn(JNE_K, 2, 0, -1, kind as i32));
        }
        if let Some(major) = rule.major {
            block.push(insn(JNE_K, 4, 0, -1, major as i32));
        }
        if let Some(minor) = rule.minor {
            block.push(insn(JNE_K, 5, 0, -1, minor as i32));
        }
        let catch_all = block.is_empty() && rule.access == ACC_ALL;
        if rule.access != ACC_ALL {
            // The rule speaks only for the undecided bits it names.
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 1, 0, 0, rule.access as i32));
            block.push(insn(JEQ_K, 1, 0, -1, 0));
        }
        if rule.allow && rule.access != ACC_ALL {
            // Those bits are granted; the rest are left to earlier rules.
            block.push(insn(ALU32_AND_K, 3, 0, 0, (!rule.access & ACC_ALL) as i32));
            block.push(insn(JNE_K, 3, 0, -1, 0));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, rule.allow as i32));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.off == -1 {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
        if catch_all {
            // Matches every request: earlier rules and the default could
            // never run, and the verifier refuses unreachable code.
            return p;
        }
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

// bpf(2) commands, program and attach types (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

/// The prefix of `union bpf_attr` that BPF_PROG_LOAD reads.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised repr(C) prefix of
    // `union bpf_attr`; the kernel reads at most size_of::<T>() bytes of it
    // (and writes only within it).
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads `insns` as a cgroup device program. A verifier rejection carries
/// the verifier's log.
fn load(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"cvm_device");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: BPF_PROG_LOAD returned a new file descriptor we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) => {
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|&b| b == 0).unwrap_or(0);
            let text = String::from_utf8_lossy(log.get(..end).unwrap_or_default()).into_owned();
            Err(io::Error::new(e.kind(), format!("{e}; verifier log: {}", text.trim())))
        }
        Err(e) => Err(e),
    }
}

/// Compiles `rules` and attaches the program to the cgroup v2 directory
/// `dir`, replacing the one attached before (UpdateContainer). Attached
/// without BPF_F_ALLOW_OVERRIDE or _MULTI, so nothing inside the container's
/// cgroup subtree can attach a more permissive program below it.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> io::Result<()> {
    let prog = load(&program(rules))?;
    let cgroup = std::fs::File::open(dir)?;
    let mut attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr)?;
    // The cgroup holds its own reference; our fds close here.
    Ok(())
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;
