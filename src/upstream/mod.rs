//! The one client of the exchange feed.
//!
//! [`spawn`] starts a task on the current glommio executor that connects to the
//! feed (ws:// or wss://), keeps the server's subscriptions equal to the owner's
//! desired set (in requests of bounded size, paced), reconnects with jittered
//! exponential backoff on close, error or stall, and hands every message to the
//! owner with its routing key. Once the feed has listed its products, products it
//! does not list are refused here instead of being asked for.

mod client;
mod endpoint;
mod subs;

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::ops::Range;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, SystemTime};

use glommio::channels::local_channel::{self, LocalReceiver};

pub use endpoint::Endpoint;
pub use subs::{parse_subscriptions, request_text, Request, Sub, Subs, MAX_REQUEST_BYTES};

use crate::protocol::Channel;
use crate::record::Tap;
use crate::ws::Frame;

/// Where the real feed lives.
pub const COINBASE_URL: &str = "wss://ws-feed.exchange.coinbase.com";

/// Events queued for the owner. Bounded: when the owner falls this far behind, the
/// reader stops reading, and the backlog stays in the upstream socket.
const EVENT_QUEUE: usize = 4096;

/// The upstream client's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub url: String,
    /// An extra trusted CA (PEM), on top of the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// No message for this long is a stall: reconnect.
    pub stall_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A connection that lived this long resets the backoff.
    pub healthy_after: Duration,
    /// Largest message accepted from the feed.
    pub max_message: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: COINBASE_URL.into(),
            ca_file: None,
            stall_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            max_message: 16 << 20,
        }
    }
}

/// One feed message: the server frame that carries it, encoded once on arrival, and
/// where its routing fields lie inside that frame.
#[derive(Debug, Clone)]
pub struct FeedMessage {
    pub frame: Frame,
    body: Range<usize>,
    kind: Range<usize>,
    product: Option<Range<usize>>,
    pub sequence: Option<u64>,
    /// `trade_id`; on a heartbeat, its `last_trade_id`.
    pub trade_id: Option<u64>,
    time: Option<Range<usize>>,
    /// When the relay read it from the feed.
    received: std::time::Instant,
}

impl FeedMessage {
    /// Encodes `text` as a server frame and notes its routing key; `None` if the
    /// text is not a typed JSON object.
    pub fn new(text: &[u8]) -> Option<FeedMessage> {
        let key = crate::protocol::scan(text)?;
        let frame = crate::ws::frame::text(text);
        let at = frame.len() - text.len();
        let range = |s: &str| {
            let start = s.as_ptr() as usize - text.as_ptr() as usize + at;
            start..start + s.len()
        };
        Some(FeedMessage {
            body: at..frame.len(),
            kind: range(key.kind),
            product: key.product_id.map(range),
            sequence: key.sequence,
            trade_id: key.trade_id,
            time: key.time.map(range),
            frame,
            received: std::time::Instant::now(),
        })
    }

    /// The exact bytes received.
    pub fn body(&self) -> &[u8] {
        &self.frame[self.body.clone()]
    }

    /// The exact bytes received, sharing the frame's memory (no copy): what
    /// an ingest publishes.
    pub fn body_shared(&self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self.frame.clone()).slice(self.body.clone())
    }

    /// The message's `type`.
    pub fn kind(&self) -> &str {
        std::str::from_utf8(&self.frame[self.kind.clone()]).unwrap_or("")
    }

    /// Its `time` in microseconds since the epoch, when it has one (read when
    /// asked: by history queries, and once per message and shard for the
    /// latency metrics, never per delivery).
    pub fn time(&self) -> Option<i64> {
        let r = self.time.clone()?;
        crate::clock::parse_iso(std::str::from_utf8(&self.frame[r]).ok()?)
    }

    /// When the relay read it from the feed (made).
    pub fn received(&self) -> std::time::Instant {
        self.received
    }

    /// Its `product_id`, if any.
    pub fn product(&self) -> Option<&str> {
        self.product.clone().and_then(|r| std::str::from_utf8(&self.frame[r]).ok())
    }
}

/// What the owner hears from the upstream client.
#[derive(Debug, Clone)]
pub enum Event {
    /// The WebSocket is up; subscriptions are being sent.
    Connected,
    /// The connection ended; a reconnect follows after the backoff.
    Disconnected { reason: String },
    /// A feed message (anything but `subscriptions` and `error`).
    Message(FeedMessage),
    /// An upstream `error`; `product` when it names one.
    Error { message: String, reason: String, product: Option<String> },
    /// The products the `status` channel lists.
    Products(Vec<crate::protocol::Product>),
    /// Desired products the feed does not list: not asked for. Their subscribers
    /// are refused as the feed would refuse them (an `error` naming the product).
    Unlisted(Vec<String>),
    /// A message was skipped as malformed; `total` so far.
    Malformed { total: u64 },
    /// An edge's topic, as the active ingest knows it: its history (oldest
    /// first) and what a fresh subscriber gets first, before its next message.
    Seed { product: String, channel: Channel, first: Vec<FeedMessage>, history: Vec<FeedMessage> },
}

/// The connection's state, as `/healthz` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Connected,
    Reconnecting,
    /// A standby ingest: another holds the lease and the upstream.
    Standby,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Reconnecting => "reconnecting",
            State::Standby => "standby",
        }
    }
}

/// Counters and state of the upstream connection.
#[derive(Debug, Clone)]
pub struct Status {
    pub state: State,
    pub since: SystemTime,
    pub malformed: u64,
    pub connects: u64,
    /// Liveness pings sent while no product was subscribed.
    pub pings: u64,
    pub last_error: Option<String>,
    /// Requests the feed refused as a whole (each is retried after a backoff).
    pub refused: u64,
}

/// State shared by the owner's handle and the client task.
struct Shared {
    subs: RefCell<Subs>,
    status: RefCell<Status>,
    changed: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    stop: Cell<bool>,
    /// A standby ingest's: hold no connection until this is cleared.
    standby: Cell<bool>,
    /// When to ask again for what a refused request asked for.
    retry_at: Cell<Option<std::time::Instant>>,
    /// The next retry's delay: doubles per refusal, back to the start on a reply.
    retry_backoff: Cell<std::time::Duration>,
}

impl Shared {
    fn new(backoff: Duration) -> Shared {
        Shared {
            subs: RefCell::new(Subs::default()),
            status: RefCell::new(Status {
                state: State::Connecting,
                since: SystemTime::now(),
                malformed: 0,
                connects: 0,
                pings: 0,
                last_error: None,
                refused: 0,
            }),
            changed: Cell::new(false),
            waker: RefCell::new(None),
            stop: Cell::new(false),
            standby: Cell::new(false),
            retry_at: Cell::new(None),
            retry_backoff: Cell::new(backoff),
        }
    }

    fn notify(&self) {
        self.changed.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once the desired set changed (or stop was asked) since the last call.
    async fn changed(&self) {
        poll_fn(|cx| {
            if self.changed.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn set_state(&self, state: State) {
        let mut s = self.status.borrow_mut();
        if s.state != state {
            s.state = state;
            s.since = SystemTime::now();
        }
    }
}

/// The owner's handle on the upstream client.
#[derive(Clone)]
pub struct Upstream {
    shared: Rc<Shared>,
}

impl Upstream {
    /// Wants (`on`) or no longer wants (`channel`, `product`) from the feed.
    pub fn set(&self, channel: Channel, product: &str, on: bool) {
        if self.shared.subs.borrow_mut().set(channel, product, on) {
            self.shared.notify();
        }
    }

    /// Whether the server has (`channel`, `product`) or will have it: no
    /// unsubscribe of it has gone out since it was asked for.
    pub fn expects(&self, channel: Channel, product: &str) -> bool {
        self.shared.subs.borrow().expects(channel, product)
    }

    /// Unsubscribes every channel of `product` and subscribes them again.
    pub fn resubscribe(&self, product: &str) {
        self.shared.subs.borrow_mut().resubscribe(product);
        self.shared.notify();
    }

    /// A copy of the current status.
    pub fn status(&self) -> Status {
        self.shared.status.borrow().clone()
    }

    /// Ends the client task (it closes its connection).
    pub fn stop(&self) {
        self.shared.stop.set(true);
        self.shared.notify();
    }

    /// A standby ingest holds no connection (`true`); an active one connects.
    pub fn set_standby(&self, standby: bool) {
        if self.shared.standby.replace(standby) != standby {
            self.shared.notify();
        }
    }

    /// Whether it is held as a standby ingest's.
    pub fn is_standby(&self) -> bool {
        self.shared.standby.get()
    }

    /// The desired set, as an edge asks NATS for it (`status` left out: the
    /// product list comes by the key-value bucket).
    pub fn desired(&self) -> std::collections::BTreeSet<(String, Channel)> {
        let subs = self.shared.subs.borrow();
        subs.effective().into_iter().filter(|s| s.channel != Channel::Status).map(|s| (s.product, s.channel)).collect()
    }

    /// Products asked afresh since the last call (an edge seeds them again).
    pub fn take_resubscribes(&self) -> Vec<String> {
        self.shared.subs.borrow_mut().take_resubscribes()
    }

    /// The feed's products (an edge hears them from the ingest): desired
    /// products it does not list are reported by [`Upstream::take_unlisted`].
    pub fn list(&self, products: impl IntoIterator<Item = String>) {
        self.shared.subs.borrow_mut().list(products);
    }

    /// Desired products the feed does not list, not reported before.
    pub fn take_unlisted(&self) -> Vec<String> {
        self.shared.subs.borrow_mut().take_unlisted()
    }

    /// Resolves when the desired set changed since the last call.
    pub async fn changed(&self) {
        self.shared.changed().await
    }

    /// A handle with no client behind it: an edge's, whose feed comes from NATS.
    pub fn detached() -> Upstream {
        Upstream { shared: Rc::new(Shared::new(Duration::ZERO)) }
    }
}

/// Starts the client on the current executor. Fails at once on a bad URL or CA file.
pub fn spawn(cfg: UpstreamConfig) -> Result<(Upstream, LocalReceiver<Event>), String> {
    spawn_recorded(cfg, None, false)
}

/// As [`spawn`], and every text message the feed sends goes to `tap` too;
/// `standby`: hold no connection until [`Upstream::set_standby`] clears it.
pub fn spawn_recorded(
    cfg: UpstreamConfig,
    tap: Option<Tap>,
    standby: bool,
) -> Result<(Upstream, LocalReceiver<Event>), String> {
    let endpoint = Endpoint::parse(&cfg.url)?;
    let tls = match endpoint.tls {
        true => Some(crate::net::tls_client_config(cfg.ca_file.as_deref())?),
        false => None,
    };
    let shared = Rc::new(Shared::new(cfg.backoff_initial));
    shared.standby.set(standby);
    if standby {
        shared.set_state(State::Standby);
    }
    let (tx, rx) = local_channel::new_bounded(EVENT_QUEUE);
    let client = client::Client { cfg, endpoint, tls, shared: shared.clone(), events: tx, tap };
    glommio::spawn_local(client.run()).detach();
    Ok((Upstream { shared }, rx))
}
