//! The ttrpc surface of the agent: a thin table of handlers.
//!
//! Every AgentService request passes the policy gate (`gate.rs`) first; each
//! handler then decodes and calls into a domain module. Nothing here holds a lock shared by all RPCs: ttrpc runs every
//! request in its own task, and handlers stay independent of each other.

mod agent;
mod gate;
mod health;

use std::collections::HashMap;
use std::sync::Arc;

pub use agent::AgentRpc;
pub use gate::PolicyGate;

use crate::policy::AgentPolicy;
use crate::reaper::Reaper;
use crate::sandbox::{RuntimeConfig, Sandbox};
use crate::shutdown::Shutdown;
pub use health::{HealthService, AGENT_VERSION, API_VERSION};

/// Every service the agent serves, keyed as ttrpc expects. DestroySandbox
/// requests `shutdown`; every child process goes through `reaper`; every
/// AgentService request is checked by `policy` first.
pub fn services(
    shutdown: Shutdown,
    reaper: Reaper,
    policy: Arc<AgentPolicy>,
    image_pull_timeout: std::time::Duration,
) -> HashMap<String, ttrpc::r#async::Service> {
    let config = RuntimeConfig::from_env();
    let puller = Arc::new(crate::image_pull::CdhPuller::new(config.cdh_addr.clone(), image_pull_timeout));
    let sandbox = Arc::new(Sandbox::new(reaper, shutdown, config, puller));
    let handlers = AgentRpc::new(sandbox, policy.clone());
    #[cfg(not(feature = "bench-no-policy"))]
    let agent: Arc<dyn protos::agent_ttrpc::AgentService + Send + Sync> = Arc::new(PolicyGate::new(handlers, policy));
    #[cfg(feature = "bench-no-policy")]
    let agent: Arc<dyn protos::agent_ttrpc::AgentService + Send + Sync> = {
        drop(policy);
        tracing::error!("built with bench-no-policy: requests are NOT checked by any policy (benchmark build)");
        Arc::new(handlers)
    };
    let health: Arc<dyn protos::health_ttrpc::Health + Send + Sync> = Arc::new(HealthService);
    let mut all = protos::agent_ttrpc::create_agent_service(agent);
    all.extend(protos::health_ttrpc::create_health(health));
    all
}

/// The ttrpc status for an RPC this agent does not implement yet. It names the
/// method so an operator reading a shim log knows what is missing.
pub(crate) fn unimplemented(service: &str, method: &str) -> ttrpc::Error {
    tracing::warn!(service, method, "rejected call to unimplemented RPC");
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        ttrpc::Code::UNIMPLEMENTED,
        format!("/{service}/{method} is not implemented by this agent"),
    ))
}
