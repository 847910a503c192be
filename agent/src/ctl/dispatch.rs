//! Name → typed call for every RPC in `protos::with_agent_rpcs!` and
//! `protos::with_health_rpcs!`: JSON body → request message → ttrpc call →
//! response message → JSON.

use protos::agent_ttrpc::AgentServiceClient;
use protos::health_ttrpc::HealthClient;
use ttrpc::context::Context;
use ttrpc::r#async::Client;

use super::{CtlError, DispatchError};

fn parse<T: serde::de::DeserializeOwned>(method: &'static str, body: &str) -> Result<T, DispatchError> {
    serde_json::from_str(body).map_err(|source| DispatchError::Ctl(CtlError::BadBody { method, source }))
}

fn to_json<T: serde::Serialize>(method: &'static str, resp: &T) -> Result<serde_json::Value, DispatchError> {
    serde_json::to_value(resp).map_err(|source| DispatchError::Ctl(CtlError::BadResponse { method, source }))
}

macro_rules! dispatch_table {
    (
        agent { $($name:ident $snake:ident $req:path => $resp:path;)* }
        health { $($hname:ident $hsnake:ident $hreq:path => $hresp:path;)* }
    ) => {
        /// Every method `call` accepts: the agent API, then `grpc.Health`.
        pub const METHODS: &[&str] = &[$(stringify!($name),)* $(stringify!($hname),)*];

        /// Calls `method` on the connected agent with a JSON `body`.
        pub async fn call_method(
            client: &Client,
            method: &str,
            body: &str,
            ctx: Context,
        ) -> Result<serde_json::Value, DispatchError> {
            match method {
                $(stringify!($name) => {
                    let req: $req = parse(stringify!($name), body)?;
                    let resp = AgentServiceClient::new(client.clone()).$snake(ctx, &req).await?;
                    to_json(stringify!($name), &resp)
                })*
                $(stringify!($hname) => {
                    let req: $hreq = parse(stringify!($hname), body)?;
                    let resp = HealthClient::new(client.clone()).$hsnake(ctx, &req).await?;
                    to_json(stringify!($hname), &resp)
                })*
                other => Err(DispatchError::Ctl(CtlError::UnknownMethod(other.to_owned()))),
            }
        }
    };
}

// Expands the two tables into one `dispatch_table!` invocation.
macro_rules! agent_rows {
    ($($t:tt)*) => {
        macro_rules! with_agent_rows {
            ($health:tt) => { dispatch_table! { agent { $($t)* } health $health } };
        }
    };
}
protos::with_agent_rpcs!(agent_rows);
macro_rules! health_rows {
    ($($t:tt)*) => { with_agent_rows! { { $($t)* } } };
}
protos::with_health_rpcs!(health_rows);
