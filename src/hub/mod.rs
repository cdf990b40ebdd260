//! The hub: each shard's clients and subscription table, the cross-shard bus,
//! and (on shard 0) the owner of the upstream feed.
//!
//! Shard 0 owns the upstream client. Every shard counts its own subscribers per
//! topic (product, channel) and tells shard 0 when a topic gains its first or
//! loses its last local subscriber; shard 0 keeps, per topic, the set of
//! interested shards, subscribes upstream when the set becomes non-empty and
//! unsubscribes when it empties. Each upstream message is encoded once into a
//! server frame on shard 0 and sent, by reference, to the interested shards only.
//!
//! Every message between shards, and from a shard to itself, goes through one
//! primitive, [`Hub::send_to`]: handled at once when the target is this shard,
//! else posted on the [`bus`] in order with everything else sent there.
//!
//! - [`access`]: what access control asks of the hub: every client on every
//!   shard (admin endpoints), a client's principal from its in-band key.
//! - [`msg`]: what shards tell each other; operations, outcomes, errors.
//! - [`global`]: process-wide settings and counters.
//! - [`client`]: one client's subscriptions and the operations on them.
//! - [`seats`]: open sessions per principal and per class (access control).
//! - [`table`]: a shard's subscribers per topic, walked by the fan-out.
//! - [`throttle`]: the throttled delivery tier's per-(client, topic) slots.
//! - [`bus`]: the channels between shards, ordering and bounds.
//! - [`owner`]: shard 0's upstream owner, feed state and fan-out.

mod access;
mod bus;
mod client;
mod client_id;
mod global;
mod metrics;
mod msg;
mod owner;
mod seats;
mod table;
mod throttle;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub use access::{ClientView, ACCESS_SWEEP, EXPIRY_NOTICE, TOKEN_EXPIRED};
pub use bus::{mesh as bus_mesh, Bus, BusEnds, Waiter};
pub use client::{Change, Subscriptions};
pub use client_id::{ClientId, Node};
pub use global::{Admission, Global, IpSlot, UpstreamInfo, REFUSALS_LOGGED_PER_SECOND};
pub use msg::{Answer, Ask, Caller, HubError, Op, Outcome, ShardMsg};
pub use owner::{
    run as run_owner, Book, ClusterPart, EdgePart, FeedState, Gap, HistoryLimits, HistoryQuery, IngestPart, Owner,
    Since,
};
pub use seats::{Seat, SeatRefused};
pub use table::Table;

use crate::access::{Principal, Tier};
use crate::metrics::Stamp;
use crate::protocol::{self, Topic};
use crate::ws::{frame, Frame, Outbox};

/// The close code and reason of a client an admin disconnects.
pub const DISCONNECTED: (u16, &str) = (crate::ws::close::POLICY, "disconnected by an admin");

/// How long a client's operation may wait for another shard: for room on the
/// bus towards it and for its reply. Past it: [`HubError::ShardUnavailable`].
pub const REPLY_DEADLINE: Duration = Duration::from_secs(5);

/// A client connected to this shard: a WebSocket or a streaming HTTP response.
pub struct LocalClient {
    pub id: ClientId,
    pub outbox: Rc<Outbox>,
    subs: RefCell<Subscriptions>,
    /// Pure Coinbase mode: no hedgehog-only messages (notes, upstream, gaps).
    pure: bool,
    /// Who the client is, when access control is on: what it may subscribe to,
    /// how many subscriptions it may hold, and who may steer it by id. Set at
    /// the upgrade, or by a key in its first in-band subscribe; replaced by a
    /// reload of the rules or an in-band `auth` (see `access`).
    principal: RefCell<Option<Principal>>,
    /// An SSE or NDJSON stream: it cannot subscribe again, so it ends when the
    /// rules withdraw all it had.
    stream: bool,
    /// The token expiry (unix seconds) the client was last warned of.
    warned: std::cell::Cell<Option<u64>>,
    /// How it is connected (metrics).
    transport: crate::metrics::Transport,
    /// Its address (the admin endpoints).
    peer: Option<std::net::SocketAddr>,
}

/// What kind of client registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A WebSocket, with hedgehog's notes.
    WebSocket,
    /// A WebSocket in pure Coinbase mode: Coinbase's messages only, no notes.
    Pure,
    /// An SSE stream of one pair.
    Sse,
    /// An NDJSON stream of one pair.
    Ndjson,
}

impl ClientKind {
    fn transport(self) -> crate::metrics::Transport {
        use crate::metrics::Transport;
        match self {
            ClientKind::WebSocket | ClientKind::Pure => Transport::WebSocket,
            ClientKind::Sse => Transport::Sse,
            ClientKind::Ndjson => Transport::Ndjson,
        }
    }
}

/// One shard's hub.
pub struct Hub {
    pub id: usize,
    pub global: Arc<Global>,
    clients: sharded_slab::Slab<LocalClient>,
    /// Every local client's outbox by slot, for shutdown (the slab cannot be walked).
    outboxes: RefCell<HashMap<usize, Rc<Outbox>>>,
    table: RefCell<Table>,
    bus: Rc<Bus>,
    /// The products the upstream lists; `None` until it has said.
    products: RefCell<Option<Arc<HashSet<String>>>>,
    owner: Option<Owner>,
    /// Joins sent to shard 0 and not yet answered, per topic: while any is out,
    /// the topic's stream to this shard stays on.
    joining: RefCell<HashMap<Topic, usize>>,
    /// This shard's metrics (see `metrics`).
    metrics: RefCell<crate::metrics::Snapshot>,
    /// Its clients' socket-write latencies, shared with their outboxes.
    latency: Rc<RefCell<crate::metrics::Latency>>,
}

impl Hub {
    pub fn new(global: Arc<Global>, bus: Rc<Bus>, owner: Option<Owner>) -> Rc<Hub> {
        Rc::new(Hub {
            id: bus.me(),
            clients: sharded_slab::Slab::new(),
            outboxes: RefCell::new(HashMap::new()),
            table: RefCell::new(Table::default()),
            bus,
            products: RefCell::new(None),
            joining: RefCell::new(HashMap::new()),
            metrics: RefCell::new(crate::metrics::Snapshot::new()),
            latency: Rc::default(),
            global,
            owner,
        })
    }

    /// A new client's outbox, bounded and with the policy configured.
    pub fn new_outbox(&self) -> Rc<Outbox> {
        Rc::new(
            Outbox::with_policy(self.global.queue_bytes, self.global.slow_policy).with_latency(self.latency.clone()),
        )
    }

    /// Registers a new client; returns its id, or `None` when the table is full.
    /// `peer`: its address, for the admin endpoints.
    pub fn register(
        &self,
        outbox: Rc<Outbox>,
        kind: ClientKind,
        principal: Option<Principal>,
        peer: Option<std::net::SocketAddr>,
    ) -> Option<ClientId> {
        let entry = self.clients.vacant_entry()?;
        let id = ClientId::new(self.global.node, self.id, entry.key());
        self.outboxes.borrow_mut().insert(id.slot, outbox.clone());
        let subs = RefCell::new(Subscriptions::default());
        let (pure, stream) = (kind == ClientKind::Pure, matches!(kind, ClientKind::Sse | ClientKind::Ndjson));
        let (principal, transport) = (RefCell::new(principal), kind.transport());
        let warned = Default::default();
        entry.insert(LocalClient { id, outbox, subs, pure, principal, stream, warned, transport, peer });
        self.count_opened(transport);
        self.global.client_joined(self.id);
        Some(id)
    }

    /// Forgets a client and releases its subscriptions.
    pub fn unregister(&self, id: ClientId) {
        let Some(client) = self.clients.take(id.slot) else { return };
        self.outboxes.borrow_mut().remove(&id.slot);
        self.global.client_left(self.id);
        self.count_closed(client.transport, &client.outbox);
        let changes = client.subs.borrow_mut().take_all();
        self.carry_out(changes, id, None);
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
    pub fn check_product(&self, product: &str) -> Result<(), HubError> {
        match &*self.products.borrow() {
            Some(known) if !known.contains(product) => Err(HubError::UnknownProduct(product.to_string())),
            _ => Ok(()),
        }
    }

    /// Whether a Coinbase client may name `product`: one the upstream lists, exactly
    /// (Coinbase's ids are case-sensitive); while the list is unknown, any id of
    /// the right form.
    pub fn is_product(&self, product: &str) -> bool {
        match &*self.products.borrow() {
            Some(known) => known.contains(product),
            None => protocol::normalize_product(product).as_deref() == Some(product),
        }
    }

    /// Runs `op` for client `id`, on whichever shard owns it, for the client's
    /// own session.
    pub async fn execute(&self, id: ClientId, op: Op) -> Result<Outcome, HubError> {
        self.execute_as(id, op, None).await
    }

    /// Runs `op` for client `id`, on whichever shard owns it, for `caller`
    /// (REST by id): that shard checks that `caller` may steer the client.
    pub async fn execute_as(&self, id: ClientId, op: Op, caller: Option<Caller>) -> Result<Outcome, HubError> {
        // Another process's client (its id names another node): said so, not
        // "no such client". The place to forward it once nodes talk to each other.
        if id.node != self.global.node {
            return Err(HubError::OtherNode { client: id, here: self.global.node });
        }
        if id.shard >= self.global.shards {
            return Err(HubError::UnknownClient);
        }
        if id.shard != self.id {
            let ask = Ask::Execute { client: id, op, caller };
            return match self.request(id.shard, ask, REPLY_DEADLINE).await? {
                Answer::Executed(outcome) => Ok(outcome),
                _ => Err(unavailable(id.shard, REPLY_DEADLINE)),
            };
        }
        // Its joins and leaves go to shard 0: room for them first.
        if self.id != 0 {
            let room = self.bus.room(Waiter::Client, |s| s == 0);
            within(REPLY_DEADLINE, room).await.ok_or(unavailable(0, REPLY_DEADLINE))?;
        }
        self.apply(id, op, caller)
    }

    /// Runs a history query where the history is kept (shard 0).
    pub async fn history(&self, query: HistoryQuery) -> Result<String, HubError> {
        if let Some(owner) = &self.owner {
            return Ok(owner.history_json(&query));
        }
        match self.request(0, Ask::History(query), REPLY_DEADLINE).await? {
            Answer::History(body) => Ok(body),
            _ => Err(unavailable(0, REPLY_DEADLINE)),
        }
    }

    /// Whether shard `to` answers a ping within `limit` (this shard always does).
    pub async fn answers(&self, to: usize, limit: Duration) -> bool {
        to == self.id || matches!(self.request(to, Ask::Ping, limit).await, Ok(Answer::Pong))
    }

    /// Asks shard `to` and waits, up to `limit` in all, for its reply.
    async fn request(&self, to: usize, ask: Ask, limit: Duration) -> Result<Answer, HubError> {
        let (req, rx) = self.bus.ask();
        let from = self.id;
        let asked = async {
            self.bus.room(Waiter::Client, |s| s == to).await;
            self.bus.post(to, ShardMsg::Request { req, from, ask });
            rx.recv().await
        };
        let reply = within(limit, asked).await.flatten();
        self.bus.forget(req);
        reply.unwrap_or(Err(unavailable(to, limit)))
    }

    /// Waits until the bus towards every shard has room (shard 0's dispatcher,
    /// before each upstream event).
    pub async fn room_for_all(&self) {
        self.bus.room(Waiter::Feed, |_| true).await
    }

    /// THE way to send anything to shard `to`: handled here and now when `to` is
    /// this shard, else posted on the bus, in order with all else sent to `to`.
    pub fn send_to(&self, to: usize, msg: ShardMsg) {
        if to == self.id {
            self.handle(msg);
        } else {
            self.bus.post(to, msg);
        }
    }

    /// Handles one message from a shard (this one included). Never waits: the
    /// receive loops that call it must keep draining the bus (see `bus`).
    pub fn handle(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Feed { msg, channel } => {
                if let Some(product) = msg.product() {
                    let stamp = Stamp { channel, received: msg.received(), exchange_micros: msg.time() };
                    let n = self.table.borrow().deliver(product, channel, &msg.frame, stamp);
                    self.count_delivery(&msg, channel, n);
                }
            }
            ShardMsg::Interest { topic, on, from } => {
                if let Some(owner) = &self.owner {
                    owner.interest(&topic, from, on);
                }
            }
            ShardMsg::Join { topic, client, replay } => {
                // The answer and the shard's place on the stream, in one step:
                // no feed message can come between them.
                // (An edge's topic not yet seeded answers later: `Owner::seed`.)
                if let Some(frames) = self.owner.as_ref().and_then(|o| o.join(&topic, client, replay)) {
                    self.send_to(client.shard, ShardMsg::Joined { topic, client, frames });
                }
            }
            ShardMsg::Joined { topic, client, frames } => self.joined(topic, client, frames),
            ShardMsg::ProductNote { product, frame } => self.note_product(&product, &frame),
            ShardMsg::ProductError { product, frame } => self.product_error(&product, &frame),
            ShardMsg::Products(list) => *self.products.borrow_mut() = Some(list),
            ShardMsg::Upstream(frame) => self.tell_subscribed(&frame),
            ShardMsg::Request { req, from, ask } => {
                let result = self.answer(ask);
                self.send_to(from, ShardMsg::Reply { req, result });
            }
            ShardMsg::Reply { req, result } => self.bus.answer(req, result),
        }
    }

    fn answer(&self, ask: Ask) -> Result<Answer, HubError> {
        match ask {
            Ask::Execute { client, op, caller } => self.apply(client, op, caller).map(Answer::Executed),
            Ask::History(query) => match &self.owner {
                Some(owner) => Ok(Answer::History(owner.history_json(&query))),
                None => Err(unavailable(0, Duration::ZERO)),
            },
            Ask::Ping => Ok(Answer::Pong),
            Ask::Clients => Ok(Answer::Clients(self.client_views())),
            Ask::Metrics => Ok(Answer::Metrics(Box::new(self.metrics_snapshot()))),
        }
    }

    /// Applies `op` to a local client: the acknowledgement first, then the joins
    /// and leaves it implies. With access control on, `caller` must own the
    /// client (or be an admin), and a subscription must be the client's
    /// principal's to have.
    fn apply(&self, id: ClientId, op: Op, caller: Option<Caller>) -> Result<Outcome, HubError> {
        let client = self.clients.get(id.slot).filter(|c| c.id == id).ok_or(HubError::UnknownClient)?;
        let principal = client.principal.borrow().clone();
        let principal = principal.as_ref();
        if let (Some(caller), Some(owner)) = (&caller, principal) {
            if !caller.may_steer(owner.name()) {
                return Err(HubError::NotOwner(id));
            }
        }
        let class_max = principal.and_then(|p| p.class().limits().max_subscriptions);
        let max = class_max.unwrap_or(self.global.max_subscriptions);
        let mut subs = client.subs.borrow_mut();
        let (outcome, changes, replay) = match op {
            Op::List => (Outcome::Subscriptions(subs.by_product().clone()), Vec::new(), None),
            Op::Subscribe { product, channels, replay } => {
                if let Some(p) = principal {
                    p.may_join(&product, &channels, replay).map_err(HubError::Forbidden)?;
                }
                let changes = subs.subscribe(&product, &channels, max)?;
                (Outcome::Changed { product, channels, subscribed: true }, changes, replay)
            }
            Op::Unsubscribe { product, channels } => {
                let (ended, changes) = subs.unsubscribe(&product, channels.as_deref());
                (Outcome::Changed { product, channels: ended, subscribed: false }, changes, None)
            }
            Op::Disconnect => {
                client.outbox.close(DISCONNECTED.0, DISCONNECTED.1);
                (Outcome::Done, Vec::new(), None)
            }
            Op::Coinbase { subscribe, mut channels } => {
                // The session checked its principal's rules before it asked; a
                // reload may have come between (while it waited for the bus).
                if let (true, Some(p)) = (subscribe, principal) {
                    for denied in p.allowed_only(&mut channels) {
                        let error =
                            protocol::error_message(protocol::RequestKind::Subscribe.failure(), &denied.to_string());
                        let _ = client.outbox.push(frame::text(error.as_bytes()));
                    }
                }
                let changes = match subscribe {
                    true => subs.coinbase_subscribe(&channels, max)?,
                    false => subs.coinbase_unsubscribe(&channels),
                };
                // Coinbase's reply comes before any of the new data.
                let _ = client.outbox.push(frame::text(subs.coinbase_message().as_bytes()));
                (Outcome::Done, changes, None)
            }
        };
        drop(subs);
        // The acknowledgement comes before any of the new data.
        if let (Outcome::Changed { product, channels, subscribed }, false) = (&outcome, client.pure) {
            let note = protocol::notes::subscription_changed(&id.to_string(), product, channels, *subscribed);
            let _ = client.outbox.push(frame::text(note.as_bytes()));
        }
        drop(client);
        self.carry_out(changes, id, replay);
        Ok(outcome)
    }

    /// Joins and leaves the topics a client's subscriptions gained and lost.
    fn carry_out(&self, changes: Vec<Change>, id: ClientId, replay: Option<usize>) {
        for change in changes {
            match change {
                Change::Join(topic) => self.join(topic, id, replay),
                Change::Leave(topic) => self.leave(topic, id.slot),
            }
        }
    }

    /// Starts a subscription of client `id` to `topic`: shard 0 answers with
    /// what the client gets first, in the same step that puts this shard on the
    /// topic's stream.
    fn join(&self, topic: Topic, client: ClientId, replay: Option<usize>) {
        *self.joining.borrow_mut().entry(topic.clone()).or_default() += 1;
        self.send_to(0, ShardMsg::Join { topic, client, replay });
    }

    /// The answer to a join: the client gets `frames`, then the stream. If the
    /// client no longer wants the topic and nobody else here does, shard 0 hears so.
    fn joined(&self, topic: Topic, id: ClientId, frames: Vec<Frame>) {
        {
            let mut joining = self.joining.borrow_mut();
            if let Some(n) = joining.get_mut(&topic) {
                *n -= 1;
                if *n == 0 {
                    joining.remove(&topic);
                }
            }
        }
        let client = self.clients.get(id.slot).filter(|c| c.id == id && c.subs.borrow().holds(&topic));
        match client {
            Some(client) => {
                for f in frames {
                    let _ = client.outbox.push(f);
                }
                // Its tier is decided here, once: which list of the table it joins.
                let tier = client.principal.borrow().as_ref().map_or(Tier::Full, |p| p.class().tier());
                let throttle = match tier {
                    Tier::Throttle(every) if tier.thins(topic.channel) => Some(every),
                    _ => None,
                };
                self.table.borrow_mut().add(&topic.product, topic.channel, id.slot, &client.outbox, throttle);
            }
            None if !self.wants(&topic) => self.send_to(0, ShardMsg::Interest { topic, on: false, from: self.id }),
            None => {}
        }
    }

    /// Whether this shard still wants a topic's stream: a local subscriber, or a
    /// join on its way.
    fn wants(&self, topic: &Topic) -> bool {
        self.table.borrow().has_subscribers(&topic.product, topic.channel) || self.joining.borrow().contains_key(topic)
    }

    /// Client `slot` left `topic`; if it was the last here, shard 0 hears so.
    fn leave(&self, topic: Topic, slot: usize) {
        self.table.borrow_mut().remove(&topic.product, topic.channel, slot);
        if !self.wants(&topic) {
            self.send_to(0, ShardMsg::Interest { topic, on: false, from: self.id });
        }
    }

    /// The upstream refused `product`: its subscribers get the error, and their
    /// subscriptions to it end.
    fn product_error(&self, product: &str, frame: &Frame) {
        let slots = self.table.borrow().subscribers_of(product);
        self.table.borrow().deliver_product(product, frame);
        for slot in slots {
            let Some(client) = self.clients.get(slot) else { continue };
            let (id, changes) = (client.id, client.subs.borrow_mut().drop_product(product));
            drop(client);
            self.carry_out(changes, id, None);
        }
    }

    /// Sends a hedgehog message to every local subscriber of `product` that is
    /// not in pure Coinbase mode.
    fn note_product(&self, product: &str, frame: &Frame) {
        for slot in self.table.borrow().subscribers_of(product) {
            if let Some(c) = self.clients.get(slot).filter(|c| !c.pure) {
                let _ = c.outbox.push(frame.clone());
            }
        }
    }

    /// Sends `frame` to every local client with at least one subscription.
    fn tell_subscribed(&self, frame: &Frame) {
        for (slot, outbox) in self.outboxes.borrow().iter() {
            let subscribed = self.clients.get(*slot).is_some_and(|c| !c.pure && !c.subs.borrow().is_empty());
            if subscribed {
                let _ = outbox.push(frame.clone());
            }
        }
    }

    /// Sends the throttled subscribers' pending messages that are due, every
    /// [`throttle::FLUSH_EVERY`], for ever: a task of its own on each shard.
    pub async fn flush_throttled(&self) {
        loop {
            glommio::timer::sleep(throttle::FLUSH_EVERY).await;
            self.table.borrow().flush_due(std::time::Instant::now());
        }
    }

    /// Shard 0's owner of the upstream, if this is shard 0.
    pub fn owner(&self) -> Option<&Owner> {
        self.owner.as_ref()
    }
}

fn unavailable(shard: usize, within: Duration) -> HubError {
    HubError::ShardUnavailable { shard, within }
}

/// `fut`'s output, or `None` if `limit` passes first.
async fn within<T>(limit: Duration, fut: impl std::future::Future<Output = T>) -> Option<T> {
    let late = async {
        glommio::timer::sleep(limit).await;
        None
    };
    futures_lite::future::or(async { Some(fut.await) }, late).await
}
