#![no_main]
// The body lives in the owning crate's `fuzzing` module, where a unit test
// replays fuzz/regressions/kbs_rcar/.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    attestation_agent::fuzzing::kbs_rcar(data);
});
