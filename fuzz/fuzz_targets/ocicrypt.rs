#![no_main]
// The body lives in the owning crate's `fuzzing` module, where a unit test
// replays fuzz/regressions/ocicrypt/.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    image_rs::fuzzing::ocicrypt(data);
});
