//! Linux namespaces named as the OCI spec names them, with the clone flag and
//! the /proc/<pid>/ns entry of each. Pure data; joining and creating happen in
//! the container init (`jail`).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NsKind {
    User,
    Pid,
    Network,
    Mount,
    Ipc,
    Uts,
    Cgroup,
}

impl NsKind {
    /// Order in which namespaces are joined: user first (it grants the
    /// rights for the others), mount last (paths are resolved before it).
    pub const JOIN_ORDER: [NsKind; 7] =
        [NsKind::User, NsKind::Pid, NsKind::Network, NsKind::Ipc, NsKind::Uts, NsKind::Cgroup, NsKind::Mount];

    /// Parses the OCI `linux.namespaces[].type`. Kata's own OCI-to-proto
    /// conversion spells network and mount `net` and `mnt`; both spellings
    /// are accepted, anything else is refused.
    pub fn from_oci(name: &str) -> Option<NsKind> {
        Some(match name {
            "user" => NsKind::User,
            "pid" => NsKind::Pid,
            "network" | "net" => NsKind::Network,
            "mount" | "mnt" => NsKind::Mount,
            "ipc" => NsKind::Ipc,
            "uts" => NsKind::Uts,
            "cgroup" => NsKind::Cgroup,
            _ => return None,
        })
    }

    pub fn clone_flag(self) -> libc::c_int {
        match self {
            NsKind::User => libc::CLONE_NEWUSER,
            NsKind::Pid => libc::CLONE_NEWPID,
            NsKind::Network => libc::CLONE_NEWNET,
            NsKind::Mount => libc::CLONE_NEWNS,
            NsKind::Ipc => libc::CLONE_NEWIPC,
            NsKind::Uts => libc::CLONE_NEWUTS,
            NsKind::Cgroup => libc::CLONE_NEWCGROUP,
        }
    }

    /// The entry under /proc/<pid>/ns/.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::User => "user",
            NsKind::Pid => "pid",
            NsKind::Network => "net",
            NsKind::Mount => "mnt",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
            NsKind::Cgroup => "cgroup",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names_map_to_proc_entries_and_unknown_names_are_refused() {
        assert_eq!(NsKind::from_oci("network").map(NsKind::proc_name), Some("net"));
        assert_eq!(NsKind::from_oci("mount").map(NsKind::proc_name), Some("mnt"));
        assert_eq!(NsKind::from_oci("time"), None);
        assert_eq!(NsKind::JOIN_ORDER.last(), Some(&NsKind::Mount));
    }

    #[test]
    fn kata_spellings_net_and_mnt_are_accepted_and_unknown_names_still_refused() {
        assert_eq!(NsKind::from_oci("net"), Some(NsKind::Network));
        assert_eq!(NsKind::from_oci("mnt"), Some(NsKind::Mount));
        for bad in ["", "NET", "Network", "nets", "mnt ", "cgroups", "ns"] {
            assert_eq!(NsKind::from_oci(bad), None, "{bad:?}");
        }
    }
}
