//! Process-wide facts and counters, shared by every shard: settings copied from
//! the configuration, connection admission, and what the upstream owner reports.
//! The counters are atomics behind methods: nothing outside this file touches them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::access::Access;
use crate::protocol::Channel;

/// Log lines about refused clients per second, the whole process together;
/// past it they are counted, and the next line written says how many were not.
pub const REFUSALS_LOGGED_PER_SECOND: u32 = 20;

/// The upstream's state as every shard may report it.
#[derive(Debug, Clone, Default)]
pub struct UpstreamInfo {
    pub state: &'static str,
    pub since: String,
    pub connects: u64,
    pub last_error: Option<String>,
    /// Requests the feed refused as a whole.
    pub refused: u64,
    pub products: usize,
    /// When `state` last changed; `None` before the first change.
    pub changed_at: Option<std::time::Instant>,
}

/// Process-wide facts and counters, shared by all shards.
pub struct Global {
    pub shards: usize,
    /// `--node`: begins every client id this process hands out.
    pub node: Option<super::Node>,
    /// With `--role ingest|edge`: the NATS thread's handle (set once at start).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Link>>,
    /// Offline mode: the data is the simulator's, generated or replayed.
    pub simulated: bool,
    /// How far the in-process replay has got (`--replay FILE`).
    pub replay: Option<Arc<crate::sim::ReplayProgress>>,
    pub upstream_url: String,
    pub default_channels: Vec<Channel>,
    /// Each client's outbound queue limit and what happens past it.
    pub queue_bytes: usize,
    pub slow_policy: crate::ws::SlowPolicy,
    /// Message size, ping and idle limits of every client session.
    pub limits: crate::ws::Limits,
    /// (product, channel) pairs one client may hold.
    pub max_subscriptions: usize,
    /// Open connections per client IP, all shards together.
    pub max_per_ip: usize,
    /// Open connections in all; past it, only health checks are answered.
    pub max_connections: usize,
    /// How long a connection may take over each part of a request.
    pub deadlines: crate::net::Deadlines,
    /// Ready this long after start or an upstream loss, while it reconnects.
    pub ready_grace: std::time::Duration,
    started: std::time::Instant,
    open: AtomicUsize,
    /// Requests or messages per second on one connection; zero: no limit.
    pub max_request_rate: u32,
    /// Whether `/echo` is served (`--echo`).
    pub echo: bool,
    /// Whether the main port serves TLS (`--tls-cert`).
    pub tls: bool,
    /// The access rules; `None`: access control is off, everything open. A
    /// reload swaps them (never on or off); read once per request or upgrade,
    /// never per message.
    access: RwLock<Option<Arc<Access>>>,
    /// Rules loaded since start: each shard compares it with the last it
    /// applied to its open sessions.
    access_generation: AtomicU64,
    seats: Arc<super::seats::Seats>,
    refusals_logged: Mutex<crate::rate::LogBudget>,
    per_ip: Mutex<HashMap<std::net::IpAddr, usize>>,
    clients: Vec<AtomicUsize>,
    messages: AtomicU64,
    malformed: AtomicU64,
    panics: AtomicU64,
    gaps: AtomicU64,
    /// Access refusals answered 401, 403 and 429 (or their in-band forms).
    refusals: [AtomicU64; 3],
    history_messages: AtomicUsize,
    history_bytes: AtomicUsize,
    /// What shard 0 keeps of each topic's recent messages.
    pub history: super::HistoryLimits,
    upstream: Mutex<UpstreamInfo>,
    /// The products the feed's last `status` listed; `None` until it has.
    products: RwLock<Option<Arc<Vec<crate::protocol::Product>>>>,
    /// Where `--metrics-addr` listens, once bound.
    metrics_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// `--record`'s counters, kept by the recorder's threads.
    recording: Option<Arc<crate::record::Stats>>,
}

impl Global {
    /// The NATS thread's handle, with `--role ingest|edge`.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Link>> {
        self.cluster.get()
    }

    /// Sets it, once, before the shards start.
    pub fn set_cluster(&self, link: Arc<crate::cluster::Link>) {
        let _ = self.cluster.set(link);
    }

    pub fn new(cfg: &crate::config::ServeConfig) -> Self {
        let shards = cfg.shards;
        Global {
            cluster: std::sync::OnceLock::new(),
            shards,
            node: cfg.node,
            simulated: cfg.simulate || cfg.replay.is_some(),
            tls: cfg.tls.is_some(),
            replay: None,
            upstream_url: cfg.upstream.url.clone(),
            default_channels: cfg.channels.clone(),
            queue_bytes: cfg.client_queue_bytes,
            slow_policy: cfg.slow_consumer,
            limits: crate::ws::Limits {
                max_message: cfg.max_message_bytes,
                ping_every: cfg.ping_interval,
                idle_after: cfg.idle_timeout,
            },
            max_subscriptions: cfg.max_subscriptions,
            max_per_ip: cfg.max_connections_per_ip,
            max_connections: cfg.max_connections,
            deadlines: crate::net::Deadlines {
                first_byte: cfg.first_byte_timeout,
                head: cfg.header_timeout,
                body: cfg.body_timeout,
                keep_alive: cfg.keepalive_timeout,
            },
            ready_grace: cfg.ready_grace,
            started: std::time::Instant::now(),
            open: AtomicUsize::new(0),
            max_request_rate: cfg.max_request_rate,
            echo: cfg.echo,
            access: RwLock::new(cfg.access.clone()),
            access_generation: AtomicU64::new(0),
            seats: Arc::default(),
            refusals_logged: Mutex::new(crate::rate::LogBudget::new(REFUSALS_LOGGED_PER_SECOND)),
            per_ip: Mutex::new(HashMap::new()),
            clients: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            messages: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            refusals: Default::default(),
            history_messages: AtomicUsize::new(0),
            history_bytes: AtomicUsize::new(0),
            history: super::HistoryLimits {
                per_topic: cfg.history_size,
                max_age: cfg.history_age,
                max_bytes: cfg.history_bytes,
            },
            upstream: Mutex::new(UpstreamInfo { state: "connecting", ..Default::default() }),
            products: RwLock::new(None),
            recording: None,
            metrics_addr: std::sync::OnceLock::new(),
        }
    }

    /// With the counters of the recorder (`--record`).
    pub fn with_recording(mut self, stats: Option<Arc<crate::record::Stats>>) -> Self {
        self.recording = stats;
        self
    }

    /// What the recorder reports; `None` when not recording.
    pub fn recording(&self) -> Option<crate::record::Report> {
        self.recording.as_ref().map(|s| s.report())
    }

    /// Connected clients, all shards together.
    pub fn clients(&self) -> usize {
        self.clients.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Counts a new connection from `ip`. The slot gives the place back when dropped.
    pub fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Admission {
        let Ok(mut per_ip) = self.per_ip.lock() else { return Admission::PerIpFull };
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Admission::PerIpFull;
        }
        *n += 1;
        let open = self.open.fetch_add(1, Ordering::Relaxed);
        let slot = IpSlot { global: self.clone(), ip };
        if open >= self.max_connections {
            Admission::Reserve(slot)
        } else {
            Admission::Open(slot)
        }
    }

    /// The access rules now in force; `None`: access control is off.
    pub fn access(&self) -> Option<Arc<Access>> {
        self.access.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether access control is on (a reload never turns it on or off).
    pub fn access_on(&self) -> bool {
        self.access.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Puts `rules` in force for every request from now on; the shards carry
    /// their open sessions over at their next look (see `Hub::watch_access`).
    /// Refused when access control is off: turning it on needs a restart.
    pub fn replace_access(&self, rules: Arc<Access>) -> Result<(), String> {
        let mut access = self.access.write().unwrap_or_else(|e| e.into_inner());
        if access.is_none() {
            return Err("access control is off; restart hedgehog to turn it on".into());
        }
        *access = Some(rules);
        self.access_generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// How many times the rules were replaced since start.
    pub fn access_generation(&self) -> u64 {
        self.access_generation.load(Ordering::SeqCst)
    }

    /// A seat for one session of `p` (its class's connection limits), or why not.
    pub fn take_seat(&self, p: &crate::access::Principal) -> Result<super::Seat, super::SeatRefused> {
        self.seats.take(p)
    }

    /// Open sessions of principal `name` of class `class`, all shards together.
    pub fn sessions_of(&self, class: &str, name: &str) -> usize {
        self.seats.of_principal(class, name)
    }

    /// One log line about a refusal of access: who (`-` when unknown), what,
    /// and why; never a credential. At most [`REFUSALS_LOGGED_PER_SECOND`] a
    /// second; the next line written says how many were held back.
    pub fn log_refusal(&self, principal: &str, class: &str, what: &str, why: &str) {
        let turn = self.refusals_logged.lock().map(|mut b| b.take()).unwrap_or(crate::rate::LogTurn::Suppress);
        if let crate::rate::LogTurn::Write { suppressed } = turn {
            if suppressed > 0 {
                log::warn!(event = "log_suppressed", count = suppressed;
                    "access: {suppressed} refusals not logged (over the log rate)");
            }
            log::warn!(event = "refused", principal, class, what, reason = why;
                "access: refused principal={principal} class={class} what={what:?}: {why}");
        }
    }

    /// Open client connections, all shards together.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether a load balancer should send clients here: `Err` says why not.
    /// Ready while the upstream is connected, and for `ready_grace` after start
    /// or after it was lost (it is being reconnected).
    pub fn readiness(&self) -> Result<(), String> {
        let up = self.upstream();
        if up.state == "connected" {
            return Ok(());
        }
        let since = up.changed_at.unwrap_or(self.started);
        if since.elapsed() < self.ready_grace {
            return Ok(());
        }
        let why = up.last_error.map(|e| format!(": {e}")).unwrap_or_default();
        Err(format!("upstream {} for {} s{why}", up.state, since.elapsed().as_secs()))
    }

    /// Where `--metrics-addr` listens (its port chosen when 0); `None` without it.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr.get().copied()
    }

    pub fn set_metrics_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.metrics_addr.set(addr);
    }

    /// Counts an access refusal answered with `status` (401, 403 or 429).
    pub fn count_refusal(&self, status: u16) {
        let i = match status {
            401 => 0,
            403 => 1,
            _ => 2,
        };
        self.refusals[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Access refusals so far: 401, 403, 429.
    pub fn refusals(&self) -> [u64; 3] {
        self.refusals.each_ref().map(|a| a.load(Ordering::Relaxed))
    }

    /// Panics contained (each ended one connection, not its shard).
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Gaps found in the feed.
    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    pub fn count_gap(&self) {
        self.gaps.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages and bytes the history holds.
    pub fn history_size(&self) -> (usize, usize) {
        (self.history_messages.load(Ordering::Relaxed), self.history_bytes.load(Ordering::Relaxed))
    }

    pub fn set_history(&self, messages: usize, bytes: usize) {
        self.history_messages.store(messages, Ordering::Relaxed);
        self.history_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Counts a contained panic.
    pub fn count_panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    /// Upstream messages received.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Counts an upstream message taken in by the owner.
    pub fn count_message(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    /// Malformed upstream messages ignored.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// The upstream client's count of malformed messages so far.
    pub fn set_malformed(&self, total: u64) {
        self.malformed.store(total, Ordering::Relaxed);
    }

    /// A client registered on shard `shard`.
    pub fn client_joined(&self, shard: usize) {
        if let Some(c) = self.clients.get(shard) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A client of shard `shard` is gone.
    pub fn client_left(&self, shard: usize) {
        if let Some(c) = self.clients.get(shard) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn upstream(&self) -> UpstreamInfo {
        self.upstream.lock().map(|u| u.clone()).unwrap_or_default()
    }

    /// The products the feed's last `status` listed (`GET /api/v1/products`);
    /// `None` until it has listed them.
    pub fn products(&self) -> Option<Arc<Vec<crate::protocol::Product>>> {
        self.products.read().ok().and_then(|p| p.clone())
    }

    /// Keeps the feed's latest listing.
    pub fn set_products(&self, list: Vec<crate::protocol::Product>) {
        if let Ok(mut p) = self.products.write() {
            *p = Some(Arc::new(list));
        }
    }

    /// Records what the upstream owner reports, for `/healthz` and `/readyz`.
    pub fn set_upstream(&self, f: impl FnOnce(&mut UpstreamInfo)) {
        if let Ok(mut u) = self.upstream.lock() {
            f(&mut u);
        }
    }
}

/// One connection's place in its IP's count; dropping it frees the place.
pub struct IpSlot {
    global: Arc<Global>,
    ip: std::net::IpAddr,
}

/// What [`Global::admit`] decides for a new connection.
pub enum Admission {
    /// Served as usual.
    Open(IpSlot),
    /// Over `max_connections`: health checks only, from the reserve.
    Reserve(IpSlot),
    /// The address is at `max_per_ip`: 429.
    PerIpFull,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.global.open.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut per_ip) = self.global.per_ip.lock() {
            if let Some(n) = per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
    }
}
