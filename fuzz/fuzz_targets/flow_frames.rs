#![no_main]
// The body lives in the owning crate's `fuzzing` module, where a unit test
// replays fuzz/regressions/flow_frames/.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cvm_agent::fuzzing::flow_frames(data);
});
