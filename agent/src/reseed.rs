//! ReseedRandomDev: mixes the host's bytes into the guest's random pool.
//! The host is untrusted, so its bytes are written to /dev/urandom, which
//! mixes them in without crediting any entropy: unlike kata's agent, this
//! never calls RNDADDTOENTCNT/RNDADDENTROPY, so the kernel never counts
//! host-chosen bytes as unpredictable. The crng is then reseeded
//! (RNDRESEEDCRNG) so the mixed input is used at once; host bytes can add
//! unpredictability but never take away what the pool already has.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::container::RuntimeError;

/// Largest amount of data accepted in one request.
pub const MAX_SEED: usize = 64 << 10;
/// The guest's random device.
pub const URANDOM: &str = "/dev/urandom";
/// `_IO('R', 0x07)`: reseed the crng from the input pool (credits nothing).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes `data` into the random pool behind `device` (/dev/urandom in the
/// agent), then asks the kernel to reseed its crng.
pub fn reseed(device: &Path, data: &[u8]) -> Result<(), RuntimeError> {
    if data.is_empty() {
        return Err(RuntimeError::InvalidArgument("ReseedRandomDev: no data".into()));
    }
    if data.len() > MAX_SEED {
        return Err(RuntimeError::InvalidArgument(format!(
            "ReseedRandomDev: {} bytes of data (limit {MAX_SEED})",
            data.len()
        )));
    }
    let internal = |what: &str, e: std::io::Error| {
        RuntimeError::Internal(format!("ReseedRandomDev: {what} {}: {e}", device.display()))
    };
    let mut dev = std::fs::OpenOptions::new().write(true).open(device).map_err(|e| internal("open", e))?;
    dev.write_all(data).map_err(|e| internal("write", e))?;
    // SAFETY: an ioctl without an argument on our fd.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        // ENODATA: the crng is not initialised yet and reseeds on its own;
        // ENOTTY: not a random device (tests). The bytes are mixed in anyway.
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "RNDRESEEDCRNG not done");
    }
    tracing::info!(bytes = data.len(), "host data mixed into the random pool (no entropy credited)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_oversized_data_are_refused_by_name() {
        let e = reseed(Path::new(URANDOM), b"").unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidArgument(_)) && e.to_string().contains("no data"), "{e}");
        let e = reseed(Path::new(URANDOM), &vec![0; MAX_SEED + 1]).unwrap_err();
        assert!(e.to_string().contains(&format!("limit {MAX_SEED}")), "{e}");
    }

    #[test]
    fn the_data_is_written_to_the_device_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("urandom");
        std::fs::write(&dev, b"").unwrap();
        let seed: Vec<u8> = (0..=255u8).cycle().take(MAX_SEED).collect();
        reseed(&dev, &seed).unwrap();
        assert_eq!(std::fs::read(&dev).unwrap(), seed);
    }

    #[test]
    fn reseeds_the_real_device_without_crediting_entropy() {
        let avail = || std::fs::read_to_string("/proc/sys/kernel/random/entropy_avail").ok();
        let before = avail();
        reseed(Path::new(URANDOM), &[0u8; 4096]).unwrap();
        // 4096 zero bytes credited would push the count up; on kernels
        // since 5.18 it stays at the pool size (256) either way.
        if let (Some(b), Some(a)) = (before, avail()) {
            let (b, a): (u32, u32) = (b.trim().parse().unwrap(), a.trim().parse().unwrap());
            assert!(a <= b.max(256), "entropy credited: {b} -> {a}");
        }
    }
}
