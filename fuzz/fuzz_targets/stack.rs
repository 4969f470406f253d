#![no_main]
// The checks are in the harness crate (fuzz/harness), where the tests
// replay the corpus and the regressions through the same function.
libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::stack::run(data));
