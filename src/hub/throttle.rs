//! The throttled delivery tier (`throttle_ms = N`): for a client of a throttled
//! class on a thinned channel (`ticker`, `level2_batch`), at most one message per
//! topic every N ms, the newest winning.
//!
//! Full-tier subscribers never come here: the table keeps them in their own list,
//! walked as before, and access is decided at subscribe time (which list a
//! subscriber joins), never per message.
//!
//! Each (client, topic) has a [`Slot`]: what is pending and when the next message
//! may go. A message that comes before then replaces (or, for `level2_batch`, is
//! merged into) the pending one; the next message after the due time, or the
//! shard's flusher task ([`FLUSH_EVERY`]), sends it.
//!
//! `level2_batch` cannot drop updates (a client's book would be wrong), so newest
//! wins per price level: skipped `l2update`s are merged into one `l2update` (each
//! side and price once, with its newest size); a `snapshot` replaces whatever is
//! pending and later updates are applied to it, and the client gets one fresh
//! `snapshot`. A lone message goes out byte for byte as the feed sent it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::protocol::{json_string, Book};
use crate::ws::{frame, Frame, Outbox};

/// How often a shard's flusher sends the slots that are due: a pending message
/// goes out at most this late after its due time.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// Most price levels one merged `l2update` holds. Past it, the merge is sent at
/// once, ahead of its due time: a slot's memory stays bounded, at the cost of one
/// extra message in an interval in which more than this many levels changed.
pub const MAX_MERGED_LEVELS: usize = 8_192;

/// One throttled client's state on one topic.
pub struct Slot {
    outbox: Rc<Outbox>,
    every: Duration,
    /// The topic's `level2_batch` (merged), else newest-only.
    level2: bool,
    /// When the next message may go.
    due: Instant,
    pending: Option<Pending>,
}

/// What a slot holds back.
enum Pending {
    /// The newest message (ticker), as the feed sent it.
    Latest(Frame),
    /// `l2update`s merged: the first as sent while it is alone.
    Changes(Merge),
    /// A `snapshot` with the updates after it applied.
    Book { product: String, book: Book },
}

#[derive(Deserialize)]
struct L2Message {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    product_id: String,
    #[serde(default)]
    changes: Vec<(String, String, String)>,
    #[serde(default)]
    time: Option<String>,
}

/// Merged `l2update`s: each (side, price) once, with its newest size.
struct Merge {
    /// The only message merged so far, to send unchanged.
    single: Option<Frame>,
    product: String,
    time: Option<String>,
    changes: Vec<(String, String, String)>,
    index: HashMap<(String, u64), usize>,
}

impl Merge {
    fn new(frame: &Frame, m: L2Message) -> Merge {
        let mut merge = Merge {
            single: Some(frame.clone()),
            product: m.product_id,
            time: None,
            changes: Vec::new(),
            index: HashMap::new(),
        };
        merge.add(m.changes, m.time);
        merge
    }

    fn add(&mut self, changes: Vec<(String, String, String)>, time: Option<String>) {
        self.time = time.or(self.time.take());
        for (side, price, size) in changes {
            let key = (side.clone(), price.parse::<f64>().map_or(u64::MAX, f64::to_bits));
            match self.index.get(&key) {
                Some(&i) => self.changes[i].2 = size,
                None => {
                    self.index.insert(key, self.changes.len());
                    self.changes.push((side, price, size));
                }
            }
        }
    }

    fn frame(self) -> Frame {
        if let Some(f) = self.single {
            return f;
        }
        let mut changes = String::new();
        for (i, (side, price, size)) in self.changes.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(changes, "{sep}[{},{},{}]", json_string(side), json_string(price), json_string(size));
        }
        let time = self.time.as_deref().map(|t| format!(r#","time":{}"#, json_string(t))).unwrap_or_default();
        let body =
            format!(r#"{{"type":"l2update","product_id":{},"changes":[{changes}]{time}}}"#, json_string(&self.product));
        frame::text(body.as_bytes())
    }
}

impl Pending {
    fn frame(self) -> Frame {
        match self {
            Pending::Latest(f) => f,
            Pending::Changes(m) => m.frame(),
            Pending::Book { product, book } => frame::text(book.snapshot(&product).as_bytes()),
        }
    }
}

impl Slot {
    /// A slot whose first message may go one interval from now: the client has
    /// just been sent what a late joiner gets (the latest ticker, a snapshot).
    pub fn new(outbox: &Rc<Outbox>, every: Duration, level2: bool) -> Slot {
        Slot { outbox: outbox.clone(), every, level2, due: Instant::now() + every, pending: None }
    }

    /// Takes a message of the topic `id`, `now`.
    pub fn offer(&mut self, f: &Frame, id: Option<u64>, now: Instant) {
        if self.pending.is_none() && now >= self.due {
            self.send(f.clone(), id, now);
            return;
        }
        match self.level2 {
            false => self.pending = Some(Pending::Latest(f.clone())),
            true => self.merge(f, id, now),
        }
        self.flush(id, now);
    }

    /// Sends what is pending if it is due.
    pub fn flush(&mut self, id: Option<u64>, now: Instant) {
        if now >= self.due {
            if let Some(p) = self.pending.take() {
                self.send(p.frame(), id, now);
            }
        }
    }

    /// The client's outbox.
    pub fn outbox(&self) -> Rc<Outbox> {
        self.outbox.clone()
    }

    fn send(&mut self, f: Frame, id: Option<u64>, now: Instant) {
        let _ = self.outbox.push_topic(f, id);
        self.due = now + self.every;
    }

    /// Newest wins per price level; what cannot be merged goes out at once, after
    /// what is pending, so the client's order is the feed's.
    fn merge(&mut self, f: &Frame, id: Option<u64>, now: Instant) {
        let parsed = frame::split_server_frame(f).and_then(|(_, body)| serde_json::from_slice::<L2Message>(body).ok());
        let Some(m) = parsed.filter(|m| m.kind == "l2update" || m.kind == "snapshot") else {
            if let Some(p) = self.pending.take() {
                self.send(p.frame(), id, now);
            }
            self.send(f.clone(), id, now);
            return;
        };
        if m.kind == "snapshot" {
            let body = frame::split_server_frame(f).map(|(_, b)| b).unwrap_or_default();
            self.pending = Some(match Book::from_snapshot(body) {
                Some(book) => Pending::Book { product: m.product_id, book },
                None => Pending::Latest(f.clone()),
            });
            return;
        }
        self.pending = Some(match self.pending.take() {
            Some(Pending::Changes(mut merge)) => {
                merge.single = None;
                merge.add(m.changes, m.time);
                Pending::Changes(merge)
            }
            Some(Pending::Book { product, mut book }) => {
                let body = frame::split_server_frame(f).map(|(_, b)| b).unwrap_or_default();
                book.apply(body);
                Pending::Book { product, book }
            }
            Some(Pending::Latest(old)) => {
                let _ = self.outbox.push_topic(old, id);
                Pending::Changes(Merge::new(f, m))
            }
            None => Pending::Changes(Merge::new(f, m)),
        });
        if matches!(&self.pending, Some(Pending::Changes(m)) if m.changes.len() > MAX_MERGED_LEVELS) {
            self.due = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Frame {
        frame::text(s.as_bytes())
    }

    fn bodies(outbox: &Outbox) -> Vec<String> {
        let taken =
            futures_lite::future::or(async { outbox.take_frames().await.unwrap_or_default() }, async { Vec::new() });
        futures_lite::future::block_on(taken)
            .iter()
            .map(|f| String::from_utf8(frame::split_server_frame(f).unwrap().1.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn the_newest_ticker_wins_and_goes_when_due() {
        let outbox = Rc::new(Outbox::new(1 << 20));
        let t0 = Instant::now();
        let mut slot = Slot::new(&outbox, Duration::from_millis(100), false);
        slot.due = t0;
        slot.offer(&text("1"), None, t0);
        slot.offer(&text("2"), None, t0 + Duration::from_millis(10));
        slot.offer(&text("3"), None, t0 + Duration::from_millis(20));
        slot.flush(None, t0 + Duration::from_millis(50));
        assert_eq!(bodies(&outbox), ["1"]);
        slot.flush(None, t0 + Duration::from_millis(100));
        assert_eq!(bodies(&outbox), ["3"]);
        slot.flush(None, t0 + Duration::from_millis(300));
        assert!(bodies(&outbox).is_empty(), "nothing pending");
    }

    #[test]
    fn level2_updates_merge_newest_size_per_level() {
        let outbox = Rc::new(Outbox::new(1 << 20));
        let t0 = Instant::now();
        let mut slot = Slot::new(&outbox, Duration::from_millis(100), true);
        slot.due = t0;
        let u = |changes: &str, t: &str| {
            text(&format!(r#"{{"type":"l2update","product_id":"A-B","changes":{changes},"time":"{t}"}}"#))
        };
        slot.offer(&u(r#"[["buy","10","1"]]"#, "t1"), None, t0);
        slot.offer(&u(r#"[["buy","10","2"],["sell","11","1"]]"#, "t2"), None, t0);
        slot.offer(&u(r#"[["sell","11.0","0"],["buy","9","3"]]"#, "t3"), None, t0);
        slot.flush(None, t0 + Duration::from_millis(100));
        let out = bodies(&outbox);
        assert_eq!(out[0], r#"{"type":"l2update","product_id":"A-B","changes":[["buy","10","1"]],"time":"t1"}"#);
        assert_eq!(
            out[1],
            r#"{"type":"l2update","product_id":"A-B","changes":[["buy","10","2"],["sell","11","0"],["buy","9","3"]],"time":"t3"}"#
        );
    }

    #[test]
    fn a_level2_snapshot_replaces_what_is_pending() {
        let outbox = Rc::new(Outbox::new(1 << 20));
        let t0 = Instant::now();
        let mut slot = Slot::new(&outbox, Duration::from_millis(100), true);
        slot.due = t0 + Duration::from_millis(1);
        slot.offer(&text(r#"{"type":"l2update","product_id":"A-B","changes":[["buy","1","1"]]}"#), None, t0);
        slot.offer(
            &text(r#"{"type":"snapshot","product_id":"A-B","bids":[["10","1"]],"asks":[["11","1"]]}"#),
            None,
            t0,
        );
        slot.offer(&text(r#"{"type":"l2update","product_id":"A-B","changes":[["buy","10","0"]]}"#), None, t0);
        slot.flush(None, t0 + Duration::from_millis(1));
        assert_eq!(bodies(&outbox), [r#"{"type":"snapshot","product_id":"A-B","asks":[["11","1"]],"bids":[]}"#]);
    }
}
