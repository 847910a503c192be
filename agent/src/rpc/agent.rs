//! `grpc.AgentService`. The container runtime, storage, networking and policy
//! issues fill these in; until then every method answers UNIMPLEMENTED with
//! its name (kata's generated default would say NOT_FOUND, which a shim reads
//! as "no such container").

use async_trait::async_trait;
use protos::agent_ttrpc::AgentService;
use ttrpc::r#async::TtrpcContext;

use super::unimplemented;

/// Per-sandbox agent state lives behind this handle (per-container locks, no
/// global mutex); empty until the runtime issue lands.
#[derive(Debug, Default)]
pub struct AgentRpc {}

// The whole impl is generated so `#[async_trait]` sees every method.
macro_rules! not_implemented_yet {
    ($($name:ident $snake:ident $req:path => $resp:path;)*) => {
        #[async_trait]
        impl AgentService for AgentRpc {$(
            async fn $snake(&self, _ctx: &TtrpcContext, _req: $req) -> ttrpc::Result<$resp> {
                Err(unimplemented(protos::AGENT_SERVICE, stringify!($name)))
            }
        )*}
    };
}

protos::with_agent_rpcs!(not_implemented_yet);
