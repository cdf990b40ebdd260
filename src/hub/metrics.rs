//! Each shard's metrics: counted here in the shard's own [`Snapshot`] (no lock
//! or atomic: the shard is one thread), gathered from every shard at a scrape.

use std::time::Instant;

use super::{Answer, Ask, Hub, HubError, REPLY_DEADLINE};
use crate::metrics::{self, Entry, ProcessFigures, ShardFigures, Snapshot, Transport};
use crate::protocol::Channel;
use crate::upstream::FeedMessage;

impl Hub {
    /// A subscribe (or unsubscribe) taken at `entry`.
    pub fn count_operation(&self, entry: Entry, subscribe: bool) {
        self.metrics.borrow_mut().operations[entry as usize][usize::from(!subscribe)] += 1;
    }

    /// An HTTP answer with `status` to a request of `route` that arrived at `since`.
    pub fn count_request(&self, route: &'static str, status: u16, since: Instant) {
        let mut m = self.metrics.borrow_mut();
        *m.requests.entry((route, status)).or_default() += 1;
        m.request_seconds.entry(route).or_default().observe(since.elapsed().as_secs_f64());
    }

    /// A TLS handshake on the main port ended `how`.
    pub fn count_tls(&self, how: crate::metrics::Handshake) {
        self.metrics.borrow_mut().tls_handshakes[how as usize] += 1;
    }

    /// A feed message of `channel` queued for `n` local clients.
    pub(super) fn count_delivery(&self, msg: &FeedMessage, channel: Channel, n: usize) {
        let mut m = self.metrics.borrow_mut();
        m.deliveries[channel.index()] += n as u64;
        m.delivered_bytes[channel.index()] += (n * msg.frame.len()) as u64;
    }

    /// An upstream message of `channel` taken in (shard 0).
    pub(super) fn count_upstream(&self, msg: &FeedMessage, channel: Channel) {
        let mut m = self.metrics.borrow_mut();
        m.upstream_messages[channel.index()] += 1;
        m.upstream_bytes[channel.index()] += msg.body().len() as u64;
        m.last_message = Some(msg.received());
    }

    /// The upstream connection was lost, for `reason` (shard 0).
    pub(super) fn count_reconnect(&self, reason: &str) {
        *self.metrics.borrow_mut().reconnects.entry(metrics::reconnect_reason(reason)).or_default() += 1;
    }

    /// A client of `transport` registered.
    pub(super) fn count_opened(&self, transport: Transport) {
        let mut m = self.metrics.borrow_mut();
        m.connections[transport as usize] += 1;
        m.opened[transport as usize] += 1;
    }

    /// A client of `transport` left; what its outbox did is kept.
    pub(super) fn count_closed(&self, transport: Transport, outbox: &crate::ws::Outbox) {
        let (end, counts) = (outbox.end(), outbox.counts());
        let mut m = self.metrics.borrow_mut();
        m.connections[transport as usize] = m.connections[transport as usize].saturating_sub(1);
        m.closed[end as usize] += 1;
        m.writes += counts.writes;
        m.written_bytes += counts.written_bytes;
        m.conflated += counts.conflated;
    }

    /// This shard's figures now: its counters, plus what its open clients hold.
    pub(super) fn metrics_snapshot(&self) -> Snapshot {
        let mut s = self.metrics.borrow().clone();
        for outbox in self.outboxes.borrow().values() {
            let counts = outbox.counts();
            s.writes += counts.writes;
            s.written_bytes += counts.written_bytes;
            s.conflated += counts.conflated;
            s.outbox_bytes.observe(outbox.queued_bytes() as f64);
        }
        s.subscriptions = self.table.borrow().subscriptions_by_channel();
        s.latency = self.latency.borrow().clone();
        s
    }

    /// Every shard's figures added up, and the process's: the exposition. A
    /// shard that does not answer within [`REPLY_DEADLINE`] makes it
    /// [`HubError::ShardUnavailable`].
    pub async fn all_metrics(&self) -> Result<String, HubError> {
        let mut all = self.metrics_snapshot();
        let mut per_shard = vec![ShardFigures::of(self.id, &all)];
        for shard in (0..self.global.shards).filter(|s| *s != self.id) {
            match self.request(shard, Ask::Metrics, REPLY_DEADLINE).await? {
                Answer::Metrics(s) => {
                    per_shard.push(ShardFigures::of(shard, &s));
                    all.merge(&s);
                }
                _ => return Err(super::unavailable(shard, REPLY_DEADLINE)),
            }
        }
        per_shard.sort_by_key(|f| f.shard);
        let g = &self.global;
        let up = g.upstream();
        let (history_messages, history_bytes) = g.history_size();
        let p = ProcessFigures {
            shards: g.shards,
            upstream_state: up.state,
            upstream_connects: up.connects,
            upstream_malformed: g.malformed(),
            upstream_refused: up.refused,
            gaps: g.gaps(),
            history_messages,
            history_bytes,
            refusals: g.refusals(),
            panics: g.panics(),
            tls: g.tls,
            per_shard,
            cluster: g.cluster().map(|link| {
                let (s, c) = (link.status(), &link.counters);
                let n = crate::cluster::Counters::get;
                metrics::ClusterFigures {
                    role: link.role.as_str(),
                    nats_connected: s.nats == "connected",
                    lease_active: s.lease == Some("active"),
                    published: n(&c.published),
                    received: n(&c.received),
                    fenced: n(&c.fenced),
                    seeds: n(&c.seeds),
                    gaps: n(&c.gaps),
                    forwarded_ok: n(&c.forwarded_ok),
                    forwarded_failed: n(&c.forwarded_failed),
                    lease_takeovers: n(&c.lease_takeovers),
                    slow_consumer: n(&c.slow_consumer),
                    oversize: n(&c.oversize),
                }
            }),
        };
        Ok(metrics::render(&all, &p))
    }
}
