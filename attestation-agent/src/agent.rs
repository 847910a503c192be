//! The agent's domain object: one attester, one TEE key pair inside one KBS
//! client, one runtime event log. The ttrpc layer (`service.rs`) and the CLI
//! call only this.
//!
//! Start-up order is a security property: the initdata measurement is checked
//! before anything is served, and a mismatch is fatal.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::attester::device::KernelIo;
use crate::attester::{self, Attester, AttesterError, EvidenceRequest, TeeKind, REPORT_DATA_LEN};
use crate::config::Config;
use crate::initdata::{Initdata, InitdataError};
use crate::kbs::{KbsClient, KbsError};
use crate::measurement::{EventLog, MeasurementError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Attester(#[from] AttesterError),
    #[error(transparent)]
    Initdata(#[from] InitdataError),
    #[error(transparent)]
    Kbs(#[from] KbsError),
    #[error(transparent)]
    Measurement(#[from] MeasurementError),
    #[error("no KBS configured: set [token_configs.kbs] url")]
    NoKbs,
    #[error("{0}")]
    InvalidArgument(String),
}

#[derive(Debug)]
pub struct Agent {
    attester: Arc<dyn Attester>,
    kbs: Option<Arc<KbsClient>>,
    eventlog: Option<Arc<EventLog>>,
    default_register: u64,
}

/// What `Agent::start` needs besides the config (tests swap the kernel).
pub struct StartOptions {
    pub kernel: Arc<dyn KernelIo>,
    /// Open the runtime event log (the daemon does; one-shot CLI commands do not).
    pub eventlog: bool,
}

impl Agent {
    /// Builds the attester, checks initdata, opens the event log, builds the
    /// KBS client (if a KBS is configured).
    pub fn start(config: &Config, opts: StartOptions) -> Result<Self, AgentError> {
        let attester = attester::build(config.attester.kind, opts.kernel)?;
        Self::with_attester(config, attester, opts.eventlog)
    }

    pub fn with_attester(config: &Config, attester: Arc<dyn Attester>, eventlog: bool) -> Result<Self, AgentError> {
        let initdata = match &config.initdata {
            Some(path) => {
                let init = Initdata::load(path)?;
                init.verify(attester.as_ref())?;
                tracing::info!(path = %path.display(), algorithm = %init.algorithm, "initdata matches the hardware measurement");
                Some(init.raw)
            }
            None => None,
        };
        let default_register = config.measurement.default_register;
        let eventlog = if eventlog {
            Some(Arc::new(EventLog::open(&config.measurement.eventlog, attester.clone())?))
        } else {
            None
        };
        let kbs = match &config.token_configs.kbs {
            Some(_) => {
                let mut client = KbsClient::new(config, attester.clone(), initdata)?;
                if let Some(log) = &eventlog {
                    client = client.with_eventlog(log.clone(), default_register);
                }
                Some(Arc::new(client))
            }
            None => None,
        };
        Ok(Self { attester, kbs, eventlog, default_register })
    }

    pub fn tee(&self) -> TeeKind {
        self.attester.tee()
    }

    pub fn kbs(&self) -> Result<&KbsClient, AgentError> {
        self.kbs.as_deref().ok_or(AgentError::NoKbs)
    }

    /// Evidence JSON binding `runtime_data` (at most 64 bytes) as report_data.
    pub async fn evidence(&self, runtime_data: &[u8]) -> Result<Vec<u8>, AgentError> {
        if runtime_data.len() > REPORT_DATA_LEN {
            return Err(AgentError::InvalidArgument(format!(
                "runtime data is {} bytes; at most {REPORT_DATA_LEN} fit in report_data (hash it first)",
                runtime_data.len()
            )));
        }
        let attester = self.attester.clone();
        let data = runtime_data.to_vec();
        let aael = self.eventlog.as_ref().and_then(|l| l.aael(self.default_register));
        let evidence = tokio::task::spawn_blocking(move || {
            attester.evidence(&EvidenceRequest { report_data: &data, kbs_nonce: None, aa_eventlog: aael.as_deref() })
        })
        .await
        .map_err(|e| AgentError::InvalidArgument(format!("evidence task failed: {e}")))??;
        Ok(serde_json::to_vec(&evidence).expect("JSON values serialize"))
    }

    pub async fn token(&self) -> Result<String, AgentError> {
        Ok(self.kbs()?.token().await?)
    }

    pub async fn resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        Ok(self.kbs()?.get_resource(uri).await?)
    }

    pub async fn extend(
        &self,
        domain: &str,
        operation: &str,
        content: &str,
        register: Option<u64>,
    ) -> Result<(), AgentError> {
        let log = self
            .eventlog
            .clone()
            .ok_or_else(|| AgentError::InvalidArgument("runtime measurement needs the daemon's event log".into()))?;
        let register = register.unwrap_or(self.default_register);
        let (d, o, c) = (domain.to_owned(), operation.to_owned(), content.to_owned());
        tokio::task::spawn_blocking(move || log.extend(register, &d, &o, &c))
            .await
            .map_err(|e| AgentError::InvalidArgument(format!("measurement task failed: {e}")))??;
        Ok(())
    }
}
