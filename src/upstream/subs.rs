//! The upstream's subscription bookkeeping: what the owner wants, what the server
//! has confirmed, and the deltas that take one to the other.

use std::collections::{BTreeMap, BTreeSet};

/// A (channel, product) pair; `status` has the empty product.
pub type Sub = (String, String);

/// Desired, requested and confirmed subscription sets of one upstream connection.
#[derive(Debug, Default)]
pub struct Subs {
    desired: BTreeSet<Sub>,
    /// What the server has once all requests sent are applied.
    requested: BTreeSet<Sub>,
    /// The server's last cumulative `subscriptions` reply.
    acked: BTreeSet<Sub>,
    in_flight: usize,
    /// Products the server called invalid on this connection; not asked for again.
    rejected: BTreeSet<String>,
    /// Products to unsubscribe and subscribe again (after a gap).
    resubscribe: BTreeSet<String>,
}

/// One request to send: subscribe (true) or unsubscribe, per channel.
pub type Delta = (bool, BTreeMap<String, BTreeSet<String>>);

impl Subs {
    /// Adds or removes one pair from the desired set; true if it changed.
    pub fn set(&mut self, channel: &str, product: &str, on: bool) -> bool {
        let key = (channel.to_string(), product.to_string());
        if on {
            self.desired.insert(key)
        } else {
            self.desired.remove(&key)
        }
    }

    /// The desired set as it goes upstream: every product also on `heartbeat`
    /// (liveness), `status` always (the product list), rejected products left out.
    pub fn effective(&self) -> BTreeSet<Sub> {
        let mut out: BTreeSet<Sub> = BTreeSet::new();
        out.insert(("status".into(), String::new()));
        for (channel, product) in &self.desired {
            if !self.rejected.contains(product) {
                out.insert((channel.clone(), product.clone()));
                out.insert(("heartbeat".into(), product.clone()));
            }
        }
        out
    }

    /// Whether any product is wanted (and so heartbeats are expected).
    pub fn has_products(&self) -> bool {
        self.desired.iter().any(|(_, p)| !self.rejected.contains(p))
    }

    /// The owner's desired pairs.
    pub fn desired(&self) -> &BTreeSet<Sub> {
        &self.desired
    }

    /// A new connection: the server has nothing.
    pub fn reset(&mut self) {
        self.requested.clear();
        self.acked.clear();
        self.in_flight = 0;
        self.rejected.clear();
        self.resubscribe.clear();
    }

    /// The server called `product` invalid.
    pub fn reject(&mut self, product: &str) {
        self.rejected.insert(product.to_string());
    }

    /// Records a cumulative `subscriptions` reply. Once every request has been
    /// answered, the server's word replaces what we thought we had asked for.
    pub fn ack(&mut self, confirmed: BTreeSet<Sub>) {
        self.acked = confirmed;
        self.answered();
    }

    /// The server refused a whole request (an `error` naming no product, with no
    /// `subscriptions` reply): it still has what it last confirmed, and the next
    /// [`Subs::deltas`] asks again for the difference.
    pub fn refused(&mut self) {
        self.answered();
    }

    /// One request has its answer; once all have, the server's last word is
    /// what it has.
    fn answered(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.requested = self.acked.clone();
        }
    }

    /// Asks for `product` afresh: the next [`Subs::deltas`] unsubscribes every
    /// channel of it, then subscribes them again (the server then sends a new
    /// snapshot and `last_match`). Other products are left alone.
    pub fn resubscribe(&mut self, product: &str) {
        self.resubscribe.insert(product.to_string());
    }

    /// The requests that take the server from what was requested to what is desired.
    pub fn deltas(&mut self) -> Vec<Delta> {
        let want = self.effective();
        let mut out = Vec::new();
        let again: Vec<Sub> = self
            .requested
            .iter()
            .filter(|(_, p)| self.resubscribe.contains(p))
            .filter(|s| want.contains(*s))
            .cloned()
            .collect();
        self.resubscribe.clear();
        if !again.is_empty() {
            out.push((false, group(again.iter().collect())));
            for s in &again {
                self.requested.remove(s);
            }
        }
        let add: Vec<&Sub> = want.difference(&self.requested).collect();
        let remove: Vec<&Sub> = self.requested.difference(&want).collect();
        for (subscribe, set) in [(true, add), (false, remove)] {
            if !set.is_empty() {
                out.push((subscribe, group(set)));
            }
        }
        self.in_flight += out.len();
        self.requested = want;
        out
    }
}

/// Pairs grouped by channel; `status`'s empty product leaves an empty list.
pub fn group(pairs: Vec<&Sub>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (channel, product) in pairs {
        let set = out.entry(channel.clone()).or_default();
        if !product.is_empty() {
            set.insert(product.clone());
        }
    }
    out
}

/// The text of a request: channel objects, each with its own products.
pub fn request_text(subscribe: bool, channels: &BTreeMap<String, BTreeSet<String>>) -> String {
    let channels: Vec<serde_json::Value> = channels
        .iter()
        .map(|(name, products)| match products.is_empty() {
            true => serde_json::json!(name),
            false => serde_json::json!({"name": name, "product_ids": products}),
        })
        .collect();
    let kind = if subscribe { "subscribe" } else { "unsubscribe" };
    serde_json::json!({"type": kind, "channels": channels}).to_string()
}

/// The pairs in a `subscriptions` reply.
pub fn parse_subscriptions(text: &[u8]) -> Option<BTreeSet<Sub>> {
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    let mut out = BTreeSet::new();
    for ch in v.get("channels")?.as_array()? {
        let name = ch.get("name")?.as_str()?;
        let products = ch.get("product_ids").and_then(|p| p.as_array()).cloned().unwrap_or_default();
        if products.is_empty() {
            out.insert((name.to_string(), String::new()));
        }
        for p in products.iter().filter_map(|p| p.as_str()) {
            out.insert((name.to_string(), p.to_string()));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(c: &str, p: &str) -> Sub {
        (c.into(), p.into())
    }

    #[test]
    fn sends_only_deltas_with_heartbeats_and_status() {
        let mut s = Subs::default();
        s.set("ticker", "BTC-USD", true);
        let d = s.deltas();
        assert_eq!(d.len(), 1);
        assert_eq!(
            request_text(d[0].0, &d[0].1),
            r#"{"channels":[{"name":"heartbeat","product_ids":["BTC-USD"]},"status",{"name":"ticker","product_ids":["BTC-USD"]}],"type":"subscribe"}"#
        );
        assert!(s.deltas().is_empty(), "nothing changed, nothing sent");
        s.set("matches", "BTC-USD", true);
        s.set("ticker", "BTC-USD", false);
        let d = s.deltas();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0], (true, BTreeMap::from([("matches".into(), BTreeSet::from(["BTC-USD".into()]))])));
        assert_eq!(d[1], (false, BTreeMap::from([("ticker".into(), BTreeSet::from(["BTC-USD".into()]))])));
    }

    #[test]
    fn reconciles_against_the_servers_reply() {
        let mut s = Subs::default();
        s.set("ticker", "BTC-USD", true);
        s.set("ticker", "NOPE-USD", true);
        s.deltas();
        s.reject("NOPE-USD");
        // The server confirms less than was asked: everything but the rejected product
        // and, say, a heartbeat it lost. Only the missing heartbeat is asked again.
        s.ack(BTreeSet::from([pair("status", ""), pair("ticker", "BTC-USD")]));
        let d = s.deltas();
        assert_eq!(d, vec![(true, BTreeMap::from([("heartbeat".into(), BTreeSet::from(["BTC-USD".into()]))]))]);
    }

    #[test]
    fn a_refused_request_is_asked_again() {
        let mut s = Subs::default();
        s.set("matches", "ETH-USD", true);
        let first = s.deltas();
        s.ack(s.effective());
        s.set("matches", "SOL-USD", true);
        let asked = s.deltas();
        assert_eq!(s.deltas(), vec![], "nothing new while the request is out");
        s.refused();
        assert_eq!(s.deltas(), asked, "the same request again, and only it");
        assert_ne!(asked, first);
    }

    #[test]
    fn a_new_connection_resubscribes_everything() {
        let mut s = Subs::default();
        s.set("matches", "ETH-USD", true);
        s.deltas();
        s.ack(s.effective());
        s.reset();
        let d = s.deltas();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].1.len(), 3);
    }

    #[test]
    fn reads_subscriptions_replies() {
        let r = br#"{"type":"subscriptions","channels":[{"name":"ticker","product_ids":["BTC-USD","ETH-USD"],"account_ids":null},{"name":"status","product_ids":[]}]}"#;
        let got = parse_subscriptions(r).unwrap();
        assert_eq!(got, BTreeSet::from([pair("status", ""), pair("ticker", "BTC-USD"), pair("ticker", "ETH-USD")]));
    }
}
