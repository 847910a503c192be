//! Randomness from the operating system (getrandom); never a userspace PRNG.

use crate::{CryptoError, Result};

/// Fill `buf` with OS randomness.
pub(crate) fn fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| CryptoError::Rng)
}

/// Fresh random bytes.
pub(crate) fn array<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    fill(&mut out)?;
    Ok(out)
}
