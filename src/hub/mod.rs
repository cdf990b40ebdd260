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
mod table;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use glommio::channels::local_channel::{self, LocalSender};
use serde_json::{json, Value};

pub use bus::{mesh as bus_mesh, Bus, BusEnds, CAPACITY as BUS_CAPACITY};
pub use client_id::ClientId;
pub use owner::{run as run_owner, Owner};
pub use table::{channel_index, Table, CHANNELS};

use crate::upstream::FeedMessage;
use crate::ws::{Frame, Outbox};

/// What shards tell each other.
pub enum ShardMsg {
    /// To shard 0: `from` gained its first (`on`) or lost its last subscriber of a topic.
    Interest { product: String, channel: usize, on: bool, from: usize },
    /// From shard 0: a feed message for the local subscribers of its topic.
    Feed { msg: FeedMessage, channel: usize },
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
}

/// An operation on one client's subscriptions.
#[derive(Debug, Clone)]
pub enum Op {
    Subscribe {
        product: String,
        channels: Vec<usize>,
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
    /// Requests or messages per second on one connection; zero: no limit.
    pub max_request_rate: u32,
    /// Whether `/echo` is served (`--echo`).
    pub echo: bool,
    per_ip: Mutex<HashMap<std::net::IpAddr, usize>>,
    clients: Vec<AtomicUsize>,
    messages: AtomicU64,
    malformed: AtomicU64,
    panics: AtomicU64,
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
            max_request_rate: cfg.max_request_rate,
            echo: cfg.echo,
            per_ip: Mutex::new(HashMap::new()),
            clients: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            messages: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            upstream: Mutex::new(UpstreamInfo { state: "connecting", ..Default::default() }),
        }
    }

    /// Connected clients, all shards together.
    pub fn clients(&self) -> usize {
        self.clients.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Counts a new connection from `ip`; `None` when that IP is at its limit.
    /// The returned slot gives the place back when dropped.
    pub fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut per_ip = self.per_ip.lock().ok()?;
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot { global: self.clone(), ip })
    }

    /// Panics contained (each ended one connection, not its shard).
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
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

impl Drop for IpSlot {
    fn drop(&mut self) {
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
}

impl Hub {
    pub fn new(id: usize, global: Arc<Global>, bus: Bus, owner: Option<Owner>) -> Rc<Hub> {
        Rc::new(Hub {
            id,
            global,
            clients: sharded_slab::Slab::new(),
            outboxes: RefCell::new(HashMap::new()),
            table: RefCell::new(Table::default()),
            bus,
            pending: RefCell::new(HashMap::new()),
            next_req: Cell::new(0),
            products: RefCell::new(None),
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
        let req = self.next_req.get() + 1;
        self.next_req.set(req);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(req, tx);
        let sent = self.bus.send(id.shard, ShardMsg::Command { req, from: self.id, client: id, op }).await;
        if !sent {
            self.pending.borrow_mut().remove(&req);
            return Err(ApiError::new(503, "shard_unavailable", "the client's shard is not running"));
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
            Op::Subscribe { product, channels } => {
                let mut subs = client.subs.borrow_mut();
                let held: usize = subs.values().map(BTreeSet::len).sum();
                let new = channels.iter().filter(|c| !subs.get(&product).is_some_and(|s| s.contains(c))).count();
                if held + new > self.global.max_subscriptions {
                    return Err(ApiError::new(
                        409,
                        "too_many_subscriptions",
                        format!(
                            "a client may hold {} subscriptions (product and channel pairs)",
                            self.global.max_subscriptions
                        ),
                    ));
                }
                let set = subs.entry(product.clone()).or_default();
                let added: Vec<usize> = channels.iter().copied().filter(|c| set.insert(*c)).collect();
                let v = json!({"client_id": id.to_string(), "product_id": product, "channels": names(channels.iter().copied()), "subscribed": true});
                (v, added.into_iter().map(|c| (product.clone(), c, true)).collect())
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
                (v, removed.into_iter().map(|c| (product.clone(), c, false)).collect())
            }
            Op::Coinbase { subscribe, channels } => {
                let mut subs = client.subs.borrow_mut();
                let changes = if subscribe {
                    let held: usize = subs.values().map(BTreeSet::len).sum();
                    let new = channels
                        .iter()
                        .flat_map(|(ch, ps)| ps.iter().map(move |p| (p, ch)))
                        .filter(|(p, ch)| !subs.get(*p).is_some_and(|s| s.contains(ch)))
                        .count();
                    if held + new > self.global.max_subscriptions {
                        let max = self.global.max_subscriptions;
                        let why = format!("a client may hold {max} subscriptions (product and channel pairs)");
                        return Err(ApiError::new(409, "too_many_subscriptions", why));
                    }
                    let mut changes = Vec::new();
                    for (ch, products) in &channels {
                        for p in products {
                            if subs.entry(p.clone()).or_default().insert(*ch) {
                                changes.push((p.clone(), *ch, true));
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
                                changes.push((p.clone(), *ch, false));
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
        for (product, channel, on) in changes {
            if on {
                if self.table.borrow_mut().add(&product, channel, id.slot, &outbox) {
                    self.interest(&product, channel, true).await;
                }
            } else {
                self.drop_subscriber(&product, channel, id.slot).await;
            }
        }
        if value.get("subscribed").is_some() && !pure {
            let mut note = value.clone();
            let kind = if value["subscribed"] == true { "subscribed" } else { "unsubscribed" };
            if let Some(obj) = note.as_object_mut() {
                obj.remove("subscribed");
                obj.insert("type".into(), kind.into());
            }
            let _ = outbox.push(crate::ws::frame::text(note.to_string().as_bytes()));
        }
        Ok(value)
    }

    async fn drop_subscriber(&self, product: &str, channel: usize, slot: usize) {
        if self.table.borrow_mut().remove(product, channel, slot) {
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
            ShardMsg::ProductError { product, frame } => self.product_error(&product, &frame).await,
            ShardMsg::Products(list) => *self.products.borrow_mut() = Some(list),
            ShardMsg::Upstream(frame) => self.tell_subscribed(&frame),
            ShardMsg::Command { req, from, client, op } => {
                let result = self.apply(client, op).await;
                self.bus.send(from, ShardMsg::Reply { req, result }).await;
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
