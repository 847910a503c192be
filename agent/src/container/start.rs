//! StartContainer: lets the created init exec the container's process.

use super::{lock, Container, Result, RuntimeError, Status};

impl Container {
    pub async fn start(&self) -> Result<()> {
        if self.status() != Status::Created {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                self.id,
                self.status()
            )));
        }
        let gate = lock(&self.gate)
            .take()
            .ok_or_else(|| RuntimeError::FailedPrecondition(format!("container {} is already starting", self.id)))?;
        let id = self.id.clone();
        let res = tokio::task::spawn_blocking(move || gate.start())
            .await
            .map_err(|e| RuntimeError::Internal(format!("start task: {e}")))?;
        match res {
            Ok(()) => {
                self.set_status(Status::Running);
                tracing::info!(container = %id, pid = self.init.pid, "container started");
                Ok(())
            }
            Err(e) => {
                self.set_status(Status::Stopped);
                Err(RuntimeError::Internal(format!("container {id}: cannot start: {e}")))
            }
        }
    }
}
