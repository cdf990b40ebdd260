#![no_main]
//! See hedgehog::fuzzing::http_request.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hedgehog::fuzzing::http_request(data));
