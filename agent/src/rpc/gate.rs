//! The policy gate in front of the agent service: every AgentService method
//! checks its request against the policy, then calls the handler. Generated
//! from the one RPC table (`protos::with_agent_rpcs!`), so no method can be
//! added without passing through it.
//!
//! A denial answers as kata's agent does: PERMISSION_DENIED, except that a
//! denied ReadStdout/ReadStderr returns no data (kata's behaviour, which lets
//! a shim's copy loop end instead of erroring).

use std::sync::Arc;

use async_trait::async_trait;
use protos::agent_ttrpc::AgentService;
use ttrpc::r#async::TtrpcContext;

use crate::policy::AgentPolicy;

/// `inner`, with every request checked by `policy` first.
pub struct PolicyGate<S> {
    inner: S,
    policy: Arc<AgentPolicy>,
}

impl<S> PolicyGate<S> {
    pub fn new(inner: S, policy: Arc<AgentPolicy>) -> PolicyGate<S> {
        PolicyGate { inner, policy }
    }
}

/// What a method answers when the policy refuses its request.
trait Refused: Sized {
    fn refused(err: ttrpc::Error) -> ttrpc::Result<Self> {
        Err(err)
    }
}

impl Refused for protos::empty::Empty {}
impl Refused for protos::agent::WaitProcessResponse {}
impl Refused for protos::agent::StatsContainerResponse {}
impl Refused for protos::agent::WriteStreamResponse {}
impl Refused for protos::types::Interface {}
impl Refused for protos::agent::Routes {}
impl Refused for protos::agent::Interfaces {}
impl Refused for protos::agent::GetIPTablesResponse {}
impl Refused for protos::agent::SetIPTablesResponse {}
impl Refused for protos::agent::Metrics {}
impl Refused for protos::agent::GuestDetailsResponse {}
impl Refused for protos::agent::OOMEvent {}
impl Refused for protos::csi::VolumeStatsResponse {}
impl Refused for protos::agent::GetDiagnosticDataResponse {}

impl Refused for protos::agent::ReadStreamResponse {
    fn refused(err: ttrpc::Error) -> ttrpc::Result<Self> {
        // Only a policy denial reads as end of stream; a policy that cannot
        // decide is still an error.
        match &err {
            ttrpc::Error::RpcStatus(s) if s.code() == ttrpc::Code::PERMISSION_DENIED => Ok(Default::default()),
            _ => Err(err),
        }
    }
}

macro_rules! gated_service {
    ($($name:ident $snake:ident $req:path => $resp:path;)*) => {
        #[async_trait]
        impl<S: AgentService + Send + Sync> AgentService for PolicyGate<S> {
            $(
                async fn $snake(&self, ctx: &TtrpcContext, req: $req) -> ttrpc::Result<$resp> {
                    match self.policy.check(stringify!($name), &req) {
                        Ok(()) => self.inner.$snake(ctx, req).await,
                        Err(err) => <$resp as Refused>::refused(err),
                    }
                }
            )*
        }
    };
}
protos::with_agent_rpcs!(gated_service);
