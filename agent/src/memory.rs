//! Hands freed heap back to the guest kernel.
//!
//! The agent's live heap stays small (about 1.4 MiB at the peak of the load
//! test, measured with heaptrack), but a burst of concurrent containers spreads
//! short-lived allocations over many heap pages and glibc keeps those pages
//! mapped after they are freed. In a VM that is memory the pod cannot use, so
//! the agent returns free pages whenever a container goes away.

/// Makes every thread allocate from the one main arena. glibc otherwise gives
/// each new thread (the blocking pool grows to dozens under a burst of
/// containers) its own arena, and pages freed there stay resident. The
/// agent's allocation rate is low: with 16 shim connections starting
/// containers at once the shared lock cost no throughput and the agent kept
/// about 5% less resident afterwards (`make bench-arena`, docs/BENCHMARKS.md).
/// An operator's explicit `MALLOC_ARENA_MAX` (glibc's own knob)
/// is left in force. Call before the runtime starts any thread.
pub fn single_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Releases every wholly free heap page of every malloc arena to the kernel.
/// Costs well under a millisecond on the agent's heap; call it off the async
/// worker threads (it takes each arena's lock in turn).
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own bookkeeping under its
    // locks; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs [`release_free_heap`] on the blocking pool without waiting for it.
pub fn release_free_heap_soon() {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        drop(handle.spawn_blocking(release_free_heap));
    }
}
