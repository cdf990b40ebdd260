//! Shard 0's side of the hub: the owner of the upstream client. It keeps, per
//! topic, the set of interested shards and drives the upstream's desired set
//! from it; it keeps what is known of the feed ([`FeedState`]: books, last
//! trades, history); and its dispatch loop ([`fanout`]) sends each upstream
//! message to the interested shards.
//!
//! It is plain state: it never sends anything itself. The hub asks it (`join`,
//! `interest`, `history_json`) and the fan-out reads it.

mod fanout;
mod feed;
mod history;

use std::cell::RefCell;
use std::collections::HashMap;

pub use crate::protocol::Book;
pub use fanout::run;
pub use feed::{FeedState, Gap};
pub use history::{HistoryLimits, HistoryQuery, Since};

use crate::protocol::{Channel, Topic};
use crate::upstream::Upstream;
use crate::ws::Frame;

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

    fn union(mut self, other: &ShardSet) -> ShardSet {
        for (w, o) in self.0.iter_mut().zip(other.0) {
            *w |= o;
        }
        self
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
    /// product -> per channel, the shards with subscribers. Keyed by product so
    /// that the fan-out looks a message's shards up by `&str`, allocating nothing.
    interest: RefCell<HashMap<String, [ShardSet; Channel::COUNT]>>,
    feed: RefCell<FeedState>,
}

impl Owner {
    pub fn new(upstream: Upstream, history: HistoryLimits) -> Owner {
        Owner { upstream, interest: RefCell::new(HashMap::new()), feed: RefCell::new(FeedState::new(history)) }
    }

    /// Shard `shard` has a new subscriber of `topic`: returns what it gets first
    /// (the last `replay` messages, or what a fresh subscriber of the feed gets
    /// first) and puts the shard on the topic's stream, in one step.
    pub fn join(&self, topic: &Topic, shard: usize, replay: Option<usize>) -> Vec<Frame> {
        let frames = match replay {
            Some(limit) => {
                let q =
                    HistoryQuery { product: topic.product.clone(), channel: topic.channel, limit, since: Since::All };
                let feed = self.feed.borrow();
                feed.history(&q, crate::clock::now_micros()).into_iter().map(|m| m.frame.clone()).collect()
            }
            None => self.feed.borrow().first_frames(&topic.product, topic.channel),
        };
        self.interest(topic, shard, true);
        frames
    }

    /// The history query's answer: a JSON array of the raw messages, newest last.
    pub fn history_json(&self, q: &HistoryQuery) -> String {
        let feed = self.feed.borrow();
        history::to_json(&feed.history(q, crate::clock::now_micros()))
    }

    /// Shard `shard` gained (`on`) or lost its interest in `topic`.
    pub fn interest(&self, topic: &Topic, shard: usize, on: bool) {
        let mut interest = self.interest.borrow_mut();
        let sets = match interest.get_mut(topic.product.as_str()) {
            Some(sets) => sets,
            None if on => interest.entry(topic.product.clone()).or_default(),
            None => return,
        };
        let set = &mut sets[topic.channel.index()];
        let was_empty = set.is_empty();
        set.set(shard, on);
        let now_empty = set.is_empty();
        if sets.iter().all(ShardSet::is_empty) {
            interest.remove(topic.product.as_str());
        }
        drop(interest);
        if was_empty != now_empty {
            // Wanted again before the unsubscribe went out: the server never
            // stopped, so it sends no fresh snapshot, ticker or last_match, while
            // `unwatched` dropped ours. Asked afresh, it does.
            let stale = was_empty && topic.channel.has_state() && self.upstream.expects(topic.channel, &topic.product);
            self.upstream.set(topic.channel, &topic.product, !now_empty);
            if stale {
                self.upstream.resubscribe(&topic.product);
            }
        }
        if now_empty {
            self.feed.borrow_mut().unwatched(&topic.product, topic.channel);
        }
    }

    /// The shards with subscribers of (`product`, `channel`).
    fn shards_for(&self, product: &str, channel: Channel) -> ShardSet {
        self.interest.borrow().get(product).map(|sets| sets[channel.index()]).unwrap_or_default()
    }

    /// The shards with subscribers of `product` on any channel.
    fn shards_for_product(&self, product: &str) -> ShardSet {
        let interest = self.interest.borrow();
        let sets = interest.get(product).into_iter().flatten();
        sets.fold(ShardSet::default(), |all, set| all.union(set))
    }
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
