//! The NATS thread: a current-thread tokio runtime running async-nats for one
//! process, as an ingest, an edge or (for REST forwarding only) neither.
//!
//! Ordering at the seam of a new subscription (edge): the edge subscribes the
//! topic's subject first, then asks the active ingest for the topic's first
//! messages. NATS keeps one connection's messages in order, so the server has
//! the subscription before it routes the request. The ingest answers on its
//! shard 0 in one step with no wait, from the same state its dispatcher updates
//! in the step that publishes, and says the last sequence number the answer
//! covers (`seq`). Every message published after that was published after the
//! subscription existed, so it reaches the edge; the edge holds the live
//! messages that came before the answer and, once it comes, drops those up to
//! `seq` and passes on the rest, checking that they run on without a hole.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::{Client, HeaderMap, Subscriber};
use bytes::Bytes;
use futures_lite::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{
    ClusterConfig, Cmd, Counters, Ev, ForwardedResponse, Key, Link, Publish, Role, SeedReply, Status, CMD_QUEUE,
    EV_QUEUE, PUBLISH_QUEUE, REQUEST_DEADLINE,
};
use crate::protocol::{Channel, Product};
use crate::upstream::FeedMessage;

const EPOCH: &str = "Hedgehog-Epoch";
const SEQ: &str = "Hedgehog-Seq";
/// Live messages an edge holds for one topic while its seed is on the way;
/// past it they are dropped and the seed asked again (its answer covers them).
const SEED_HOLD: usize = 20_000;
/// Requests (seeds, history, forwarded REST) handled at once; past it, the
/// asker gets an error at once ("busy") rather than a queue.
const IN_FLIGHT: usize = 256;

/// Starts the NATS thread for `role` as node `node`. It connects in the
/// background (and again whenever the connection drops): the process starts
/// while NATS is away and says so in `/healthz`.
/// Returns the shards' handle and the events shard 0 takes.
pub fn start(role: Role, node: &str, cfg: ClusterConfig) -> Result<(Arc<Link>, mpsc::Receiver<Ev>), String> {
    let mut servers = Vec::new();
    for url in &cfg.urls {
        servers.push(url.parse::<async_nats::ServerAddr>().map_err(|e| format!("--nats {url:?}: {e}"))?);
    }
    if servers.is_empty() {
        return Err("--nats: no server given".into());
    }
    for (flag, file) in [("--nats-creds", &cfg.creds), ("--nats-ca", &cfg.ca)] {
        if let Some(f) = file {
            std::fs::metadata(f).map_err(|e| format!("{flag} {}: {e}", f.display()))?;
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(CMD_QUEUE);
    let (pub_tx, pub_rx) = mpsc::channel(PUBLISH_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EV_QUEUE);
    let link = Arc::new(Link {
        role,
        node: node.to_string(),
        cfg: cfg.clone(),
        cmd: cmd_tx,
        publish: (role == Role::Ingest).then_some(pub_tx),
        status: std::sync::Mutex::new(Status { nats: "disconnected", ..Status::default() }),
        counters: Arc::default(),
        max_payload: Arc::default(),
    });
    let thread_link = link.clone();
    std::thread::Builder::new()
        .name("nats".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!(event = "nats_failed"; "nats: cannot start its runtime: {e}");
                    return;
                }
            };
            rt.block_on(run(thread_link, servers, cmd_rx, pub_rx, ev_tx));
        })
        .map_err(|e| format!("cannot start the NATS thread: {e}"))?;
    Ok((link, ev_rx))
}

/// Subjects under the prefix.
#[derive(Clone)]
struct Subjects(String);

impl Subjects {
    fn feed(&self, product: &str, channel: Channel) -> String {
        format!("{}.feed.{product}.{}", self.0, channel.name())
    }
    fn interest(&self, node: &str) -> String {
        format!("{}.interest.{node}", self.0)
    }
    fn interest_all(&self) -> String {
        format!("{}.interest.*", self.0)
    }
    /// Outside `interest.*`: no node's name can be it.
    fn interest_query(&self) -> String {
        format!("{}.ctl.interest_query", self.0)
    }
    fn seed(&self) -> String {
        format!("{}.ingest.seed", self.0)
    }
    fn history(&self) -> String {
        format!("{}.ingest.history", self.0)
    }
    fn rest(&self, node: &str) -> String {
        format!("{}.node.{node}.rest", self.0)
    }
}

/// What the NATS thread tells itself (from its own tasks).
enum Inner {
    /// The connection came (true) or went.
    Nats(bool),
    /// Edge: a live message of a wanted topic.
    Live { key: Key, epoch: u64, seq: u64, payload: Bytes },
    /// Edge: the answer to seed request `gen` of a topic.
    Seeded { key: Key, gen: u64, result: Result<SeedReply, String> },
    /// Edge: the lease as last read (`None`: no entry), with its revision.
    LeaseSeen(Option<(Lease, u64)>),
    /// Edge: the lease could not be read this time (NATS away or hanging):
    /// what was last read ages.
    LeaseUnread,
    /// Edge: the product list changed.
    Products(Vec<Product>),
    /// Ingest: this process's lease (its term, and until when it is surely
    /// still its own) or none; `why` when it changed.
    Lease(Option<(u64, Instant)>, String),
    /// Ingest: an edge asks for a topic's seed. Its interest in the topic
    /// counts from now, and reaches shard 0 before the question does: the
    /// topic is published from the moment the answer is made.
    Wants { node: String, key: Key, reply: oneshot::Sender<super::SeedAnswer> },
    /// Edge: ask for a topic's seed again (after a failed one).
    AskAgain(Key),
    /// Ingest: an edge declared its interest.
    Interest { node: String, topics: Vec<Key>, ttl: Option<Duration> },
}

/// The lease's value in the bucket.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Lease {
    node: String,
    term: u64,
    upstream: String,
}

#[derive(Clone)]
struct Nats {
    link: Arc<Link>,
    client: Client,
    subjects: Subjects,
    ev: mpsc::Sender<Ev>,
    inner_tx: mpsc::Sender<Inner>,
    /// Requests served at once, and asked at once (see [`IN_FLIGHT`]).
    slots: Arc<tokio::sync::Semaphore>,
    asks: Arc<tokio::sync::Semaphore>,
}

async fn run(
    link: Arc<Link>,
    servers: Vec<async_nats::ServerAddr>,
    mut cmds: mpsc::Receiver<Cmd>,
    mut publish: mpsc::Receiver<Publish>,
    ev: mpsc::Sender<Ev>,
) {
    let (inner_tx, mut inner) = mpsc::channel::<Inner>(4096);
    let events = inner_tx.clone();
    let slow_warned = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counters = link.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("hedgehog {} {}", link.role.as_str(), link.node))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(REQUEST_DEADLINE))
        // A server that stops answering (not gone) is found within seconds,
        // not the client's default two minutes.
        .ping_interval(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| Duration::from_millis((100 * attempts as u64).min(1000)))
        .event_callback(move |event| {
            let events = events.clone();
            let (counters, slow_warned) = (counters.clone(), slow_warned.clone());
            async move {
                let counters = &counters.counters;
                match event {
                    async_nats::Event::Connected => {
                        let _ = events.send(Inner::Nats(true)).await;
                    }
                    async_nats::Event::Disconnected => {
                        let _ = events.send(Inner::Nats(false)).await;
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        Counters::add(&counters.slow_consumer, 1);
                        if may_warn(&slow_warned) {
                            log::warn!(event = "nats_slow_consumer";
                                "nats: messages dropped for a slow subscription (this process falls behind); counted in hedgehog_nats_dropped_total");
                        }
                    }
                    other => log::warn!(event = "nats_event"; "nats: {other}"),
                }
            }
        });
    if let Some(ca) = &link.cfg.ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let Some(creds) = &link.cfg.creds {
        opts = match opts.credentials_file(creds).await {
            Ok(o) => o,
            Err(e) => {
                log::error!(event = "nats_failed"; "nats: --nats-creds {}: {e}", creds.display());
                return;
            }
        };
    }
    let client = match opts.connect(servers).await {
        Ok(c) => c,
        Err(e) => {
            log::error!(event = "nats_failed"; "nats: {e}");
            return;
        }
    };
    let nats = Nats {
        subjects: Subjects(link.cfg.prefix.clone()),
        link: link.clone(),
        client,
        ev,
        inner_tx,
        slots: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
        asks: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
    };
    nats.serve_rest().await;
    match link.role {
        Role::Edge => Edge::new(nats).run(&mut cmds, &mut inner).await,
        Role::Ingest => Ingest::new(nats).run(&mut cmds, &mut publish, &mut inner).await,
        Role::All => {}
    }
}

impl Nats {
    /// Answers REST calls forwarded to this node: each goes to shard 0 and its
    /// answer comes back.
    async fn serve_rest(&self) {
        let subject = self.subjects.rest(&self.link.node);
        let sub = match self.client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                log::error!(event = "nats_failed"; "nats: cannot subscribe {subject}: {e}");
                return;
            }
        };
        let (client, ev, slots) = (self.client.clone(), self.ev.clone(), self.slots.clone());
        tokio::spawn(serve_requests(sub, client, slots, move |payload| {
            let ev = ev.clone();
            async move {
                let request = serde_json::from_slice(&payload).map_err(|e| format!("bad forwarded request: {e}"))?;
                let (reply, answer) = oneshot::channel();
                ev.send(Ev::Rest { request, reply }).await.map_err(|_| "shutting down".to_string())?;
                let resp: ForwardedResponse = answer.await.map_err(|_| "no answer".to_string())?;
                serde_json::to_vec(&resp).map_err(|e| e.to_string())
            }
        }));
    }

    /// The connection came or went: said, shown, and the server's largest
    /// message noted.
    fn connection_changed(&self, up: bool) {
        self.link.set_status(|s| s.nats = if up { "connected" } else { "disconnected" });
        if up {
            log::info!(event = "nats_connected"; "nats: connected");
            let max = self.client.server_info().max_payload;
            self.link.max_payload.store(max, std::sync::atomic::Ordering::Relaxed);
        } else {
            log::warn!(event = "nats_disconnected"; "nats: the connection dropped; reconnecting");
        }
    }

    /// Sends `cmd`'s request and hands back the answer, in a task of its own.
    /// Sends a request and hands its answer (or why there is none) to
    /// `then`, in one task of its own.
    fn request<F, Fut>(&self, subject: String, payload: Vec<u8>, then: F)
    where
        F: FnOnce(Result<Bytes, String>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let client = self.client.clone();
        // Bounded like the requests served: past it, the asker hears so at once.
        let permit = self.asks.clone().try_acquire_owned();
        tokio::spawn(async move {
            let Ok(_permit) = permit else {
                return then(Err("too many requests on their way".into())).await;
            };
            let answer = match tokio::time::timeout(REQUEST_DEADLINE, client.request(subject, payload.into())).await {
                Ok(Ok(msg)) => Ok(msg.payload),
                Ok(Err(e)) => Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => "nobody answers on NATS".to_string(),
                    async_nats::RequestErrorKind::TimedOut => "no answer in time".to_string(),
                    _ => e.to_string(),
                }),
                Err(_) => Err("no answer in time".to_string()),
            };
            then(answer).await;
        });
    }

    fn forward(
        &self,
        node: String,
        request: super::ForwardedRequest,
        reply: oneshot::Sender<Result<ForwardedResponse, String>>,
    ) {
        if !crate::cluster::is_token(&node) {
            let _ = reply.send(Err(format!("{node:?} is not a node name")));
            return;
        }
        let Ok(payload) = serde_json::to_vec(&request) else { return };
        let counters = self.link.counters.clone();
        self.request(self.subjects.rest(&node), payload, |answer| async move {
            let answer = answer.and_then(|p| {
                serde_json::from_slice::<ForwardedResponse>(&p).map_err(|e| format!("a bad answer: {e}"))
            });
            Counters::add(if answer.is_ok() { &counters.forwarded_ok } else { &counters.forwarded_failed }, 1);
            let _ = reply.send(answer);
        });
    }

    /// The lease's bucket (`P`: entries age out after the lease's time to
    /// live) or, `lease` false, the product list's (`P-products`: kept).
    async fn bucket(&self, lease: bool) -> Result<kv::Store, String> {
        let js = async_nats::jetstream::new(self.client.clone());
        let name = bucket_name(&self.link.cfg.prefix, lease);
        if let Ok(store) = js.get_key_value(name.clone()).await {
            return Ok(store);
        }
        let config = kv::Config {
            bucket: name.clone(),
            history: 1,
            max_age: if lease { self.link.cfg.lease_ttl } else { Duration::ZERO },
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        };
        match js.create_key_value(config).await {
            Ok(store) => Ok(store),
            // Another process made it first.
            Err(_) => js.get_key_value(name).await.map_err(|e| format!("key-value bucket: {e}")),
        }
    }
}

/// Serves requests on `sub`: each in a task of its own, at most [`IN_FLIGHT`]
/// at once; past that, and on any failure, the asker gets `{"error": ...}`.
async fn serve_requests<F, Fut>(mut sub: Subscriber, client: Client, slots: Arc<tokio::sync::Semaphore>, handle: F)
where
    F: Fn(Bytes) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<u8>, String>> + Send + 'static,
{
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else { continue };
        let client = client.clone();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let _ = client.publish(reply, json!({"error": "busy"}).to_string().into()).await;
            continue;
        };
        let work = handle(msg.payload);
        tokio::spawn(async move {
            let body = match tokio::time::timeout(REQUEST_DEADLINE, work).await {
                Ok(Ok(body)) => body,
                Ok(Err(e)) => json!({"error": e}).to_string().into_bytes(),
                Err(_) => json!({"error": "no answer in time"}).to_string().into_bytes(),
            };
            if let Err(e) = client.publish(reply, body.into()).await {
                static WARNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                if may_warn(&WARNED) {
                    log::warn!(event = "nats_reply_failed"; "nats: an answer could not be sent: {e}");
                }
            }
            drop(permit);
        });
    }
}

/// See [`Nats::bucket`].
fn bucket_name(prefix: &str, lease: bool) -> String {
    if lease {
        prefix.to_string()
    } else {
        format!("{prefix}-products")
    }
}

fn header(msg: &async_nats::Message, name: &str) -> Option<u64> {
    msg.headers.as_ref()?.get(name)?.as_str().parse().ok()
}

fn key_name(k: &Key) -> String {
    format!("{}/{}", k.0, k.1.name())
}

fn keys_json(keys: &BTreeSet<Key>) -> Vec<(String, String)> {
    keys.iter().map(|(p, c)| (p.clone(), c.name().to_string())).collect()
}

fn parse_keys(list: Vec<(String, String)>) -> Vec<Key> {
    list.into_iter()
        .take(MAX_INTEREST)
        .filter_map(|(p, c)| Some((p, Channel::parse(&c)?)))
        .filter(|(p, _)| super::is_token(p))
        .collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Interest {
    node: String,
    topics: Vec<(String, String)>,
    /// The edge's `--interest-ttl`, in milliseconds: how long the ingest keeps
    /// this without a renewal (the edge renews every third of it).
    #[serde(default)]
    ttl_ms: u64,
}

/// Topics one edge may declare (more are ignored).
const MAX_INTEREST: usize = 100_000;

/// One warning line per this long for a kind of trouble that can repeat per
/// message (slow consumers, oversized messages); the rest are counted.
const QUIET: Duration = Duration::from_secs(10);

/// Whether a warning of a kind last said at `last` (seconds since `epoch`) may
/// be said now.
fn may_warn(last: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now = START.get_or_init(Instant::now).elapsed().as_secs() + QUIET.as_secs();
    let before = last.load(Relaxed);
    now >= before + QUIET.as_secs() && last.compare_exchange(before, now, Relaxed, Relaxed).is_ok()
}

// ---------------------------------------------------------------- the edge

/// Where one wanted topic stands on an edge.
enum Stage {
    /// Waiting for its seed; live messages held (epoch, seq, payload).
    Seeding { held: VecDeque<(u64, u64, Bytes)>, asked: Option<u64> },
    /// Passing live messages on; the last one's sequence.
    Live { seq: u64 },
}

struct Topic {
    task: JoinHandle<()>,
    stage: Stage,
}

impl Drop for Topic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Edge {
    nats: Nats,
    topics: HashMap<Key, Topic>,
    /// The term of the ingest followed.
    epoch: u64,
    connected: bool,
    lease: Option<Lease>,
    /// When the lease was last seen renewed, and its revision then.
    renewed: Option<(Instant, u64)>,
    /// What shard 0 was last told: data can flow.
    up: bool,
    gen: u64,
    /// The wanted topics, for the task that declares them.
    declared: tokio::sync::watch::Sender<Vec<(String, String)>>,
}

impl Edge {
    fn new(nats: Nats) -> Edge {
        let declared = tokio::sync::watch::Sender::new(Vec::new());
        Edge {
            nats,
            topics: HashMap::new(),
            epoch: 0,
            connected: false,
            lease: None,
            renewed: None,
            up: false,
            gen: 0,
            declared,
        }
    }

    async fn run(mut self, cmds: &mut mpsc::Receiver<Cmd>, inner: &mut mpsc::Receiver<Inner>) {
        self.spawn_lease_reader();
        self.spawn_declarer();
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd).await,
                    None => return,
                },
                Some(msg) = inner.recv() => self.on_inner(msg).await,
            }
        }
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Want(keys) => self.want(keys).await,
            Cmd::Reseed { product, channel } => {
                let live = |k: &Key, t: &Topic| {
                    k.0 == product && channel.is_none_or(|c| c == k.1) && matches!(t.stage, Stage::Live { .. })
                };
                let keys: Vec<Key> = self.topics.iter().filter(|(k, t)| live(k, t)).map(|(k, _)| k.clone()).collect();
                for k in keys {
                    self.reseed(&k);
                }
            }
            Cmd::Forward { node, request, reply } => self.nats.forward(node, request, reply),
            Cmd::History { ask, reply } => {
                let Ok(payload) = serde_json::to_vec(&ask) else { return };
                self.nats.request(self.nats.subjects.history(), payload, |answer| async move {
                    let answer = answer.and_then(|p| match serde_json::from_slice::<serde_json::Value>(&p) {
                        Ok(v) if v.is_array() => Ok(String::from_utf8_lossy(&p).into_owned()),
                        Ok(v) => Err(v["error"].as_str().unwrap_or("a bad answer").to_string()),
                        Err(e) => Err(format!("a bad answer: {e}")),
                    });
                    let _ = reply.send(answer);
                });
            }
            Cmd::Upstream { .. } | Cmd::Products(_) | Cmd::Release(_) => {}
        }
    }

    /// The wanted set changed: subscribe what is new (and seed it), drop what is gone.
    async fn want(&mut self, keys: BTreeSet<Key>) {
        self.topics.retain(|k, _| keys.contains(k));
        for key in keys {
            if self.topics.contains_key(&key) {
                continue;
            }
            let subject = self.nats.subjects.feed(&key.0, key.1);
            let sub = match self.nats.client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    log::warn!(event = "nats_subscribe_failed"; "nats: cannot subscribe {subject}: {e}");
                    continue;
                }
            };
            let task = tokio::spawn(forward_live(sub, key.clone(), self.nats.inner_tx.clone()));
            self.topics
                .insert(key.clone(), Topic { task, stage: Stage::Seeding { held: VecDeque::new(), asked: None } });
            self.ask_seed(&key);
        }
        let keys: BTreeSet<Key> = self.topics.keys().cloned().collect();
        self.declared.send_replace(keys_json(&keys));
        self.nats.link.set_status(|s| s.interest = keys.iter().map(key_name).collect());
    }

    /// Tells the ingests what this edge wants: at once when it changes, when
    /// an ingest asks, and every third of `--interest-ttl` (a renewal). A task
    /// of its own, so that a busy shard 0 (the main loop waiting to hand it
    /// messages) never lets the interest lapse.
    fn spawn_declarer(&self) {
        let (client, subjects, node) =
            (self.nats.client.clone(), self.nats.subjects.clone(), self.nats.link.node.clone());
        let ttl = self.nats.link.cfg.interest_ttl;
        let mut wanted = self.declared.subscribe();
        tokio::spawn(async move {
            let mut asked = client.subscribe(subjects.interest_query()).await.ok();
            loop {
                let query = async {
                    match asked.as_mut() {
                        Some(sub) => sub.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(ttl / 3) => {}
                    changed = wanted.changed() => if changed.is_err() { return },
                    _ = query => {}
                }
                if client.connection_state() != async_nats::connection::State::Connected {
                    continue;
                }
                let topics = wanted.borrow_and_update().clone();
                let body = Interest { node: node.clone(), topics, ttl_ms: ttl.as_millis() as u64 };
                if let Ok(payload) = serde_json::to_vec(&body) {
                    let _ = client.publish(subjects.interest(&node), payload.into()).await;
                }
            }
        });
    }

    /// Asks the active ingest for a topic's first messages (when data can flow).
    fn ask_seed(&mut self, key: &Key) {
        if !self.up {
            return;
        }
        self.gen += 1;
        let gen = self.gen;
        let Some(topic) = self.topics.get_mut(key) else { return };
        let Stage::Seeding { asked, .. } = &mut topic.stage else { return };
        *asked = Some(gen);
        Counters::add(&self.nats.link.counters.seeds, 1);
        let body = json!({"node": self.nats.link.node, "product": key.0, "channel": key.1.name()}).to_string();
        let (inner, key) = (self.nats.inner_tx.clone(), key.clone());
        self.nats.request(self.nats.subjects.seed(), body.into_bytes(), move |answer| async move {
            let result = answer.and_then(|p| match serde_json::from_slice::<SeedReply>(&p) {
                Ok(r) => Ok(r),
                Err(_) => Err(serde_json::from_slice::<serde_json::Value>(&p)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "a bad answer".into())),
            });
            let _ = inner.send(Inner::Seeded { key, gen, result }).await;
        });
    }

    /// Starts a topic over: hold its live messages, ask for its seed.
    fn reseed(&mut self, key: &Key) {
        if let Some(t) = self.topics.get_mut(key) {
            t.stage = Stage::Seeding { held: VecDeque::new(), asked: None };
            self.ask_seed(key);
        }
    }

    fn reseed_all(&mut self) {
        let keys: Vec<Key> = self.topics.keys().cloned().collect();
        for k in keys {
            self.reseed(&k);
        }
    }

    async fn on_inner(&mut self, msg: Inner) {
        match msg {
            Inner::Nats(up) => {
                self.connected = up;
                self.nats.connection_changed(up);
                if up {
                    // Data flows again once the lease is read afresh (on_lease).
                    self.declared.send_modify(|_| {});
                } else {
                    (self.lease, self.renewed) = (None, None);
                    self.update_up(Some("the NATS connection dropped".into())).await;
                }
            }
            Inner::LeaseSeen(seen) => self.on_lease(Some(seen)).await,
            Inner::LeaseUnread => self.on_lease(None).await,
            Inner::Products(list) => {
                let _ = self.nats.ev.send(Ev::Products(list)).await;
            }
            Inner::Live { key, epoch, seq, payload } => self.on_live(key, epoch, seq, payload).await,
            Inner::Seeded { key, gen, result } => self.on_seeded(key, gen, result).await,
            Inner::AskAgain(key) => {
                if let Some(Topic { stage: Stage::Seeding { asked: None, .. }, .. }) = self.topics.get(&key) {
                    self.ask_seed(&key);
                }
            }
            Inner::Lease(..) | Inner::Interest { .. } | Inner::Wants { .. } => {}
        }
    }

    /// The lease as read (`Some`), or not readable this time (`None`: it is
    /// judged by when it was last seen renewed).
    async fn on_lease(&mut self, read: Option<Option<(Lease, u64)>>) {
        let now = Instant::now();
        let unread = read.is_none();
        match read {
            Some(Some((lease, rev))) => {
                if self.renewed.is_none_or(|(_, r)| r != rev) {
                    self.renewed = Some((now, rev));
                }
                self.lease = Some(lease);
            }
            Some(None) => self.lease = None,
            None => {}
        }
        let ttl = self.nats.link.cfg.lease_ttl;
        let fresh = self.renewed.is_some_and(|(at, _)| now.duration_since(at) < ttl) && self.lease.is_some();
        // The live holder's term is followed whatever it is: newer, or lower
        // (a bucket made again numbers from 1). Messages of any other term
        // are dropped from here on.
        if let Some(l) = self.lease.clone().filter(|l| fresh && l.term != 0 && l.term != self.epoch) {
            log::info!(event = "ingest_changed", node = l.node.as_str();
                "nats: following ingest {} (term {})", l.node, l.term);
            self.epoch = l.term;
            if self.up {
                // A new term: everything is seeded afresh from the new ingest.
                self.update_up(Some(format!("the active ingest is now {}", l.node))).await;
            }
        }
        let why = match &self.lease {
            _ if !self.connected => Some("the NATS connection dropped".to_string()),
            Some(l) if !fresh && unread => {
                Some(format!("NATS does not answer: the lease of the active ingest {} is not seen renewed", l.node))
            }
            Some(l) if !fresh => Some(format!("the active ingest {} stopped renewing its lease", l.node)),
            None => Some("no ingest holds the lease".to_string()),
            Some(l) if l.upstream != "connected" => Some(format!("ingest {}'s upstream is {}", l.node, l.upstream)),
            Some(_) => None,
        };
        self.nats.link.set_status(|s| {
            s.active_ingest = self.lease.as_ref().filter(|_| fresh).map(|l| l.node.clone());
            s.epoch = self.epoch;
        });
        self.update_up(why).await;
    }

    /// Data can flow (`None`) or not (and why): shard 0 hears of a change; when
    /// it can again, every topic is seeded afresh.
    async fn update_up(&mut self, why: Option<String>) {
        match why {
            Some(why) if self.up => {
                self.up = false;
                for t in self.topics.values_mut() {
                    t.stage = Stage::Seeding { held: VecDeque::new(), asked: None };
                }
                let _ = self.nats.ev.send(Ev::Down(why)).await;
            }
            None if !self.up && self.connected && self.lease.is_some() => {
                self.up = true;
                let _ = self.nats.ev.send(Ev::Up).await;
                self.reseed_all();
            }
            _ => {}
        }
    }

    async fn on_live(&mut self, key: Key, epoch: u64, seq: u64, payload: Bytes) {
        Counters::add(&self.nats.link.counters.received, 1);
        // Another term's: an old ingest's (fenced), or a new one's that the
        // lease reader has not seen yet (it then seeds every topic afresh,
        // and the seeds cover what is dropped here).
        if epoch != self.epoch {
            Counters::add(&self.nats.link.counters.fenced, 1);
            return;
        }
        let Some(topic) = self.topics.get_mut(&key) else { return };
        match &mut topic.stage {
            Stage::Seeding { held, asked } => {
                held.push_back((epoch, seq, payload));
                if held.len() > SEED_HOLD {
                    held.clear();
                    if asked.is_some() {
                        // Asked again after the drop: the answer covers what was dropped.
                        self.ask_seed(&key);
                    }
                }
            }
            Stage::Live { seq: last } => {
                if seq <= *last {
                    return;
                }
                if seq != *last + 1 {
                    static WARNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                    if may_warn(&WARNED) {
                        log::warn!(event = "nats_gap", product = key.0.as_str();
                            "nats: {} skipped from {} to {}; seeding it afresh (counted in hedgehog_nats_gaps_total)",
                            key_name(&key), *last, seq);
                    }
                    Counters::add(&self.nats.link.counters.gaps, 1);
                    topic.stage = Stage::Seeding { held: VecDeque::from([(epoch, seq, payload)]), asked: None };
                    self.ask_seed(&key);
                    return;
                }
                *last = seq;
                if let Some(m) = FeedMessage::new(&payload) {
                    let _ = self.nats.ev.send(Ev::Feed(m)).await;
                }
            }
        }
    }

    async fn on_seeded(&mut self, key: Key, gen: u64, result: Result<SeedReply, String>) {
        let Some(topic) = self.topics.get_mut(&key) else { return };
        let Stage::Seeding { held, asked } = &mut topic.stage else { return };
        if *asked != Some(gen) {
            return;
        }
        let reply = match result {
            // Another term's answer is asked again (the lease reader catches up).
            Ok(r) if r.epoch == self.epoch => r,
            Ok(_) | Err(_) => {
                static WARNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                if let (Err(e), true) = (&result, may_warn(&WARNED)) {
                    log::warn!(event = "nats_seed_failed"; "nats: seeding {} failed: {e}; asking again", key_name(&key));
                }
                // An old term's answer, or none: ask again, after a pause.
                *asked = None;
                let inner = self.nats.inner_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = inner.send(Inner::AskAgain(key)).await;
                });
                return;
            }
        };
        if let Some((message, reason)) = reply.refused {
            self.topics.remove(&key);
            let _ = self.nats.ev.send(Ev::Refused { product: key.0, message, reason }).await;
            return;
        }
        let held = std::mem::take(held);
        let parse = |v: Vec<Box<serde_json::value::RawValue>>| -> Vec<FeedMessage> {
            v.iter().filter_map(|r| FeedMessage::new(r.get().as_bytes())).collect()
        };
        let (first, history) = (parse(reply.first), parse(reply.history));
        let _ = self.nats.ev.send(Ev::Seed { product: key.0.clone(), channel: key.1, first, history }).await;
        let mut last = reply.seq;
        for (epoch, seq, payload) in held {
            if epoch != reply.epoch || seq <= last {
                continue;
            }
            if seq != last + 1 {
                Counters::add(&self.nats.link.counters.gaps, 1);
                self.reseed(&key);
                return;
            }
            last = seq;
            if let Some(m) = FeedMessage::new(&payload) {
                let _ = self.nats.ev.send(Ev::Feed(m)).await;
            }
        }
        if let Some(t) = self.topics.get_mut(&key) {
            t.stage = Stage::Live { seq: last };
        }
    }

    /// Reads the lease (and the product list) twice a second.
    fn spawn_lease_reader(&self) {
        let (client, inner, prefix, ttl) = (
            self.nats.client.clone(),
            self.nats.inner_tx.clone(),
            self.nats.link.cfg.prefix.clone(),
            self.nats.link.cfg.lease_ttl,
        );
        tokio::spawn(async move {
            let mut store: Option<kv::Store> = None;
            let mut listing: Option<kv::Store> = None;
            let mut products: Option<Bytes> = None;
            let every = Duration::from_millis(250).min(ttl / 4);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Each read within a third of the lease (a second at most): a NATS
            // server that hangs (not gone: the connection stays up) must not
            // hide that the lease is no longer seen renewed.
            let patience = (ttl / 3).min(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if client.connection_state() != async_nats::connection::State::Connected {
                    let _ = inner.send(Inner::LeaseUnread).await;
                    continue;
                }
                if store.is_none() || listing.is_none() {
                    let js = async_nats::jetstream::new(client.clone());
                    let open = async {
                        let store = js.get_key_value(bucket_name(&prefix, true)).await.ok();
                        (store, js.get_key_value(bucket_name(&prefix, false)).await.ok())
                    };
                    match tokio::time::timeout(patience, open).await {
                        Ok((s, l)) => (store, listing) = (s, l),
                        Err(_) => {
                            let _ = inner.send(Inner::LeaseUnread).await;
                            continue;
                        }
                    }
                }
                let Some(kv) = store.clone() else {
                    let _ = inner.send(Inner::LeaseSeen(None)).await;
                    continue;
                };
                match tokio::time::timeout(patience, kv.entry("ingest")).await {
                    Ok(Ok(Some(e))) if e.operation == kv::Operation::Put => {
                        let lease = serde_json::from_slice::<Lease>(&e.value).ok();
                        let _ = inner.send(Inner::LeaseSeen(lease.map(|l| (l, e.revision)))).await;
                    }
                    Ok(Ok(_)) => {
                        let _ = inner.send(Inner::LeaseSeen(None)).await;
                    }
                    Ok(Err(_)) => {
                        store = None;
                        let _ = inner.send(Inner::LeaseUnread).await;
                    }
                    Err(_) => {
                        let _ = inner.send(Inner::LeaseUnread).await;
                    }
                }
                let Some(listing) = &listing else { continue };
                if let Ok(Ok(Some(e))) = tokio::time::timeout(patience, listing.entry("products")).await {
                    if products.as_ref() != Some(&e.value) {
                        if let Ok(list) = serde_json::from_slice::<Vec<Product>>(&e.value) {
                            let _ = inner.send(Inner::Products(list)).await;
                        }
                        products = Some(e.value);
                    }
                }
            }
        });
    }
}

/// One topic's subscription: its messages, in order, to the edge's loop.
async fn forward_live(mut sub: Subscriber, key: Key, inner: mpsc::Sender<Inner>) {
    while let Some(msg) = sub.next().await {
        let (Some(epoch), Some(seq)) = (header(&msg, EPOCH), header(&msg, SEQ)) else { continue };
        if inner.send(Inner::Live { key: key.clone(), epoch, seq, payload: msg.payload }).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- the ingest

/// One edge's declared interest.
struct EdgeInterest {
    topics: Vec<Key>,
    /// When it was last declared (renewed).
    at: Instant,
    /// How long it lives unrenewed: the edge's own `--interest-ttl`, or this
    /// process's for an edge that does not say.
    ttl: Duration,
}

struct Ingest {
    nats: Nats,
    /// This process's term while it holds the lease.
    term: Option<u64>,
    /// Until when the lease is surely still this process's.
    valid_until: Option<Instant>,
    /// Per edge: its topics and when it last declared them.
    edges: HashMap<String, EdgeInterest>,
    /// The union last sent to shard 0.
    union: BTreeSet<Key>,
    /// The active ingest's request subscriptions (seed, history).
    serving: Vec<JoinHandle<()>>,
    upstream_connected: Arc<std::sync::atomic::AtomicBool>,
    products: Arc<std::sync::Mutex<Option<Bytes>>>,
    connected: bool,
    /// To the lease keeper: give the lease up, then say so.
    release: mpsc::Sender<std::sync::mpsc::Sender<()>>,
    released: Option<mpsc::Receiver<std::sync::mpsc::Sender<()>>>,
}

impl Ingest {
    fn new(nats: Nats) -> Ingest {
        let (release, released) = mpsc::channel(1);
        Ingest {
            release,
            released: Some(released),
            nats,
            term: None,
            valid_until: None,
            edges: HashMap::new(),
            union: BTreeSet::new(),
            serving: Vec::new(),
            upstream_connected: Arc::default(),
            products: Arc::default(),
            connected: false,
        }
    }

    async fn run(
        mut self,
        cmds: &mut mpsc::Receiver<Cmd>,
        publish: &mut mpsc::Receiver<Publish>,
        inner: &mut mpsc::Receiver<Inner>,
    ) {
        self.nats.link.set_status(|s| s.lease = Some("standby"));
        let released = self.released.take();
        self.spawn_lease_keeper(released);
        self.spawn_interest_listener();
        let mut sweep = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => return,
                },
                Some(p) = publish.recv() => self.publish(p).await,
                Some(msg) = inner.recv() => self.on_inner(msg).await,
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Forward { node, request, reply } => self.nats.forward(node, request, reply),
            Cmd::Upstream { connected } => {
                self.upstream_connected.store(connected, std::sync::atomic::Ordering::Relaxed)
            }
            Cmd::Products(list) => {
                if let (Ok(body), Ok(mut p)) = (serde_json::to_vec(&list), self.products.lock()) {
                    *p = Some(body.into());
                }
            }
            Cmd::History { reply, .. } => {
                let _ = reply.send(Err("an ingest answers history itself".into()));
            }
            Cmd::Release(done) => {
                // The publish fence closes first; the keeper then deletes the entry.
                self.valid_until = None;
                if self.release.try_send(done).is_err() {
                    log::warn!(event = "lease_release_failed"; "nats: could not give the lease up");
                }
            }
            Cmd::Want(_) | Cmd::Reseed { .. } => {}
        }
    }

    /// Publishes one upstream message, if this process still holds the lease
    /// of the term it was dispatched under (fencing: an ingest whose lease
    /// lapsed, or that lost it, publishes nothing more).
    async fn publish(&mut self, p: Publish) {
        let valid = self.valid_until.is_some_and(|t| Instant::now() < t);
        if self.term != Some(p.epoch) || !valid || !self.connected {
            Counters::add(&self.nats.link.counters.fenced, 1);
            return;
        }
        let mut headers = HeaderMap::new();
        headers.insert(EPOCH, p.epoch.to_string().as_str());
        headers.insert(SEQ, p.seq.to_string().as_str());
        let subject = self.nats.subjects.feed(&p.product, p.channel);
        match self.nats.client.publish_with_headers(subject, headers, p.body).await {
            Ok(()) => Counters::add(&self.nats.link.counters.published, 1),
            Err(e) => {
                Counters::add(&self.nats.link.counters.fenced, 1);
                static WARNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                if may_warn(&WARNED) {
                    log::warn!(event = "nats_publish_failed"; "nats: a feed message was not published: {e}");
                }
            }
        }
    }

    async fn on_inner(&mut self, msg: Inner) {
        match msg {
            Inner::Nats(up) => {
                self.connected = up;
                self.nats.connection_changed(up);
                if up {
                    // Edges could not declare while NATS was away: their leases
                    // run from now.
                    let now = Instant::now();
                    self.edges.values_mut().for_each(|e| e.at = now);
                    let _ = self.nats.client.publish(self.nats.subjects.interest_query(), Bytes::new()).await;
                }
            }
            Inner::Lease(term, why) => self.on_lease(term, why).await,
            Inner::Interest { node, topics, ttl } => {
                let ttl = ttl.unwrap_or(self.nats.link.cfg.interest_ttl);
                self.edges.insert(node, EdgeInterest { topics, at: Instant::now(), ttl });
                self.send_union().await;
            }
            Inner::Wants { node, key, reply } => {
                let ttl = self.nats.link.cfg.interest_ttl;
                let e = self.edges.entry(node).or_insert_with(|| EdgeInterest {
                    topics: Vec::new(),
                    at: Instant::now(),
                    ttl,
                });
                e.at = Instant::now();
                if !e.topics.contains(&key) {
                    e.topics.push(key.clone());
                }
                self.send_union().await;
                let (product, channel) = key;
                let _ = self.nats.ev.send(Ev::SeedAsk { product, channel, reply }).await;
            }
            _ => {}
        }
    }

    async fn on_lease(&mut self, held: Option<(u64, Instant)>, why: String) {
        if let Some((_, until)) = held {
            self.valid_until = Some(until);
        }
        let term = held.map(|(t, _)| t);
        if term == self.term {
            return;
        }
        self.term = term;
        match term {
            Some(t) => {
                log::info!(event = "lease_taken", term = t; "nats: this ingest is active (term {t}): {why}");
                Counters::add(&self.nats.link.counters.lease_takeovers, 1);
                self.serve_ingest_requests().await;
                let _ = self.nats.client.publish(self.nats.subjects.interest_query(), Bytes::new()).await;
            }
            None => {
                log::warn!(event = "lease_lost"; "nats: this ingest is standby: {why}");
                self.valid_until = None;
                self.serving.drain(..).for_each(|t| t.abort());
            }
        }
        self.nats.link.set_status(|s| {
            s.lease = Some(if term.is_some() { "active" } else { "standby" });
            s.epoch = term.unwrap_or(s.epoch);
            // A standby's keeper reads who holds it, at its next try.
            s.active_ingest = term.map(|_| self.nats.link.node.clone());
        });
        let _ = self.nats.ev.send(Ev::Lease(term)).await;
    }

    /// Drops the interest of edges that stopped renewing it.
    async fn sweep(&mut self) {
        if !self.connected {
            return;
        }
        let before = self.edges.len();
        self.edges.retain(|node, e| {
            let live = e.at.elapsed() < e.ttl;
            if !live {
                log::info!(event = "interest_expired", node = node.as_str(); "nats: edge {node}'s interest expired");
            }
            live
        });
        if self.edges.len() != before {
            self.send_union().await;
        }
    }

    async fn send_union(&mut self) {
        let union: BTreeSet<Key> = self.edges.values().flat_map(|e| e.topics.iter().cloned()).collect();
        if union == self.union {
            return;
        }
        self.union = union.clone();
        self.nats.link.set_status(|s| s.interest = union.iter().map(key_name).collect());
        let _ = self.nats.ev.send(Ev::Interest(union)).await;
    }

    /// While active: answer seeds and history.
    async fn serve_ingest_requests(&mut self) {
        let (client, ev, slots) = (self.nats.client.clone(), self.nats.ev.clone(), self.nats.slots.clone());
        if let Ok(sub) = self.nats.client.subscribe(self.nats.subjects.seed()).await {
            let (inner, link) = (self.nats.inner_tx.clone(), self.nats.link.clone());
            self.serving.push(tokio::spawn(serve_requests(sub, client.clone(), slots.clone(), move |payload| {
                let (inner, link) = (inner.clone(), link.clone());
                async move { seed(payload, inner, &link).await }
            })));
        }
        if let Ok(sub) = self.nats.client.subscribe(self.nats.subjects.history()).await {
            self.serving.push(tokio::spawn(serve_requests(sub, client, slots, move |payload| {
                let ev = ev.clone();
                async move {
                    let ask = serde_json::from_slice(&payload).map_err(|e| format!("bad history request: {e}"))?;
                    let (reply, answer) = oneshot::channel();
                    ev.send(Ev::History { ask, reply }).await.map_err(|_| "shutting down".to_string())?;
                    answer.await.map(String::into_bytes).map_err(|_| "no answer".to_string())
                }
            })));
        }
    }

    /// Keeps (or tries to take) the lease: every second while active, every
    /// 250 ms while standby.
    fn spawn_lease_keeper(&self, release: Option<mpsc::Receiver<std::sync::mpsc::Sender<()>>>) {
        let keeper = Keeper {
            nats: self.nats.clone(),
            ttl: self.nats.link.cfg.lease_ttl,
            store: None,
            listing: None,
            held: None,
            bucket_error: None,
            published_products: None,
            upstream: self.upstream_connected.clone(),
            products: self.products.clone(),
        };
        tokio::spawn(keeper.run(release));
    }

    fn spawn_interest_listener(&self) {
        let (client, inner, all, query) = (
            self.nats.client.clone(),
            self.nats.inner_tx.clone(),
            self.nats.subjects.interest_all(),
            self.nats.subjects.interest_query(),
        );
        tokio::spawn(async move {
            let Ok(mut sub) = client.subscribe(all).await else { return };
            while let Some(msg) = sub.next().await {
                if msg.subject.as_str() == query {
                    continue;
                }
                if let Ok(i) = serde_json::from_slice::<Interest>(&msg.payload) {
                    let topics = parse_keys(i.topics);
                    let ttl = (i.ttl_ms > 0).then(|| Duration::from_millis(i.ttl_ms.min(3_600_000)));
                    let _ = inner.send(Inner::Interest { node: i.node, topics, ttl }).await;
                }
            }
        });
    }
}

/// The lease this ingest holds: its term, the entry's revision, and when the
/// last renewal that NATS confirmed was sent.
struct Held {
    term: u64,
    rev: u64,
    confirmed: Instant,
}

/// Takes and keeps the lease (an ingest's task).
struct Keeper {
    nats: Nats,
    /// The lease's time to live: `--lease-ttl`, or the bucket's own max_age
    /// when that is shorter (a bucket made by a process with another setting).
    ttl: Duration,
    store: Option<kv::Store>,
    listing: Option<kv::Store>,
    held: Option<Held>,
    bucket_error: Option<String>,
    published_products: Option<Bytes>,
    upstream: Arc<std::sync::atomic::AtomicBool>,
    products: Arc<std::sync::Mutex<Option<Bytes>>>,
}

impl Keeper {
    /// Every second while active, four times a second while standby; until
    /// told to give the lease up (at shutdown), then never again.
    async fn run(mut self, mut release: Option<mpsc::Receiver<std::sync::mpsc::Sender<()>>>) {
        loop {
            let pause = Duration::from_millis(if self.held.is_some() { 1000 } else { 250 });
            let asked = async {
                match release.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                Some(done) = asked => {
                    self.give_up().await;
                    let _ = done.send(());
                    return;
                }
            }
            self.turn().await;
        }
    }

    /// Stopping: the entry goes, only if it is still ours.
    async fn give_up(&mut self) {
        if let (Some(h), Some(kv)) = (self.held.take(), &self.store) {
            let delete = kv.delete_expect_revision("ingest", Some(h.rev));
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), delete).await {
                log::info!(event = "lease_released"; "nats: gave the lease up");
            }
        }
    }

    async fn lost(&mut self, why: String) {
        self.held = None;
        let _ = self.nats.inner_tx.send(Inner::Lease(None, why)).await;
    }

    async fn turn(&mut self) {
        // The lease lapses by this process's own clock, whatever NATS says or
        // cannot say: past it another ingest may hold it.
        if let Some(h) = &self.held {
            if Instant::now() >= self.until(h.confirmed) {
                let why = format!("no renewal confirmed within {:?}: the lease has lapsed", self.ttl);
                self.lost(why).await;
            }
        }
        if self.nats.client.connection_state() != async_nats::connection::State::Connected {
            return;
        }
        if !self.open().await {
            return;
        }
        let Some(kv) = self.store.clone() else { return };
        let up = if self.upstream.load(std::sync::atomic::Ordering::Relaxed) { "connected" } else { "connecting" };
        let node = self.nats.link.node.clone();
        let sent = Instant::now();
        match self.held.as_ref().map(|h| (h.term, h.rev)) {
            Some((term, rev)) => {
                let value = json!({"node": node, "term": term, "upstream": up}).to_string();
                match tokio::time::timeout(Duration::from_secs(1), kv.update("ingest", value.into(), rev)).await {
                    Ok(Ok(rev)) => {
                        self.held = Some(Held { term, rev, confirmed: sent });
                        let until = self.until(sent);
                        let _ = self.nats.inner_tx.send(Inner::Lease(Some((term, until)), String::new())).await;
                    }
                    Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        // A renewal given up on may have been applied after all:
                        // if the entry is still this term's, it is ours.
                        match kv.entry("ingest").await {
                            Ok(Some(e)) if Self::is(&e, &node, term) => {
                                if let Some(h) = &mut self.held {
                                    h.rev = e.revision;
                                }
                            }
                            _ => self.lost("another ingest holds the lease".into()).await,
                        }
                    }
                    // The bucket may be gone (a NATS server without its store):
                    // opened or made again next time.
                    Ok(Err(_)) => (self.store, self.listing) = (None, None),
                    Err(_) => {}
                }
                self.put_products().await;
            }
            None => {
                // The term is the revision that creates the entry: written into
                // the value at the first renewal.
                let value = json!({"node": node, "term": 0, "upstream": "connecting"}).to_string();
                match tokio::time::timeout(Duration::from_secs(1), kv.create("ingest", value.into())).await {
                    Ok(Ok(rev)) => {
                        self.held = Some(Held { term: rev, rev, confirmed: sent });
                        self.published_products = None;
                        let why = "no other ingest held it".to_string();
                        let until = self.until(sent);
                        let _ = self.nats.inner_tx.send(Inner::Lease(Some((rev, until)), why)).await;
                    }
                    Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                        // Another holds it: who, for /healthz.
                        let holder = match kv.entry("ingest").await {
                            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                                serde_json::from_slice::<Lease>(&e.value).ok().map(|l| l.node)
                            }
                            _ => None,
                        };
                        self.nats.link.set_status(|s| s.active_ingest = holder);
                    }
                    Ok(Err(_)) => (self.store, self.listing) = (None, None),
                    Err(_) => {}
                }
            }
        }
    }

    /// Until when a renewal sent at `sent` keeps the lease surely ours: the
    /// server counts the entry's age from when it received the request, which
    /// was after `sent`; less a fifth for the clocks' rates.
    fn until(&self, sent: Instant) -> Instant {
        sent + self.ttl.saturating_sub(self.ttl / 5)
    }

    fn is(e: &kv::Entry, node: &str, term: u64) -> bool {
        e.operation == kv::Operation::Put
            && serde_json::from_slice::<Lease>(&e.value).is_ok_and(|l| l.node == node && l.term == term)
    }

    /// Opens (or makes) both buckets; false if it cannot (said once).
    async fn open(&mut self) -> bool {
        if self.store.is_some() && self.listing.is_some() {
            return true;
        }
        match (self.nats.bucket(true).await, self.nats.bucket(false).await) {
            (Ok(s), Ok(l)) => {
                // A bucket made with a shorter time to live than ours lets
                // entries go sooner than we would count: count by it.
                if let Ok(status) = s.status().await {
                    let theirs = status.max_age();
                    if !theirs.is_zero() && theirs < self.nats.link.cfg.lease_ttl {
                        log::warn!(event = "lease_ttl_mismatch";
                            "nats: the lease bucket's entries live {theirs:?}, less than --lease-ttl; counting by the bucket");
                    }
                    self.ttl = match theirs.is_zero() {
                        true => self.nats.link.cfg.lease_ttl,
                        false => theirs.min(self.nats.link.cfg.lease_ttl),
                    };
                }
                (self.store, self.listing, self.bucket_error) = (Some(s), Some(l), None);
                true
            }
            (Err(e), _) | (_, Err(e)) => {
                // Said once, not four times a second (JetStream off, say).
                if self.bucket_error.as_ref() != Some(&e) {
                    log::warn!(event = "nats_bucket_failed"; "nats: {e} (is JetStream on? nats-server -js); trying again");
                    self.bucket_error = Some(e);
                }
                false
            }
        }
    }

    /// The feed's product list, for the edges, when it changed.
    async fn put_products(&mut self) {
        let p = self.products.lock().ok().and_then(|p| p.clone());
        let (Some(p), Some(listing)) = (p, &self.listing) else { return };
        if self.published_products.as_ref() == Some(&p) {
            return;
        }
        if listing.put("products", p.clone()).await.is_ok() {
            self.published_products = Some(p);
        }
    }
}

/// A seed request: the asking edge's interest in the topic counts from now
/// (so the ingest subscribes upstream even before the edge's next
/// declaration), then shard 0 answers.
async fn seed(payload: Bytes, inner: mpsc::Sender<Inner>, link: &Link) -> Result<Vec<u8>, String> {
    #[derive(serde::Deserialize)]
    struct Ask {
        node: String,
        product: String,
        channel: String,
    }
    let ask: Ask = serde_json::from_slice(&payload).map_err(|e| format!("bad seed request: {e}"))?;
    let channel = Channel::parse(&ask.channel).ok_or("bad seed request: no such channel")?;
    if !super::is_token(&ask.product) {
        return Err("bad seed request: not a product".into());
    }
    let (reply, answer) = oneshot::channel();
    let wants = Inner::Wants { node: ask.node, key: (ask.product, channel), reply };
    inner.send(wants).await.map_err(|_| "shutting down".to_string())?;
    let a = answer.await.map_err(|_| "no answer".to_string())?;
    let raw = |v: Vec<Vec<u8>>| -> Vec<Box<serde_json::value::RawValue>> {
        v.into_iter()
            .filter_map(|b| String::from_utf8(b).ok())
            .filter_map(|s| serde_json::value::RawValue::from_string(s).ok())
            .collect()
    };
    let mut reply =
        SeedReply { epoch: a.epoch, seq: a.seq, first: raw(a.first), history: Vec::new(), refused: a.refused };
    // Within what NATS carries: the history, newest kept, as much as fits
    // (a client's `?replay=` then gets less than asked); the first messages
    // too, else nothing but the position (the live ones still come).
    let max = link.max_payload.load(std::sync::atomic::Ordering::Relaxed);
    let room = if max == 0 { usize::MAX } else { max.saturating_sub(1024) };
    let size = |r: &SeedReply| serde_json::to_vec(r).map_or(usize::MAX, |v| v.len());
    let a_first_empty = reply.first.is_empty();
    if size(&reply) > room {
        reply.first.clear();
    }
    let mut left = room.saturating_sub(size(&reply));
    let history = raw(a.history);
    let keep = history
        .iter()
        .rev()
        .take_while(|m| {
            let n = m.get().len() + 1;
            let fits = n <= left;
            left = left.saturating_sub(n);
            fits
        })
        .count();
    if keep < history.len() || reply.first.is_empty() != a_first_empty {
        Counters::add(&link.counters.oversize, 1);
        static WARNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if may_warn(&WARNED) {
            log::warn!(event = "nats_oversize";
                "nats: a seed was cut to the NATS server's max_payload ({max} bytes): {} of {} history messages{}; raise max_payload",
                keep, history.len(), if reply.first.is_empty() && !a_first_empty { ", and no first messages" } else { "" });
        }
    }
    let skip = history.len() - keep;
    reply.history = history.into_iter().skip(skip).collect();
    serde_json::to_vec(&reply).map_err(|e| e.to_string())
}
