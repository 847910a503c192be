//! StatsContainer, PauseContainer, ResumeContainer and UpdateContainer: the
//! container's cgroup, read or changed under this container's locks only.

use super::{Container, Result, RuntimeError, Status};

impl Container {
    pub fn stats(&self) -> protos::agent::CgroupStats {
        crate::cgroups::collect_stats(&self.cgroup)
    }

    pub fn pause(&self) -> Result<()> {
        if self.status() != Status::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is {:?}, not running",
                self.id,
                self.status()
            )));
        }
        self.cgroup.freeze().map_err(|e| RuntimeError::Internal(e.to_string()))?;
        self.set_status(Status::Paused);
        Ok(())
    }

    pub fn resume(&self) -> Result<()> {
        if self.status() != Status::Paused {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is {:?}, not paused",
                self.id,
                self.status()
            )));
        }
        self.cgroup.thaw().map_err(|e| RuntimeError::Internal(e.to_string()))?;
        self.set_status(Status::Running);
        Ok(())
    }

    pub fn update(&self, res: &protos::oci::LinuxResources) -> Result<()> {
        self.cgroup.apply(res).map_err(|e| RuntimeError::InvalidArgument(e.to_string()))
    }
}
