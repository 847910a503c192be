//! The attestation-agent: the only component of the guest that reads the
//! TEE's evidence and the only one that holds the TEE key pair. Everything
//! secret in the guest comes through it, from a Trustee-compatible KBS.
//!
//! Layout: [`attester`] (evidence per TEE, device seam), [`kbs`] (RCAR client,
//! session, resource JWE), [`measurement`] (runtime event log and registers),
//! [`initdata`] (the measured config), [`config`], [`service`] (ttrpc
//! handlers) and [`server`] (unix socket). The binary only wires these.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

pub mod agent;
pub mod attester;
pub mod config;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
// Fuzz harness code: its asserts and unwraps are meant to panic (a panic is the fuzzer's finding).
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
pub mod fuzzing;
pub mod initdata;
pub mod jcs;
pub mod kbs;
pub mod measurement;
pub mod server;
pub mod service;
pub mod tee_key;
