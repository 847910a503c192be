//! `grpc.Health`: liveness (Check) and versions (Version) for the host shim.

use async_trait::async_trait;
use protos::health::{health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionCheckResponse};
use protos::health_ttrpc::Health;
use ttrpc::r#async::TtrpcContext;

/// Version of the agent API the shim negotiates against (kata's value).
pub const API_VERSION: &str = "0.0.1";
/// This agent's own version.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct HealthService;

#[async_trait]
impl Health for HealthService {
    async fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<HealthCheckResponse> {
        let mut resp = HealthCheckResponse::new();
        resp.set_status(ServingStatus::SERVING);
        Ok(resp)
    }

    async fn version(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<VersionCheckResponse> {
        let mut resp = VersionCheckResponse::new();
        resp.grpc_version = API_VERSION.to_owned();
        resp.agent_version = AGENT_VERSION.to_owned();
        Ok(resp)
    }
}
