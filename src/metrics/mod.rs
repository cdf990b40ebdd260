//! Prometheus metrics: what each shard counts ([`Snapshot`]), how histograms
//! are kept ([`Histogram`]), and the text exposition format (version 0.0.4)
//! that `GET /metrics` answers with ([`render`]).
//!
//! Nothing here is shared between threads while the relay runs: each shard
//! counts in its own [`Snapshot`] (plain integers behind the shard's `RefCell`,
//! no lock or atomic on the delivery path), and a scrape asks every shard for a
//! copy over the bus and adds them up (`Hub::all_metrics`). Process-wide
//! figures that already live in `Global` (upstream state, history, refusals)
//! and the process's own (memory, descriptors, CPU) are read at scrape time.

mod process;

pub use process::mark_start;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Instant;

use crate::protocol::Channel;

/// The exposition's content type (text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets, in seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Outbox size buckets, in bytes: empty to the largest default cap (16 MiB).
pub const BYTES_BUCKETS: &[f64] = &[0.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0];

/// A cumulative histogram with fixed bucket bounds (Prometheus' `le`).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative here; summed when written).
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], count: 0, sum: 0.0 }
    }

    pub fn observe(&mut self, v: f64) {
        self.observe_n(v, 1);
    }

    /// `n` observations of `v`.
    pub fn observe_n(&mut self, v: f64, n: u64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += n;
        }
        self.count += n;
        self.sum += v * n as f64;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn merge(&mut self, other: &Histogram) {
        if self.bounds != other.bounds {
            return;
        }
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
        self.count += other.count;
        self.sum += other.sum;
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

/// What a feed message's frame carries into a client's outbox, so that the
/// write that hands it to the socket can tell its latency.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub channel: Channel,
    /// When the relay read the message from the feed.
    pub received: Instant,
    /// The message's `time` (microseconds since the epoch), when it has one.
    pub exchange_micros: Option<i64>,
}

/// A shard's latency histograms, observed by its clients' writes: each write
/// observes the first feed frame it carries (so a write of many frames counts
/// once, for its oldest).
#[derive(Debug, Clone, Default)]
pub struct Latency {
    /// From the exchange's `time` to the socket write, by channel.
    pub feed: [Histogram; Channel::COUNT],
    /// From the upstream read to the socket write: what the relay adds.
    pub relay: Histogram,
}

impl Latency {
    pub fn observe(&mut self, stamp: &Stamp) {
        if let Some(t) = stamp.exchange_micros {
            let lag = (crate::clock::now_micros() - t).max(0) as f64 / 1e6;
            self.feed[stamp.channel.index()].observe(lag);
        }
        self.relay.observe(stamp.received.elapsed().as_secs_f64());
    }
}

/// How a client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket = 0,
    Sse = 1,
    Ndjson = 2,
}

impl Transport {
    pub const COUNT: usize = 3;
    const ALL: [Transport; Transport::COUNT] = [Transport::WebSocket, Transport::Sse, Transport::Ndjson];

    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::Ndjson => "ndjson",
        }
    }
}

/// Why a client's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed or hung up.
    Client = 0,
    /// Silent past `--idle-timeout`.
    Idle = 1,
    /// Its outbox overflowed (`--slow-consumer`).
    SlowConsumer = 2,
    /// Access control: an admin, an expired token, withdrawn rights.
    Policy = 3,
    /// The relay is shutting down.
    Shutdown = 4,
    /// A protocol error (bad frames, binary messages, too big) or a failed socket.
    Error = 5,
}

impl End {
    pub const COUNT: usize = 6;
    const ALL: [End; End::COUNT] = [End::Client, End::Idle, End::SlowConsumer, End::Policy, End::Shutdown, End::Error];

    pub fn name(self) -> &'static str {
        match self {
            End::Client => "client",
            End::Idle => "idle",
            End::SlowConsumer => "slow_consumer",
            End::Policy => "policy",
            End::Shutdown => "shutdown",
            End::Error => "error",
        }
    }
}

/// How a TLS handshake ended (the `result` label of `hedgehog_tls_handshakes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    /// The first bytes were not TLS: plain HTTP on the TLS port.
    PlainHttp,
    /// Not complete within the deadline.
    Timeout,
    /// Anything else: garbage, a protocol error, an alert, a hang-up.
    Failed,
}

impl Handshake {
    pub const COUNT: usize = 4;
    const ALL: [Handshake; Handshake::COUNT] =
        [Handshake::Ok, Handshake::PlainHttp, Handshake::Timeout, Handshake::Failed];

    pub fn name(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::PlainHttp => "plain_http",
            Handshake::Timeout => "timeout",
            Handshake::Failed => "failed",
        }
    }
}

/// Where a subscribe or unsubscribe came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `POST`/`PUT`/`DELETE /api/v1/subscribe/{pair}` by client id.
    Rest = 0,
    /// A Coinbase `subscribe`/`unsubscribe` on the WebSocket.
    InBand = 1,
    /// `GET /api/v1/subscribe/{pair}` as a stream (SSE, NDJSON or WebSocket).
    Stream = 2,
}

impl Entry {
    pub const COUNT: usize = 3;
    const ALL: [Entry; Entry::COUNT] = [Entry::Rest, Entry::InBand, Entry::Stream];

    pub fn name(self) -> &'static str {
        match self {
            Entry::Rest => "rest",
            Entry::InBand => "in_band",
            Entry::Stream => "stream",
        }
    }
}

/// What one shard counts; added up over the shards at a scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Open client connections, by [`Transport`].
    pub connections: [u64; Transport::COUNT],
    pub opened: [u64; Transport::COUNT],
    /// Connections ended, by [`End`].
    pub closed: [u64; End::COUNT],
    /// (client, product) subscriptions held, by channel (filled at the scrape).
    pub subscriptions: [u64; Channel::COUNT],
    /// Subscribe [0] and unsubscribe [1] operations taken, by [`Entry`].
    pub operations: [[u64; 2]; Entry::COUNT],
    /// Upstream messages and their bytes, by channel (shard 0).
    pub upstream_messages: [u64; Channel::COUNT],
    pub upstream_bytes: [u64; Channel::COUNT],
    /// Upstream connections lost, by reason (shard 0).
    pub reconnects: BTreeMap<&'static str, u64>,
    /// When the last upstream message arrived (shard 0).
    pub last_message: Option<Instant>,
    /// Feed messages queued for a client, and their bytes, by channel.
    pub deliveries: [u64; Channel::COUNT],
    pub delivered_bytes: [u64; Channel::COUNT],
    /// Socket writes of client data and their bytes (deliveries per write
    /// shows the batching).
    pub writes: u64,
    pub written_bytes: u64,
    /// Frames dropped by conflation (`--slow-consumer conflate`).
    pub conflated: u64,
    /// Bytes queued per client outbox (filled at the scrape).
    pub outbox_bytes: Histogram,
    /// Latency at the socket write (see [`Latency`]; filled at the scrape).
    pub latency: Latency,
    /// HTTP answers, by route and status.
    pub requests: BTreeMap<(&'static str, u16), u64>,
    /// HTTP request durations (whole request read to answer ready), by route.
    pub request_seconds: BTreeMap<&'static str, Histogram>,
    /// TLS handshakes on the main port, by [`Handshake`] outcome.
    pub tls_handshakes: [u64; Handshake::COUNT],
}

impl Snapshot {
    /// A shard's fresh counters.
    pub fn new() -> Snapshot {
        Snapshot { outbox_bytes: Histogram::new(BYTES_BUCKETS), ..Snapshot::default() }
    }

    /// Adds `other`'s figures to these.
    pub fn merge(&mut self, other: &Snapshot) {
        fn add<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
        add(&mut self.connections, &other.connections);
        add(&mut self.opened, &other.opened);
        add(&mut self.closed, &other.closed);
        add(&mut self.subscriptions, &other.subscriptions);
        for (a, b) in self.operations.iter_mut().zip(&other.operations) {
            add(a, b);
        }
        add(&mut self.upstream_messages, &other.upstream_messages);
        add(&mut self.upstream_bytes, &other.upstream_bytes);
        for (k, v) in &other.reconnects {
            *self.reconnects.entry(k).or_default() += v;
        }
        self.last_message = self.last_message.max(other.last_message);
        add(&mut self.deliveries, &other.deliveries);
        add(&mut self.delivered_bytes, &other.delivered_bytes);
        self.writes += other.writes;
        self.written_bytes += other.written_bytes;
        self.conflated += other.conflated;
        self.outbox_bytes.merge(&other.outbox_bytes);
        self.latency.feed.iter_mut().zip(&other.latency.feed).for_each(|(a, b)| a.merge(b));
        self.latency.relay.merge(&other.latency.relay);
        for (k, v) in &other.requests {
            *self.requests.entry(*k).or_default() += v;
        }
        for (k, h) in &other.request_seconds {
            self.request_seconds.entry(k).or_default().merge(h);
        }
        add(&mut self.tls_handshakes, &other.tls_handshakes);
    }
}

/// The kind of an upstream disconnect's reason, for a label.
pub fn reconnect_reason(reason: &str) -> &'static str {
    match reason {
        r if r.contains("stalled") => "stall",
        r if r.contains("closed the connection") => "closed",
        r if r.contains("bad frame") => "bad_frame",
        r if r.contains("cannot connect") || r.contains("no connection within") => "connect_failed",
        r if r.contains("handshake") => "handshake",
        r if r.contains("read failed") || r.contains("write failed") => "io",
        _ => "other",
    }
}

/// Process-wide figures read at the scrape (from `Global`).
#[derive(Debug, Clone, Default)]
pub struct ProcessFigures {
    pub shards: usize,
    pub upstream_state: &'static str,
    pub upstream_connects: u64,
    pub upstream_malformed: u64,
    pub upstream_refused: u64,
    pub gaps: u64,
    pub history_messages: usize,
    pub history_bytes: usize,
    /// Access refusals by status (401, 403, 429).
    pub refusals: [u64; 3],
    pub panics: u64,
    /// Whether the main port serves TLS (the handshake counts are written).
    pub tls: bool,
    /// Each shard's own load, to see an imbalance between them.
    pub per_shard: Vec<ShardFigures>,
    /// With `--role ingest|edge`: the NATS side's figures.
    pub cluster: Option<ClusterFigures>,
}

/// An ingest's or an edge's NATS figures (read from its NATS thread's counters).
#[derive(Debug, Clone, Default)]
pub struct ClusterFigures {
    pub role: &'static str,
    pub nats_connected: bool,
    /// Ingest: whether it holds the lease.
    pub lease_active: bool,
    pub published: u64,
    pub received: u64,
    pub fenced: u64,
    pub seeds: u64,
    pub gaps: u64,
    pub forwarded_ok: u64,
    pub forwarded_failed: u64,
    pub lease_takeovers: u64,
    pub slow_consumer: u64,
    pub oversize: u64,
}

/// One shard's connections and deliveries (the `shard` label).
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardFigures {
    pub shard: usize,
    pub connections: u64,
    pub deliveries: u64,
}

impl ShardFigures {
    pub fn of(shard: usize, s: &Snapshot) -> ShardFigures {
        ShardFigures { shard, connections: s.connections.iter().sum(), deliveries: s.deliveries.iter().sum() }
    }
}

/// The states `hedgehog_upstream_state` has a series for.
const UPSTREAM_STATES: [&str; 4] = ["connecting", "connected", "reconnecting", "standby"];

/// The NATS figures of an ingest or an edge.
fn cluster(out: &mut Exposition, c: &ClusterFigures) {
    out.family("hedgehog_cluster_role", "gauge", "This node's role among several (value 1).");
    out.sample("hedgehog_cluster_role", &[("role", c.role)], 1.0);
    out.gauge(
        "hedgehog_nats_connected",
        "Whether the NATS connection is up (1) or not (0).",
        f64::from(c.nats_connected),
    );
    if c.role == "ingest" {
        out.gauge(
            "hedgehog_ingest_lease_active",
            "Whether this ingest holds the lease (1) or is standby (0).",
            f64::from(c.lease_active),
        );
        out.counter(
            "hedgehog_ingest_lease_takeovers_total",
            "Times this ingest took the lease.",
            c.lease_takeovers as f64,
        );
    }
    out.family("hedgehog_nats_messages_total", "counter", "Feed messages over NATS, by direction.");
    out.sample("hedgehog_nats_messages_total", &[("direction", "published")], c.published as f64);
    out.sample("hedgehog_nats_messages_total", &[("direction", "received")], c.received as f64);
    let help = "Feed messages an old lease term sent (edge), or not published: a lapsed lease, NATS stuck (ingest).";
    out.counter("hedgehog_nats_fenced_total", help, c.fenced as f64);
    let help = "Feed messages async-nats dropped for a slow subscription (this node fell behind).";
    out.counter("hedgehog_nats_dropped_total", help, c.slow_consumer as f64);
    let help = "Messages over the NATS server's max_payload: not published, or a seed cut to fit.";
    out.counter("hedgehog_nats_oversize_total", help, c.oversize as f64);
    out.counter("hedgehog_nats_seeds_total", "Topics an edge asked the ingest to seed.", c.seeds as f64);
    out.counter(
        "hedgehog_nats_gaps_total",
        "Gaps in a subject's numbers an edge saw (then it seeded afresh).",
        c.gaps as f64,
    );
    out.family("hedgehog_forwarded_requests_total", "counter", "REST calls forwarded to another node, by result.");
    out.sample("hedgehog_forwarded_requests_total", &[("result", "ok")], c.forwarded_ok as f64);
    out.sample("hedgehog_forwarded_requests_total", &[("result", "failed")], c.forwarded_failed as f64);
}

/// The exposition of `s` (every shard's figures added up) and `p`.
pub fn render(s: &Snapshot, p: &ProcessFigures) -> String {
    let mut out = Exposition::default();
    out.family("hedgehog_build_info", "gauge", "Version and commit of this build (value 1).");
    out.sample(
        "hedgehog_build_info",
        &[("version", env!("CARGO_PKG_VERSION")), ("commit", option_env!("HEDGEHOG_COMMIT").unwrap_or("unknown"))],
        1.0,
    );
    out.gauge("hedgehog_shards", "Worker shards (WEB_CONCURRENCY).", p.shards as f64);

    out.family("hedgehog_shard_connections", "gauge", "Open client connections, by shard.");
    for f in &p.per_shard {
        out.sample("hedgehog_shard_connections", &[("shard", &f.shard.to_string())], f.connections as f64);
    }
    out.family("hedgehog_shard_deliveries_total", "counter", "Feed messages queued for clients, by shard.");
    for f in &p.per_shard {
        out.sample("hedgehog_shard_deliveries_total", &[("shard", &f.shard.to_string())], f.deliveries as f64);
    }
    out.family("hedgehog_connections", "gauge", "Open client connections, by transport.");
    for t in Transport::ALL {
        out.sample("hedgehog_connections", &[("transport", t.name())], s.connections[t as usize] as f64);
    }
    out.family("hedgehog_connections_opened_total", "counter", "Client connections opened, by transport.");
    for t in Transport::ALL {
        out.sample("hedgehog_connections_opened_total", &[("transport", t.name())], s.opened[t as usize] as f64);
    }
    out.family("hedgehog_connections_closed_total", "counter", "Client connections ended, by reason.");
    for e in End::ALL {
        out.sample("hedgehog_connections_closed_total", &[("reason", e.name())], s.closed[e as usize] as f64);
    }

    out.family("hedgehog_subscriptions", "gauge", "Subscriptions held (client, product), by channel.");
    for c in Channel::ALL {
        out.sample("hedgehog_subscriptions", &[("channel", c.name())], s.subscriptions[c.index()] as f64);
    }
    for (i, (name, help)) in [
        ("hedgehog_subscribe_operations_total", "Subscribe operations taken, by entry point."),
        ("hedgehog_unsubscribe_operations_total", "Unsubscribe operations taken, by entry point."),
    ]
    .into_iter()
    .enumerate()
    {
        out.family(name, "counter", help);
        for e in Entry::ALL {
            out.sample(name, &[("entry", e.name())], s.operations[e as usize][i] as f64);
        }
    }

    out.family("hedgehog_upstream_state", "gauge", "The upstream connection's state (1 for the current one).");
    for state in UPSTREAM_STATES {
        out.sample("hedgehog_upstream_state", &[("state", state)], f64::from(u8::from(p.upstream_state == state)));
    }
    out.counter("hedgehog_upstream_connects_total", "Upstream connections made.", p.upstream_connects as f64);
    out.family("hedgehog_upstream_reconnects_total", "counter", "Upstream connections lost, by reason.");
    for (reason, n) in &s.reconnects {
        out.sample("hedgehog_upstream_reconnects_total", &[("reason", reason)], *n as f64);
    }
    out.family("hedgehog_upstream_messages_total", "counter", "Upstream feed messages received, by channel.");
    for c in Channel::ALL {
        out.sample("hedgehog_upstream_messages_total", &[("channel", c.name())], s.upstream_messages[c.index()] as f64);
    }
    out.family("hedgehog_upstream_received_bytes_total", "counter", "Bytes of upstream feed messages, by channel.");
    for c in Channel::ALL {
        let v = s.upstream_bytes[c.index()] as f64;
        out.sample("hedgehog_upstream_received_bytes_total", &[("channel", c.name())], v);
    }
    out.counter(
        "hedgehog_upstream_malformed_total",
        "Upstream messages skipped as malformed.",
        p.upstream_malformed as f64,
    );
    out.counter("hedgehog_upstream_refused_total", "Requests the feed refused as a whole.", p.upstream_refused as f64);
    out.counter("hedgehog_upstream_gaps_total", "Gaps found in the feed (a product resubscribed).", p.gaps as f64);
    if let Some(last) = s.last_message {
        let help = "Seconds since the last upstream message (absent before the first).";
        out.gauge("hedgehog_upstream_last_message_age_seconds", help, last.elapsed().as_secs_f64());
    }

    out.family("hedgehog_deliveries_total", "counter", "Feed messages queued for a client, by channel.");
    for c in Channel::ALL {
        out.sample("hedgehog_deliveries_total", &[("channel", c.name())], s.deliveries[c.index()] as f64);
    }
    out.family("hedgehog_delivered_bytes_total", "counter", "Bytes of feed messages queued for clients, by channel.");
    for c in Channel::ALL {
        out.sample("hedgehog_delivered_bytes_total", &[("channel", c.name())], s.delivered_bytes[c.index()] as f64);
    }
    out.counter(
        "hedgehog_socket_writes_total",
        "Socket writes to clients (each may carry many frames).",
        s.writes as f64,
    );
    out.counter("hedgehog_socket_written_bytes_total", "Bytes written to client sockets.", s.written_bytes as f64);
    out.counter(
        "hedgehog_conflated_frames_total",
        "Frames dropped by conflation of a slow client.",
        s.conflated as f64,
    );
    out.family("hedgehog_outbox_bytes", "histogram", "Bytes queued per client at the scrape.");
    out.histogram("hedgehog_outbox_bytes", &[], &s.outbox_bytes);

    let help = "Exchange `time` of a message to its write to a client's socket (each write's first), by channel.";
    out.family("hedgehog_feed_latency_seconds", "histogram", help);
    for c in Channel::ALL {
        out.histogram("hedgehog_feed_latency_seconds", &[("channel", c.name())], &s.latency.feed[c.index()]);
    }
    let help = "Upstream read of a message to its write to a client's socket (each write's first).";
    out.family("hedgehog_relay_latency_seconds", "histogram", help);
    out.histogram("hedgehog_relay_latency_seconds", &[], &s.latency.relay);

    out.family("hedgehog_http_requests_total", "counter", "HTTP answers, by route and status.");
    for ((route, status), n) in &s.requests {
        out.sample("hedgehog_http_requests_total", &[("route", route), ("status", &status.to_string())], *n as f64);
    }
    out.family("hedgehog_http_request_duration_seconds", "histogram", "HTTP request handling time, by route.");
    for (route, h) in &s.request_seconds {
        out.histogram("hedgehog_http_request_duration_seconds", &[("route", route)], h);
    }
    if p.tls {
        let help = "TLS handshakes on the main port, by result (ok, plain_http, timeout, failed).";
        out.family("hedgehog_tls_handshakes_total", "counter", help);
        for (how, n) in Handshake::ALL.iter().zip(s.tls_handshakes) {
            out.sample("hedgehog_tls_handshakes_total", &[("result", how.name())], n as f64);
        }
    }
    if let Some(c) = &p.cluster {
        cluster(&mut out, c);
    }
    out.family("hedgehog_access_refusals_total", "counter", "Access control refusals, by status.");
    for (status, n) in ["401", "403", "429"].iter().zip(p.refusals) {
        out.sample("hedgehog_access_refusals_total", &[("status", status)], n as f64);
    }
    out.counter("hedgehog_panics_total", "Panics contained (each ended one connection).", p.panics as f64);

    out.gauge("hedgehog_history_messages", "Messages held by the history.", p.history_messages as f64);
    out.gauge("hedgehog_history_bytes", "Bytes held by the history.", p.history_bytes as f64);
    process::write(&mut out);
    out.0
}

/// The text exposition format, written family by family.
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    /// `# HELP` and `# TYPE` of a family; its samples follow.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        write_labels(&mut self.0, labels, None);
        let _ = writeln!(self.0, " {}", number(value));
    }

    pub fn counter(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// A histogram's `_bucket` lines (cumulative, with `+Inf`), `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0;
        for (bound, n) in h.bounds.iter().zip(&h.counts) {
            cumulative += n;
            let _ = write!(self.0, "{name}_bucket");
            write_labels(&mut self.0, labels, Some(&number(*bound)));
            let _ = writeln!(self.0, " {cumulative}");
        }
        let _ = write!(self.0, "{name}_bucket");
        write_labels(&mut self.0, labels, Some("+Inf"));
        let _ = writeln!(self.0, " {}", h.count);
        let _ = write!(self.0, "{name}_sum");
        write_labels(&mut self.0, labels, None);
        let _ = writeln!(self.0, " {}", number(h.sum));
        let _ = write!(self.0, "{name}_count");
        write_labels(&mut self.0, labels, None);
        let _ = writeln!(self.0, " {}", h.count);
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(out, "{k}=\"{v}\"");
    }
    out.push('}');
}

/// A sample value: integers without a fraction, the rest as Rust prints them.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_written_cumulative_with_inf_sum_and_count() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe_n(1.5, 2);
        h.observe(9.0);
        let mut out = Exposition::default();
        out.histogram("x", &[("channel", "ticker")], &h);
        assert_eq!(
            out.0,
            "x_bucket{channel=\"ticker\",le=\"1\"} 1\nx_bucket{channel=\"ticker\",le=\"2\"} 3\n\
             x_bucket{channel=\"ticker\",le=\"+Inf\"} 4\nx_sum{channel=\"ticker\"} 12.5\nx_count{channel=\"ticker\"} 4\n"
        );
    }

    #[test]
    fn snapshots_add_up() {
        let (mut a, mut b) = (Snapshot::new(), Snapshot::new());
        a.deliveries[Channel::Ticker.index()] = 2;
        b.deliveries[Channel::Ticker.index()] = 3;
        b.requests.insert(("health", 200), 1);
        b.reconnects.insert("stall", 1);
        a.merge(&b);
        assert_eq!(a.deliveries[Channel::Ticker.index()], 5);
        assert_eq!((a.requests[&("health", 200)], a.reconnects["stall"]), (1, 1));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.sample("x", &[("reason", "a\"b\\c\nd")], 1.0);
        assert_eq!(out.0, "x{reason=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn disconnect_reasons_have_kinds() {
        assert_eq!(reconnect_reason("no message for 5s (stalled)"), "stall");
        assert_eq!(reconnect_reason("the feed closed the connection: None"), "closed");
        assert_eq!(reconnect_reason("cannot connect to x:1: refused"), "connect_failed");
    }
}
