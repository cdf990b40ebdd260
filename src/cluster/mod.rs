//! Several nodes over NATS: `--role ingest` holds the one upstream connection
//! (while it holds the lease) and publishes the feed; `--role edge` serves
//! clients from NATS; REST calls naming another node's client are forwarded.
//!
//! The NATS client (async-nats) runs on tokio, on a thread of its own
//! ([`start`]). The shards never touch it: shard 0 and the NATS thread talk over
//! bounded tokio channels, which a glommio task can await like any future.
//!
//! - [`Cmd`]: any shard to the NATS thread (2,048). A shard that finds it full
//!   waits, within its request's deadline (REST forwarding answers 503 past it).
//! - [`Publish`]: an ingest's shard 0 to the NATS thread (8,192). The dispatcher
//!   reserves a slot before it takes each upstream message, so when NATS is
//!   slower than the feed the upstream reader waits (and the backlog waits in
//!   the upstream socket), as with a slow shard.
//! - [`Ev`]: the NATS thread to shard 0 (8,192). The NATS thread waits for room:
//!   on an edge, the per-subject subscribers then fill (async-nats holds 65,536
//!   messages each), then the server drops for the slow consumer; the gap shows
//!   in the subject's sequence numbers and the topic is seeded afresh.
//!
//! Subjects, under `--nats-prefix` (`hedgehog`):
//!
//! | subject | what |
//! |---|---|
//! | `P.feed.{product}.{channel}` | every upstream message, unchanged; headers `Hedgehog-Epoch` (the lease's term) and `Hedgehog-Seq` (per subject and term, from 1) |
//! | `P.interest.{node}` | an edge's wanted topics, renewed every `--interest-ttl`/3 |
//! | `P.interest.query` | a new active ingest asks every edge to declare now |
//! | `P.ingest.seed` | request: what a new subscriber of a topic gets first, its history, and the sequence it is good up to |
//! | `P.ingest.history` | request: `/api/v1/history` answered by the active ingest |
//! | `P.node.{node}.rest` | request: a REST call for a client of `node` |
//!
//! and the key-value bucket `P` holds `ingest` (the lease: holder, term, upstream
//! state) and `products` (the feed's product list, for the edges).

mod nats;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

pub use nats::start;

use crate::protocol::{Channel, Product};
use crate::upstream::FeedMessage;

/// What a process is among several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// One process: the upstream and the clients (no NATS).
    All,
    /// Holds the upstream (while it holds the lease) and publishes it.
    Ingest,
    /// Serves clients from what the ingest publishes.
    Edge,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s.trim() {
            "all" => Ok(Role::All),
            "ingest" => Ok(Role::Ingest),
            "edge" => Ok(Role::Edge),
            other => Err(format!("--role {other:?}: use all, ingest or edge")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Ingest => "ingest",
            Role::Edge => "edge",
        }
    }
}

/// `--nats` and its companions.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// NATS servers (`nats://host:port`, `tls://...`); several for a cluster.
    pub urls: Vec<String>,
    /// A NATS credentials file (`--nats-creds`).
    pub creds: Option<PathBuf>,
    /// An extra CA for `tls://` servers (`--nats-ca`).
    pub ca: Option<PathBuf>,
    /// The subjects' first token and the bucket's name.
    pub prefix: String,
    /// The lease's time to live: a standby takes over this long after the
    /// active ingest's last renewal (renewals come every second).
    pub lease_ttl: Duration,
    /// An edge's interest lives this long unless renewed.
    pub interest_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            urls: Vec::new(),
            creds: None,
            ca: None,
            prefix: "hedgehog".into(),
            lease_ttl: Duration::from_secs(3),
            interest_ttl: Duration::from_secs(10),
        }
    }
}

/// Whether `s` may be one token of a subject (a prefix, a product id).
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A topic as the NATS thread keys it.
pub type Key = (String, Channel);

/// One upstream message for NATS (an ingest's shard 0 to the NATS thread).
pub struct Publish {
    pub product: String,
    pub channel: Channel,
    /// The lease term it was dispatched under: published only while it is
    /// still this process's.
    pub epoch: u64,
    pub seq: u64,
    pub body: bytes::Bytes,
}

/// A REST call carried to the node of the client it names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The node it came from (it is never forwarded again).
    pub from: String,
}

/// That node's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// `/api/v1/history` as it travels to the active ingest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryAsk {
    pub product: String,
    pub channel: String,
    pub limit: usize,
    /// `None`: all; else `sequence` or `time` and its value.
    pub since: Option<(String, i64)>,
}

/// The active ingest's answer to a seed request.
#[derive(Debug, Serialize, Deserialize)]
pub struct SeedReply {
    pub epoch: u64,
    /// The last message published on the topic's subject that this answer
    /// covers: live messages up to it are in it (or older than it).
    pub seq: u64,
    /// What a fresh subscriber gets first, raw.
    pub first: Vec<Box<RawValue>>,
    /// The topic's kept history, oldest first, raw.
    pub history: Vec<Box<RawValue>>,
    /// The feed refuses the product: the Coinbase error's message and reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<(String, String)>,
}

/// What the active ingest's shard 0 answers a seed with.
pub struct SeedAnswer {
    pub epoch: u64,
    pub seq: u64,
    pub first: Vec<Vec<u8>>,
    pub history: Vec<Vec<u8>>,
    /// The feed does not list the product: the Coinbase error's message and reason.
    pub refused: Option<(String, String)>,
}

/// From any shard to the NATS thread.
pub enum Cmd {
    /// An edge's wanted topics, whole.
    Want(BTreeSet<Key>),
    /// An edge asks afresh for a topic, or every wanted topic of a product
    /// (a gap), unless its seed is already on the way.
    Reseed { product: String, channel: Option<Channel> },
    /// A REST call for a client of `node`.
    Forward { node: String, request: ForwardedRequest, reply: oneshot::Sender<Result<ForwardedResponse, String>> },
    /// `/api/v1/history` on an edge.
    History { ask: HistoryAsk, reply: oneshot::Sender<Result<String, String>> },
    /// An ingest's upstream is (not) connected: the lease says so to the edges.
    Upstream { connected: bool },
    /// An ingest's feed listed its products.
    Products(Vec<Product>),
    /// The process is stopping: an active ingest gives the lease up (a
    /// standby takes it at once, not a lease's time later), then says so.
    Release(std::sync::mpsc::Sender<()>),
}

/// From the NATS thread to shard 0.
pub enum Ev {
    /// Edge: a feed message, in its subject's order.
    Feed(FeedMessage),
    /// Edge: a topic's first messages and history, before its next live message.
    Seed { product: String, channel: Channel, first: Vec<FeedMessage>, history: Vec<FeedMessage> },
    /// Edge: data can flow (NATS, a live lease, its ingest's upstream connected).
    Up,
    /// Edge: it cannot, and why.
    Down(String),
    /// Edge: the feed's products, as the ingest saw them listed.
    Products(Vec<Product>),
    /// Edge: the feed refuses a product (message, reason).
    Refused { product: String, message: String, reason: String },
    /// Ingest: this process holds the lease with this term (`Some`), or not.
    Lease(Option<u64>),
    /// Ingest: the topics the edges want, whole.
    Interest(BTreeSet<Key>),
    /// Ingest: a seed request.
    SeedAsk { product: String, channel: Channel, reply: oneshot::Sender<SeedAnswer> },
    /// Ingest: a history request.
    History { ask: HistoryAsk, reply: oneshot::Sender<String> },
    /// Any role: a REST call forwarded here.
    Rest { request: ForwardedRequest, reply: oneshot::Sender<ForwardedResponse> },
}

/// What `/healthz` shows of the cluster.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub nats: &'static str,
    /// Ingest: "active" or "standby".
    pub lease: Option<&'static str>,
    pub active_ingest: Option<String>,
    pub epoch: u64,
    pub interest: Vec<String>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub received: AtomicU64,
    /// Messages not published or not relayed because of the lease: an old
    /// term's, or this ingest's after its lease lapsed.
    pub fenced: AtomicU64,
    /// Topics seeded (first messages asked of the ingest).
    pub seeds: AtomicU64,
    /// Gaps in a subject's sequence (then seeded afresh).
    pub gaps: AtomicU64,
    pub forwarded_ok: AtomicU64,
    pub forwarded_failed: AtomicU64,
    pub lease_takeovers: AtomicU64,
    /// Messages async-nats dropped for a slow subscription (its buffer full).
    pub slow_consumer: AtomicU64,
    /// Messages larger than the NATS server's max_payload: not published
    /// (ingest), or a seed's history cut to fit.
    pub oversize: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Bounds of the channels (see the module's text for what each does when full).
pub const CMD_QUEUE: usize = 2048;
pub const PUBLISH_QUEUE: usize = 8192;
pub const EV_QUEUE: usize = 8192;
/// How long a forwarded REST call or a request to the ingest may take.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// The shards' handle on the NATS thread.
pub struct Link {
    pub role: Role,
    pub node: String,
    pub cfg: ClusterConfig,
    pub cmd: mpsc::Sender<Cmd>,
    /// Ingest: shard 0's queue of messages to publish.
    pub publish: Option<mpsc::Sender<Publish>>,
    pub status: Mutex<Status>,
    pub counters: Arc<Counters>,
    /// The NATS server's largest message (0 until connected): an ingest
    /// publishes nothing larger, and cuts a seed's history to fit.
    pub max_payload: Arc<std::sync::atomic::AtomicUsize>,
}

impl Link {
    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub(crate) fn set_status(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Forwards a REST call to `node`, within [`REQUEST_DEADLINE`].
    pub async fn forward(&self, node: &str, request: ForwardedRequest) -> Result<ForwardedResponse, String> {
        let (reply, answer) = oneshot::channel();
        let cmd = Cmd::Forward { node: node.to_string(), request, reply };
        self.ask(cmd, answer).await?
    }

    /// At shutdown (after the shards stopped): an active ingest gives its
    /// lease up, waiting at most `within` for NATS to take it.
    pub fn release(&self, within: Duration) {
        let (done, released) = std::sync::mpsc::channel();
        if self.role == Role::Ingest && self.cmd.try_send(Cmd::Release(done)).is_ok() {
            let _ = released.recv_timeout(within);
        }
    }

    /// `/api/v1/history`, asked of the active ingest.
    pub async fn history(&self, ask: HistoryAsk) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.ask(Cmd::History { ask, reply }, answer).await?
    }

    async fn ask<T>(&self, cmd: Cmd, answer: oneshot::Receiver<T>) -> Result<T, String> {
        let work = async {
            self.cmd.send(cmd).await.map_err(|_| "the NATS thread has ended".to_string())?;
            answer.await.map_err(|_| "no answer".to_string())
        };
        let deadline = async {
            glommio::timer::sleep(REQUEST_DEADLINE + Duration::from_secs(1)).await;
            Err(format!("no answer within {}s", REQUEST_DEADLINE.as_secs() + 1))
        };
        futures_lite::future::or(work, deadline).await
    }
}
