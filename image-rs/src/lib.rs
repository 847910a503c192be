//! Guest-side OCI image pull. Runs inside the confidential VM, where the
//! registry and the network are untrusted and memory is scarce:
//!
//! - every digest is verified (manifest, config, compressed layer, diff_id)
//!   before anything becomes visible;
//! - layers stream network → hash → decompress → hash → unpack, never buffered
//!   whole;
//! - unpacking never writes outside the layer root.

// Errors carry both digests of a mismatch so the operator sees them; they are
// cold paths, so their size on the stack does not matter.
#![allow(clippy::result_large_err)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

pub mod bundle;
pub mod client;
pub mod digest;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
// Fuzz harness code, not a parser: its asserts are meant to panic (a panic is
// how a fuzz target reports a finding), and it indexes and unwraps freely.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
pub mod fuzzing;
pub mod keysource;
pub mod ocicrypt;
pub mod pipeline;
pub mod pull;
pub mod registry;
pub mod signature;
pub mod store;
pub mod unpack;
