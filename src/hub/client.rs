//! One client's subscriptions and the operations on them, as plain state: each
//! operation returns what changed (the topics to join or leave) and the hub
//! carries the changes out. Nothing here waits or touches another shard.

use std::collections::{BTreeMap, BTreeSet};

use super::msg::HubError;
use crate::protocol::{Channel, Topic};

/// A change an operation made: a topic the client now holds (join it) or no
/// longer holds (leave it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Join(Topic),
    Leave(Topic),
}

/// product -> channels, for one client, bounded by `--max-subscriptions`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Subscriptions(BTreeMap<String, BTreeSet<Channel>>);

impl Subscriptions {
    /// Adds `channels` of `product`; the new ones are to be joined. Refused as a
    /// whole if the client would hold more than `max` (product, channel) pairs.
    pub fn subscribe(&mut self, product: &str, channels: &[Channel], max: usize) -> Result<Vec<Change>, HubError> {
        self.room_for(channels.iter().map(|c| (product, *c)), max)?;
        let set = self.0.entry(product.to_string()).or_default();
        let added = channels.iter().filter(|c| set.insert(**c));
        Ok(added.map(|c| Change::Join(Topic::new(product, *c))).collect())
    }

    /// Removes `channels` of `product` (`None`: all of them); returns the
    /// channels that ended, and the changes.
    pub fn unsubscribe(&mut self, product: &str, channels: Option<&[Channel]>) -> (Vec<Channel>, Vec<Change>) {
        let Some(set) = self.0.get_mut(product) else { return (Vec::new(), Vec::new()) };
        let removed: Vec<Channel> = match channels {
            Some(chs) => chs.iter().copied().filter(|c| set.remove(c)).collect(),
            None => std::mem::take(set).into_iter().collect(),
        };
        if set.is_empty() {
            self.0.remove(product);
        }
        let changes = removed.iter().map(|c| Change::Leave(Topic::new(product, *c))).collect();
        (removed, changes)
    }

    /// A Coinbase `subscribe`: every (channel, product) named, refused as a whole
    /// past `max`.
    pub fn coinbase_subscribe(
        &mut self,
        channels: &BTreeMap<Channel, BTreeSet<String>>,
        max: usize,
    ) -> Result<Vec<Change>, HubError> {
        let wanted = || channels.iter().flat_map(|(ch, ps)| ps.iter().map(move |p| (p.as_str(), *ch)));
        self.room_for(wanted(), max)?;
        let mut changes = Vec::new();
        for (product, ch) in wanted() {
            if self.0.entry(product.to_string()).or_default().insert(ch) {
                changes.push(Change::Join(Topic::new(product, ch)));
            }
        }
        Ok(changes)
    }

    /// A Coinbase `unsubscribe`: a channel with no products named ends on every
    /// product.
    pub fn coinbase_unsubscribe(&mut self, channels: &BTreeMap<Channel, BTreeSet<String>>) -> Vec<Change> {
        let mut changes = Vec::new();
        for (ch, products) in channels {
            let named: Vec<String> = match products.is_empty() {
                true => self.0.iter().filter(|(_, s)| s.contains(ch)).map(|(p, _)| p.clone()).collect(),
                false => products.iter().cloned().collect(),
            };
            for p in named {
                changes.extend(self.unsubscribe(&p, Some(&[*ch])).1);
            }
        }
        changes
    }

    /// Ends every subscription to `product` (the upstream refused it).
    pub fn drop_product(&mut self, product: &str) -> Vec<Change> {
        self.unsubscribe(product, None).1
    }

    /// Ends everything (the client is gone).
    pub fn take_all(&mut self) -> Vec<Change> {
        let all = std::mem::take(&mut self.0);
        all.into_iter()
            .flat_map(|(p, chs)| chs.into_iter().map(move |c| Change::Leave(Topic::new(p.clone(), c))))
            .collect()
    }

    /// Whether the client holds `topic`.
    pub fn holds(&self, topic: &Topic) -> bool {
        self.0.get(&topic.product).is_some_and(|s| s.contains(&topic.channel))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// product -> channels, for `Op::List`.
    pub fn by_product(&self) -> &BTreeMap<String, BTreeSet<Channel>> {
        &self.0
    }

    /// Coinbase's cumulative `subscriptions` message for this client.
    pub fn coinbase_message(&self) -> String {
        let mut by_channel: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (product, channels) in &self.0 {
            for ch in channels {
                by_channel.entry(ch.name().to_string()).or_default().insert(product.clone());
            }
        }
        crate::protocol::subscriptions_message(&by_channel)
    }

    /// Whether the pairs of `wanted` fit within `max` (those held already do not count).
    fn room_for<'a>(&self, wanted: impl Iterator<Item = (&'a str, Channel)>, max: usize) -> Result<(), HubError> {
        let held: usize = self.0.values().map(BTreeSet::len).sum();
        let mut new: Vec<(&str, Channel)> =
            wanted.filter(|(p, ch)| !self.0.get(*p).is_some_and(|s| s.contains(ch))).collect();
        new.sort_unstable();
        new.dedup();
        match held + new.len() > max {
            true => Err(HubError::TooManySubscriptions(max)),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Channel::{Heartbeat, Matches, Ticker};

    fn join(p: &str, c: Channel) -> Change {
        Change::Join(Topic::new(p, c))
    }

    fn leave(p: &str, c: Channel) -> Change {
        Change::Leave(Topic::new(p, c))
    }

    #[test]
    fn subscribing_joins_only_new_topics_within_the_cap() {
        let mut s = Subscriptions::default();
        assert_eq!(
            s.subscribe("BTC-USD", &[Ticker, Matches], 3),
            Ok(vec![join("BTC-USD", Ticker), join("BTC-USD", Matches)])
        );
        assert_eq!(s.subscribe("BTC-USD", &[Ticker], 3), Ok(vec![]), "held already: no change, no cost");
        assert_eq!(s.subscribe("ETH-USD", &[Ticker, Matches], 3), Err(HubError::TooManySubscriptions(3)));
        assert!(!s.holds(&Topic::new("ETH-USD", Ticker)), "refused as a whole");
        assert_eq!(s.subscribe("ETH-USD", &[Ticker], 3), Ok(vec![join("ETH-USD", Ticker)]));
    }

    #[test]
    fn unsubscribing_names_what_ended() {
        let mut s = Subscriptions::default();
        s.subscribe("BTC-USD", &[Ticker, Matches, Heartbeat], 10).unwrap();
        let (ended, changes) = s.unsubscribe("BTC-USD", Some(&[Matches, Channel::Level2Batch]));
        assert_eq!((ended, changes), (vec![Matches], vec![leave("BTC-USD", Matches)]));
        let (ended, _) = s.unsubscribe("BTC-USD", None);
        assert_eq!(ended, [Ticker, Heartbeat]);
        assert!(s.is_empty());
        assert_eq!(s.unsubscribe("BTC-USD", None), (vec![], vec![]));
    }

    #[test]
    fn coinbase_requests_change_many_products_at_once() {
        let mut s = Subscriptions::default();
        let req = |pairs: &[(Channel, &[&str])]| -> BTreeMap<Channel, BTreeSet<String>> {
            pairs.iter().map(|(c, ps)| (*c, ps.iter().map(|p| p.to_string()).collect())).collect()
        };
        let changes = s.coinbase_subscribe(&req(&[(Ticker, &["BTC-USD", "ETH-USD"]), (Matches, &["BTC-USD"])]), 10);
        assert_eq!(changes.unwrap().len(), 3);
        assert_eq!(
            s.coinbase_message(),
            r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"],"account_ids":null},{"name":"ticker","product_ids":["BTC-USD","ETH-USD"],"account_ids":null}]}"#
        );
        assert_eq!(
            s.coinbase_subscribe(&req(&[(Heartbeat, &["A-B", "C-D"])]), 4),
            Err(HubError::TooManySubscriptions(4))
        );
        // No products: the channel ends on every product.
        let changes = s.coinbase_unsubscribe(&req(&[(Ticker, &[])]));
        assert_eq!(changes, [leave("BTC-USD", Ticker), leave("ETH-USD", Ticker)]);
        assert_eq!(s.take_all(), [leave("BTC-USD", Matches)]);
    }
}
