//! The cross-shard bus: one bounded lock-free SPSC channel (glommio's
//! `shared_channel`) per ordered pair of shards, each with a bounded backlog in
//! front of it, and the request/reply bookkeeping.
//!
//! # Ordering
//! Everything one shard sends another goes through [`Bus::post`]: straight into
//! the channel when it has room and nothing is held back, else behind what is.
//! So messages between two shards arrive in the order they were sent, whatever
//! they are (feed messages, join answers, notes, requests, replies).
//!
//! # Bounds, and why no cycle can wedge two shards
//! A channel holds `bus_capacity` messages (8,192; see `config`); its backlog
//! (`bus_backlog`, 1,024) is not capped by `post`, which never waits. What bounds
//! it is where work enters the hub:
//! - shard 0's dispatcher waits until every backlog is below its limit
//!   ([`Bus::room`] with [`Waiter::Feed`]) before each upstream event, so a slow
//!   shard slows the upstream reader;
//! - a client's operation (REST, a WebSocket subscribe, `/livez`) waits, under
//!   a deadline, until the backlogs it will post to are below twice the limit
//!   ([`Waiter::Client`]): the feed alone never takes that reserve, so a client's
//!   request is never starved by a feed that refills the backlog each time a
//!   message leaves it (it was, under load: 503 after 5 s);
//! - a shard's receive loops never wait: what they post in answer (a reply, a
//!   join answer, an interest note) is bounded by what they received.
//!
//! The cycle this rules out: shard 0's receive loop from shard k waiting for room
//! towards k (to answer a join) while k's receive loop from 0 waits for room
//! towards 0 (to send an interest note). Neither receive loop waits here, so
//! each keeps draining the other's channel.
//!
//! # Why not glommio's `channel_mesh`
//! glommio's mesh (`channels::sharding` / `channel_mesh`) can deadlock under high
//! contention or with small channels (DataDog/glommio#555, open at 0.9), and its
//! `join` waits for every peer with no way to give up when one fails to start.
//! The hand-made mesh of `shared_channel`s (SPSC, the simpler primitive) is a few
//! lines, and its connect is raced against the stop signal (see `server`).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::task::{Poll, Waker};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::channels::shared_channel::{self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender};

use super::msg::{Answer, HubError, ShardMsg};

/// A reply on its way back to the task that asked.
type Pending = LocalSender<Result<Answer, HubError>>;

/// Who waits for room on the bus, and so how much of the backlog it may fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    /// Shard 0's dispatcher: up to the backlog's limit.
    Feed,
    /// A client's operation: up to twice the limit, a reserve the feed never takes.
    Client,
}

/// A shard's sending side of the bus, connected.
pub struct Bus {
    me: usize,
    /// At this many messages a backlog is full (see [`Bus::room`]).
    backlog_limit: usize,
    senders: Vec<Option<ConnectedSender<ShardMsg>>>,
    /// Per destination: what did not fit in its channel, in order.
    backlogs: Vec<RefCell<VecDeque<ShardMsg>>>,
    /// Per destination: whether a task is moving its backlog into its channel.
    flushing: Vec<Cell<bool>>,
    /// Tasks waiting for room in some backlog.
    waiters: RefCell<Vec<Waker>>,
    /// Requests sent and not yet answered, by number.
    pending: RefCell<HashMap<u64, Pending>>,
    next_req: Cell<u64>,
}

impl Bus {
    /// This shard's index.
    pub fn me(&self) -> usize {
        self.me
    }

    /// Sends `msg` to shard `to` (another shard) without waiting, in order with
    /// everything else posted to it. A shard that is gone takes nothing.
    pub fn post(self: &Rc<Self>, to: usize, msg: ShardMsg) {
        let (Some(backlog), Some(flushing)) = (self.backlogs.get(to), self.flushing.get(to)) else { return };
        let msg = match backlog.borrow().is_empty() && !flushing.get() {
            true => match self.try_send(to, msg) {
                Ok(()) => return,
                Err(msg) => msg,
            },
            false => msg,
        };
        backlog.borrow_mut().push_back(msg);
        if !flushing.replace(true) {
            glommio::spawn_local(Rc::clone(self).flush(to)).detach();
        }
    }

    /// Moves the backlog towards `to` into its channel, waiting for room there.
    async fn flush(self: Rc<Self>, to: usize) {
        loop {
            let next = self.backlogs[to].borrow_mut().pop_front();
            let Some(msg) = next else { break };
            if let Some(tx) = &self.senders[to] {
                let _ = tx.send(msg).await; // an error: the shard is gone
            }
            self.wake_waiters();
        }
        self.flushing[to].set(false);
        self.wake_waiters();
    }

    /// Sends `msg` if its channel has room now; gives it back if not.
    // The message itself is what comes back: the caller keeps it, in order.
    #[allow(clippy::result_large_err)]
    fn try_send(&self, to: usize, msg: ShardMsg) -> Result<(), ShardMsg> {
        match self.senders.get(to).and_then(Option::as_ref) {
            Some(tx) => match tx.try_send(msg) {
                Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(m))) => Err(m),
                // Sent, or the shard is gone.
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Waits until the backlog towards every shard `to` accepts has room for
    /// `who` (see the module's doc on bounds).
    pub async fn room(&self, who: Waiter, to: impl Fn(usize) -> bool) {
        let limit = match who {
            Waiter::Feed => self.backlog_limit,
            Waiter::Client => 2 * self.backlog_limit,
        };
        std::future::poll_fn(|cx| {
            let full = self.backlogs.iter().enumerate().any(|(i, b)| to(i) && b.borrow().len() >= limit);
            if full {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    fn wake_waiters(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// A new request number, and where its reply will arrive.
    pub fn ask(&self) -> (u64, LocalReceiver<Result<Answer, HubError>>) {
        let req = self.next_req.get() + 1;
        self.next_req.set(req);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(req, tx);
        (req, rx)
    }

    /// The request is answered or abandoned: a late reply finds no one.
    pub fn forget(&self, req: u64) {
        self.pending.borrow_mut().remove(&req);
    }

    /// Hands a reply to the task waiting for it, if it still is.
    pub fn answer(&self, req: u64, result: Result<Answer, HubError>) {
        if let Some(tx) = self.pending.borrow_mut().remove(&req) {
            let _ = tx.try_send(result);
        }
    }
}

/// One shard's unconnected ends, made on the main thread and moved to the shard.
pub struct BusEnds {
    me: usize,
    shards: usize,
    backlog: usize,
    senders: Vec<(usize, SharedSender<ShardMsg>)>,
    receivers: Vec<SharedReceiver<ShardMsg>>,
}

/// The full mesh for `n` shards, with `capacity` messages in flight and
/// `backlog` held back per ordered pair: element `i` holds shard `i`'s ends.
pub fn mesh(n: usize, capacity: usize, backlog: usize) -> Vec<BusEnds> {
    let mut ends: Vec<BusEnds> =
        (0..n).map(|me| BusEnds { me, shards: n, backlog, senders: Vec::new(), receivers: Vec::new() }).collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(capacity.max(1));
                ends[from].senders.push((to, tx));
                ends[to].receivers.push(rx);
            }
        }
    }
    ends
}

impl BusEnds {
    /// Connects every end. Each connect waits for its peer shard, so all are
    /// connected concurrently, each in a task of its own (a pending connect must
    /// only be polled by its own wakes: see `server::conn::accept_loop`). The caller
    /// races this against its stop signal: a peer that never starts never connects.
    pub async fn connect(self) -> (Rc<Bus>, Vec<ConnectedReceiver<ShardMsg>>) {
        let senders: Vec<_> = self
            .senders
            .into_iter()
            .map(|(to, tx)| glommio::spawn_local(async move { (to, tx.connect().await) }))
            .collect();
        let receivers: Vec<_> = self.receivers.into_iter().map(|rx| glommio::spawn_local(rx.connect())).collect();
        let n = self.shards;
        let mut bus = Bus {
            me: self.me,
            backlog_limit: self.backlog.max(1),
            senders: (0..n).map(|_| None).collect(),
            backlogs: (0..n).map(|_| RefCell::new(VecDeque::new())).collect(),
            flushing: (0..n).map(|_| Cell::new(false)).collect(),
            waiters: RefCell::new(Vec::new()),
            pending: RefCell::new(HashMap::new()),
            next_req: Cell::new(0),
        };
        for task in senders {
            let (to, tx) = task.await;
            bus.senders[to] = Some(tx);
        }
        let mut rxs = Vec::new();
        for task in receivers {
            rxs.push(task.await);
        }
        (Rc::new(bus), rxs)
    }
}
