//! A shard's subscription table: for each (product, channel), the local
//! subscribers' outboxes. The fan-out walks one list per message.
//!
//! Subscribers of a throttled class on a thinned channel sit in a second list
//! per topic, each with its [`Slot`]; the full list is walked as it always was.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::metrics::Stamp;
use crate::protocol::Channel;
use crate::ws::{Frame, Outbox};

use super::throttle::Slot;

/// Subscribers of one (product, channel): (client slot, outbox).
type Subscribers = Vec<(usize, Rc<Outbox>)>;

/// Throttled subscribers of one (product, channel): (client slot, its slot).
type Thinned = Vec<(usize, RefCell<Slot>)>;

/// One product's subscribers per channel, and its number (for topic ids).
#[derive(Default)]
struct TopicLists {
    number: u64,
    channels: [Subscribers; Channel::COUNT],
    thinned: [Thinned; Channel::COUNT],
}

impl TopicLists {
    fn id(&self, channel: Channel) -> Option<u64> {
        Some(self.number * Channel::COUNT as u64 + channel.index() as u64)
    }

    fn is_empty(&self, channel: Channel) -> bool {
        self.channels[channel.index()].is_empty() && self.thinned[channel.index()].is_empty()
    }

    fn holds(&self, channel: Channel, slot: usize) -> bool {
        self.channels[channel.index()].iter().any(|(s, _)| *s == slot)
            || self.thinned[channel.index()].iter().any(|(s, _)| *s == slot)
    }

    /// Every subscriber's slot and outbox, on any channel, either list.
    fn all(&self) -> impl Iterator<Item = (usize, Rc<Outbox>)> + '_ {
        let full = self.channels.iter().flatten().map(|(s, o)| (*s, o.clone()));
        full.chain(self.thinned.iter().flatten().map(|(s, slot)| (*s, slot.borrow().outbox())))
    }
}

/// product -> per-channel subscribers.
#[derive(Default)]
pub struct Table {
    topics: HashMap<String, TopicLists>,
    next_number: u64,
}

impl Table {
    /// Adds a subscriber; true if it is the first for this (product, channel).
    /// `throttle`: at most one message every this long (its class's tier thins
    /// this channel), else every message.
    pub fn add(
        &mut self,
        product: &str,
        channel: Channel,
        slot: usize,
        outbox: &Rc<Outbox>,
        throttle: Option<Duration>,
    ) -> bool {
        let next = &mut self.next_number;
        let topic = self.topics.entry(product.to_string()).or_insert_with(|| {
            *next += 1;
            TopicLists { number: *next, ..TopicLists::default() }
        });
        if topic.holds(channel, slot) {
            return false;
        }
        let first = topic.is_empty(channel);
        match throttle {
            None => topic.channels[channel.index()].push((slot, outbox.clone())),
            Some(every) => {
                let thin = Slot::new(outbox, every, channel == Channel::Level2Batch);
                topic.thinned[channel.index()].push((slot, RefCell::new(thin)));
            }
        }
        first
    }

    /// Whether (`product`, `channel`) has a subscriber here.
    pub fn has_subscribers(&self, product: &str, channel: Channel) -> bool {
        self.topics.get(product).is_some_and(|t| !t.is_empty(channel))
    }

    /// Removes a subscriber; true if it was the last for this (product, channel).
    pub fn remove(&mut self, product: &str, channel: Channel, slot: usize) -> bool {
        let Some(topic) = self.topics.get_mut(product) else { return false };
        let (subs, thin) = (&mut topic.channels[channel.index()], &mut topic.thinned[channel.index()]);
        if let Some(i) = subs.iter().position(|(s, _)| *s == slot) {
            subs.swap_remove(i);
        } else if let Some(i) = thin.iter().position(|(s, _)| *s == slot) {
            thin.swap_remove(i);
        } else {
            return false;
        }
        let last = topic.is_empty(channel);
        if topic.channels.iter().all(Vec::is_empty) && topic.thinned.iter().all(Vec::is_empty) {
            self.topics.remove(product);
        }
        last
    }

    /// Queues `frame` for every subscriber of (`product`, `channel`). A subscriber
    /// whose outbox overflows is dealt with by its policy; its session cleans up.
    /// Throttled subscribers get it through their slot (sent, held or merged).
    pub fn deliver(&self, product: &str, channel: Channel, frame: &Frame, stamp: Stamp) -> usize {
        let Some(topic) = self.topics.get(product) else { return 0 };
        let subs = &topic.channels[channel.index()];
        let id = topic.id(channel);
        for (_, outbox) in subs {
            let _ = outbox.push_stamped(frame.clone(), id, Some(stamp));
        }
        let thin = &topic.thinned[channel.index()];
        if !thin.is_empty() {
            let now = Instant::now();
            for (_, slot) in thin {
                slot.borrow_mut().offer(frame, id, now);
            }
        }
        subs.len() + thin.len()
    }

    /// Subscribers held, by channel (full and throttled tiers together).
    pub fn subscriptions_by_channel(&self) -> [u64; Channel::COUNT] {
        let mut out = [0; Channel::COUNT];
        for topic in self.topics.values() {
            for c in Channel::ALL {
                out[c.index()] += (topic.channels[c.index()].len() + topic.thinned[c.index()].len()) as u64;
            }
        }
        out
    }

    /// Sends every throttled subscriber's pending message that is due `now`.
    pub fn flush_due(&self, now: Instant) {
        for topic in self.topics.values() {
            for channel in Channel::ALL {
                for (_, slot) in &topic.thinned[channel.index()] {
                    slot.borrow_mut().flush(topic.id(channel), now);
                }
            }
        }
    }

    /// Queues `frame` once for every subscriber of `product` on any channel.
    pub fn deliver_product(&self, product: &str, frame: &Frame) {
        let Some(topic) = self.topics.get(product) else { return };
        let mut seen = Vec::new();
        for (slot, outbox) in topic.all() {
            if !seen.contains(&slot) {
                seen.push(slot);
                let _ = outbox.push(frame.clone());
            }
        }
    }

    /// The (slot) of every subscriber to `product` on any channel.
    pub fn subscribers_of(&self, product: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self.topics.get(product).into_iter().flat_map(|t| t.all()).map(|(s, _)| s).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(channel: Channel) -> Stamp {
        Stamp { channel, received: Instant::now(), exchange_micros: None }
    }

    #[test]
    fn first_and_last_subscribers_are_reported() {
        let mut t = Table::default();
        let (a, b) = (Rc::new(Outbox::new(1 << 20)), Rc::new(Outbox::new(1 << 20)));
        let (ticker, matches) = (Channel::Ticker, Channel::Matches);
        assert!(t.add("BTC-USD", ticker, 1, &a, None));
        assert!(!t.add("BTC-USD", ticker, 2, &b, None));
        assert!(!t.add("BTC-USD", ticker, 2, &b, None), "idempotent");
        assert!(t.add("BTC-USD", matches, 2, &b, None), "another channel is another topic");
        assert_eq!(t.deliver("BTC-USD", ticker, &crate::ws::frame::text(b"x"), stamp(ticker)), 2);
        assert_eq!(a.queued_bytes(), 3);
        assert!(!t.remove("BTC-USD", ticker, 1));
        assert!(t.remove("BTC-USD", ticker, 2));
        assert!(!t.remove("BTC-USD", ticker, 2), "already gone");
        assert_eq!(t.subscribers_of("BTC-USD"), [2]);
        assert!(t.remove("BTC-USD", matches, 2));
        assert!(t.topics.is_empty());
    }

    #[test]
    fn throttled_subscribers_have_their_own_list() {
        let mut t = Table::default();
        let (a, b) = (Rc::new(Outbox::new(1 << 20)), Rc::new(Outbox::new(1 << 20)));
        let every = Some(Duration::from_secs(3600));
        assert!(t.add("BTC-USD", Channel::Ticker, 1, &a, every), "a throttled subscriber counts as one");
        assert!(!t.add("BTC-USD", Channel::Ticker, 1, &a, None), "idempotent across the lists");
        assert!(!t.add("BTC-USD", Channel::Ticker, 2, &b, None));
        for _ in 0..3 {
            assert_eq!(t.deliver("BTC-USD", Channel::Ticker, &crate::ws::frame::text(b"x"), stamp(Channel::Ticker)), 2);
        }
        assert_eq!((a.queued_bytes(), b.queued_bytes()), (0, 9), "held until due; the full one gets all");
        assert_eq!(t.subscribers_of("BTC-USD"), [1, 2]);
        assert!(!t.remove("BTC-USD", Channel::Ticker, 2));
        assert!(t.has_subscribers("BTC-USD", Channel::Ticker));
        assert!(t.remove("BTC-USD", Channel::Ticker, 1));
        assert!(t.topics.is_empty());
    }
}
