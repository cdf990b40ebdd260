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

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet};

pub use crate::protocol::Book;
pub use fanout::run;
pub use feed::{FeedState, Gap};
pub use history::{HistoryLimits, HistoryQuery, Since};

use crate::cluster::{Publish, SeedAnswer};
use crate::hub::ClientId;
use crate::protocol::{Channel, Topic};
use crate::upstream::{FeedMessage, Upstream};
use crate::ws::Frame;

/// The place in a [`ShardSet`] of the edges (on an ingest): NATS, past the
/// last shard.
pub const REMOTE: usize = crate::config::MAX_SHARDS;

/// A set of shard indices (up to [`crate::config::MAX_SHARDS`]) and [`REMOTE`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ShardSet([u64; 5]);

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
        self.0 == [0; 5]
    }

    fn union(mut self, other: &ShardSet) -> ShardSet {
        for (w, o) in self.0.iter_mut().zip(other.0) {
            *w |= o;
        }
        self
    }

    fn iter(&self) -> impl Iterator<Item = usize> {
        let words = self.0;
        (0..5).flat_map(move |i| {
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
    /// An ingest's or an edge's part (`None`: one process alone).
    cluster: Option<ClusterPart>,
}

/// What an owner keeps as an ingest or an edge.
pub enum ClusterPart {
    Edge(EdgePart),
    Ingest(IngestPart),
}

/// A join waiting for its topic's seed: the client and its `?replay=`.
type Waiting = (ClientId, Option<usize>);

/// An edge's topics: a new one waits for its seed from the ingest, and the
/// joins that come meanwhile wait with it.
#[derive(Default)]
pub struct EdgePart {
    ready: RefCell<HashSet<Topic>>,
    pending: RefCell<HashMap<Topic, Vec<Waiting>>>,
    /// Topics wanted again since the NATS thread last heard: each is seeded
    /// afresh even if the thread never saw it go.
    fresh: RefCell<Vec<Topic>>,
}

/// An ingest's publishing state.
pub struct IngestPart {
    publish: tokio::sync::mpsc::Sender<Publish>,
    /// The lease's term while this ingest holds it; 0 while standby.
    epoch: Cell<u64>,
    /// Per product and channel, the last sequence number published this term.
    seqs: RefCell<HashMap<String, [u64; Channel::COUNT]>>,
    /// The edges' topics, as last told.
    remote: RefCell<BTreeSet<(String, Channel)>>,
    counters: std::sync::Arc<crate::cluster::Counters>,
    max_payload: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl IngestPart {
    pub fn new(link: &crate::cluster::Link) -> Option<IngestPart> {
        Some(IngestPart {
            publish: link.publish.clone()?,
            epoch: Cell::new(0),
            seqs: RefCell::default(),
            remote: RefCell::default(),
            counters: link.counters.clone(),
            max_payload: link.max_payload.clone(),
        })
    }

    /// The queue to NATS, for the dispatcher to wait for room in.
    pub fn queue(&self) -> &tokio::sync::mpsc::Sender<Publish> {
        &self.publish
    }
}

/// A join answered late (an edge's topic seeded): the client and its first frames.
pub type LateJoin = (ClientId, Vec<Frame>);

impl Owner {
    pub fn new(upstream: Upstream, history: HistoryLimits) -> Owner {
        Owner::with_cluster(upstream, history, None)
    }

    pub fn with_cluster(upstream: Upstream, history: HistoryLimits, cluster: Option<ClusterPart>) -> Owner {
        Owner { upstream, interest: RefCell::new(HashMap::new()), feed: RefCell::new(FeedState::new(history)), cluster }
    }

    fn edge(&self) -> Option<&EdgePart> {
        match &self.cluster {
            Some(ClusterPart::Edge(e)) => Some(e),
            _ => None,
        }
    }

    pub fn is_edge(&self) -> bool {
        self.edge().is_some()
    }

    pub fn ingest(&self) -> Option<&IngestPart> {
        match &self.cluster {
            Some(ClusterPart::Ingest(i)) => Some(i),
            _ => None,
        }
    }

    /// Client `client` (on its shard) has subscribed to `topic`: returns what
    /// it gets first (the last `replay` messages, or what a fresh subscriber of
    /// the feed gets first) and puts the shard on the topic's stream, in one
    /// step. On an edge, a topic not yet seeded answers `None`: the join waits
    /// for the seed ([`Owner::seed`] answers it).
    pub fn join(&self, topic: &Topic, client: ClientId, replay: Option<usize>) -> Option<Vec<Frame>> {
        if let Some(edge) = self.edge() {
            if !edge.ready.borrow().contains(topic) {
                edge.pending.borrow_mut().entry(topic.clone()).or_default().push((client, replay));
                self.interest(topic, client.shard, true);
                return None;
            }
        }
        let frames = self.first(topic, replay);
        self.interest(topic, client.shard, true);
        Some(frames)
    }

    fn first(&self, topic: &Topic, replay: Option<usize>) -> Vec<Frame> {
        match replay {
            Some(limit) => {
                let q =
                    HistoryQuery { product: topic.product.clone(), channel: topic.channel, limit, since: Since::All };
                let feed = self.feed.borrow();
                feed.history(&q, crate::clock::now_micros()).into_iter().map(|m| m.frame.clone()).collect()
            }
            None => self.feed.borrow().first_frames(&topic.product, topic.channel),
        }
    }

    /// An edge's topic seeded by the ingest: its state and history are the
    /// ingest's, the waiting joins are answered from them, and the topic is
    /// ready. Returns the late joins; the caller sends `first` to the shards
    /// already on the stream (their subscribers hear it as after a reconnect).
    pub fn seed(&self, topic: &Topic, history: &[FeedMessage], first: &[FeedMessage]) -> Vec<LateJoin> {
        let Some(edge) = self.edge() else { return Vec::new() };
        let now = crate::clock::now_micros();
        self.feed.borrow_mut().seed(&topic.product, topic.channel, history, first, now);
        let waiting = edge.pending.borrow_mut().remove(topic).unwrap_or_default();
        // Ready if wanted still (a seed may come for a topic just left).
        if !self.shards_for(&topic.product, topic.channel).is_empty() {
            edge.ready.borrow_mut().insert(topic.clone());
        }
        waiting.into_iter().map(|(client, replay)| (client, self.first(topic, replay))).collect()
    }

    /// An edge: topics wanted anew since the last call.
    pub fn take_fresh(&self) -> Vec<Topic> {
        self.edge().map(|e| std::mem::take(&mut *e.fresh.borrow_mut())).unwrap_or_default()
    }

    /// An edge: every topic waits for a fresh seed (the ingest or NATS went away).
    pub fn unready_all(&self) {
        if let Some(edge) = self.edge() {
            edge.ready.borrow_mut().clear();
        }
    }

    /// An edge: joins waiting on `product`, answered with nothing (the feed
    /// refused it; their subscriptions end with the error).
    pub fn drop_pending(&self, product: &str) -> Vec<(Topic, ClientId)> {
        let Some(edge) = self.edge() else { return Vec::new() };
        let mut pending = edge.pending.borrow_mut();
        let topics: Vec<Topic> = pending.keys().filter(|t| t.product == product).cloned().collect();
        let mut out = Vec::new();
        for t in topics {
            out.extend(pending.remove(&t).unwrap_or_default().into_iter().map(|(c, _)| (t.clone(), c)));
        }
        out
    }

    /// An ingest: the edges' topics, whole; the upstream follows the union of
    /// theirs and the local shards'.
    pub fn set_remote(&self, topics: BTreeSet<(String, Channel)>) {
        let Some(ingest) = self.ingest() else { return };
        let old = ingest.remote.replace(topics.clone());
        for (product, channel) in old.difference(&topics) {
            self.interest(&Topic::new(product.clone(), *channel), REMOTE, false);
        }
        for (product, channel) in topics.difference(&old) {
            // Not published for a while (an edge's interest lapsed and came
            // back): a number is skipped, so that an edge still following the
            // subject sees the hole and asks for a fresh seed.
            if let Some(seqs) = ingest.seqs.borrow_mut().get_mut(product.as_str()) {
                seqs[channel.index()] += 1;
            }
            self.interest(&Topic::new(product.clone(), *channel), REMOTE, true);
        }
    }

    /// An ingest took the lease with this term (`Some`) or is standby: it
    /// connects upstream or holds no connection, and numbers each subject
    /// from 1 in a new term.
    pub fn set_term(&self, term: Option<u64>) {
        let Some(ingest) = self.ingest() else { return };
        ingest.epoch.set(term.unwrap_or(0));
        ingest.seqs.borrow_mut().clear();
        self.upstream.set_standby(term.is_none());
    }

    /// An ingest: `msg` goes to the edges, numbered on its subject.
    fn publish(&self, msg: &FeedMessage, product: &str, channel: Channel) {
        let Some(ingest) = self.ingest() else { return };
        let epoch = ingest.epoch.get();
        if epoch == 0 {
            return;
        }
        // Larger than NATS carries: not published, and not numbered (the edges
        // would ask for seeds that cannot carry it either).
        let max = ingest.max_payload.load(std::sync::atomic::Ordering::Relaxed);
        if max > 0 && msg.body().len() + 256 > max {
            crate::cluster::Counters::add(&ingest.counters.oversize, 1);
            static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                log::warn!(event = "nats_oversize", product = product;
                    "a {} message of {} bytes is larger than the NATS server's max_payload ({max}): not published to the edges; raise max_payload (counted in hedgehog_nats_oversize_total)",
                    channel.name(), msg.body().len());
            }
            return;
        }
        let mut seqs = ingest.seqs.borrow_mut();
        if !seqs.contains_key(product) {
            seqs.insert(product.to_string(), [0; Channel::COUNT]);
        }
        let Some(seq) = seqs.get_mut(product).map(|s| &mut s[channel.index()]) else { return };
        *seq += 1;
        let p = Publish { product: product.to_string(), channel, epoch, seq: *seq, body: msg.body_shared() };
        if ingest.publish.try_send(p).is_err() {
            // The dispatcher waited (up to a second) for room before this
            // message: NATS is stuck, or the thread gone. Not published, as a
            // lapsed lease's; the edges see the gap.
            crate::cluster::Counters::add(&ingest.counters.fenced, 1);
        }
    }

    /// An ingest answers an edge's seed: what a fresh subscriber gets first,
    /// the history, and the last sequence number published on the topic, all
    /// from one moment (nothing is dispatched between them).
    pub fn seed_answer(&self, topic: &Topic, known: Option<&HashSet<String>>) -> SeedAnswer {
        let epoch = self.ingest().map_or(0, |i| i.epoch.get());
        let seq = self
            .ingest()
            .and_then(|i| i.seqs.borrow().get(&topic.product).map(|s| s[topic.channel.index()]))
            .unwrap_or(0);
        if known.is_some_and(|k| !k.contains(&topic.product)) {
            let failure = crate::protocol::RequestKind::Subscribe.failure().to_string();
            let refused = Some((failure, crate::protocol::invalid_product(&topic.product)));
            return SeedAnswer { epoch, seq, first: Vec::new(), history: Vec::new(), refused };
        }
        let body = |f: &Frame| crate::ws::frame::split_server_frame(f).map(|(_, p)| p.to_vec());
        let first = self.feed.borrow().first_frames(&topic.product, topic.channel).iter().filter_map(body).collect();
        let q = HistoryQuery {
            product: topic.product.clone(),
            channel: topic.channel,
            limit: usize::MAX,
            since: Since::All,
        };
        let feed = self.feed.borrow();
        let history = feed.history(&q, crate::clock::now_micros()).into_iter().map(|m| m.body().to_vec()).collect();
        SeedAnswer { epoch, seq, first, history, refused: None }
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
        if let (Some(edge), true, false) = (self.edge(), was_empty, now_empty) {
            edge.fresh.borrow_mut().push(topic.clone());
        }
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
            if let Some(edge) = self.edge() {
                edge.ready.borrow_mut().remove(topic);
            }
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

    fn limits() -> HistoryLimits {
        HistoryLimits { per_topic: 10, max_age: std::time::Duration::from_secs(60), max_bytes: 1 << 20 }
    }

    fn msg(text: &str) -> FeedMessage {
        FeedMessage::new(text.as_bytes()).unwrap()
    }

    fn payloads(frames: &[Frame]) -> Vec<String> {
        let text = |f: &Frame| crate::ws::frame::split_server_frame(f).map(|(_, p)| p.to_vec()).unwrap_or_default();
        frames.iter().map(|f| String::from_utf8(text(f)).unwrap()).collect()
    }

    #[test]
    fn an_edge_answers_joins_once_the_topic_is_seeded_and_again_after_a_loss() {
        let edge = Owner::with_cluster(Upstream::detached(), limits(), Some(ClusterPart::Edge(EdgePart::default())));
        let topic = Topic::new("A-B", Channel::Matches);
        let (c1, c2, c3) = (ClientId::new(None, 0, 1), ClientId::new(None, 1, 2), ClientId::new(None, 1, 3));
        assert_eq!(edge.join(&topic, c1, None), None, "not seeded: the join waits");
        assert_eq!(edge.join(&topic, c2, Some(5)), None);
        assert!(edge.upstream.desired().contains(&("A-B".to_string(), Channel::Matches)), "and NATS is asked");
        assert_eq!(edge.take_fresh(), vec![topic.clone()]);
        let old = msg(r#"{"type":"match","trade_id":6,"product_id":"A-B"}"#);
        let last = msg(r#"{"type":"match","trade_id":7,"product_id":"A-B"}"#);
        let late = edge.seed(&topic, &[old, last.clone()], &[last]);
        let by = |c: ClientId| payloads(&late.iter().find(|(id, _)| *id == c).unwrap().1);
        assert_eq!(by(c1), [r#"{"type":"last_match","trade_id":7,"product_id":"A-B"}"#]);
        assert_eq!(by(c2).len(), 2, "?replay= is answered from the ingest's history");
        assert_eq!(edge.join(&topic, c3, None).map(|f| f.len()), Some(1), "seeded: answered at once");
        // The ingest or NATS went away: every topic waits for a fresh seed.
        edge.feed.borrow_mut().forget_all();
        edge.unready_all();
        assert_eq!(edge.join(&topic, c3, None), None);
        assert_eq!(edge.drop_pending("A-B"), vec![(topic, c3)], "a refused product answers them with nothing");
    }

    #[test]
    fn an_ingest_numbers_each_subject_per_term_and_its_seed_says_how_far_it_goes() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let link = crate::cluster::Link {
            role: crate::cluster::Role::Ingest,
            node: "i".into(),
            cfg: crate::cluster::ClusterConfig::default(),
            cmd: tokio::sync::mpsc::channel(1).0,
            publish: Some(tx),
            status: Default::default(),
            counters: Default::default(),
            max_payload: Default::default(),
        };
        let part = IngestPart::new(&link).map(ClusterPart::Ingest);
        let ingest = Owner::with_cluster(Upstream::detached(), limits(), part);
        let topic = Topic::new("A-B", Channel::Matches);
        ingest.set_remote([("A-B".to_string(), Channel::Matches)].into());
        assert!(!ingest.shards_for("A-B", Channel::Matches).is_empty(), "the edges' interest is a member of the set");
        let m = msg(r#"{"type":"match","trade_id":1,"product_id":"A-B"}"#);
        ingest.publish(&m, "A-B", Channel::Matches);
        assert!(rx.try_recv().is_err(), "standby: nothing is published");
        ingest.set_term(Some(9));
        for _ in 0..3 {
            ingest.feed.borrow_mut().on_message(&m, Channel::Matches, true, crate::clock::now_micros());
            ingest.publish(&m, "A-B", Channel::Matches);
        }
        let sent: Vec<(u64, u64)> = std::iter::from_fn(|| rx.try_recv().ok()).map(|p| (p.epoch, p.seq)).collect();
        assert_eq!(sent, [(9, 1), (9, 2), (9, 3)]);
        let a = ingest.seed_answer(&topic, None);
        assert_eq!((a.epoch, a.seq, a.first.len(), a.history.len(), a.refused), (9, 3, 1, 3, None));
        let known: HashSet<String> = ["C-D".to_string()].into();
        assert!(ingest.seed_answer(&topic, Some(&known)).refused.is_some(), "an unlisted product is refused");
        ingest.set_term(Some(12));
        ingest.publish(&m, "A-B", Channel::Matches);
        assert_eq!(rx.try_recv().map(|p| (p.epoch, p.seq)).ok(), Some((12, 1)), "a new term numbers from 1");
        ingest.set_remote(BTreeSet::new());
        assert!(ingest.shards_for("A-B", Channel::Matches).is_empty(), "a dropped interest leaves the set");
    }

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
