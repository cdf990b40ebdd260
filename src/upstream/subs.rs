//! The upstream's subscription bookkeeping: what the owner wants, what the server
//! has confirmed, and the requests that take one to the other, each small enough
//! for the feed and sent one after another.
//!
//! About 380 lines of code; the rest of the file is its tests, which pin the
//! request texts byte for byte.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::protocol::Channel;

/// A (channel, product) pair; `status` has the empty product.
///
/// Ordered by channel name, then product: the order requests list them in, so
/// each request's text and the pairs it holds do not depend on how `Channel`
/// itself sorts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sub {
    pub channel: Channel,
    pub product: String,
}

impl Sub {
    pub fn new(channel: Channel, product: impl Into<String>) -> Sub {
        Sub { channel, product: product.into() }
    }
}

impl Ord for Sub {
    fn cmp(&self, other: &Sub) -> Ordering {
        (self.channel.name(), &self.product).cmp(&(other.channel.name(), &other.product))
    }
}

impl PartialOrd for Sub {
    fn partial_cmp(&self, other: &Sub) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Largest request sent upstream, in bytes of JSON text. Coinbase closes the
/// connection of a client whose message is too big (FEED.md, "Message too big";
/// 1009) without publishing the limit; the simulator and hedgehog's own clients
/// allow 64 KiB. An eighth of that still holds about 500 (channel, product) pairs,
/// so a relay of a few hundred products sends a request or two, and a flood of
/// thousands of pairs goes as a dozen or more requests, each far from any limit.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Requests sent and not yet answered. At this many, the rest stay queued until an
/// answer comes; a feed that answers none is stalled (the client's liveness clock
/// runs from the oldest unanswered request) and the connection is replaced.
pub const MAX_IN_FLIGHT: usize = 16;

/// One `subscribe` (or `unsubscribe`) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub subscribe: bool,
    /// Sorted by channel, then product; `status` with the empty product.
    pub pairs: Vec<Sub>,
}

impl Request {
    /// The request as sent: channel objects, each with its own products.
    pub fn text(&self) -> String {
        request_text(self.subscribe, &group(self.pairs.iter().collect()))
    }

    /// Whether it names a product (rather than `status` alone).
    fn names_products(&self) -> bool {
        self.pairs.iter().any(|s| !s.product.is_empty())
    }

    /// `set` as the server has it once this request is applied.
    fn apply(&self, set: &mut BTreeSet<Sub>) {
        for pair in &self.pairs {
            if self.subscribe {
                set.insert(pair.clone());
            } else {
                set.remove(pair);
            }
        }
    }
}

/// Desired, requested and confirmed subscription sets of one upstream connection,
/// and the requests between them.
///
/// The server answers every request, in order, with one cumulative `subscriptions`
/// message (or refuses it as a whole with an `error`), so each answer settles the
/// oldest request in flight: what the server will have is its last reply with the
/// requests still in flight applied on top, and the queue is planned from that.
#[derive(Debug, Default)]
pub struct Subs {
    desired: BTreeSet<Sub>,
    /// The server's last cumulative `subscriptions` reply.
    acked: BTreeSet<Sub>,
    /// Requests sent and not yet answered, oldest first; at most [`MAX_IN_FLIGHT`].
    in_flight: VecDeque<Request>,
    /// Unsubscribes of products asked for afresh, sent before the rest and never
    /// planned again (their subscribes follow in `queue`).
    again: VecDeque<Request>,
    /// Requests not yet sent, planned afresh on every change. Bounded by the sets
    /// themselves: each pair the server lacks or has to lose is in one request.
    queue: VecDeque<Request>,
    /// Products the server called invalid on this connection; not asked for again.
    rejected: BTreeSet<String>,
    /// Products to unsubscribe and subscribe again (after a gap).
    resubscribe: BTreeSet<String>,
    /// The products the feed's last `status` listed; kept across connections.
    listed: Option<BTreeSet<String>>,
    /// Desired products found unlisted and not yet reported to the owner.
    unlisted: BTreeSet<String>,
    /// Product requests wait for the product list: the feed has not listed its
    /// products yet, so `status` goes first, alone, and its answer decides the rest.
    holding: bool,
}

impl Subs {
    /// Adds or removes one pair from the desired set; true if it changed.
    pub fn set(&mut self, channel: Channel, product: &str, on: bool) -> bool {
        let key = Sub::new(channel, product);
        if !on {
            return self.desired.remove(&key);
        }
        let added = self.desired.insert(key);
        if added && self.is_unlisted(product) {
            self.unlisted.insert(product.to_string());
        }
        added
    }

    /// Whether the feed listed its products and `product` is not one of them.
    fn is_unlisted(&self, product: &str) -> bool {
        !product.is_empty() && self.listed.as_ref().is_some_and(|l| !l.contains(product))
    }

    /// Whether `product` is left out of every request: the feed refused it on this
    /// connection, or does not list it.
    fn blocked(&self, product: &str) -> bool {
        self.rejected.contains(product) || self.is_unlisted(product)
    }

    /// The desired set as it goes upstream: every product also on `heartbeat`
    /// (liveness), `status` always (the product list), refused and unlisted
    /// products left out.
    pub fn effective(&self) -> BTreeSet<Sub> {
        let mut out: BTreeSet<Sub> = BTreeSet::new();
        out.insert(Sub::new(Channel::Status, ""));
        for sub in &self.desired {
            if !self.blocked(&sub.product) {
                out.insert(sub.clone());
                out.insert(Sub::new(Channel::Heartbeat, sub.product.clone()));
            }
        }
        out
    }

    /// Whether any product is wanted (and so heartbeats are expected).
    pub fn has_products(&self) -> bool {
        self.desired.iter().any(|s| !self.blocked(&s.product))
    }

    /// A new connection: the server has nothing, and nothing is on its way. Until
    /// the feed has once listed its products, product requests wait for the list.
    pub fn reset(&mut self) {
        self.acked.clear();
        self.in_flight.clear();
        self.again.clear();
        self.queue.clear();
        self.rejected.clear();
        self.resubscribe.clear();
        self.holding = self.listed.is_none();
    }

    /// The server called `product` invalid.
    pub fn reject(&mut self, product: &str) {
        self.rejected.insert(product.to_string());
    }

    /// The products the feed lists (a `status` message). From now on a product it
    /// does not list is not asked for: it is reported by [`Subs::take_unlisted`]
    /// instead, each time it becomes desired or drops off the list.
    pub fn list(&mut self, products: impl IntoIterator<Item = String>) {
        let list: BTreeSet<String> = products.into_iter().collect();
        for Sub { product: p, .. } in &self.desired {
            let was_listed = self.listed.as_ref().is_none_or(|old| old.contains(p));
            if !p.is_empty() && was_listed && !list.contains(p) {
                self.unlisted.insert(p.clone());
            }
        }
        self.listed = Some(list);
        self.holding = false;
    }

    /// Desired products the feed does not list, not reported before: the owner
    /// ends their subscriptions as it would on the feed's own refusal.
    pub fn take_unlisted(&mut self) -> Vec<String> {
        if self.unlisted.is_empty() {
            return Vec::new();
        }
        let news = std::mem::take(&mut self.unlisted);
        let wanted: BTreeSet<&str> = self.desired.iter().map(|s| s.product.as_str()).collect();
        news.into_iter().filter(|p| wanted.contains(p.as_str()) && self.is_unlisted(p)).collect()
    }

    /// Whether product requests wait for the feed's product list.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// Stops waiting for the product list (a feed that sends none).
    pub fn release(&mut self) {
        self.holding = false;
    }

    /// Whether the server has (`channel`, `product`), or will once the requests
    /// already sent are applied: false once an unsubscribe of it has gone out.
    pub fn expects(&self, channel: Channel, product: &str) -> bool {
        self.expected().contains(&Sub::new(channel, product))
    }

    /// Records a cumulative `subscriptions` reply: it answers the oldest request.
    pub fn ack(&mut self, confirmed: BTreeSet<Sub>) {
        self.acked = confirmed;
        self.in_flight.pop_front();
    }

    /// The server refused a whole request (an `error` naming no product, with no
    /// `subscriptions` reply): it still has what it last confirmed, and the next
    /// [`Subs::plan`] asks again for the difference.
    pub fn refused(&mut self) {
        self.in_flight.pop_front();
    }

    /// Asks for `product` afresh: the next [`Subs::plan`] unsubscribes every
    /// channel of it, then subscribes them again (the server then sends a new
    /// snapshot and `last_match`). Other products are left alone.
    pub fn resubscribe(&mut self, product: &str) {
        self.resubscribe.insert(product.to_string());
    }

    /// Products asked afresh and not yet planned, taken (an edge, which plans
    /// nothing, seeds them again instead).
    pub fn take_resubscribes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.resubscribe).into_iter().collect()
    }

    /// What the server will have once the requests sent (and the unsubscribes
    /// ahead of the queue) are applied; refused and unlisted products left out.
    fn expected(&self) -> BTreeSet<Sub> {
        let mut out = self.acked.clone();
        for r in self.in_flight.iter().chain(&self.again) {
            r.apply(&mut out);
        }
        out.retain(|s| !self.blocked(&s.product));
        out
    }

    /// Plans the requests that take the server to the desired set, replacing
    /// those planned before and not yet sent.
    pub fn plan(&mut self) {
        let want = self.effective();
        let mut expected = self.expected();
        let again: Vec<Sub> =
            expected.iter().filter(|s| self.resubscribe.contains(&s.product) && want.contains(s)).cloned().collect();
        self.resubscribe.clear();
        for r in split(false, again) {
            r.apply(&mut expected);
            self.again.push_back(r);
        }
        let mut add: Vec<Sub> = want.difference(&expected).cloned().collect();
        let remove: Vec<Sub> = expected.difference(&want).cloned().collect();
        self.queue.clear();
        if self.holding {
            let (first, rest): (Vec<Sub>, Vec<Sub>) = add.into_iter().partition(|s| s.product.is_empty());
            self.queue.extend(split(true, first));
            add = rest;
        }
        self.queue.extend(split(true, add));
        self.queue.extend(split(false, remove));
    }

    /// The request to send next, if one may go now: not while [`MAX_IN_FLIGHT`]
    /// are unanswered, nor one naming products while they wait for the list.
    fn next(&self) -> Option<&Request> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let next = self.again.front().or(self.queue.front())?;
        (!self.holding || !next.names_products()).then_some(next)
    }

    /// Whether a request may be sent now.
    pub fn ready(&self) -> bool {
        self.next().is_some()
    }

    /// Takes the request to send next (see [`Subs::ready`]); it is in flight from now.
    pub fn take_request(&mut self) -> Option<Request> {
        self.next()?;
        let r = match self.again.pop_front() {
            Some(r) => r,
            None => self.queue.pop_front()?,
        };
        self.in_flight.push_back(r.clone());
        Some(r)
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Requests planned and not yet sent.
    pub fn queued(&self) -> usize {
        self.again.len() + self.queue.len()
    }
}

/// `pairs` (sorted) as requests of at most [`MAX_REQUEST_BYTES`] of text each, in order.
fn split(subscribe: bool, pairs: Vec<Sub>) -> Vec<Request> {
    // `{"channels":[` + `],"type":"unsubscribe"}`.
    const ENVELOPE: usize = 36;
    let mut out = Vec::new();
    let mut chunk: Vec<Sub> = Vec::new();
    let mut size = ENVELOPE;
    for pair in pairs {
        if !chunk.is_empty() && size + cost(&chunk, &pair) > MAX_REQUEST_BYTES {
            out.push(Request { subscribe, pairs: std::mem::take(&mut chunk) });
            size = ENVELOPE;
        }
        size += cost(&chunk, &pair);
        chunk.push(pair);
    }
    if !chunk.is_empty() {
        out.push(Request { subscribe, pairs: chunk });
    }
    out
}

/// The most `pair` adds to the text of a request holding `chunk`: its product,
/// quoted, and a comma; and when it opens its channel, the channel's object
/// `{"name":..,"product_ids":[]},`.
fn cost(chunk: &[Sub], pair: &Sub) -> usize {
    const CHANNEL_OBJECT: usize = 27;
    let json = |s: &str| crate::protocol::json_string(s).len();
    let opens = chunk.last().is_none_or(|last| last.channel != pair.channel);
    json(&pair.product) + 1 + if opens { CHANNEL_OBJECT + json(pair.channel.name()) } else { 0 }
}

/// Pairs grouped by channel; `status`'s empty product leaves an empty list.
pub fn group(pairs: Vec<&Sub>) -> BTreeMap<Channel, BTreeSet<String>> {
    let mut out: BTreeMap<Channel, BTreeSet<String>> = BTreeMap::new();
    for Sub { channel, product } in pairs {
        let set = out.entry(*channel).or_default();
        if !product.is_empty() {
            set.insert(product.clone());
        }
    }
    out
}

/// The text of a request: channel objects, each with its own products, listed
/// by channel name.
pub fn request_text(subscribe: bool, channels: &BTreeMap<Channel, BTreeSet<String>>) -> String {
    let mut channels: Vec<(&Channel, &BTreeSet<String>)> = channels.iter().collect();
    channels.sort_by_key(|(channel, _)| channel.name());
    let channels: Vec<serde_json::Value> = channels
        .into_iter()
        .map(|(channel, products)| match products.is_empty() {
            true => serde_json::json!(channel),
            false => serde_json::json!({"name": channel, "product_ids": products}),
        })
        .collect();
    let kind = if subscribe { "subscribe" } else { "unsubscribe" };
    serde_json::json!({"type": kind, "channels": channels}).to_string()
}

/// The pairs in a `subscriptions` reply. A channel hedgehog does not know is
/// left out: it was never asked for, and there is nothing it could be compared with.
pub fn parse_subscriptions(text: &[u8]) -> Option<BTreeSet<Sub>> {
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    let mut out = BTreeSet::new();
    for ch in v.get("channels")?.as_array()? {
        let Some(channel) = Channel::parse(ch.get("name")?.as_str()?) else { continue };
        let products = ch.get("product_ids").and_then(|p| p.as_array()).cloned().unwrap_or_default();
        if products.is_empty() {
            out.insert(Sub::new(channel, ""));
        }
        for p in products.iter().filter_map(|p| p.as_str()) {
            out.insert(Sub::new(channel, p));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(c: &str, p: &str) -> Sub {
        Sub::new(Channel::parse(c).unwrap(), p)
    }

    /// Plans, then takes every request that may go now.
    fn send_all(s: &mut Subs) -> Vec<Request> {
        s.plan();
        std::iter::from_fn(|| s.take_request()).collect()
    }

    /// `n` made-up products.
    fn made_up(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("FAKE{i:05}-USD")).collect()
    }

    /// A connection with the product list known (nothing waits for it).
    fn listed(products: &[String]) -> Subs {
        let mut s = Subs::default();
        s.list(products.iter().cloned());
        s.reset();
        s
    }

    #[test]
    fn a_pair_dropped_and_wanted_again_before_its_unsubscribe_went_is_still_expected() {
        let mut s = listed(&["BTC-USD".to_string()]);
        s.set(Channel::Level2Batch, "BTC-USD", true);
        for r in send_all(&mut s) {
            let mut confirmed = s.acked.clone();
            r.apply(&mut confirmed);
            s.ack(confirmed);
        }
        assert!(s.expects(Channel::Level2Batch, "BTC-USD"));
        // Off and on again before the client sends anything: no request at all,
        // and the server still has the pair (so it sends no fresh snapshot).
        s.set(Channel::Level2Batch, "BTC-USD", false);
        assert!(s.expects(Channel::Level2Batch, "BTC-USD"), "nothing has gone out yet");
        s.set(Channel::Level2Batch, "BTC-USD", true);
        assert!(send_all(&mut s).is_empty());
        // Once the unsubscribe is out, it is no longer expected.
        s.set(Channel::Level2Batch, "BTC-USD", false);
        assert!(!send_all(&mut s).is_empty());
        assert!(!s.expects(Channel::Level2Batch, "BTC-USD"));
    }

    #[test]
    fn sends_only_deltas_with_heartbeats_and_status() {
        let mut s = Subs::default();
        s.set(Channel::Ticker, "BTC-USD", true);
        let d = send_all(&mut s);
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].text(),
            r#"{"channels":[{"name":"heartbeat","product_ids":["BTC-USD"]},"status",{"name":"ticker","product_ids":["BTC-USD"]}],"type":"subscribe"}"#
        );
        assert!(send_all(&mut s).is_empty(), "nothing changed, nothing sent");
        s.set(Channel::Matches, "BTC-USD", true);
        s.set(Channel::Ticker, "BTC-USD", false);
        let d = send_all(&mut s);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0], Request { subscribe: true, pairs: vec![pair("matches", "BTC-USD")] });
        assert_eq!(d[1], Request { subscribe: false, pairs: vec![pair("ticker", "BTC-USD")] });
    }

    #[test]
    fn reconciles_against_the_servers_reply() {
        let mut s = Subs::default();
        s.set(Channel::Ticker, "BTC-USD", true);
        s.set(Channel::Ticker, "NOPE-USD", true);
        send_all(&mut s);
        s.reject("NOPE-USD");
        // The server confirms less than was asked: everything but the rejected product
        // and, say, a heartbeat it lost. Only the missing heartbeat is asked again.
        s.ack(BTreeSet::from([pair("status", ""), pair("ticker", "BTC-USD")]));
        let d = send_all(&mut s);
        assert_eq!(d, vec![Request { subscribe: true, pairs: vec![pair("heartbeat", "BTC-USD")] }]);
    }

    #[test]
    fn a_refused_request_is_asked_again() {
        let mut s = Subs::default();
        s.set(Channel::Matches, "ETH-USD", true);
        let first = send_all(&mut s);
        s.ack(s.effective());
        s.set(Channel::Matches, "SOL-USD", true);
        let asked = send_all(&mut s);
        assert_eq!(send_all(&mut s), vec![], "nothing new while the request is out");
        s.refused();
        assert_eq!(send_all(&mut s), asked, "the same request again, and only it");
        assert_ne!(asked, first);
    }

    #[test]
    fn a_new_connection_resubscribes_everything() {
        let mut s = listed(&["ETH-USD".into()]);
        s.set(Channel::Matches, "ETH-USD", true);
        send_all(&mut s);
        s.ack(s.effective());
        s.reset();
        let d = send_all(&mut s);
        assert_eq!(d.len(), 1);
        assert_eq!(group(d[0].pairs.iter().collect()).len(), 3);
    }

    #[test]
    fn a_large_delta_is_split_within_the_byte_bound() {
        let products = made_up(3000);
        let mut s = listed(&products);
        for p in &products {
            s.set(Channel::Ticker, p, true);
            s.set(Channel::Matches, p, true);
        }
        s.plan();
        let mut sent = BTreeSet::new();
        let mut requests = 0;
        while s.queued() > 0 {
            let r = s.take_request().expect("one may go after the last is answered");
            let text = r.text();
            assert!(text.len() <= MAX_REQUEST_BYTES, "{} bytes", text.len());
            assert!(r.subscribe);
            // Each request stands alone: a channel it names has products (no bare
            // channel name, which would mean every product), except `status`.
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            for ch in v["channels"].as_array().unwrap() {
                assert!(ch == "status" || !ch["product_ids"].as_array().unwrap().is_empty(), "{ch}");
            }
            sent.extend(r.pairs);
            requests += 1;
            let mut server = s.acked.clone();
            server.extend(sent.iter().cloned());
            s.ack(server);
        }
        assert_eq!(sent, s.effective(), "every pair, once");
        // As one request it would be about 150 KB; split, each part is at least half full.
        let whole = Request { subscribe: true, pairs: sent.into_iter().collect() }.text().len();
        assert!(whole > 16 * MAX_REQUEST_BYTES, "{whole}");
        assert!(requests <= 2 * whole / MAX_REQUEST_BYTES + 1, "{requests} requests for {whole} bytes");
        assert!(send_all(&mut s).is_empty());
    }

    #[test]
    fn several_requests_in_flight_are_reconciled_one_answer_at_a_time() {
        let products = made_up(2000);
        let mut s = listed(&[products.clone(), vec!["BTC-USD".into()]].concat());
        for p in &products {
            s.set(Channel::Ticker, p, true);
        }
        let sent = send_all(&mut s);
        assert!(sent.len() > 2, "{} requests", sent.len());
        assert_eq!(s.in_flight(), sent.len());
        // A change while they are out: one product whose subscribe is in flight
        // goes, one more comes. Only the difference is asked for.
        let first = sent[0].pairs.iter().find(|s| !s.product.is_empty()).unwrap().product.clone();
        s.set(Channel::Ticker, &first, false);
        s.set(Channel::Matches, "BTC-USD", true);
        let change = send_all(&mut s);
        assert_eq!(
            change,
            vec![
                Request { subscribe: true, pairs: vec![pair("heartbeat", "BTC-USD"), pair("matches", "BTC-USD")] },
                Request { subscribe: false, pairs: vec![pair("heartbeat", &first), pair("ticker", &first)] },
            ]
        );
        // The cumulative answers come one per request, in order; none of them
        // makes anything be asked again.
        let mut server = BTreeSet::new();
        for r in sent.iter().chain(&change) {
            r.apply(&mut server);
            s.ack(server.clone());
            assert!(send_all(&mut s).is_empty(), "after {} answers", sent.len() - s.in_flight());
        }
        assert_eq!(s.in_flight(), 0);
        assert_eq!(server, s.effective());
        // Once all are answered the server's word counts: a pair it dropped is asked again.
        server.remove(&pair("ticker", &products[7]));
        s.ack(server);
        assert_eq!(send_all(&mut s), vec![Request { subscribe: true, pairs: vec![pair("ticker", &products[7])] }]);
    }

    #[test]
    fn a_queued_request_is_replanned_not_sent_stale() {
        let products = made_up(10_000);
        let mut s = listed(&products);
        for p in &products {
            s.set(Channel::Ticker, p, true);
        }
        let sent = send_all(&mut s);
        assert_eq!(sent.len(), MAX_IN_FLIGHT, "no more than this many unanswered");
        assert!(s.queued() > 0);
        // A product whose subscribe is still queued goes: it is never asked for,
        // and so needs no unsubscribe either.
        let last = products.last().unwrap();
        assert!(!sent.iter().any(|r| r.pairs.contains(&pair("ticker", last))));
        s.set(Channel::Ticker, last, false);
        s.plan();
        let mut rest = Vec::new();
        while s.in_flight() > 0 {
            s.refused(); // any answer makes room for the next
            rest.extend(std::iter::from_fn(|| s.take_request()));
        }
        assert!(rest.iter().all(|r| r.subscribe && !r.pairs.iter().any(|s| &s.product == last)));
    }

    #[test]
    fn products_wait_for_the_list_and_unlisted_ones_never_go() {
        let mut s = Subs::default();
        s.reset();
        s.set(Channel::Ticker, "BTC-USD", true);
        for p in made_up(500) {
            s.set(Channel::Ticker, &p, true);
        }
        let first = send_all(&mut s);
        assert_eq!(first, vec![Request { subscribe: true, pairs: vec![pair("status", "")] }], "status alone first");
        assert!(s.holding() && s.queued() > 0, "the products wait");
        assert!(s.take_unlisted().is_empty(), "unknown until listed");
        s.list(["BTC-USD".to_string(), "ETH-USD".to_string()]);
        assert_eq!(s.take_unlisted(), made_up(500), "reported once, to be refused locally");
        assert!(s.take_unlisted().is_empty());
        s.ack(BTreeSet::from([pair("status", "")]));
        let rest = send_all(&mut s);
        assert_eq!(
            rest,
            vec![Request { subscribe: true, pairs: vec![pair("heartbeat", "BTC-USD"), pair("ticker", "BTC-USD")] }]
        );
        // Once the list is known, a new unlisted pair is reported, not sent.
        s.set(Channel::Matches, "NOPE-USD", true);
        assert_eq!(s.take_unlisted(), vec!["NOPE-USD".to_string()]);
        assert!(send_all(&mut s).is_empty());
        // The list is kept: the next connection does not wait for it.
        s.reset();
        assert!(!s.holding());
    }

    #[test]
    fn a_feed_that_lists_nothing_gets_the_products_once_released() {
        let mut s = Subs::default();
        s.reset();
        s.set(Channel::Ticker, "BTC-USD", true);
        assert_eq!(send_all(&mut s).len(), 1);
        s.release();
        let rest = send_all(&mut s);
        assert_eq!(
            rest,
            vec![Request { subscribe: true, pairs: vec![pair("heartbeat", "BTC-USD"), pair("ticker", "BTC-USD")] }]
        );
    }

    #[test]
    fn a_resubscribe_unsubscribes_first_even_when_replanned() {
        let mut s = listed(&["BTC-USD".into(), "ETH-USD".into()]);
        s.set(Channel::Matches, "BTC-USD", true);
        s.set(Channel::Matches, "ETH-USD", true);
        send_all(&mut s);
        s.ack(s.effective());
        s.resubscribe("ETH-USD");
        s.plan();
        s.set(Channel::Ticker, "BTC-USD", true);
        let d = send_all(&mut s);
        assert_eq!(
            d[0],
            Request { subscribe: false, pairs: vec![pair("heartbeat", "ETH-USD"), pair("matches", "ETH-USD")] }
        );
        assert_eq!(
            d[1],
            Request {
                subscribe: true,
                pairs: vec![pair("heartbeat", "ETH-USD"), pair("matches", "ETH-USD"), pair("ticker", "BTC-USD")]
            }
        );
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn pairs_go_in_channel_name_order_and_replies_name_known_channels() {
        assert!(Channel::Ticker < Channel::Heartbeat, "the enum sorts otherwise");
        assert!(pair("heartbeat", "Z-Z") < pair("ticker", "A-A"));
        let r = br#"{"type":"subscriptions","channels":[{"name":"mystery","product_ids":["A-B"]},{"name":"level2_50","product_ids":["A-B"]}]}"#;
        assert_eq!(parse_subscriptions(r).unwrap(), BTreeSet::from([pair("level2_batch", "A-B")]));
    }

    #[test]
    fn reads_subscriptions_replies() {
        let r = br#"{"type":"subscriptions","channels":[{"name":"ticker","product_ids":["BTC-USD","ETH-USD"],"account_ids":null},{"name":"status","product_ids":[]}]}"#;
        let got = parse_subscriptions(r).unwrap();
        assert_eq!(got, BTreeSet::from([pair("status", ""), pair("ticker", "BTC-USD"), pair("ticker", "ETH-USD")]));
    }
}
