#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| marathon_fuzz::core_checks::usage(data));
