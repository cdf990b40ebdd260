//! The simulator's shared state: connections with their subscriptions, the
//! market (or a replay), and what each tick sends to whom.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::{Data, OpCode};

use rand::rngs::SmallRng;

use super::fault::Fault;
use super::market::{self, MarketBook, Spec};
use super::replay::Replay;
use super::Control;
use crate::protocol::{self, Channel, RequestKind};
use crate::ws::{self, Frame, Outbox};

/// The reason a `reject` fault gives (ours: Coinbase's text for a refused request is not on record).
pub const REJECTED: &str = "subscriptions are refused for now (simulator fault: reject)";
/// One client connection.
pub struct Conn {
    pub outbox: Rc<Outbox>,
    /// The TCP socket, for the `reset` fault.
    pub fd: std::os::fd::RawFd,
    pub subs: BTreeMap<Channel, BTreeSet<String>>,
    pub subscribed: bool,
    pub since: Instant,
    /// Since when its queue has held a replay up (see `server::replay_backlog`).
    pub backlogged_since: Option<Instant>,
}

/// A book with the last trade's messages, repeated to new subscribers unchanged.
pub struct SimProduct {
    pub book: MarketBook,
    pub last_ticker: Option<Frame>,
    pub last_match: Option<Frame>,
    /// Trades owed but not yet made (fractional, from the rate).
    pub due: f64,
}

/// Where the feed's messages come from.
pub enum Source {
    Market { products: Vec<SimProduct>, rng: SmallRng },
    Replay(Replay),
}

pub struct Feed {
    pub conns: BTreeMap<u64, Conn>,
    pub source: Source,
    pub specs: Vec<Spec>,
    pub status: Frame,
    pub control: std::sync::Arc<Control>,
    /// Lasting faults in effect.
    pub windows: super::fault::Windows,
}

impl Feed {
    pub fn new(source: Source, specs: Vec<Spec>, control: std::sync::Arc<Control>) -> Feed {
        let status = ws::frame::text(market::status_message(&specs).as_bytes());
        Feed { conns: BTreeMap::new(), source, specs, status, control, windows: Default::default() }
    }

    /// Stalled by the test handle or by a `stall` fault: nothing is sent or answered.
    pub fn stalled(&self) -> bool {
        self.control.is_stalled() || self.windows.stalled(Instant::now())
    }

    /// Refusing connections, by the test handle or by a `refuse` fault.
    pub fn refusing(&self) -> bool {
        self.control.is_refusing() || self.windows.refusing(Instant::now())
    }

    /// Applies one fault now; lasting ones last `lasting`.
    pub fn apply(&mut self, fault: Fault, lasting: Duration) {
        log::info!("simulator: injecting fault {}", fault.name());
        self.control.record(super::SimEvent::Fault(fault));
        let until = Some(Instant::now() + lasting);
        let all = |f: &Feed, frame: Frame| {
            for c in f.conns.values() {
                let _ = c.outbox.push(frame.clone());
            }
        };
        match fault {
            Fault::Drop => self.conns.values().for_each(|c| c.outbox.close(ws::close::GOING_AWAY, "going away")),
            Fault::Reset => {
                for c in self.conns.values() {
                    reset_on_close(c.fd);
                    c.outbox.kill("reset");
                }
            }
            Fault::Stall => self.windows.stall_until = until,
            Fault::Refuse => self.windows.refuse_until = until,
            Fault::SlowHandshake => self.windows.slow_until = until,
            Fault::Reject => self.windows.reject_until = until,
            Fault::Garbage => all(self, ws::frame::text(b"this is not JSON {")),
            Fault::Binary => all(self, ws::frame::encode(OpCode::Data(Data::Binary), &[0, 1, 2, 3], None).into()),
            Fault::Oversized => all(self, ws::frame::text(&vec![b'x'; 17 << 20])),
            Fault::Skip => {
                if let Source::Market { products, .. } = &mut self.source {
                    for p in products.iter_mut() {
                        p.book.trade_id += 10;
                        p.book.sequence += 1000;
                    }
                }
            }
        }
    }

    fn knows(&self, product: &str) -> bool {
        self.specs.iter().any(|s| s.id == product)
    }

    /// Sends `frame` to every connection subscribed to (`channel`, `product`).
    pub fn deliver(&self, channel: Channel, product: &str, frame: &Frame) {
        if self.stalled() {
            return;
        }
        for (id, conn) in &self.conns {
            if conn.subs.get(&channel).is_some_and(|p| p.contains(product)) && conn.outbox.push(frame.clone()).is_err()
            {
                log::warn!("simulator: connection {id} dropped as a slow consumer");
            }
        }
    }

    /// Whether anyone listens to (`channel`, `product`).
    pub fn wanted(&self, channel: Channel, product: &str) -> bool {
        self.conns.values().any(|c| c.subs.get(&channel).is_some_and(|p| p.contains(product)))
    }

    /// Handles one client message on connection `id`.
    pub fn on_text(&mut self, id: u64, text: &[u8]) {
        self.control.record(super::SimEvent::Request(id, String::from_utf8_lossy(text).into_owned()));
        if self.stalled() {
            return;
        }
        let Some(outbox) = self.conns.get(&id).map(|c| c.outbox.clone()) else { return };
        let send = |s: &str| {
            let _ = outbox.push(ws::frame::text(s.as_bytes()));
        };
        let req = match protocol::parse_request(text) {
            Ok(req) => req,
            Err(error) => return send(&error),
        };
        if req.kind == RequestKind::Subscribe && self.windows.rejecting(Instant::now()) {
            return send(&protocol::error_message(RequestKind::Subscribe.failure(), REJECTED));
        }
        let (errors, initial) = match req.kind {
            RequestKind::Subscribe => self.subscribe(id, &req),
            RequestKind::Unsubscribe => (self.unsubscribe(id, &req), Vec::new()),
        };
        for e in &errors {
            send(e);
        }
        if let Some(conn) = self.conns.get(&id) {
            send(&protocol::subscriptions_message(&conn.subs));
        }
        for f in initial {
            let _ = outbox.push(f);
        }
    }

    /// Applies a subscribe; returns the error messages and the frames a new
    /// subscriber gets first (latest ticker, `last_match`, snapshot, status).
    fn subscribe(&mut self, id: u64, req: &protocol::Request) -> (Vec<String>, Vec<Frame>) {
        let classified = req.classify(|_| true, |p| self.knows(p));
        let mut initial = Vec::new();
        let Some(conn) = self.conns.get_mut(&id) else { return (classified.errors, initial) };
        conn.subscribed = true;
        for (channel, products) in classified.channels {
            // `status` is sent again on every subscribe to it, as it has no product to be new.
            if !channel.takes_products() {
                conn.subs.entry(channel).or_default();
                initial.extend(first_frames(&self.source, &self.status, channel, ""));
            }
            for product in products {
                if conn.subs.entry(channel).or_default().insert(product.clone()) {
                    initial.extend(first_frames(&self.source, &self.status, channel, &product));
                }
            }
        }
        (classified.errors, initial)
    }

    fn unsubscribe(&mut self, id: u64, req: &protocol::Request) -> Vec<String> {
        let Some(conn) = self.conns.get_mut(&id) else { return Vec::new() };
        // A channel it does not know is no subscription to end: skipped.
        for (channel, products) in req.channels.iter().filter_map(|(n, ps)| Some((Channel::parse(n)?, ps))) {
            if products.is_empty() {
                conn.subs.remove(&channel);
            } else if let Some(set) = conn.subs.get_mut(&channel) {
                set.retain(|p| !products.contains(p));
                if set.is_empty() {
                    conn.subs.remove(&channel);
                }
            }
        }
        Vec::new()
    }
}

/// What a fresh subscriber to (`channel`, `product`) gets before the stream.
fn first_frames(source: &Source, status: &Frame, channel: Channel, product: &str) -> Vec<Frame> {
    if channel == Channel::Status {
        return vec![status.clone()];
    }
    let products = match source {
        Source::Market { products, .. } => products,
        Source::Replay(replay) => return replay.first_frame(product, channel).into_iter().collect(),
    };
    let Some(p) = products.iter().find(|p| p.book.spec.id == product) else { return Vec::new() };
    let frame = match channel {
        Channel::Ticker => p.last_ticker.clone(),
        Channel::Matches => p.last_match.clone(),
        Channel::Level2Batch => Some(ws::frame::text(p.book.snapshot().as_bytes())),
        Channel::Heartbeat | Channel::Status => None,
    };
    frame.into_iter().collect()
}

/// Makes the socket send a TCP reset rather than a FIN when it is closed.
fn reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt reads a `linger` of the size given; a bad fd only fails.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
