//! The ttrpc API (`attestation_agent.AttestationAgentService`): a thin table
//! that decodes a request, calls [`Agent`], and maps errors to ttrpc codes.
//! No handler takes a lock across an await except the KBS handshake's own
//! single-flight lock.
//!
//! Must never return the TEE private key or log resource bytes.

use std::sync::Arc;

use async_trait::async_trait;
use protos::attestation_agent::{
    BindInitDataRequest, BindInitDataResponse, ExtendRuntimeMeasurementRequest, ExtendRuntimeMeasurementResponse,
    GetAdditionalEvidenceRequest, GetAdditionalTeesRequest, GetAdditionalTeesResponse, GetEvidenceRequest,
    GetEvidenceResponse, GetResourceRequest, GetResourceResponse, GetTeeTypeRequest, GetTeeTypeResponse,
    GetTokenRequest, GetTokenResponse, RuntimeMeasurementResult,
};
use protos::attestation_agent_ttrpc::{create_attestation_agent_service, AttestationAgentService};
use ttrpc::r#async::TtrpcContext;

use crate::agent::{Agent, AgentError, Measured};
use crate::initdata::InitdataError;
use crate::kbs::KbsError;

pub struct Service {
    agent: Arc<Agent>,
}

pub fn services(agent: Arc<Agent>) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
    create_attestation_agent_service(Arc::new(Service { agent }))
}

fn status(err: AgentError, rpc: &'static str) -> ttrpc::Error {
    use ttrpc::Code;
    let code = match &err {
        AgentError::InvalidArgument(_) | AgentError::Kbs(KbsError::Uri(_)) => Code::INVALID_ARGUMENT,
        AgentError::Kbs(KbsError::Refused { .. }) => Code::PERMISSION_DENIED,
        AgentError::Kbs(KbsError::Unreachable { .. } | KbsError::Tls { .. }) => Code::UNAVAILABLE,
        AgentError::NoKbs | AgentError::Kbs(KbsError::Config(_)) => Code::FAILED_PRECONDITION,
        AgentError::Attester(crate::attester::AttesterError::Unsupported { .. }) => Code::UNIMPLEMENTED,
        AgentError::Measurement(crate::measurement::MeasurementError::InvalidEvent(_)) => Code::INVALID_ARGUMENT,
        AgentError::Initdata(InitdataError::DigestLength(_)) => Code::INVALID_ARGUMENT,
        AgentError::Initdata(InitdataError::Mismatch { .. } | InitdataError::Rebind { .. }) => {
            Code::FAILED_PRECONDITION
        }
        AgentError::Measurement(crate::measurement::MeasurementError::Register(
            crate::attester::AttesterError::Unsupported { .. },
        )) => Code::UNIMPLEMENTED,
        _ => Code::INTERNAL,
    };
    tracing::warn!(rpc, %err, "request failed");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, format!("{rpc}: {err}")))
}

#[async_trait]
impl AttestationAgentService for Service {
    async fn get_evidence(&self, _: &TtrpcContext, req: GetEvidenceRequest) -> ttrpc::Result<GetEvidenceResponse> {
        let evidence = self.agent.evidence(&req.RuntimeData).await.map_err(|e| status(e, "GetEvidence"))?;
        Ok(GetEvidenceResponse { Evidence: evidence, ..Default::default() })
    }

    async fn get_token(&self, _: &TtrpcContext, req: GetTokenRequest) -> ttrpc::Result<GetTokenResponse> {
        if !(req.TokenType.is_empty() || req.TokenType == "kbs") {
            return Err(status(
                AgentError::InvalidArgument(format!("token type {:?} is not supported (only \"kbs\")", req.TokenType)),
                "GetToken",
            ));
        }
        let token = self.agent.token().await.map_err(|e| status(e, "GetToken"))?;
        Ok(GetTokenResponse { Token: token.into_bytes(), ..Default::default() })
    }

    async fn extend_runtime_measurement(
        &self,
        _: &TtrpcContext,
        req: ExtendRuntimeMeasurementRequest,
    ) -> ttrpc::Result<ExtendRuntimeMeasurementResponse> {
        // A TEE without registers is an answer (Result = NOT_SUPPORTED), not an
        // error status: guest-components' clients log it and go on.
        let measured = self
            .agent
            .extend(&req.Domain, &req.Operation, &req.Content, req.RegisterIndex)
            .await
            .map_err(|e| status(e, "ExtendRuntimeMeasurement"))?;
        let result = match measured {
            Measured::Extended => RuntimeMeasurementResult::OK,
            Measured::NotSupported => RuntimeMeasurementResult::NOT_SUPPORTED,
            Measured::NotEnabled => RuntimeMeasurementResult::NOT_ENABLED,
        };
        Ok(ExtendRuntimeMeasurementResponse { Result: result.into(), ..Default::default() })
    }

    async fn get_additional_evidence(
        &self,
        _: &TtrpcContext,
        req: GetAdditionalEvidenceRequest,
    ) -> ttrpc::Result<GetEvidenceResponse> {
        let evidence =
            self.agent.additional_evidence(&req.RuntimeData).await.map_err(|e| status(e, "GetAdditionalEvidence"))?;
        Ok(GetEvidenceResponse { Evidence: evidence, ..Default::default() })
    }

    async fn bind_init_data(&self, _: &TtrpcContext, req: BindInitDataRequest) -> ttrpc::Result<BindInitDataResponse> {
        self.agent.bind_init_data(&req.Digest).await.map_err(|e| status(e, "BindInitData"))?;
        Ok(BindInitDataResponse::default())
    }

    async fn get_additional_tees(
        &self,
        _: &TtrpcContext,
        _: GetAdditionalTeesRequest,
    ) -> ttrpc::Result<GetAdditionalTeesResponse> {
        Ok(GetAdditionalTeesResponse { additional_tees: self.agent.additional_tees(), ..Default::default() })
    }

    async fn get_tee_type(&self, _: &TtrpcContext, _: GetTeeTypeRequest) -> ttrpc::Result<GetTeeTypeResponse> {
        Ok(GetTeeTypeResponse { tee: self.agent.tee().as_str().into(), ..Default::default() })
    }

    async fn get_resource(&self, _: &TtrpcContext, req: GetResourceRequest) -> ttrpc::Result<GetResourceResponse> {
        let bytes = self.agent.resource(&req.ResourcePath).await.map_err(|e| status(e, "GetResource"))?;
        Ok(GetResourceResponse { Resource: bytes.to_vec(), ..Default::default() })
    }
}
