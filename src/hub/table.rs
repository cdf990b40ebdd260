//! A shard's subscription table: for each (product, channel), the local
//! subscribers' outboxes. The fan-out walks one list per message.

use std::collections::HashMap;
use std::rc::Rc;

use crate::protocol::Channel;
use crate::ws::{Frame, Outbox};

/// Subscribers of one (product, channel): (client slot, outbox).
type Subscribers = Vec<(usize, Rc<Outbox>)>;

/// One product's subscribers per channel, and its number (for topic ids).
#[derive(Default)]
struct TopicLists {
    number: u64,
    channels: [Subscribers; Channel::COUNT],
}

/// product -> per-channel subscribers.
#[derive(Default)]
pub struct Table {
    topics: HashMap<String, TopicLists>,
    next_number: u64,
}

impl Table {
    /// Adds a subscriber; true if it is the first for this (product, channel).
    pub fn add(&mut self, product: &str, channel: Channel, slot: usize, outbox: &Rc<Outbox>) -> bool {
        let next = &mut self.next_number;
        let topic = self.topics.entry(product.to_string()).or_insert_with(|| {
            *next += 1;
            TopicLists { number: *next, ..TopicLists::default() }
        });
        let subs = &mut topic.channels[channel.index()];
        if subs.iter().any(|(s, _)| *s == slot) {
            return false;
        }
        subs.push((slot, outbox.clone()));
        subs.len() == 1
    }

    /// Whether (`product`, `channel`) has a subscriber here.
    pub fn has_subscribers(&self, product: &str, channel: Channel) -> bool {
        self.topics.get(product).is_some_and(|t| !t.channels[channel.index()].is_empty())
    }

    /// Removes a subscriber; true if it was the last for this (product, channel).
    pub fn remove(&mut self, product: &str, channel: Channel, slot: usize) -> bool {
        let Some(topic) = self.topics.get_mut(product) else { return false };
        let subs = &mut topic.channels[channel.index()];
        let Some(i) = subs.iter().position(|(s, _)| *s == slot) else { return false };
        subs.swap_remove(i);
        let last = subs.is_empty();
        if topic.channels.iter().all(Vec::is_empty) {
            self.topics.remove(product);
        }
        last
    }

    /// Queues `frame` for every subscriber of (`product`, `channel`). A subscriber
    /// whose outbox overflows is dealt with by its policy; its session cleans up.
    pub fn deliver(&self, product: &str, channel: Channel, frame: &Frame) -> usize {
        let Some(topic) = self.topics.get(product) else { return 0 };
        let subs = &topic.channels[channel.index()];
        let id = Some(topic.number * Channel::COUNT as u64 + channel.index() as u64);
        for (_, outbox) in subs {
            let _ = outbox.push_topic(frame.clone(), id);
        }
        subs.len()
    }

    /// Queues `frame` once for every subscriber of `product` on any channel.
    pub fn deliver_product(&self, product: &str, frame: &Frame) {
        let Some(topic) = self.topics.get(product) else { return };
        let mut seen = Vec::new();
        for (slot, outbox) in topic.channels.iter().flatten() {
            if !seen.contains(slot) {
                seen.push(*slot);
                let _ = outbox.push(frame.clone());
            }
        }
    }

    /// The (slot) of every subscriber to `product` on any channel.
    pub fn subscribers_of(&self, product: &str) -> Vec<usize> {
        let mut out: Vec<usize> =
            self.topics.get(product).into_iter().flat_map(|t| t.channels.iter().flatten()).map(|(s, _)| *s).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_subscribers_are_reported() {
        let mut t = Table::default();
        let (a, b) = (Rc::new(Outbox::new(1 << 20)), Rc::new(Outbox::new(1 << 20)));
        let (ticker, matches) = (Channel::Ticker, Channel::Matches);
        assert!(t.add("BTC-USD", ticker, 1, &a));
        assert!(!t.add("BTC-USD", ticker, 2, &b));
        assert!(!t.add("BTC-USD", ticker, 2, &b), "idempotent");
        assert!(t.add("BTC-USD", matches, 2, &b), "another channel is another topic");
        assert_eq!(t.deliver("BTC-USD", ticker, &crate::ws::frame::text(b"x")), 2);
        assert_eq!(a.queued_bytes(), 3);
        assert!(!t.remove("BTC-USD", ticker, 1));
        assert!(t.remove("BTC-USD", ticker, 2));
        assert!(!t.remove("BTC-USD", ticker, 2), "already gone");
        assert_eq!(t.subscribers_of("BTC-USD"), [2]);
        assert!(t.remove("BTC-USD", matches, 2));
        assert!(t.topics.is_empty());
    }
}
