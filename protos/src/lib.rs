//! Wire contracts of the guest stack, generated at build time from
//! `protos/*.proto` (see build.rs):
//!
//! - `agent`, `oci`, `types`, `csi`, `health`: kata-containers' agent protocol,
//!   wire-identical (package, service, method, message and field names and
//!   numbers). Changing a number here breaks every kata shim: the
//!   `wire_contract` test guards them.
//! - `attestation_agent`: the in-guest attestation-agent daemon API.
//! - `cdh`: the confidential data hub API (package `api`: image pull,
//!   resources, sealed secrets, secure mounts), guest-components' wire contract.
//!
//! All messages derive serde in kata's JSON shape (see `serde_compat`).

mod rpc_table;
pub mod serde_compat;
pub mod socket;

/// Fully qualified ttrpc service names.
pub const AGENT_SERVICE: &str = "grpc.AgentService";
pub const HEALTH_SERVICE: &str = "grpc.Health";

macro_rules! generated {
    ($($name:ident),* $(,)?) => {$(
        #[allow(
            clippy::all,
            clippy::pedantic,
            dead_code,
            missing_docs,
            non_camel_case_types,
            non_snake_case,
            non_upper_case_globals,
            trivial_casts,
            unused,
            unused_results,
            unsafe_code
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", stringify!($name), ".rs"));
        }
    )*};
}

generated!(
    empty,
    types,
    oci,
    csi,
    agent,
    agent_ttrpc,
    health,
    health_ttrpc,
    attestation_agent,
    attestation_agent_ttrpc,
    cdh,
    cdh_ttrpc,
);
