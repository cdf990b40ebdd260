//! `simulate --replay FILE`: recorded messages sent again byte for byte, paced by
//! their recorded times.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::protocol::{self, Channel};
use crate::ws::{self, Frame};

/// One recorded message.
pub struct Record {
    pub channel: Channel,
    pub product: String,
    /// Recorded time in microseconds since the epoch.
    pub at: i64,
    pub frame: Frame,
}

/// A loaded recording and how far it has been played.
pub struct Replay {
    pub records: Vec<Record>,
    /// How much faster than recorded; 0 means as fast as possible.
    pub speed: f64,
    pub next: usize,
    /// Set at the first subscribe: the replay's clock starts then.
    pub started: Option<Instant>,
}

impl Replay {
    /// Reads one compact JSON message per line. Lines that are not JSON objects
    /// with a type routed to a channel and a product are skipped.
    pub fn load(path: &Path, speed: f64) -> Result<Replay, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut records = Vec::new();
        let mut last_at = None;
        for line in text.lines() {
            let Some(key) = protocol::scan(line.as_bytes()) else { continue };
            let (Some(channel), Some(product)) = (Channel::of_message(key.kind), key.product_id) else {
                continue;
            };
            let value: serde_json::Value = match serde_json::from_str(line) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                _ => continue,
            };
            let at = value.get("time").and_then(|t| t.as_str()).and_then(crate::clock::parse_iso);
            let at = at.or(last_at).unwrap_or(0);
            last_at = Some(at);
            records.push(Record { channel, product: product.to_string(), at, frame: ws::frame::text(line.as_bytes()) });
        }
        if records.is_empty() {
            return Err(format!("{} holds no replayable feed message", path.display()));
        }
        Ok(Replay { records, speed, next: 0, started: None })
    }

    /// The products in the recording, in order of first appearance.
    pub fn products(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.records {
            if !out.contains(&r.product) {
                out.push(r.product.clone());
            }
        }
        out
    }

    /// Whether record `i` is due by now.
    pub fn due(&self, i: usize, now: Instant) -> bool {
        let Some(start) = self.started else { return false };
        if self.speed <= 0.0 {
            return true;
        }
        let offset = (self.records[i].at - self.records[0].at).max(0) as f64 / self.speed;
        now.duration_since(start) >= Duration::from_micros(offset as u64)
    }
}
