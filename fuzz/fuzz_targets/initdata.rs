#![no_main]
// The body lives in the owning crate's `fuzzing` module, where a unit test
// replays fuzz/regressions/initdata/.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cvm_agent::fuzzing::initdata(data);
    attestation_agent::fuzzing::initdata(data);
});
