//! The confidential VM's guest agent, as a library under two thin binaries:
//! `cvm-agent` (the ttrpc server, PID 1 in the guest) and `cvm-agent-ctl` (the
//! host-side client used by tests and operators).
//!
//! The agent speaks kata-containers' agent protocol (see `protos`). Every
//! request comes from the untrusted host: handlers must never panic and never
//! block another container's requests.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

pub mod capabilities;
pub mod cgroups;
pub mod components;
pub mod config;
pub mod container;
pub mod copy_file;
pub mod ctl;
pub mod flow;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
// Fuzz harness code: its asserts and unwraps are meant to panic (a panic is the fuzzer's finding).
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
pub mod fuzzing;
pub mod guest_clock;
pub mod guest_details;
pub mod image_pull;
pub mod init;
pub mod initdata;
pub mod jail;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod mount;
pub mod namespaces;
pub mod network;
pub mod policy;
pub mod process;
pub mod reaper;
pub mod reseed;
pub mod rpc;
pub mod sandbox;
pub mod seccomp;
pub mod server;
pub mod shutdown;
pub mod transport;
pub mod volume_stats;
