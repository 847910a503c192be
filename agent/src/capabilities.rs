//! Linux capabilities by their OCI names, and applying the five sets of a
//! process (bounding, effective, permitted, inheritable, ambient). Runs only
//! in the single-threaded container init, just before exec.

use std::io;

/// `CAP_*` names in kernel order (the index is the capability number).
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A set of capabilities as a bit mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// Parses OCI names; an unknown name is an error naming it (runc and
    /// kata ignore unknown names with a warning; we refuse, as a typo could
    /// otherwise silently grant less or more than intended).
    pub fn parse(names: &[String]) -> Result<CapSet, String> {
        let mut bits = 0u64;
        for name in names {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
            let idx = NAMES.iter().position(|n| *n == full).ok_or_else(|| format!("unknown capability {name:?}"))?;
            bits |= 1 << idx;
        }
        Ok(CapSet(bits))
    }

    pub fn contains(self, cap: usize) -> bool {
        self.0 & (1 << cap) != 0
    }

    /// The `CAP_*` names of the set, in kernel order.
    pub fn names(self) -> Vec<String> {
        NAMES.iter().enumerate().filter(|(i, _)| self.contains(*i)).map(|(_, n)| (*n).to_owned()).collect()
    }
}

/// The capabilities of a process exec'd into a container whose init runs with
/// `init`: never more than the init has, set by set. An exec that names none
/// gets the init's (the OCI default of "leave them alone" would hand a root
/// exec every capability inside a container that has none). An init without
/// a capabilities field keeps the exec's request as it is.
pub fn bound_exec(
    exec: Option<&protos::oci::LinuxCapabilities>,
    init: Option<&protos::oci::LinuxCapabilities>,
) -> Result<Option<protos::oci::LinuxCapabilities>, String> {
    let Some(init) = init else { return Ok(exec.cloned()) };
    let Some(exec) = exec else { return Ok(Some(init.clone())) };
    let both = |e: &[String], i: &[String]| -> Result<Vec<String>, String> {
        Ok(CapSet(CapSet::parse(e)?.0 & CapSet::parse(i)?.0).names())
    };
    Ok(Some(protos::oci::LinuxCapabilities {
        Bounding: both(&exec.Bounding, &init.Bounding)?,
        Effective: both(&exec.Effective, &init.Effective)?,
        Inheritable: both(&exec.Inheritable, &init.Inheritable)?,
        Permitted: both(&exec.Permitted, &init.Permitted)?,
        Ambient: both(&exec.Ambient, &init.Ambient)?,
        ..Default::default()
    }))
}

/// All five sets of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCaps {
    pub bounding: CapSet,
    pub effective: CapSet,
    pub permitted: CapSet,
    pub inheritable: CapSet,
    pub ambient: CapSet,
}

impl ProcessCaps {
    pub fn from_spec(c: &protos::oci::LinuxCapabilities) -> Result<ProcessCaps, String> {
        Ok(ProcessCaps {
            bounding: CapSet::parse(&c.Bounding)?,
            effective: CapSet::parse(&c.Effective)?,
            permitted: CapSet::parse(&c.Permitted)?,
            inheritable: CapSet::parse(&c.Inheritable)?,
            ambient: CapSet::parse(&c.Ambient)?,
        })
    }
}

/// The highest capability the running kernel knows.
fn last_cap() -> usize {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NAMES.len() - 1)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Drops every capability outside the bounding set. Needs CAP_SETPCAP, so
/// call it before switching to a non-root user.
pub fn drop_bounding(caps: &ProcessCaps) -> io::Result<()> {
    for cap in 0..=last_cap() {
        if !caps.bounding.contains(cap) {
            // SAFETY: integer prctl.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINVAL) {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// Sets effective/permitted/inheritable, then raises the ambient set. Call
/// after the uid switch (with KEEPCAPS set so permitted survives it).
pub fn apply(caps: &ProcessCaps) -> io::Result<()> {
    let mut hdr = CapHeader { version: CAP_V3, pid: 0 };
    let mut data = [CapData::default(); 2];
    for (i, d) in data.iter_mut().enumerate() {
        d.effective = (caps.effective.0 >> (32 * i)) as u32;
        d.permitted = (caps.permitted.0 >> (32 * i)) as u32;
        d.inheritable = (caps.inheritable.0 >> (32 * i)) as u32;
    }
    // SAFETY: capset with a v3 header and two data words, as the ABI requires.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: integer prctl.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    // The kernel only allows ambient caps that are permitted and inheritable;
    // like runc and crun, skip the others (runc's default spec lists ambient
    // caps without inheritable ones).
    for cap in 0..=last_cap() {
        if caps.ambient.contains(cap) && caps.permitted.contains(cap) && caps.inheritable.contains(cap) {
            // SAFETY: integer prctl.
            if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap as libc::c_ulong, 0, 0) } != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_or_without_prefix_and_unknown_names_are_refused() {
        let set = CapSet::parse(&["CAP_CHOWN".into(), "net_raw".into(), "CAP_CHECKPOINT_RESTORE".into()]).unwrap();
        assert_eq!(set.0, 1 | (1 << 13) | (1 << 40));
        assert!(CapSet::parse(&["CAP_ROOT".into()]).unwrap_err().contains("CAP_ROOT"));
    }

    #[test]
    fn an_exec_never_gets_more_capabilities_than_its_container() {
        let caps = |names: &[&str]| protos::oci::LinuxCapabilities {
            Bounding: names.iter().map(|s| s.to_string()).collect(),
            Effective: names.iter().map(|s| s.to_string()).collect(),
            Permitted: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let none = caps(&[]);
        // No field on the exec: the container's (here: nothing at all).
        assert_eq!(bound_exec(None, Some(&none)).unwrap(), Some(none.clone()));
        // Asking for more than the container has: cut down to it.
        let asked = caps(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "net_raw"]);
        let got = bound_exec(Some(&asked), Some(&caps(&["CAP_NET_RAW", "CAP_CHOWN"]))).unwrap().unwrap();
        assert_eq!(got.Bounding, vec!["CAP_NET_RAW".to_owned()]);
        assert_eq!(got.Effective, got.Bounding);
        // A container without a capabilities field leaves the exec's request alone.
        assert_eq!(bound_exec(Some(&asked), None).unwrap(), Some(asked.clone()));
        assert!(bound_exec(Some(&caps(&["CAP_ROOT"])), Some(&none)).is_err());
    }
}
