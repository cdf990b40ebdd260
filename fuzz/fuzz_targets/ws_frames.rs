#![no_main]
//! See hedgehog::fuzzing::ws_frames.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hedgehog::fuzzing::ws_frames(data));
