//! The agent's domain object: one attester, one TEE key pair inside one KBS
//! client, one runtime event log. The ttrpc layer (`service.rs`) and the CLI
//! call only this.
//!
//! Start-up order is a security property: the initdata measurement is checked
//! before anything is served, and a mismatch is fatal.

use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use crate::attester::device::KernelIo;
use crate::attester::{self, Attester, AttesterError, EvidenceRequest, TeeKind, REPORT_DATA_LEN};
use crate::config::Config;
use crate::initdata::{self, Binding, Initdata, InitdataError};
use crate::kbs::{KbsClient, KbsError};
use crate::measurement::{EventLog, MeasurementError};

/// What ExtendRuntimeMeasurement did (guest-components' RuntimeMeasurementResult).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    Extended,
    /// The TEE has no runtime measurement register.
    NotSupported,
    /// No runtime event log (one-shot CLI commands).
    NotEnabled,
}

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
    /// The initdata digest bound so far (at start or by BindInitData).
    bound_initdata: Mutex<Option<Vec<u8>>>,
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
                match init.verify(attester.as_ref())? {
                    Binding::Matched => tracing::info!(
                        path = %path.display(), algorithm = %init.algorithm, "initdata matches the hardware measurement"
                    ),
                    Binding::Unsupported => tracing::warn!(
                        path = %path.display(), tee = %attester.tee(),
                        "this TEE has no initdata measurement field: initdata accepted unchecked"
                    ),
                }
                Some(init)
            }
            None => None,
        };
        let bound_initdata = Mutex::new(initdata.as_ref().map(Initdata::digest).transpose()?);
        let initdata = initdata.map(|i| i.raw);
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
        Ok(Self { attester, kbs, eventlog, default_register, bound_initdata })
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
        // A JSON value's Display is its compact serialization (what to_vec writes), and cannot fail.
        Ok(evidence.to_string().into_bytes())
    }

    /// Evidence of the additional attestable devices: none in this build, so
    /// empty (guest-components answers the same when it finds no device).
    pub async fn additional_evidence(&self, runtime_data: &[u8]) -> Result<Vec<u8>, AgentError> {
        if runtime_data.len() > REPORT_DATA_LEN {
            return Err(AgentError::InvalidArgument(format!(
                "runtime data is {} bytes; at most {REPORT_DATA_LEN}",
                runtime_data.len()
            )));
        }
        Ok(Vec::new())
    }

    /// Kinds of the additional attestable devices (none in this build).
    pub fn additional_tees(&self) -> Vec<String> {
        Vec::new()
    }

    /// BindInitData: `digest` against the TEE's initdata field (TDX
    /// MRCONFIGID, SNP HOST_DATA). Without such a field the first digest is
    /// recorded and a different one later is refused.
    pub async fn bind_init_data(&self, digest: &[u8]) -> Result<Binding, AgentError> {
        let attester = self.attester.clone();
        let given = digest.to_vec();
        let binding = tokio::task::spawn_blocking(move || initdata::bind(attester.as_ref(), &given))
            .await
            .map_err(|e| AgentError::InvalidArgument(format!("initdata task failed: {e}")))??;
        let mut bound = self.bound_initdata.lock().unwrap_or_else(|p| p.into_inner());
        match (binding, bound.as_deref()) {
            (Binding::Unsupported, Some(previous)) if previous != digest => {
                return Err(InitdataError::Rebind { bound: hex::encode(previous), given: hex::encode(digest) }.into());
            }
            _ => *bound = Some(digest.to_vec()),
        }
        tracing::info!(tee = %self.attester.tee(), ?binding, digest = %hex::encode(digest), "initdata bound");
        Ok(binding)
    }

    /// The initdata digest bound so far.
    pub fn bound_initdata(&self) -> Option<Vec<u8>> {
        self.bound_initdata.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
    ) -> Result<Measured, AgentError> {
        let Some(log) = self.eventlog.clone() else {
            return Ok(Measured::NotEnabled);
        };
        let register = register.unwrap_or(self.default_register);
        let (d, o, c) = (domain.to_owned(), operation.to_owned(), content.to_owned());
        let outcome = tokio::task::spawn_blocking(move || log.extend(register, &d, &o, &c))
            .await
            .map_err(|e| AgentError::InvalidArgument(format!("measurement task failed: {e}")))?;
        match outcome {
            Ok(()) => Ok(Measured::Extended),
            Err(MeasurementError::Register(AttesterError::Unsupported { .. })) => Ok(Measured::NotSupported),
            Err(err) => Err(err.into()),
        }
    }
}
