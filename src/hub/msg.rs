//! What shards tell each other, and what the hub answers: operations on a
//! client's subscriptions, their typed outcomes and the domain errors. The
//! server's REST edge alone turns these into status codes and JSON.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::owner::HistoryQuery;
use super::ClientId;
use crate::protocol::{Channel, Topic};
use crate::upstream::FeedMessage;
use crate::ws::Frame;

/// A message from one shard to another (or, through [`super::Hub::send_to`], to
/// itself). Between any two shards they arrive in the order they were sent.
pub enum ShardMsg {
    /// To shard 0: `from` gained its first (`on`) or lost its last subscriber of a topic.
    Interest { topic: Topic, on: bool, from: usize },
    /// From shard 0: a feed message for the local subscribers of its topic.
    Feed { msg: FeedMessage, channel: Channel },
    /// To shard 0: `client` subscribed to a topic; answered with `Joined`.
    Join { topic: Topic, client: ClientId, replay: Option<usize> },
    /// From shard 0: what `client` gets first (`frames`); the topic's stream to
    /// this shard carries everything after it.
    Joined { topic: Topic, client: ClientId, frames: Vec<Frame> },
    /// From shard 0: a hedgehog message for the subscribers of `product` (a gap).
    ProductNote { product: String, frame: Frame },
    /// From shard 0: the upstream refused `product`; `frame` is its error message.
    /// Its subscribers get it and their subscriptions to it end.
    ProductError { product: String, frame: Frame },
    /// From shard 0: the products the upstream lists.
    Products(Arc<HashSet<String>>),
    /// From shard 0: the upstream's state changed; `frame` is the `upstream` message.
    Upstream(Frame),
    /// A request that expects a [`ShardMsg::Reply`] to shard `from`.
    Request { req: u64, from: usize, ask: Ask },
    /// The answer to request `req`.
    Reply { req: u64, result: Result<Answer, HubError> },
}

/// What a request asks of the receiving shard.
pub enum Ask {
    /// Run an operation for one of its clients, for `caller` (see [`Caller`]).
    Execute { client: ClientId, op: Op, caller: Option<Caller> },
    /// A history query (to shard 0, which keeps the history).
    History(HistoryQuery),
    /// Are you alive? (`/livez`)
    Ping,
    /// Your clients (`GET /api/v1/clients`).
    Clients,
    /// Your metrics (`GET /metrics`).
    Metrics,
}

/// Who asks for an operation on a client by its id (REST), when access control is
/// on: the client's shard lets only the principal that owns the client, or an
/// admin, steer it. `None`: no check (access control off, or the client's own
/// session asking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: String,
    pub admin: bool,
}

impl Caller {
    pub fn of(p: &crate::access::Principal) -> Caller {
        Caller { principal: p.name().to_string(), admin: p.class().is_admin() }
    }

    /// Whether this caller may steer a client of principal `owner`.
    pub fn may_steer(&self, owner: &str) -> bool {
        self.admin || self.principal == owner
    }
}

/// The answer to an [`Ask`].
#[derive(Debug)]
pub enum Answer {
    Executed(Outcome),
    /// The history query's answer: a JSON array of the raw messages.
    History(String),
    Pong,
    Clients(Vec<super::ClientView>),
    Metrics(Box<crate::metrics::Snapshot>),
}

/// An operation on one client's subscriptions.
#[derive(Debug, Clone)]
pub enum Op {
    Subscribe {
        product: String,
        channels: Vec<Channel>,
        /// Send the last N messages of each new channel first (`?replay=N`).
        replay: Option<usize>,
    },
    /// `None`: every channel of the product.
    Unsubscribe {
        product: String,
        channels: Option<Vec<Channel>>,
    },
    List,
    /// A Coinbase `subscribe` (`subscribe: true`) or `unsubscribe` sent on the
    /// client's own WebSocket, already checked: channel -> products (for an
    /// unsubscribe, no products means every product). Answered, on the client's
    /// WebSocket, with Coinbase's cumulative `subscriptions` message.
    Coinbase {
        subscribe: bool,
        channels: BTreeMap<Channel, BTreeSet<String>>,
    },
    /// Close the client (an admin's `DELETE /api/v1/clients/{id}`); its session
    /// ends once the close frame is out.
    Disconnect,
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `Op::List`: every product the client holds, with its channels.
    Subscriptions(BTreeMap<String, BTreeSet<Channel>>),
    /// `Op::Subscribe` (`subscribed`, with the channels asked for) or
    /// `Op::Unsubscribe` (with the channels that ended).
    Changed { product: String, channels: Vec<Channel>, subscribed: bool },
    /// `Op::Coinbase`: answered on the client's WebSocket; `Op::Disconnect`.
    Done,
}

/// Why the hub could not do what was asked. Each variant says what the caller
/// may do about it; the REST edge maps them to statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// No connected client has that id: the client should reconnect.
    #[error("no connected client has that id")]
    UnknownClient,
    /// The client would hold more than `--max-subscriptions`: unsubscribe first.
    #[error("a client may hold {0} subscriptions (product and channel pairs)")]
    TooManySubscriptions(usize),
    /// The upstream does not list the product.
    #[error("{0} is not a product the upstream lists")]
    UnknownProduct(String),
    /// The client's principal may not have what was asked (its class's rules, or
    /// its token's): ask for something else, or with other credentials.
    #[error("{0}")]
    Forbidden(Box<crate::access::Denied>),
    /// The client belongs to another principal, and the caller is no admin.
    #[error("client {0} belongs to another principal")]
    NotOwner(ClientId),
    /// The client id names another node than this process's (`--node`): send
    /// the call to the process of that node (a proxy routes on the id's prefix).
    #[error("{}", other_node(.client, .here))]
    OtherNode { client: ClientId, here: Option<super::Node> },
    /// The shard that holds what was asked did not answer in time (or is gone):
    /// retry later.
    #[error("shard {shard} did not answer within {within:?}")]
    ShardUnavailable { shard: usize, within: Duration },
}

/// [`HubError::OtherNode`]'s sentence: both nodes, and what to do.
fn other_node(client: &ClientId, here: &Option<super::Node>) -> String {
    let theirs = match client.node {
        Some(node) => format!("is on node `{node}`"),
        None => "names no node".to_string(),
    };
    let ours = match here {
        Some(node) => format!("this is node `{node}`"),
        None => "this process has no node name (--node)".to_string(),
    };
    format!("client {client} {theirs}, and {ours}: send calls for it to its own node")
}
