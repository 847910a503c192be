#![no_main]
// The body lives in the owning crate's `fuzzing` module, where a unit test
// replays fuzz/regressions/configs/.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cvm_agent::fuzzing::configs(data);
    attestation_agent::fuzzing::configs(data);
    confidential_data_hub::fuzzing::configs(data);
});
