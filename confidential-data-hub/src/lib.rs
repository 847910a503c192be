//! Confidential data hub: the in-guest daemon kata's agent calls (over ttrpc,
//! guest-components' `api` package) to pull images and fetch confidential
//! resources. It never holds the TEE key: keys, signature policies and
//! credentials named by `kbs:///` URIs come from the attestation-agent, which
//! attests to the KBS. Every pull goes through image-rs's `ImageClient`
//! (signature policy on every pull) and is recorded in the runtime
//! measurements.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

pub mod config;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
// Fuzz harness code: its asserts and unwraps are meant to panic (a panic is the fuzzer's finding).
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
pub mod fuzzing;
pub mod hub;
pub mod measure;
pub mod secret;
pub mod server;
pub mod service;

pub use config::CdhConfig;
pub use hub::{Hub, HubError};
