//! Shard 0's side of the hub: the upstream client's owner. It keeps, per topic,
//! the set of interested shards, drives the upstream's desired set from it, and
//! dispatches each upstream message to the interested shards.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::local_channel::LocalReceiver;

use super::{channel_index, FeedState, Gap, HistoryLimits, HistoryQuery, Hub, ShardMsg, Since, CHANNELS};
use crate::protocol;
use crate::upstream::{Event, Upstream};

/// A set of shard indices (up to [`crate::config::MAX_SHARDS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ShardSet([u64; 4]);

impl ShardSet {
    fn set(&mut self, shard: usize, on: bool) {
        let (word, bit) = (shard / 64, 1u64 << (shard % 64));
        if on {
            self.0[word] |= bit;
        } else {
            self.0[word] &= !bit;
        }
    }

    fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    fn iter(&self) -> impl Iterator<Item = usize> {
        let words = self.0;
        (0..4).flat_map(move |i| {
            let mut w = words[i];
            std::iter::from_fn(move || {
                let bit = (w != 0).then(|| w.trailing_zeros() as usize)?;
                w &= w - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

/// The upstream, who wants what from it, and what is known of the feed.
pub struct Owner {
    pub upstream: Upstream,
    interest: RefCell<HashMap<(String, usize), ShardSet>>,
    pub feed: RefCell<FeedState>,
}

impl Owner {
    pub fn new(upstream: Upstream, history: HistoryLimits) -> Owner {
        Owner { upstream, interest: RefCell::new(HashMap::new()), feed: RefCell::new(FeedState::new(history)) }
    }

    /// Shard `shard` has a new subscriber of a topic: returns what it gets first
    /// (the last `replay` messages, or what a fresh subscriber of the feed gets
    /// first) and puts the shard on the topic's stream, in one step.
    pub fn join(&self, product: &str, channel: usize, shard: usize, replay: Option<usize>) -> Vec<crate::ws::Frame> {
        let frames = match replay {
            Some(limit) => {
                let q = HistoryQuery { product: product.to_string(), channel, limit, since: Since::All };
                let feed = self.feed.borrow();
                feed.history(&q, crate::clock::now_micros()).into_iter().map(|m| m.frame.clone()).collect()
            }
            None => self.feed.borrow().first_frames(product, channel),
        };
        self.interest(product, channel, shard, true);
        frames
    }

    /// The history query's answer: a JSON array of the raw messages, newest last.
    pub fn history_json(&self, q: &HistoryQuery) -> String {
        let feed = self.feed.borrow();
        let msgs = feed.history(q, crate::clock::now_micros());
        let mut out = Vec::with_capacity(2 + msgs.iter().map(|m| m.body().len() + 1).sum::<usize>());
        out.push(b'[');
        for (i, m) in msgs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(m.body());
        }
        out.push(b']');
        String::from_utf8(out).unwrap_or_else(|_| "[]".into())
    }

    /// Shard `shard` gained (`on`) or lost its interest in a topic.
    pub fn interest(&self, product: &str, channel: usize, shard: usize, on: bool) {
        let mut interest = self.interest.borrow_mut();
        let key = (product.to_string(), channel);
        let set = interest.entry(key.clone()).or_default();
        let was_empty = set.is_empty();
        set.set(shard, on);
        let now_empty = set.is_empty();
        if now_empty {
            interest.remove(&key);
        }
        if was_empty != now_empty {
            self.upstream.set(protocol::Channel::RELAYED[channel], product, !now_empty);
        }
        if now_empty {
            self.feed.borrow_mut().unwatched(product, channel);
        }
    }

    fn shards_for(&self, product: &str, channel: usize) -> ShardSet {
        self.interest.borrow().get(&(product.to_string(), channel)).copied().unwrap_or_default()
    }

    fn shards_for_product(&self, product: &str) -> ShardSet {
        let mut out = ShardSet::default();
        for ch in 0..CHANNELS.len() {
            for s in self.shards_for(product, ch).iter() {
                out.set(s, true);
            }
        }
        out
    }
}

/// Shard 0's dispatch loop: every upstream event, until the upstream client ends.
pub async fn run(hub: Rc<Hub>, events: LocalReceiver<Event>) {
    while let Some(event) = events.recv().await {
        dispatch(&hub, event).await;
    }
}

async fn dispatch(hub: &Rc<Hub>, event: Event) {
    let Some(owner) = hub.owner() else { return };
    match event {
        Event::Message(msg) => {
            hub.global.messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(channel) = protocol::Channel::of_message(msg.kind()).and_then(|c| channel_index(c.name())) else {
                return;
            };
            let Some(product) = msg.product() else { return };
            // Room first: from here on nothing waits, so the feed state and the
            // fan-out move in one step and a join sees them both or neither.
            hub.ready().await;
            // Only a heartbeat needs it (its last trade id is checked against the
            // matches seen only while matches are subscribed).
            let watching_trades = msg.kind() == "heartbeat"
                && channel_index("matches").is_some_and(|m| !owner.shards_for(product, m).is_empty());
            let now = crate::clock::now_micros();
            let gap = {
                let mut feed = owner.feed.borrow_mut();
                let gap = feed.on_message(&msg, channel, watching_trades, now);
                hub.global.set_history(feed.history_messages(), feed.history_bytes());
                gap
            };
            for shard in owner.shards_for(product, channel).iter() {
                if shard == hub.id {
                    hub.deliver_local(&msg, channel);
                } else {
                    hub.post(shard, ShardMsg::Feed { msg: msg.clone(), channel });
                }
            }
            if let Some(gap) = gap {
                on_gap(hub, owner, gap);
            }
        }
        Event::Error { message, reason, product: Some(product) } => {
            refuse(hub, owner, &product, &message, &reason).await
        }
        // Refused here, as the feed would refuse them, without asking it.
        Event::Unlisted(products) => {
            let failure = protocol::RequestKind::Subscribe.failure();
            for product in products {
                refuse(hub, owner, &product, failure, &protocol::invalid_product(&product)).await;
            }
        }
        // A request refused as a whole: the client asks again after a backoff.
        Event::Error { message, reason, product: None } => {
            announce(hub, owner, Some(&format!("the feed refused a request ({message}: {reason}); asking again")))
                .await;
        }
        Event::Products(list) => {
            let known: Arc<HashSet<String>> = Arc::new(list.into_iter().collect());
            hub.global.set_upstream(|u| u.products = known.len());
            *hub.products.borrow_mut() = Some(known.clone());
            for shard in (0..hub.global.shards).filter(|s| *s != hub.id) {
                hub.bus().send(shard, ShardMsg::Products(known.clone())).await;
            }
        }
        Event::Malformed { total } => hub.global.malformed.store(total, std::sync::atomic::Ordering::Relaxed),
        Event::Connected => announce(hub, owner, None).await,
        Event::Disconnected { reason } => {
            // A new connection starts every book and trade count afresh.
            owner.feed.borrow_mut().forget_all();
            announce(hub, owner, Some(&reason)).await
        }
    }
}

/// `product` is refused (by the feed, or here because the feed does not list it):
/// its subscribers, on every shard, get the Coinbase `error` and their
/// subscriptions to it end.
async fn refuse(hub: &Rc<Hub>, owner: &Owner, product: &str, message: &str, reason: &str) {
    let frame = crate::ws::frame::text(protocol::error_message(message, reason).as_bytes());
    for shard in owner.shards_for_product(product).iter() {
        if shard == hub.id {
            hub.product_error(product, &frame).await;
        } else {
            hub.bus().send(shard, ShardMsg::ProductError { product: product.to_string(), frame: frame.clone() }).await;
        }
    }
}

/// Trades went missing on one product: resubscribe that product alone (its book
/// and trade count start again from the fresh snapshot and `last_match`), tell
/// its subscribers, count it.
fn on_gap(hub: &Rc<Hub>, owner: &Owner, gap: Gap) {
    log::warn!("gap on {}: expected trade {}, got {}; resubscribing it", gap.product, gap.expected, gap.received);
    owner.upstream.resubscribe(&gap.product);
    hub.global.count_gap();
    let note = serde_json::json!({
        "type": "gap",
        "product_id": gap.product,
        "expected_trade_id": gap.expected,
        "received_trade_id": gap.received,
        "time": crate::clock::now_iso(),
    });
    let frame = crate::ws::frame::text(note.to_string().as_bytes());
    for shard in owner.shards_for_product(&gap.product).iter() {
        if shard == hub.id {
            hub.note_product(&gap.product, &frame);
        } else {
            hub.post(shard, ShardMsg::ProductNote { product: gap.product.clone(), frame: frame.clone() });
        }
    }
}

/// Tells every subscribed client (all shards) the upstream's state and why it
/// changed, and records it for `/healthz`.
async fn announce(hub: &Rc<Hub>, owner: &Owner, reason: Option<&str>) {
    let s = owner.upstream.status();
    // Subscribers hear of it: data may pause (and later resume) for a reason.
    let note = serde_json::json!({
        "type": "upstream",
        "state": s.state.as_str(),
        "reason": reason,
        "time": crate::clock::now_iso(),
    });
    let frame = crate::ws::frame::text(note.to_string().as_bytes());
    hub.tell_subscribed(&frame);
    for shard in (0..hub.global.shards).filter(|s| *s != hub.id) {
        hub.bus().send(shard, ShardMsg::Upstream(frame.clone())).await;
    }
    hub.global.set_upstream(|u| {
        if u.state != s.state.as_str() {
            u.changed_at = Some(std::time::Instant::now());
        }
        u.state = s.state.as_str();
        u.since =
            crate::clock::format_iso(s.since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64));
        u.connects = s.connects;
        u.refused = s.refused;
        u.last_error = s.last_error.clone();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_sets_hold_up_to_256_shards() {
        let mut s = ShardSet::default();
        for i in [0, 63, 64, 200, 255] {
            s.set(i, true);
        }
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 63, 64, 200, 255]);
        s.set(64, false);
        assert_eq!(s.iter().count(), 4);
        assert!(!s.is_empty());
    }
}
