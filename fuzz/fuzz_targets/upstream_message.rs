#![no_main]
//! See hedgehog::fuzzing::upstream_message.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hedgehog::fuzzing::upstream_message(data));
