//! Replays every fuzz corpus (fuzz/corpus/<target>/) and every crash the fuzzer
//! ever found (fuzz/artifacts/<target>/, committed once fixed) through the fuzz
//! targets' own entry points, so no crash comes back. Runs on the stable
//! toolchain; finding new inputs needs `cargo fuzz` (see fuzz/README.md).

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = 0;
    for dir in [root.join("corpus").join(target), root.join("artifacts").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} panics on {}", path.display());
            inputs += 1;
        }
    }
    assert!(inputs > 0, "no corpus for {target} in {}", root.display());
}

#[test]
fn http_request_corpus() {
    replay("http_request", hedgehog::fuzzing::http_request);
}

#[test]
fn ws_frames_corpus() {
    replay("ws_frames", hedgehog::fuzzing::ws_frames);
}

#[test]
fn upstream_message_corpus() {
    replay("upstream_message", hedgehog::fuzzing::upstream_message);
}
