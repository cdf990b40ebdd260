//! The hub: each shard's clients and subscription table, the cross-shard bus,
//! and (on shard 0) the owner of the upstream feed.
//!
//! Shard 0 owns the upstream client. Every shard counts its own subscribers per
//! (product, channel) and tells shard 0 when a topic gains its first or loses its
//! last local subscriber; shard 0 keeps, per topic, the set of interested shards,
//! subscribes upstream when the set becomes non-empty and unsubscribes when it
//! empties. Each upstream message is encoded once into a server frame on shard 0
//! and sent, by reference, to the interested shards only, over glommio's
//! lock-free single-producer single-consumer `shared_channel`s (one per ordered
//! pair of shards). REST requests that land on a shard other than the client's
//! travel the same channels as commands and come back as replies.

mod bus;
mod client_id;
mod owner;
mod state;
mod table;

use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use glommio::channels::local_channel::{self, LocalSender};
use serde_json::{json, Value};

pub use bus::{mesh as bus_mesh, Bus, BusEnds, CAPACITY as BUS_CAPACITY};
pub use client_id::ClientId;
pub use owner::{run as run_owner, Owner};
pub use state::{Book, FeedState, Gap, HistoryLimits, HistoryQuery, Since};
pub use table::{channel_index, Table, CHANNELS};

use crate::upstream::FeedMessage;
use crate::ws::{Frame, Outbox};

/// What shards tell each other.
pub enum ShardMsg {
    /// To shard 0: `from` gained its first (`on`) or lost its last subscriber of a topic.
    Interest { product: String, channel: usize, on: bool, from: usize },
    /// From shard 0: a feed message for the local subscribers of its topic.
    Feed { msg: FeedMessage, channel: usize },
    /// To shard 0: `client` subscribed to a topic; answered with `Joined`.
    Join { product: String, channel: usize, client: ClientId, replay: Option<usize> },
    /// From shard 0: what `client` gets first (`frames`); the topic's stream to
    /// this shard carries everything after it.
    Joined { product: String, channel: usize, client: ClientId, frames: Vec<Frame> },
    /// From shard 0: a hedgehog message for the subscribers of `product` (a gap).
    ProductNote { product: String, frame: Frame },
    /// To shard 0: a history query; answered with a `Reply` holding the JSON array as a string.
    History { req: u64, from: usize, query: HistoryQuery },
    /// From shard 0: the upstream refused `product`; `frame` is its error message.
    ProductError { product: String, frame: Frame },
    /// From shard 0: the products the upstream lists.
    Products(Arc<HashSet<String>>),
    /// From shard 0: the upstream's state changed; `frame` is the `upstream` message.
    Upstream(Frame),
    /// A REST operation for a client of the receiving shard.
    Command { req: u64, from: usize, client: ClientId, op: Op },
    /// The answer to a command.
    Reply { req: u64, result: Result<Value, ApiError> },
    /// A liveness check (`/livez`): answered with an empty `Reply`.
    Ping { req: u64, from: usize },
}

/// An operation on one client's subscriptions.
#[derive(Debug, Clone)]
pub enum Op {
    Subscribe {
        product: String,
        channels: Vec<usize>,
        /// Send the last N messages of each new channel first (`?replay=N`).
        replay: Option<usize>,
    },
    /// `None`: every channel of the product.
    Unsubscribe {
        product: String,
        channels: Option<Vec<usize>>,
    },
    List,
    /// A Coinbase `subscribe` (`subscribe: true`) or `unsubscribe` sent on the
    /// client's own WebSocket, already checked: channel -> products (for an
    /// unsubscribe, no products means every product). Answered, on the client's
    /// WebSocket, with Coinbase's cumulative `subscriptions` message.
    Coinbase {
        subscribe: bool,
        channels: BTreeMap<usize, BTreeSet<String>>,
    },
}

/// An API error: the HTTP status, a machine-readable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
}

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
    pub simulated: bool,
    pub upstream_url: String,
    pub default_channels: Vec<usize>,
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
    per_ip: Mutex<HashMap<std::net::IpAddr, usize>>,
    clients: Vec<AtomicUsize>,
    messages: AtomicU64,
    malformed: AtomicU64,
    panics: AtomicU64,
    gaps: AtomicU64,
    history_messages: AtomicUsize,
    history_bytes: AtomicUsize,
    /// What shard 0 keeps of each topic's recent messages.
    pub history: HistoryLimits,
    upstream: Mutex<UpstreamInfo>,
}

impl Global {
    pub fn new(cfg: &crate::config::ServeConfig, default_channels: Vec<usize>) -> Self {
        let shards = cfg.shards;
        Global {
            shards,
            simulated: cfg.simulate,
            upstream_url: cfg.upstream.url.clone(),
            default_channels,
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
            per_ip: Mutex::new(HashMap::new()),
            clients: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            messages: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            history_messages: AtomicUsize::new(0),
            history_bytes: AtomicUsize::new(0),
            history: HistoryLimits {
                per_topic: cfg.history_size,
                max_age: cfg.history_age,
                max_bytes: cfg.history_bytes,
            },
            upstream: Mutex::new(UpstreamInfo { state: "connecting", ..Default::default() }),
        }
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

    /// Malformed upstream messages ignored.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    pub fn upstream(&self) -> UpstreamInfo {
        self.upstream.lock().map(|u| u.clone()).unwrap_or_default()
    }

    fn set_upstream(&self, f: impl FnOnce(&mut UpstreamInfo)) {
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

/// A connected client: a WebSocket or a streaming HTTP response.
pub struct Client {
    pub id: ClientId,
    pub outbox: Rc<Outbox>,
    /// product -> channel indices.
    subs: RefCell<BTreeMap<String, BTreeSet<usize>>>,
    /// Pure Coinbase mode: no hedgehog-only messages (notes, upstream, gaps).
    pure: bool,
}

/// One shard's hub.
pub struct Hub {
    pub id: usize,
    pub global: Arc<Global>,
    clients: sharded_slab::Slab<Client>,
    /// Every local client's outbox by slot, for shutdown.
    outboxes: RefCell<HashMap<usize, Rc<Outbox>>>,
    table: RefCell<Table>,
    bus: Bus,
    pending: RefCell<HashMap<u64, LocalSender<Result<Value, ApiError>>>>,
    next_req: Cell<u64>,
    products: RefCell<Option<Arc<HashSet<String>>>>,
    owner: Option<Owner>,
    /// Subscriptions sent to shard 0 as `Join`s and not yet answered, per topic:
    /// while any is out, the topic's stream to this shard stays on.
    joining: RefCell<HashMap<(String, usize), usize>>,
    /// Shard 0's posts that did not fit in the bus, per destination, in order.
    /// Bounded: at [`POST_BACKLOG`] shard 0's dispatcher waits (see [`Hub::ready`]),
    /// and with it the upstream reader, so the backlog moves to the upstream socket.
    backlog: Vec<RefCell<VecDeque<ShardMsg>>>,
    flushing: Vec<Cell<bool>>,
    backlog_waiters: RefCell<Vec<std::task::Waker>>,
}

/// Messages shard 0 may hold for one shard beyond the bus's own capacity.
pub const POST_BACKLOG: usize = 1024;

impl Hub {
    pub fn new(id: usize, global: Arc<Global>, bus: Bus, owner: Option<Owner>) -> Rc<Hub> {
        Rc::new(Hub {
            id,
            clients: sharded_slab::Slab::new(),
            outboxes: RefCell::new(HashMap::new()),
            table: RefCell::new(Table::default()),
            bus,
            pending: RefCell::new(HashMap::new()),
            next_req: Cell::new(0),
            products: RefCell::new(None),
            joining: RefCell::new(HashMap::new()),
            backlog: (0..global.shards).map(|_| RefCell::new(VecDeque::new())).collect(),
            flushing: (0..global.shards).map(|_| Cell::new(false)).collect(),
            backlog_waiters: RefCell::new(Vec::new()),
            global,
            owner,
        })
    }

    /// A new client's outbox, bounded and with the policy configured.
    pub fn new_outbox(&self) -> Rc<Outbox> {
        Rc::new(Outbox::with_policy(self.global.queue_bytes, self.global.slow_policy))
    }

    /// Registers a new client; returns its id, or `None` when the table is full.
    /// `pure`: the client wants Coinbase's messages only (no hedgehog notes).
    pub fn register(&self, outbox: Rc<Outbox>, pure: bool) -> Option<ClientId> {
        let entry = self.clients.vacant_entry()?;
        let id = ClientId::new(self.id, entry.key());
        self.outboxes.borrow_mut().insert(id.slot, outbox.clone());
        entry.insert(Client { id, outbox, subs: RefCell::new(BTreeMap::new()), pure });
        self.global.clients[self.id].fetch_add(1, Ordering::Relaxed);
        Some(id)
    }

    /// Forgets a client and releases its subscriptions.
    pub async fn unregister(&self, id: ClientId) {
        let Some(client) = self.clients.take(id.slot) else { return };
        self.outboxes.borrow_mut().remove(&id.slot);
        self.global.clients[self.id].fetch_sub(1, Ordering::Relaxed);
        let subs = std::mem::take(&mut *client.subs.borrow_mut());
        for (product, channels) in subs {
            for ch in channels {
                self.drop_subscriber(&product, ch, id.slot).await;
            }
        }
    }

    /// Sends `frame` to every local client with at least one subscription.
    fn tell_subscribed(&self, frame: &Frame) {
        for outbox in self.outboxes.borrow().iter().filter_map(|(slot, o)| {
            let subscribed = self.clients.get(*slot).is_some_and(|c| !c.pure && !c.subs.borrow().is_empty());
            subscribed.then_some(o)
        }) {
            let _ = outbox.push(frame.clone());
        }
    }

    /// Sends every local client a close frame (their sessions end once it is out).
    pub fn close_all(&self, code: u16, reason: &str) {
        for outbox in self.outboxes.borrow().values() {
            outbox.close(code, reason);
        }
    }

    /// Clients still connected to this shard.
    pub fn local_clients(&self) -> usize {
        self.outboxes.borrow().len()
    }

    /// Whether `product` may be subscribed: unknown until the upstream lists products.
    pub fn check_product(&self, product: &str) -> Result<(), ApiError> {
        match &*self.products.borrow() {
            Some(known) if !known.contains(product) => {
                Err(ApiError::new(404, "unknown_product", format!("{product} is not a product the upstream lists")))
            }
            _ => Ok(()),
        }
    }

    /// Whether a Coinbase client may name `product`: one the upstream lists, exactly
    /// (Coinbase's ids are case-sensitive); while the list is unknown, any id of
    /// the right form.
    pub fn is_product(&self, product: &str) -> bool {
        match &*self.products.borrow() {
            Some(known) => known.contains(product),
            None => crate::protocol::normalize_product(product).as_deref() == Some(product),
        }
    }

    /// Runs `op` for client `id`, on whichever shard owns it.
    pub async fn execute(self: &Rc<Self>, id: ClientId, op: Op) -> Result<Value, ApiError> {
        if id.shard == self.id {
            return self.apply(id, op).await;
        }
        if id.shard >= self.global.shards {
            return Err(unknown_client());
        }
        let from = self.id;
        self.request(id.shard, |req| ShardMsg::Command { req, from, client: id, op }).await
    }

    /// Whether shard `to` answers a ping within `limit` (this shard always does).
    pub async fn answers(&self, to: usize, limit: std::time::Duration) -> bool {
        if to == self.id {
            return true;
        }
        let req = self.next_req.get() + 1;
        self.next_req.set(req);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(req, tx);
        let from = self.id;
        let asked = async { self.bus.send(to, ShardMsg::Ping { req, from }).await && rx.recv().await.is_some() };
        let late = async {
            glommio::timer::sleep(limit).await;
            false
        };
        let answered = futures_lite::future::or(asked, late).await;
        self.pending.borrow_mut().remove(&req);
        answered
    }

    /// Sends shard `to` the message `make(req)` makes and waits for its `Reply`.
    async fn request(&self, to: usize, make: impl FnOnce(u64) -> ShardMsg) -> Result<Value, ApiError> {
        let req = self.next_req.get() + 1;
        self.next_req.set(req);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(req, tx);
        if !self.bus.send(to, make(req)).await {
            self.pending.borrow_mut().remove(&req);
            return Err(ApiError::new(503, "shard_unavailable", format!("shard {to} is not running")));
        }
        rx.recv().await.unwrap_or_else(|| Err(ApiError::new(503, "shard_unavailable", "no answer from the shard")))
    }

    /// Applies `op` to a local client.
    async fn apply(&self, id: ClientId, op: Op) -> Result<Value, ApiError> {
        let client = match self.clients.get(id.slot) {
            Some(c) if c.id == id => c,
            _ => return Err(unknown_client()),
        };
        let outbox = client.outbox.clone();
        let pure = client.pure;
        let (value, changes) = match op {
            Op::List => {
                let subs = client.subs.borrow();
                let list: Vec<Value> = subs
                    .iter()
                    .map(|(p, chs)| json!({"product_id": p, "channels": names(chs.iter().copied())}))
                    .collect();
                (json!({"client_id": id.to_string(), "subscriptions": list}), Vec::new())
            }
            Op::Subscribe { product, channels, replay } => {
                let mut subs = client.subs.borrow_mut();
                self.room_for(&subs, channels.iter().map(|c| (&product, c)))?;
                let set = subs.entry(product.clone()).or_default();
                let added: Vec<usize> = channels.iter().copied().filter(|c| set.insert(*c)).collect();
                let v = json!({"client_id": id.to_string(), "product_id": product, "channels": names(channels.iter().copied()), "subscribed": true});
                (v, added.into_iter().map(|c| (product.clone(), c, Some(replay))).collect())
            }
            Op::Unsubscribe { product, channels } => {
                let mut subs = client.subs.borrow_mut();
                let had = subs.get(&product).cloned().unwrap_or_default();
                let removed: Vec<usize> = match channels {
                    Some(chs) => chs.into_iter().filter(|c| had.contains(c)).collect(),
                    None => had.iter().copied().collect(),
                };
                if let Some(set) = subs.get_mut(&product) {
                    set.retain(|c| !removed.contains(c));
                    if set.is_empty() {
                        subs.remove(&product);
                    }
                }
                let v = json!({"client_id": id.to_string(), "product_id": product, "channels": names(removed.iter().copied()), "subscribed": false});
                (v, removed.into_iter().map(|c| (product.clone(), c, None)).collect())
            }
            Op::Coinbase { subscribe, channels } => {
                let mut subs = client.subs.borrow_mut();
                let changes = if subscribe {
                    self.room_for(&subs, channels.iter().flat_map(|(ch, ps)| ps.iter().map(move |p| (p, ch))))?;
                    let mut changes = Vec::new();
                    for (ch, products) in &channels {
                        for p in products {
                            if subs.entry(p.clone()).or_default().insert(*ch) {
                                changes.push((p.clone(), *ch, Some(None)));
                            }
                        }
                    }
                    changes
                } else {
                    let mut changes = Vec::new();
                    for (ch, products) in &channels {
                        let named: Vec<String> = match products.is_empty() {
                            true => subs.iter().filter(|(_, s)| s.contains(ch)).map(|(p, _)| p.clone()).collect(),
                            false => products.iter().cloned().collect(),
                        };
                        for p in named {
                            let Some(set) = subs.get_mut(&p) else { continue };
                            if set.remove(ch) {
                                changes.push((p.clone(), *ch, None));
                            }
                            if set.is_empty() {
                                subs.remove(&p);
                            }
                        }
                    }
                    changes
                };
                // Coinbase's reply comes before any of the new data.
                let _ = outbox.push(crate::ws::frame::text(coinbase_subscriptions(&subs).as_bytes()));
                (json!({"client_id": id.to_string()}), changes)
            }
        };
        drop(client);
        // The acknowledgement comes before any of the new data.
        if value.get("subscribed").is_some() && !pure {
            let mut note = value.clone();
            let kind = if value["subscribed"] == true { "subscribed" } else { "unsubscribed" };
            if let Some(obj) = note.as_object_mut() {
                obj.remove("subscribed");
                obj.insert("type".into(), kind.into());
            }
            let _ = outbox.push(crate::ws::frame::text(note.to_string().as_bytes()));
        }
        // `Some(replay)`: a new subscription; `None`: one that ended.
        for (product, channel, join) in changes {
            match join {
                Some(replay) => self.join(&product, channel, id, replay).await,
                None => self.drop_subscriber(&product, channel, id.slot).await,
            }
        }
        Ok(value)
    }

    /// Whether a client holding `subs` may add the (product, channel) pairs of
    /// `wanted` (those it holds already do not count) within `--max-subscriptions`.
    fn room_for<'a>(
        &self,
        subs: &BTreeMap<String, BTreeSet<usize>>,
        wanted: impl Iterator<Item = (&'a String, &'a usize)>,
    ) -> Result<(), ApiError> {
        let held: usize = subs.values().map(BTreeSet::len).sum();
        let new = wanted.filter(|(p, ch)| !subs.get(*p).is_some_and(|s| s.contains(ch))).count();
        let max = self.global.max_subscriptions;
        if held + new > max {
            let why = format!("a client may hold {max} subscriptions (product and channel pairs)");
            return Err(ApiError::new(409, "too_many_subscriptions", why));
        }
        Ok(())
    }

    /// Starts a subscription of client `id` to a topic. Shard 0 answers it (at
    /// once for its own clients, with `Joined` for others) with what the client
    /// gets first, in the same step that puts this shard on the topic's stream.
    async fn join(&self, product: &str, channel: usize, id: ClientId, replay: Option<usize>) {
        match &self.owner {
            Some(owner) => {
                let frames = owner.join(product, channel, self.id, replay);
                self.joined(product, channel, id, frames);
            }
            None => {
                *self.joining.borrow_mut().entry((product.to_string(), channel)).or_default() += 1;
                let msg = ShardMsg::Join { product: product.to_string(), channel, client: id, replay };
                self.bus.send(0, msg).await;
            }
        }
    }

    /// The answer to a join: the client gets `frames`, then the stream. Returns
    /// false if the client no longer wants the topic.
    fn joined(&self, product: &str, channel: usize, id: ClientId, frames: Vec<Frame>) -> bool {
        let Some(client) = self.clients.get(id.slot).filter(|c| c.id == id) else { return false };
        if !client.subs.borrow().get(product).is_some_and(|s| s.contains(&channel)) {
            return false;
        }
        for f in frames {
            let _ = client.outbox.push(f);
        }
        self.table.borrow_mut().add(product, channel, id.slot, &client.outbox);
        true
    }

    /// Whether this shard still wants a topic's stream: a local subscriber, or a
    /// join on its way.
    fn wants(&self, product: &str, channel: usize) -> bool {
        self.table.borrow().has_subscribers(product, channel)
            || self.joining.borrow().contains_key(&(product.to_string(), channel))
    }

    async fn drop_subscriber(&self, product: &str, channel: usize, slot: usize) {
        self.table.borrow_mut().remove(product, channel, slot);
        if !self.wants(product, channel) {
            self.interest(product, channel, false).await;
        }
    }

    /// Tells shard 0 that this shard's interest in a topic began or ended.
    async fn interest(&self, product: &str, channel: usize, on: bool) {
        match &self.owner {
            Some(owner) => owner.interest(product, channel, self.id, on),
            None => {
                let msg = ShardMsg::Interest { product: product.to_string(), channel, on, from: self.id };
                self.bus.send(0, msg).await;
            }
        }
    }

    /// Handles one message from another shard.
    pub async fn on_shard_msg(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Feed { msg, channel } => {
                if let Some(product) = msg.product() {
                    self.table.borrow().deliver(product, channel, &msg.frame);
                }
            }
            ShardMsg::Interest { product, channel, on, from } => {
                if let Some(owner) = &self.owner {
                    owner.interest(&product, channel, from, on);
                }
            }
            ShardMsg::Join { product, channel, client, replay } => {
                let Some(owner) = &self.owner else { return };
                // Room first: from here to the post, nothing waits, so no feed
                // message can come between the answer and the stream.
                self.ready().await;
                let frames = owner.join(&product, channel, client.shard, replay);
                self.post(client.shard, ShardMsg::Joined { product, channel, client, frames });
            }
            ShardMsg::Joined { product, channel, client, frames } => {
                let key = (product, channel);
                if let Entry::Occupied(mut n) = self.joining.borrow_mut().entry(key.clone()) {
                    *n.get_mut() -= 1;
                    if *n.get() == 0 {
                        n.remove();
                    }
                }
                let (product, channel) = key;
                if !self.joined(&product, channel, client, frames) && !self.wants(&product, channel) {
                    self.interest(&product, channel, false).await;
                }
            }
            ShardMsg::ProductNote { product, frame } => self.note_product(&product, &frame),
            ShardMsg::History { req, from, query } => {
                let result = match &self.owner {
                    Some(owner) => Ok(Value::String(owner.history_json(&query))),
                    None => Err(ApiError::new(503, "shard_unavailable", "history is kept by shard 0")),
                };
                self.bus.send(from, ShardMsg::Reply { req, result }).await;
            }
            ShardMsg::ProductError { product, frame } => self.product_error(&product, &frame).await,
            ShardMsg::Products(list) => *self.products.borrow_mut() = Some(list),
            ShardMsg::Upstream(frame) => self.tell_subscribed(&frame),
            ShardMsg::Command { req, from, client, op } => {
                let result = self.apply(client, op).await;
                self.bus.send(from, ShardMsg::Reply { req, result }).await;
            }
            ShardMsg::Ping { req, from } => {
                self.bus.send(from, ShardMsg::Reply { req, result: Ok(Value::Null) }).await;
            }
            ShardMsg::Reply { req, result } => {
                if let Some(tx) = self.pending.borrow_mut().remove(&req) {
                    let _ = tx.try_send(result);
                }
            }
        }
    }

    /// The upstream refused `product`: its subscribers get the error, and their
    /// subscriptions to it end.
    async fn product_error(&self, product: &str, frame: &Frame) {
        let slots = self.table.borrow().subscribers_of(product);
        self.table.borrow().deliver_product(product, frame);
        for slot in slots {
            let Some(client) = self.clients.get(slot) else { continue };
            let removed = client.subs.borrow_mut().remove(product).unwrap_or_default();
            drop(client);
            for ch in removed {
                self.drop_subscriber(product, ch, slot).await;
            }
        }
    }

    /// Sends a hedgehog message to every local subscriber of `product` that is
    /// not in pure Coinbase mode.
    pub fn note_product(&self, product: &str, frame: &Frame) {
        for slot in self.table.borrow().subscribers_of(product) {
            if let Some(c) = self.clients.get(slot).filter(|c| !c.pure) {
                let _ = c.outbox.push(frame.clone());
            }
        }
    }

    /// Posts `msg` to shard `to` without waiting, in order with every other post
    /// to it (shard 0's feed messages and join answers): straight into the bus
    /// when it has room and nothing is held back, else behind what is.
    pub fn post(self: &Rc<Self>, to: usize, msg: ShardMsg) {
        let Some(backlog) = self.backlog.get(to) else { return };
        let msg = match backlog.borrow().is_empty() && !self.flushing[to].get() {
            true => match self.bus.try_send(to, msg) {
                Ok(()) => return,
                Err(msg) => msg,
            },
            false => msg,
        };
        backlog.borrow_mut().push_back(msg);
        if !self.flushing[to].replace(true) {
            let hub = self.clone();
            let flush = async move {
                loop {
                    let next = hub.backlog[to].borrow_mut().pop_front();
                    let Some(msg) = next else { break };
                    hub.bus.send(to, msg).await;
                    hub.wake_posters();
                }
                hub.flushing[to].set(false);
                hub.wake_posters();
            };
            glommio::spawn_local(flush).detach();
        }
    }

    /// Waits until every shard's backlog has room for one more post.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| {
            if self.backlog.iter().all(|b| b.borrow().len() < POST_BACKLOG) {
                std::task::Poll::Ready(())
            } else {
                self.backlog_waiters.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }

    fn wake_posters(&self) {
        for w in self.backlog_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Runs a history query where the history is kept (shard 0).
    pub async fn history(self: &Rc<Self>, query: HistoryQuery) -> Result<String, ApiError> {
        if let Some(owner) = &self.owner {
            return Ok(owner.history_json(&query));
        }
        let from = self.id;
        match self.request(0, |req| ShardMsg::History { req, from, query }).await? {
            Value::String(body) => Ok(body),
            _ => Err(ApiError::new(503, "shard_unavailable", "no answer from shard 0")),
        }
    }

    /// Local delivery (shard 0's own subscribers).
    fn deliver_local(&self, msg: &FeedMessage, channel: usize) {
        if let Some(product) = msg.product() {
            self.table.borrow().deliver(product, channel, &msg.frame);
        }
    }

    /// The bus, for the shard's receive loops.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Shard 0's owner of the upstream, if this is shard 0.
    pub fn owner(&self) -> Option<&Owner> {
        self.owner.as_ref()
    }
}

/// A client's subscriptions as Coinbase's cumulative `subscriptions` message.
fn coinbase_subscriptions(subs: &BTreeMap<String, BTreeSet<usize>>) -> String {
    let mut by_channel: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (product, channels) in subs {
        for ch in channels {
            by_channel.entry(CHANNELS[*ch].to_string()).or_default().insert(product.clone());
        }
    }
    crate::protocol::subscriptions_message(&by_channel)
}

fn unknown_client() -> ApiError {
    ApiError::new(404, "unknown_client", "no connected client has that id")
}

fn names(channels: impl Iterator<Item = usize>) -> Vec<&'static str> {
    channels.map(|c| CHANNELS[c]).collect()
}
