//! Container cgroups with cgroups-rs, on v1 (this development host, hybrid)
//! and v2 (the VM): create under the sandbox cgroup, apply resources, freeze,
//! read stats and OOM-kill counters, delete. Never touches a cgroup outside
//! the agent's own subtree: paths are built from validated ids only.

pub mod devices;
mod stats;

use std::path::{Path, PathBuf};

use cgroups_rs::cpu::CpuController;
use cgroups_rs::cpuset::CpuSetController;
use cgroups_rs::devices::{DevicePermissions, DeviceType, DevicesController};
use cgroups_rs::freezer::{FreezerController, FreezerState};
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use cgroups_rs::{Cgroup, Controller, MaxValue};

pub use stats::collect as collect_stats;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Op { path: String, source: cgroups_rs::error::Error },
    #[error("cgroup {path}: {what}: {source}")]
    Io { path: String, what: String, source: std::io::Error },
    /// The spec's device rules are malformed (the host's fault, not ours).
    #[error("cgroup {path}: {source}")]
    DeviceRules { path: String, source: devices::DeviceRuleError },
    #[error("cgroup {path} still has processes {pids:?}")]
    Busy { path: String, pids: Vec<u64> },
}

/// One container's cgroup (all v1 hierarchies, or the v2 directory).
pub struct ContainerCgroup {
    cg: Cgroup,
    rel: String,
}

impl std::fmt::Debug for ContainerCgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerCgroup").field("path", &self.rel).field("v2", &self.cg.v2()).finish()
    }
}

impl ContainerCgroup {
    /// Creates (or reuses) the cgroup at `rel` (relative to each hierarchy
    /// root) and applies `res`.
    pub fn create(rel: &str, res: Option<&protos::oci::LinuxResources>) -> Result<ContainerCgroup, CgroupError> {
        let cg = Cgroup::new(cgroups_rs::hierarchies::auto(), rel)
            .map_err(|source| CgroupError::Op { path: rel.into(), source })?;
        let me = ContainerCgroup { cg, rel: rel.to_string() };
        if let Some(res) = res {
            me.apply(res)?;
        }
        Ok(me)
    }

    pub fn path(&self) -> &str {
        &self.rel
    }

    pub fn is_v2(&self) -> bool {
        self.cg.v2()
    }

    /// The `cgroup.procs` files a new process writes itself into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> =
            self.cg.subsystems().iter().map(|s| s.to_controller().path().to_path_buf()).collect();
        dirs.sort();
        dirs.dedup();
        dirs.into_iter().filter(|d| d.is_dir()).map(|d| d.join("cgroup.procs")).collect()
    }

    /// Every process in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.cg.procs().into_iter().map(|p| p.pid as i32).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn err(&self) -> impl Fn(cgroups_rs::error::Error) -> CgroupError + '_ {
        move |source| CgroupError::Op { path: self.rel.clone(), source }
    }

    /// Applies memory, cpu, cpuset and pids limits (UpdateContainer too).
    pub fn apply(&self, res: &protos::oci::LinuxResources) -> Result<(), CgroupError> {
        if let (Some(m), Some(mem)) = (res.Memory.as_ref(), self.cg.controller_of::<MemController>()) {
            if m.Limit != 0 {
                mem.set_limit(m.Limit).map_err(self.err())?;
            }
            if m.Swap != 0 {
                mem.set_memswap_limit(m.Swap).map_err(self.err())?;
            }
            if m.Reservation != 0 {
                mem.set_soft_limit(m.Reservation).map_err(self.err())?;
            }
            if m.Swappiness != 0 && m.Swappiness <= 100 && !self.cg.v2() {
                mem.set_swappiness(m.Swappiness).map_err(self.err())?;
            }
            if m.DisableOOMKiller && !self.cg.v2() {
                mem.disable_oom_killer().map_err(self.err())?;
            }
        }
        if let Some(c) = res.CPU.as_ref() {
            if let Some(cpu) = self.cg.controller_of::<CpuController>() {
                if c.Shares != 0 {
                    cpu.set_shares(c.Shares).map_err(self.err())?;
                }
                if c.Quota != 0 || c.Period != 0 {
                    let quota = (c.Quota != 0).then_some(c.Quota);
                    let period = (c.Period != 0).then_some(c.Period);
                    cpu.set_cfs_quota_and_period(quota, period).map_err(self.err())?;
                }
            }
            if let Some(set) = self.cg.controller_of::<CpuSetController>() {
                if !c.Cpus.is_empty() {
                    set.set_cpus(&c.Cpus).map_err(self.err())?;
                }
                if !c.Mems.is_empty() {
                    set.set_mems(&c.Mems).map_err(self.err())?;
                }
            }
        }
        self.apply_devices(&res.Devices)?;
        if let (Some(p), Some(pids)) = (res.Pids.as_ref(), self.cg.controller_of::<PidController>()) {
            let max = if p.Limit > 0 { MaxValue::Value(p.Limit) } else { MaxValue::Max };
            pids.set_pid_max(max).map_err(self.err())?;
        }
        Ok(())
    }

    /// Device rules (see `devices`): v1 devices.allow/deny lines in spec
    /// order; on v2 an eBPF device program compiled from them.
    fn apply_devices(&self, rules: &[protos::oci::LinuxDeviceCgroup]) -> Result<(), CgroupError> {
        if rules.is_empty() {
            return Ok(());
        }
        let rules =
            devices::parse(rules).map_err(|source| CgroupError::DeviceRules { path: self.rel.clone(), source })?;
        if self.cg.v2() {
            let dir = cgroups_rs::hierarchies::auto().root().join(&self.rel);
            devices::attach(&dir, &rules).map_err(|source| CgroupError::Io {
                path: self.rel.clone(),
                what: "attach the eBPF device program".into(),
                source,
            })?;
            tracing::debug!(cgroup = %self.rel, rules = rules.len(), "device program attached");
            return Ok(());
        }
        let Some(dev) = self.cg.controller_of::<DevicesController>() else { return Ok(()) };
        for r in &rules {
            let kind = match r.kind {
                None => DeviceType::All,
                Some(devices::DevKind::Char) => DeviceType::Char,
                Some(devices::DevKind::Block) => DeviceType::Block,
            };
            let mut perms = Vec::new();
            for (bit, p) in [
                (devices::ACC_READ, DevicePermissions::Read),
                (devices::ACC_WRITE, DevicePermissions::Write),
                (devices::ACC_MKNOD, DevicePermissions::MkNod),
            ] {
                if r.access & bit != 0 {
                    perms.push(p);
                }
            }
            let num = |n: Option<u32>| n.map_or(-1, i64::from);
            if r.allow {
                dev.allow_device(kind, num(r.major), num(r.minor), &perms).map_err(self.err())?;
            } else {
                dev.deny_device(kind, num(r.major), num(r.minor), &perms).map_err(self.err())?;
            }
        }
        Ok(())
    }

    /// Freezes and waits until the kernel reports FROZEN (v1 passes
    /// through FREEZING while tasks are stopped), re-requesting as runc does.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        let freezer = self.freezer()?;
        for _ in 0..2000 {
            freezer.freeze().map_err(self.err())?;
            if matches!(freezer.state().map_err(self.err())?, FreezerState::Frozen) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = freezer.thaw();
        Err(CgroupError::Io {
            path: self.rel.clone(),
            what: "freeze".into(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "tasks did not freeze within 2s"),
        })
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.freezer()?.thaw().map_err(self.err())
    }

    /// "FROZEN", "FREEZING" or "THAWED" as the kernel reports it.
    pub fn freezer_state(&self) -> Result<&'static str, CgroupError> {
        Ok(match self.freezer()?.state().map_err(self.err())? {
            FreezerState::Frozen => "FROZEN",
            FreezerState::Freezing => "FREEZING",
            FreezerState::Thawed => "THAWED",
        })
    }

    fn freezer(&self) -> Result<&FreezerController, CgroupError> {
        self.cg.controller_of::<FreezerController>().ok_or_else(|| CgroupError::Io {
            path: self.rel.clone(),
            what: "freezer".into(),
            source: std::io::Error::new(std::io::ErrorKind::Unsupported, "no freezer controller"),
        })
    }

    /// Directory of the memory controller (v1) or the v2 cgroup.
    pub fn memory_dir(&self) -> Option<&Path> {
        self.cg.controller_of::<MemController>().map(|m| m.path())
    }

    pub fn controller_dir<T: Controller>(&self) -> Option<&Path>
    where
        Cgroup: ControllerOf<T>,
    {
        <Cgroup as ControllerOf<T>>::dir(&self.cg)
    }

    /// The file whose `oom_kill` line counts the kernel's OOM kills in this
    /// cgroup (read with [`read_oom_kills`]); None without a memory controller.
    pub fn oom_kill_file(&self) -> Option<PathBuf> {
        let file = if self.cg.v2() { "memory.events" } else { "memory.oom_control" };
        self.memory_dir().map(|d| d.join(file))
    }

    /// Removes the cgroup; fails while processes remain.
    pub fn delete(&self) -> Result<(), CgroupError> {
        let pids = self.cg.procs();
        if !pids.is_empty() {
            return Err(CgroupError::Busy { path: self.rel.clone(), pids: pids.into_iter().map(|p| p.pid).collect() });
        }
        self.cg.delete().map_err(self.err())
    }

    /// True if any hierarchy still has the directory.
    pub fn exists(&self) -> bool {
        self.cg.exists()
    }
}

/// Lets generic code ask for a controller's directory.
pub trait ControllerOf<T> {
    fn dir(&self) -> Option<&Path>;
}

macro_rules! controller_of {
    ($($t:ty),*) => {$(
        impl ControllerOf<$t> for Cgroup {
            fn dir(&self) -> Option<&Path> {
                self.controller_of::<$t>().map(|c| c.path())
            }
        }
    )*};
}
controller_of!(MemController, CpuController, PidController, cgroups_rs::cpuacct::CpuAcctController);

/// Validates an id used as a cgroup or directory name.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The `oom_kill` count in a cgroup's memory.events (v2) or
/// memory.oom_control (v1); 0 when unreadable (the cgroup is gone).
pub fn read_oom_kills(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_traversal_or_odd_characters_are_refused() {
        assert!(valid_id("c1"));
        assert!(valid_id("0123abcd-ef.x_y"));
        for bad in ["", "..", ".hidden", "a/b", "a b", "../../x", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad:?} accepted");
        }
    }
}
