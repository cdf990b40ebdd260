//! How far a replay has got, readable from other threads: the relay's `/healthz`
//! reports it when it runs a replay in-process (`hedgehog --replay FILE`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use serde_json::json;

/// A replay's settings and progress, shared by the simulator's thread (which
/// writes it) and whoever reports it.
#[derive(Debug)]
pub struct ReplayProgress {
    pub file: PathBuf,
    /// Messages in the capture.
    pub messages: usize,
    pub speed: f64,
    pub looping: bool,
    /// The capture time of the first timed message (microseconds since the epoch).
    origin: Option<i64>,
    started: AtomicBool,
    /// Messages played in this pass.
    played: AtomicUsize,
    /// Passes completed (with `--loop`).
    passes: AtomicU64,
    /// The due offset of the last message played.
    offset: AtomicI64,
}

impl ReplayProgress {
    pub fn new(file: PathBuf, messages: usize, speed: f64, looping: bool, origin: Option<i64>) -> Self {
        ReplayProgress {
            file,
            messages,
            speed,
            looping,
            origin,
            started: AtomicBool::new(false),
            played: AtomicUsize::new(0),
            passes: AtomicU64::new(0),
            offset: AtomicI64::new(0),
        }
    }

    pub(super) fn set_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    pub(super) fn set_played(&self, played: usize, offset: i64) {
        self.played.store(played, Ordering::Relaxed);
        self.offset.store(offset, Ordering::Relaxed);
    }

    pub(super) fn pass_done(&self) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.set_played(0, 0);
    }

    /// Messages played in this pass.
    pub fn played(&self) -> usize {
        self.played.load(Ordering::Relaxed)
    }

    /// As `/healthz` shows it.
    pub fn report(&self) -> serde_json::Value {
        let played = self.played();
        let passes = self.passes.load(Ordering::Relaxed);
        let capture_time = self.origin.filter(|_| played > 0).map(|o| o + self.offset.load(Ordering::Relaxed));
        json!({
            "file": self.file.display().to_string(),
            "messages": self.messages,
            "speed": self.speed,
            "loop": self.looping,
            "started": self.started.load(Ordering::Relaxed),
            "played": played,
            "passes_completed": passes,
            "finished": !self.looping && played == self.messages,
            "capture_time": capture_time.map(crate::clock::format_iso),
        })
    }
}
