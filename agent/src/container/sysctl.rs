//! Which `linux.sysctl` entries a container may set: only those the kernel
//! keeps per namespace (the set runc allows), and only when the container
//! has that namespace apart from the agent's. Never lets a host-chosen name
//! reach a global kernel setting (`kernel.core_pattern`, `vm.*`, …) or steer
//! the /proc/sys path the init writes (no '/', no '..', no empty segment).

use crate::jail::protocol::NsRequest;
use crate::namespaces::NsKind;

/// IPC-namespaced sysctls outside `fs.mqueue.*`.
const IPC_SYSCTLS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Longest sysctl name accepted (the longest real ones are under 100 bytes).
const MAX_NAME: usize = 256;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SysctlError {
    #[error("sysctl {0:?}: invalid name (empty segment, '/', '..', or longer than 256 bytes)")]
    BadName(String),
    #[error("sysctl {name:?} needs the container's own {ns} namespace, but it would share the agent's")]
    SharedNamespace { name: String, ns: &'static str },
    #[error("sysctl {0:?} is not namespaced (allowed: kernel.msg*/sem/shm*, fs.mqueue.*, net.*, kernel.hostname, kernel.domainname)")]
    NotNamespaced(String),
}

/// The namespace a sysctl belongs to, or why it is refused outright.
pub fn namespace_of(name: &str) -> Result<NsKind, SysctlError> {
    let bad_segment = |s: &str| s.is_empty() || s == ".." || s.contains(['/', '\0']);
    if name.len() > MAX_NAME || name.split('.').any(bad_segment) {
        return Err(SysctlError::BadName(name.to_string()));
    }
    if IPC_SYSCTLS.contains(&name) || name.starts_with("fs.mqueue.") {
        Ok(NsKind::Ipc)
    } else if name.starts_with("net.") {
        Ok(NsKind::Network)
    } else if name == "kernel.hostname" || name == "kernel.domainname" {
        Ok(NsKind::Uts)
    } else {
        Err(SysctlError::NotNamespaced(name.to_string()))
    }
}

/// Checks every sysctl against the container's namespace plan. A kind in the
/// plan is the container's own (new, the sandbox's, or a joined path already
/// checked not to be the agent's); a kind missing from it is the agent's.
pub fn check<'a>(names: impl IntoIterator<Item = &'a String>, plan: &[NsRequest]) -> Result<(), SysctlError> {
    for name in names {
        let kind = namespace_of(name)?;
        if !plan.iter().any(|n| n.kind == kind) {
            return Err(SysctlError::SharedNamespace { name: name.clone(), ns: kind.proc_name() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kinds: &[NsKind]) -> Vec<NsRequest> {
        kinds.iter().map(|&kind| NsRequest { kind, path: None, fd: None }).collect()
    }

    #[test]
    fn namespaced_sysctls_map_to_their_namespace() {
        for ipc in ["kernel.shmmax", "kernel.sem", "kernel.shm_rmid_forced", "fs.mqueue.msg_max"] {
            assert_eq!(namespace_of(ipc), Ok(NsKind::Ipc), "{ipc}");
        }
        assert_eq!(namespace_of("net.ipv4.ip_forward"), Ok(NsKind::Network));
        assert_eq!(namespace_of("kernel.hostname"), Ok(NsKind::Uts));
        assert_eq!(namespace_of("kernel.domainname"), Ok(NsKind::Uts));
    }

    #[test]
    fn global_sysctls_are_refused_by_name() {
        for global in ["kernel.core_pattern", "vm.overcommit_memory", "kernel.shmmaxx", "fs.mqueue", "kernel.modprobe"]
        {
            assert_eq!(namespace_of(global), Err(SysctlError::NotNamespaced(global.into())), "{global}");
        }
        let e = namespace_of("kernel.core_pattern").unwrap_err().to_string();
        assert!(e.contains("kernel.core_pattern") && e.contains("not namespaced"), "{e}");
    }

    #[test]
    fn names_that_could_steer_a_proc_sys_path_are_refused() {
        for bad in ["", "net..ipv4", "net.ipv4.", ".net", "net/../../kernel/core_pattern", "net.../x", "net.a\0b"] {
            assert_eq!(namespace_of(bad), Err(SysctlError::BadName(bad.into())), "{bad:?}");
        }
        assert!(namespace_of(&format!("net.{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn a_namespaced_sysctl_needs_its_namespace_in_the_plan() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let own = plan(&[NsKind::Ipc, NsKind::Uts, NsKind::Network, NsKind::Mount]);
        assert_eq!(check(&names(&["kernel.shmmax", "net.ipv4.ip_forward", "kernel.domainname"]), &own), Ok(()));
        let bare = plan(&[NsKind::Mount]);
        let e = check(&names(&["kernel.shmmax"]), &bare).unwrap_err();
        assert_eq!(e, SysctlError::SharedNamespace { name: "kernel.shmmax".into(), ns: "ipc" });
        assert!(check(&names(&["net.core.somaxconn"]), &bare).unwrap_err().to_string().contains("net namespace"));
        assert!(check(&names(&["kernel.hostname"]), &bare).is_err());
        assert!(check(&names(&["kernel.core_pattern"]), &own).is_err());
    }
}
