//! The confidential VM's guest agent, as a library under two thin binaries:
//! `cvm-agent` (the ttrpc server, PID 1 in the guest) and `cvm-agent-ctl` (the
//! host-side client used by tests and operators).
//!
//! The agent speaks kata-containers' agent protocol (see `protos`). Every
//! request comes from the untrusted host: handlers must never panic and never
//! block another container's requests.

pub mod config;
pub mod ctl;
pub mod init;
pub mod logging;
pub mod rpc;
pub mod server;
pub mod transport;
