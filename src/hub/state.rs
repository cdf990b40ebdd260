//! What shard 0 remembers of the feed: per product, the latest ticker, the latest
//! match, the order book (for `level2_batch`) and the last trade id (for gap
//! detection); per (product, channel), a bounded history of raw messages.
//!
//! Shard 0 sees every upstream message before any shard delivers it, and answers
//! every new subscription from this state in the same step that adds the
//! subscriber's shard to the stream (see `owner.rs`), so what a late joiner gets
//! first and the live messages after it meet without a gap or a repeat.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

use super::CHANNELS;
use crate::upstream::FeedMessage;
use crate::ws::Frame;

/// A price level's key: the price as a number, ordered totally.
#[derive(Debug, Clone, Copy)]
struct Px(f64);

impl PartialEq for Px {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Px {}
impl PartialOrd for Px {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Px {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// One side of a book: price -> (price, size) as the feed wrote them.
type Side = BTreeMap<Px, (String, String)>;

/// An aggregated order book, rebuilt from a `snapshot` and kept by `l2update`s.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Book {
    bids: Side,
    asks: Side,
}

#[derive(Deserialize)]
struct Snapshot {
    bids: Vec<(String, String)>,
    asks: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct L2Update {
    changes: Vec<(String, String, String)>,
}

fn is_zero(size: &str) -> bool {
    size.parse::<f64>().map_or(true, |s| s == 0.0)
}

fn level(side: &mut Side, price: String, size: String) {
    let Ok(p) = price.parse::<f64>() else { return };
    if is_zero(&size) {
        side.remove(&Px(p));
    } else {
        side.insert(Px(p), (price, size));
    }
}

impl Book {
    /// A book from a `snapshot` message; `None` if it is not one.
    pub fn from_snapshot(body: &[u8]) -> Option<Book> {
        let s: Snapshot = serde_json::from_slice(body).ok()?;
        let mut book = Book::default();
        for (p, q) in s.bids {
            level(&mut book.bids, p, q);
        }
        for (p, q) in s.asks {
            level(&mut book.asks, p, q);
        }
        Some(book)
    }

    /// Applies an `l2update`; false if it cannot be read.
    pub fn apply(&mut self, body: &[u8]) -> bool {
        let Ok(u) = serde_json::from_slice::<L2Update>(body) else { return false };
        for (side, price, size) in u.changes {
            match side.as_str() {
                "buy" => level(&mut self.bids, price, size),
                "sell" => level(&mut self.asks, price, size),
                _ => {}
            }
        }
        true
    }

    /// The book as a Coinbase `snapshot` message: bids best (highest) first, asks
    /// best (lowest) first.
    pub fn snapshot(&self, product: &str) -> String {
        let levels = |it: &mut dyn Iterator<Item = &(String, String)>| {
            let mut out = String::new();
            for (i, (p, s)) in it.enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(out, "{sep}[{},{}]", crate::protocol::json_string(p), crate::protocol::json_string(s));
            }
            out
        };
        format!(
            r#"{{"type":"snapshot","product_id":{},"asks":[{}],"bids":[{}]}}"#,
            crate::protocol::json_string(product),
            levels(&mut self.asks.values()),
            levels(&mut self.bids.values().rev())
        )
    }
}

/// What is known of one product.
#[derive(Default)]
struct Product {
    ticker: Option<Frame>,
    /// The latest `match` or `last_match`; a `match` is retold as a `last_match`
    /// only when a subscriber joins, not as each one passes.
    last_match: Option<FeedMessage>,
    /// `None` until a snapshot arrives (and again after a reconnect or a gap).
    book: Option<Book>,
    /// The last trade id seen in a match; `None` until the first.
    last_trade: Option<u64>,
    /// Recent messages per channel, oldest first.
    history: [VecDeque<Kept>; CHANNELS.len()],
}

impl Product {
    /// The feed is to be followed afresh: what a new subscriber would be given
    /// waits for new messages. The history stays.
    fn forget(&mut self) {
        self.ticker = None;
        self.last_match = None;
        self.book = None;
        self.last_trade = None;
    }
}

/// Trades missed on one product: the next expected trade id and what came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub product: String,
    pub expected: u64,
    pub received: u64,
}

/// History limits.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Messages kept per (product, channel).
    pub per_topic: usize,
    /// Older messages are dropped.
    pub max_age: Duration,
    /// Bytes kept in all, messages and bookkeeping; past it the topic being
    /// added to drops its oldest.
    pub max_bytes: usize,
}

/// One kept message.
struct Kept {
    /// When hedgehog received it (microseconds since the epoch).
    at: i64,
    msg: FeedMessage,
}

/// Bookkeeping counted per kept message, besides its frame.
const KEPT_OVERHEAD: usize = std::mem::size_of::<Kept>() + 16;

/// A query of the history.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub product: String,
    pub channel: usize,
    pub limit: usize,
    pub since: Since,
}

/// Where a history query starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    All,
    /// Messages with a greater `sequence`.
    Sequence(u64),
    /// Messages whose `time` (or, without one, arrival) is at or after this
    /// (microseconds since the epoch).
    Time(i64),
}

/// What the history holds in all.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    messages: usize,
    bytes: usize,
}

/// The feed state shard 0 keeps.
pub struct FeedState {
    products: HashMap<String, Product>,
    history: Totals,
    limits: HistoryLimits,
    /// Gaps found so far.
    pub gaps: u64,
}

impl FeedState {
    pub fn new(limits: HistoryLimits) -> Self {
        FeedState { products: HashMap::new(), history: Totals::default(), limits, gaps: 0 }
    }

    /// Takes in one message of `channel` as it is dispatched; returns a gap in the
    /// product's trades if this message shows one. `watching_trades`: whether the
    /// matches channel of this product is subscribed (only then are trade ids seen
    /// one by one).
    pub fn on_message(&mut self, msg: &FeedMessage, channel: usize, watching_trades: bool, now: i64) -> Option<Gap> {
        let product = msg.product()?;
        // Looked up by `&str`: a key is allocated once per product, not per message.
        if !self.products.contains_key(product) {
            self.products.insert(product.to_string(), Product::default());
        }
        let p = self.products.get_mut(product)?;
        remember(&mut p.history[channel], &mut self.history, &self.limits, msg, now);
        let missed = match msg.kind() {
            "ticker" => {
                p.ticker = Some(msg.frame.clone());
                None
            }
            "last_match" => {
                p.last_match = Some(msg.clone());
                p.last_trade = msg.trade_id;
                None
            }
            "match" => {
                p.last_match = Some(msg.clone());
                let tid = msg.trade_id?;
                let last = p.last_trade.replace(tid.max(p.last_trade.unwrap_or(0)))?;
                (tid > last + 1).then_some((last + 1, tid))
            }
            // The heartbeat names the last trade: if it is past the last match
            // seen, matches went missing.
            "heartbeat" if watching_trades => {
                let (last, hb) = (p.last_trade?, msg.trade_id?);
                (hb > last).then_some((last + 1, hb))
            }
            "snapshot" => {
                p.book = Book::from_snapshot(msg.body());
                None
            }
            "l2update" => {
                if p.book.as_mut().is_some_and(|book| !book.apply(msg.body())) {
                    p.book = None;
                }
                None
            }
            _ => None,
        };
        let (expected, received) = missed?;
        // The product is resubscribed: its book and trade baseline wait for the
        // fresh snapshot and `last_match`.
        p.book = None;
        p.last_trade = None;
        self.gaps += 1;
        Some(Gap { product: product.to_string(), expected, received })
    }

    /// The upstream connection was lost: everything waits for fresh messages.
    pub fn forget_all(&mut self) {
        self.products.values_mut().for_each(Product::forget);
    }

    /// No shard wants (`product`, `channel`) any more: what is kept for a new
    /// subscriber would go stale, so it is dropped (the upstream sends it afresh
    /// when the channel is subscribed again). The history stays.
    pub fn unwatched(&mut self, product: &str, channel: usize) {
        let Some(p) = self.products.get_mut(product) else { return };
        match CHANNELS[channel] {
            "ticker" => p.ticker = None,
            "matches" => {
                p.last_match = None;
                p.last_trade = None;
            }
            "level2_batch" => p.book = None,
            _ => {}
        }
    }

    /// What a new subscriber of (`product`, `channel`) gets first: the latest
    /// ticker, the `last_match`, or a snapshot of the book; nothing when it is
    /// not known yet (the upstream's own will come).
    pub fn first_frames(&self, product: &str, channel: usize) -> Vec<Frame> {
        let Some(p) = self.products.get(product) else { return Vec::new() };
        let frame = match CHANNELS[channel] {
            "ticker" => p.ticker.clone(),
            "matches" => p.last_match.as_ref().map(|m| match m.kind() {
                "match" => m.retyped("last_match"),
                _ => m.frame.clone(),
            }),
            "level2_batch" => p.book.as_ref().map(|b| crate::ws::frame::text(b.snapshot(product).as_bytes())),
            _ => None,
        };
        frame.into_iter().collect()
    }

    /// The book of `product`, if one is being kept.
    pub fn book(&self, product: &str) -> Option<&Book> {
        self.products.get(product)?.book.as_ref()
    }

    /// Bytes the history holds.
    pub fn history_bytes(&self) -> usize {
        self.history.bytes
    }

    /// Messages the history holds.
    pub fn history_messages(&self) -> usize {
        self.history.messages
    }

    /// The newest `q.limit` messages of a topic after `q.since`, oldest first.
    pub fn history(&self, q: &HistoryQuery, now: i64) -> Vec<&FeedMessage> {
        let Some(kept) = self.products.get(&q.product).map(|p| &p.history[q.channel]) else { return Vec::new() };
        let oldest = now - self.limits.max_age.as_micros() as i64;
        let after = |k: &&Kept| {
            k.at >= oldest
                && match q.since {
                    Since::All => true,
                    Since::Sequence(s) => k.msg.sequence.is_some_and(|m| m > s),
                    Since::Time(t) => k.msg.time().unwrap_or(k.at) >= t,
                }
        };
        let matching: Vec<&Kept> = kept.iter().filter(after).collect();
        let skip = matching.len().saturating_sub(q.limit);
        matching.into_iter().skip(skip).map(|k| &k.msg).collect()
    }
}

/// Keeps `msg` in one topic's history, and drops from its front what is over
/// the count, the age or (all topics together) the bytes.
fn remember(kept: &mut VecDeque<Kept>, totals: &mut Totals, limits: &HistoryLimits, msg: &FeedMessage, now: i64) {
    if limits.per_topic == 0 {
        return;
    }
    kept.push_back(Kept { at: now, msg: msg.clone() });
    totals.messages += 1;
    totals.bytes += msg.frame.len() + KEPT_OVERHEAD;
    let oldest = now - limits.max_age.as_micros() as i64;
    while let Some(front) = kept.front() {
        let over =
            kept.len() > limits.per_topic || front.at < oldest || (totals.bytes > limits.max_bytes && kept.len() > 1);
        if !over {
            break;
        }
        if let Some(k) = kept.pop_front() {
            totals.messages -= 1;
            totals.bytes -= k.msg.frame.len() + KEPT_OVERHEAD;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> FeedMessage {
        FeedMessage::new(text.as_bytes()).unwrap()
    }

    fn state(per_topic: usize) -> FeedState {
        FeedState::new(HistoryLimits { per_topic, max_age: Duration::from_secs(60), max_bytes: 1 << 20 })
    }

    #[test]
    fn keeps_the_book_from_snapshot_and_updates() {
        let mut s = state(10);
        let l2 = super::super::channel_index("level2_batch").unwrap();
        s.on_message(&msg(r#"{"type":"snapshot","product_id":"A-B","asks":[["10.5","1"],["11","2"]],"bids":[["10","3"],["9.5","1"]]}"#), l2, false, 0);
        s.on_message(&msg(r#"{"type":"l2update","product_id":"A-B","changes":[["buy","10","0"],["sell","10.25","4"],["buy","9.75","5"]]}"#), l2, false, 0);
        let snap = s.book("A-B").unwrap().snapshot("A-B");
        assert_eq!(
            snap,
            r#"{"type":"snapshot","product_id":"A-B","asks":[["10.25","4"],["10.5","1"],["11","2"]],"bids":[["9.75","5"],["9.5","1"]]}"#
        );
        assert_eq!(Book::from_snapshot(snap.as_bytes()).as_ref(), s.book("A-B"));
    }

    #[test]
    fn finds_gaps_in_trade_ids_and_against_heartbeats() {
        let mut s = state(10);
        let m = super::super::channel_index("matches").unwrap();
        let hb = super::super::channel_index("heartbeat").unwrap();
        let trade = |id: u64| msg(&format!(r#"{{"type":"match","product_id":"A-B","trade_id":{id}}}"#));
        assert_eq!(s.on_message(&trade(7), m, true, 0), None);
        assert_eq!(s.on_message(&trade(8), m, true, 0), None);
        let gap = s.on_message(&trade(11), m, true, 0).unwrap();
        assert_eq!((gap.expected, gap.received), (9, 11));
        // After a gap the baseline waits for the fresh last_match.
        assert_eq!(s.on_message(&trade(13), m, true, 0), None);
        assert_eq!(s.on_message(&trade(14), m, true, 0), None);
        let beat = msg(r#"{"type":"heartbeat","product_id":"A-B","last_trade_id":16}"#);
        assert_eq!(s.on_message(&beat, hb, true, 0).map(|g| g.expected), Some(15));
        assert_eq!(s.gaps, 2);
    }

    #[test]
    fn the_last_match_is_the_latest_match_retyped() {
        let mut s = state(10);
        let m = super::super::channel_index("matches").unwrap();
        s.on_message(&msg(r#"{"type":"match","trade_id":3,"product_id":"A-B","price":"1"}"#), m, true, 0);
        let first = s.first_frames("A-B", m);
        let (_, payload) = crate::ws::frame::split_server_frame(&first[0]).unwrap();
        assert_eq!(payload, br#"{"type":"last_match","trade_id":3,"product_id":"A-B","price":"1"}"#);
        s.unwatched("A-B", m);
        assert!(s.first_frames("A-B", m).is_empty(), "stale once nobody watches");
    }

    #[test]
    fn history_is_bounded_by_count_age_and_bytes() {
        let mut s = state(3);
        let t = super::super::channel_index("ticker").unwrap();
        for i in 0..5 {
            let text = format!(
                r#"{{"type":"ticker","product_id":"A-B","sequence":{i},"time":"2026-01-01T00:00:0{i}.000000Z"}}"#
            );
            s.on_message(&msg(&text), t, false, i64::from(i));
        }
        let q = |limit, since| HistoryQuery { product: "A-B".into(), channel: t, limit, since };
        let seqs = |v: Vec<&FeedMessage>| v.iter().map(|m| m.sequence.unwrap()).collect::<Vec<_>>();
        assert_eq!(seqs(s.history(&q(10, Since::All), 5)), [2, 3, 4]);
        assert_eq!(seqs(s.history(&q(2, Since::All), 5)), [3, 4], "newest last");
        assert_eq!(seqs(s.history(&q(10, Since::Sequence(2)), 5)), [3, 4]);
        let t3 = crate::clock::parse_iso("2026-01-01T00:00:03.000000Z").unwrap();
        assert_eq!(seqs(s.history(&q(10, Since::Time(t3)), 5)), [3, 4]);
        assert_eq!(s.history_messages(), 3);
        let per = s.history_bytes() / 3;
        let mut small =
            FeedState::new(HistoryLimits { per_topic: 100, max_age: Duration::from_secs(60), max_bytes: per * 2 });
        for i in 0..5 {
            small.on_message(&msg(&format!(r#"{{"type":"ticker","product_id":"A-B","sequence":{i}}}"#)), t, false, 0);
        }
        assert!(small.history_bytes() <= per * 2, "{} > {}", small.history_bytes(), per * 2);
        let old = 61_000_000;
        assert!(s.history(&q(10, Since::All), old + 5).is_empty(), "older than the age limit");
    }
}
