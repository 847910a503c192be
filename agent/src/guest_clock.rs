//! SetGuestDateTime: sets the guest's wall clock (CLOCK_REALTIME) to the time
//! the host sends. Never touches CLOCK_MONOTONIC (timeouts and the reaper
//! rely on it) and never accepts a value the kernel would have to round.
//! The host is untrusted: a policy that does not trust its clock denies this
//! request at the gate. Times before TIME_FLOOR are refused: no real clock
//! reads them, and an epoch-zero request (kata's default message) would
//! otherwise wind the clock back decades.

use crate::container::RuntimeError;

/// 2024-01-01T00:00:00Z: the earliest time accepted.
pub const TIME_FLOOR: i64 = 1_704_067_200;

/// Sets CLOCK_REALTIME to `sec` seconds and `usec` microseconds since the
/// epoch (kata's `Sec`/`Usec`, settimeofday semantics).
pub fn set(sec: i64, usec: i64) -> Result<(), RuntimeError> {
    if sec < TIME_FLOOR {
        return Err(RuntimeError::InvalidArgument(format!(
            "SetGuestDateTime: Sec {sec} is before {TIME_FLOOR} (2024-01-01)"
        )));
    }
    if !(0..1_000_000).contains(&usec) {
        return Err(RuntimeError::InvalidArgument(format!("SetGuestDateTime: Usec {usec} is not in 0..1000000")));
    }
    let tv = libc::timeval { tv_sec: sec as libc::time_t, tv_usec: usec as libc::suseconds_t };
    // SAFETY: a valid timeval and no timezone.
    if unsafe { libc::settimeofday(&tv, std::ptr::null()) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) => RuntimeError::InvalidArgument(format!("SetGuestDateTime {sec}.{usec:06}: {e}")),
            _ => RuntimeError::Internal(format!("SetGuestDateTime {sec}.{usec:06}: {e}")),
        });
    }
    tracing::info!(sec, usec, "guest wall clock set by the host");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> std::time::Duration {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap()
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let ok = TIME_FLOOR + 1;
        for (s, u, needle) in [
            (-1, 0, "Sec -1 is before"),
            (0, 0, "Sec 0 is before"),
            (ok, 1_000_000, "Usec 1000000"),
            (ok, -1, "Usec -1"),
        ] {
            let e = set(s, u).unwrap_err();
            assert!(matches!(e, RuntimeError::InvalidArgument(_)) && e.to_string().contains(needle), "{e}");
        }
    }

    /// Moves the clock forward by one second and back, as root.
    #[test]
    fn sets_the_wall_clock_forward_and_back() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: setting the clock needs root");
            return;
        }
        let before = now();
        let ahead = before + std::time::Duration::from_secs(1);
        set(ahead.as_secs() as i64, ahead.subsec_micros() as i64).unwrap();
        let after = now();
        // Restore first, then assert: keep the machine's clock right.
        let back = after - std::time::Duration::from_secs(1);
        set(back.as_secs() as i64, back.subsec_micros() as i64).unwrap();
        let skew = after.saturating_sub(before);
        assert!(skew >= std::time::Duration::from_millis(999), "clock did not move forward: {skew:?}");
        assert!(skew < std::time::Duration::from_secs(3), "clock moved too far: {skew:?}");
        let restored = now();
        assert!(restored < after, "clock not set back: {restored:?} vs {after:?}");
    }
}
