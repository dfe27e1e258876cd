#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| marathon_fuzz::config_checks::config(data));
