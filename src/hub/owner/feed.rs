//! What shard 0 remembers of the feed: per product, the latest ticker, the latest
//! match, the order book (for `level2_batch`) and the last trade id (for gap
//! detection); per (product, channel), a bounded history of raw messages.
//!
//! Shard 0 sees every upstream message before any shard delivers it, and answers
//! every new subscription from this state in the same step that adds the
//! subscriber's shard to the stream (see `owner/mod.rs`), so what a late joiner
//! gets first and the live messages after it meet without a gap or a repeat.

use std::borrow::Cow;
use std::collections::HashMap;

use super::history::{HistoryLimits, HistoryQuery, TopicHistory, Totals};
use crate::protocol::{self, Book, Channel};
use crate::upstream::FeedMessage;
use crate::ws::Frame;

/// What is known of one product.
#[derive(Default)]
struct ProductState {
    ticker: Option<Frame>,
    /// The latest `match` or `last_match`; a `match` is retold as a `last_match`
    /// only when a subscriber joins, not as each one passes.
    last_match: Option<FeedMessage>,
    /// `None` until a snapshot arrives (and again after a reconnect or a gap).
    book: Option<Book>,
    /// The last trade id seen in a match; `None` until the first.
    last_trade: Option<u64>,
    /// Recent messages per channel, oldest first.
    history: [TopicHistory; Channel::COUNT],
}

impl ProductState {
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

/// The feed state shard 0 keeps.
pub struct FeedState {
    products: HashMap<String, ProductState>,
    history: Totals,
    limits: HistoryLimits,
}

impl FeedState {
    pub fn new(limits: HistoryLimits) -> Self {
        FeedState { products: HashMap::new(), history: Totals::default(), limits }
    }

    /// Takes in one message of `channel` as it is dispatched; returns a gap in the
    /// product's trades if this message shows one. `watching_trades`: whether the
    /// matches channel of this product is subscribed (only then are trade ids seen
    /// one by one).
    pub fn on_message(&mut self, msg: &FeedMessage, channel: Channel, watching_trades: bool, now: i64) -> Option<Gap> {
        let product = msg.product()?;
        // Looked up by `&str`: a key is allocated once per product, not per message.
        if !self.products.contains_key(product) {
            self.products.insert(product.to_string(), ProductState::default());
        }
        let p = self.products.get_mut(product)?;
        p.history[channel.index()].remember(&mut self.history, &self.limits, msg, now);
        Self::take(p, product, msg, watching_trades)
    }

    /// An edge's topic, from the active ingest: its history replaces what was
    /// kept, and `first` (what the ingest would give a fresh subscriber) sets
    /// the latest ticker, match or book, as if it had just come.
    pub fn seed(&mut self, product: &str, channel: Channel, history: &[FeedMessage], first: &[FeedMessage], now: i64) {
        if !self.products.contains_key(product) {
            self.products.insert(product.to_string(), ProductState::default());
        }
        let Some(p) = self.products.get_mut(product) else { return };
        let kept = &mut p.history[channel.index()];
        kept.clear(&mut self.history);
        for m in history {
            kept.remember(&mut self.history, &self.limits, m, now);
        }
        for m in first {
            let _ = Self::take(p, product, m, false);
        }
    }

    /// What `msg` changes of a product's state; a gap if it shows one.
    fn take(p: &mut ProductState, product: &str, msg: &FeedMessage, watching_trades: bool) -> Option<Gap> {
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
        Some(Gap { product: product.to_string(), expected, received })
    }

    /// The upstream connection was lost: everything waits for fresh messages.
    pub fn forget_all(&mut self) {
        self.products.values_mut().for_each(ProductState::forget);
    }

    /// No shard wants (`product`, `channel`) any more: what is kept for a new
    /// subscriber would go stale, so it is dropped (the upstream sends it afresh
    /// when the channel is subscribed again). The history stays.
    pub fn unwatched(&mut self, product: &str, channel: Channel) {
        let Some(p) = self.products.get_mut(product) else { return };
        match channel {
            Channel::Ticker => p.ticker = None,
            Channel::Matches => {
                p.last_match = None;
                p.last_trade = None;
            }
            Channel::Level2Batch => p.book = None,
            Channel::Heartbeat | Channel::Status => {}
        }
    }

    /// What a new subscriber of (`product`, `channel`) gets first: the latest
    /// ticker, the `last_match`, or a snapshot of the book; nothing when it is
    /// not known yet (the upstream's own will come).
    pub fn first_frames(&self, product: &str, channel: Channel) -> Vec<Frame> {
        let Some(p) = self.products.get(product) else { return Vec::new() };
        let frame = match channel {
            Channel::Ticker => p.ticker.clone(),
            Channel::Matches => p.last_match.as_ref().and_then(|m| match protocol::last_match(m.body())? {
                Cow::Borrowed(_) => Some(m.frame.clone()),
                Cow::Owned(text) => Some(crate::ws::frame::text(&text)),
            }),
            Channel::Level2Batch => p.book.as_ref().map(|b| crate::ws::frame::text(b.snapshot(product).as_bytes())),
            Channel::Heartbeat | Channel::Status => None,
        };
        frame.into_iter().collect()
    }

    /// The last trade id seen of `product`, if any.
    pub fn last_trade(&self, product: &str) -> Option<u64> {
        self.products.get(product)?.last_trade
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
        let Some(p) = self.products.get(&q.product) else { return Vec::new() };
        p.history[q.channel.index()].select(q, self.limits.max_age, now)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;

    pub fn msg(text: &str) -> FeedMessage {
        FeedMessage::new(text.as_bytes()).unwrap()
    }

    pub fn state(per_topic: usize) -> FeedState {
        FeedState::new(HistoryLimits { per_topic, max_age: Duration::from_secs(60), max_bytes: 1 << 20 })
    }

    #[test]
    fn finds_gaps_in_trade_ids_and_against_heartbeats() {
        let mut s = state(10);
        let (m, hb) = (Channel::Matches, Channel::Heartbeat);
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
    }

    #[test]
    fn the_last_match_is_the_latest_match_retyped() {
        let mut s = state(10);
        let m = Channel::Matches;
        s.on_message(&msg(r#"{"type":"match","trade_id":3,"product_id":"A-B","price":"1"}"#), m, true, 0);
        let first = s.first_frames("A-B", m);
        let (_, payload) = crate::ws::frame::split_server_frame(&first[0]).unwrap();
        assert_eq!(payload, br#"{"type":"last_match","trade_id":3,"product_id":"A-B","price":"1"}"#);
        s.unwatched("A-B", m);
        assert!(s.first_frames("A-B", m).is_empty(), "stale once nobody watches");
    }
}
