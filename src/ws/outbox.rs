//! A connection's outbound queue, bounded in bytes, and the loop that drains it.
//!
//! Producers (the fan-out, the session's own replies) push encoded frames; one writer
//! per connection takes everything pending and writes it in one go, so a client that
//! has fallen behind by ten frames costs one write, not ten.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};

use futures_lite::{AsyncWrite, AsyncWriteExt};

use super::frame::{self, Frame};
use crate::metrics::{End, Latency, Stamp};

/// Most bytes coalesced into one write.
const MAX_BATCH: usize = 256 * 1024;

/// Most pongs waiting to be written. Past it the oldest unsent pong is dropped:
/// RFC 6455 (5.5.3) lets an endpoint answer only the most recent ping, so a flood
/// of pings holds this many pongs, while a client that sends a few pings at once
/// (Autobahn 2.10 sends ten) gets an answer to each.
const MAX_PENDING_PONGS: usize = 16;

/// The queue was over its byte cap: the connection is being dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outbound queue full")]
pub struct Overflow;

/// What a full outbox does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowPolicy {
    /// Drop what is queued and close with 1008 "slow consumer" (Coinbase's
    /// ErrSlowConsume); the socket is dropped if even that cannot be sent.
    Disconnect,
    /// Keep only the newest message per product and channel while the client is
    /// behind; disconnect if even that does not fit.
    Conflate,
}

/// The close reason a slow consumer gets.
pub const SLOW_CONSUMER: &str = "slow consumer";

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame is queued; nothing more is accepted.
    Closing,
    /// Dropped without a close handshake (for example: slow consumer).
    Killed(&'static str),
}

struct Inner {
    /// Frames with their topic (product and channel) when they carry feed data.
    queue: VecDeque<Queued>,
    bytes: usize,
    cap: usize,
    policy: SlowPolicy,
    state: State,
    /// Closing because it overflowed: the close frame gets a short grace.
    slow: bool,
    writer: Option<Waker>,
    watcher: Option<Waker>,
    /// Answers to the newest pings (at most `MAX_PENDING_PONGS`, oldest dropped
    /// first), sent in order ahead of the queue. Their bytes count against the cap.
    pongs: VecDeque<Frame>,
    /// Batches taken for the socket, their bytes, and frames conflated away:
    /// the shard's metrics add them up.
    counts: Counts,
    /// Why the connection is ending, once it is.
    ended: Option<End>,
    /// The shard's latency histograms: each write observes its first stamped
    /// frame (none: not measured, as for the echo endpoint).
    latency: Option<Rc<RefCell<Latency>>>,
}

/// A queued frame: its topic (product and channel) and, for a feed message,
/// its stamp for the latency metrics.
struct Queued {
    frame: Frame,
    topic: Option<u64>,
    stamp: Option<Stamp>,
}

impl Queued {
    fn plain(frame: Frame) -> Queued {
        Queued { frame, topic: None, stamp: None }
    }
}

/// What one outbox has done, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub writes: u64,
    pub written_bytes: u64,
    pub conflated: u64,
}

/// One connection's outbound frames. Bounded: a push that would take the queued
/// bytes over the cap kills the connection (a slow consumer is dropped rather than
/// let grow without bound or hold back anyone else).
pub struct Outbox {
    inner: RefCell<Inner>,
}

impl Outbox {
    /// An empty outbox holding at most `cap` bytes, disconnecting when full.
    pub fn new(cap: usize) -> Self {
        Self::with_policy(cap, SlowPolicy::Disconnect)
    }

    /// An empty outbox holding at most `cap` bytes, full as `policy` says.
    pub fn with_policy(cap: usize, policy: SlowPolicy) -> Self {
        Outbox {
            inner: RefCell::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                cap,
                policy,
                state: State::Open,
                slow: false,
                writer: None,
                watcher: None,
                pongs: VecDeque::new(),
                counts: Counts::default(),
                ended: None,
                latency: None,
            }),
        }
    }

    /// With each write's latency observed in `latency` (the shard's).
    pub fn with_latency(self, latency: Rc<RefCell<Latency>>) -> Self {
        self.inner.borrow_mut().latency = Some(latency);
        self
    }

    /// Queues a frame that belongs to no topic.
    pub fn push(&self, f: Frame) -> Result<(), Overflow> {
        self.push_topic(f, None)
    }

    /// Queues a frame of `topic` (a product and channel). When it does not fit, the
    /// policy decides: conflate older frames of the same topics away, or close the
    /// connection as a slow consumer (`Overflow`).
    pub fn push_topic(&self, f: Frame, topic: Option<u64>) -> Result<(), Overflow> {
        self.push_stamped(f, topic, None)
    }

    /// [`Outbox::push_topic`] of a feed message with its `stamp`: the write
    /// that hands it to the socket may observe its latency.
    pub fn push_stamped(&self, f: Frame, topic: Option<u64>, stamp: Option<Stamp>) -> Result<(), Overflow> {
        let mut i = self.inner.borrow_mut();
        if i.state != State::Open {
            return Ok(());
        }
        if i.bytes + f.len() > i.cap && i.policy == SlowPolicy::Conflate {
            conflate(&mut i, topic);
        }
        if i.bytes + f.len() > i.cap {
            overflow(&mut i);
            return Err(Overflow);
        }
        i.bytes += f.len();
        i.queue.push_back(Queued { frame: f, topic, stamp });
        wake(&mut i.writer);
        Ok(())
    }

    /// Queues a control frame (a server ping), within the cap like any frame.
    pub fn push_control(&self, f: Frame) -> Result<(), Overflow> {
        self.push_topic(f, None)
    }

    /// Answers a ping: `f` (the pong) goes out ahead of queued data frames, after
    /// pongs not yet sent; when `MAX_PENDING_PONGS` are waiting, the oldest of them
    /// is dropped for it.
    pub fn push_pong(&self, f: Frame) -> Result<(), Overflow> {
        let mut i = self.inner.borrow_mut();
        if i.state != State::Open {
            return Ok(());
        }
        let replaced = if i.pongs.len() >= MAX_PENDING_PONGS { i.pongs.front().map_or(0, |p| p.len()) } else { 0 };
        if i.bytes - replaced.min(i.bytes) + f.len() > i.cap {
            overflow(&mut i);
            return Err(Overflow);
        }
        if replaced > 0 {
            i.pongs.pop_front();
        }
        i.bytes = i.bytes - replaced.min(i.bytes) + f.len();
        i.pongs.push_back(f);
        wake(&mut i.writer);
        Ok(())
    }

    /// Queues a close frame after what is pending; the writer ends once it is sent.
    pub fn close(&self, code: u16, reason: &str) {
        let mut i = self.inner.borrow_mut();
        if i.state == State::Open {
            i.queue.push_back(Queued::plain(frame::close_frame(code, reason)));
            i.state = State::Closing;
            i.ended = Some(end_of(code, reason));
            wake(&mut i.writer);
        }
    }

    /// Drops everything queued and ends the connection at once.
    pub fn kill(&self, why: &'static str) {
        let mut i = self.inner.borrow_mut();
        if !matches!(i.state, State::Killed(_)) {
            i.state = State::Killed(why);
            let killed = if why == SLOW_CONSUMER { End::SlowConsumer } else { End::Error };
            i.ended = Some(i.ended.unwrap_or(killed));
            i.queue.clear();
            i.pongs.clear();
            i.bytes = 0;
            wake(&mut i.writer);
            wake(&mut i.watcher);
        }
    }

    /// Whether it ever overflowed (a slow consumer): for the log line at its end.
    pub fn overflowed(&self) -> bool {
        self.inner.borrow().slow
    }

    /// Whether the outbox still takes data frames.
    pub fn is_open(&self) -> bool {
        self.inner.borrow().state == State::Open
    }

    /// What it has done so far.
    pub fn counts(&self) -> Counts {
        self.inner.borrow().counts
    }

    /// Why the connection ended (or is ending): the client's doing unless the
    /// relay closed it.
    pub fn end(&self) -> End {
        self.inner.borrow().ended.unwrap_or(End::Client)
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.inner.borrow().bytes
    }

    /// Resolves when the connection should be let go of: at once when the outbox is
    /// killed; after `grace` when it overflowed (time for its close frame to go out).
    pub async fn abandoned(&self, grace: std::time::Duration) -> &'static str {
        let why = poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            match i.state {
                State::Killed(why) => Poll::Ready(Some(why)),
                _ if i.slow => Poll::Ready(None),
                _ => {
                    i.watcher = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        match why {
            Some(why) => why,
            None => {
                glommio::timer::sleep(grace).await;
                SLOW_CONSUMER
            }
        }
    }

    /// Waits for pending frames and takes them all, as they are. `None` once the
    /// outbox is killed, or closed and drained; the close frame is returned last.
    pub async fn take_frames(&self) -> Option<Vec<Frame>> {
        poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            if matches!(i.state, State::Killed(_)) || (i.queue.is_empty() && i.state == State::Closing) {
                return Poll::Ready(None);
            }
            if i.queue.is_empty() && i.pongs.is_empty() {
                i.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            i.bytes = 0;
            let pongs = std::mem::take(&mut i.pongs);
            Poll::Ready(Some(pongs.into_iter().chain(i.queue.drain(..).map(|q| q.frame)).collect()))
        })
        .await
    }

    /// Waits for pending frames and takes them: one frame as it is, several copied
    /// into `scratch`. `None` once the close frame has been taken or the outbox killed.
    async fn take(&self, scratch: &mut Vec<u8>) -> Option<Batch> {
        poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            if matches!(i.state, State::Killed(_)) {
                return Poll::Ready(None);
            }
            if let Some(pong) = i.pongs.pop_front() {
                i.bytes -= pong.len().min(i.bytes);
                return Poll::Ready(Some(Batch::One(pong)));
            }
            match i.queue.len() {
                0 if i.state == State::Closing => Poll::Ready(None),
                0 => {
                    i.writer = Some(cx.waker().clone());
                    Poll::Pending
                }
                1 => {
                    let Some(q) = i.queue.pop_front() else { return Poll::Ready(None) };
                    i.bytes -= q.frame.len().min(i.bytes);
                    i.counts.writes += 1;
                    i.counts.written_bytes += q.frame.len() as u64;
                    observe(&i, q.stamp);
                    Poll::Ready(Some(Batch::One(q.frame)))
                }
                _ => {
                    scratch.clear();
                    let mut first = None;
                    while let Some(q) = i.queue.front() {
                        if !scratch.is_empty() && scratch.len() + q.frame.len() > MAX_BATCH {
                            break;
                        }
                        scratch.extend_from_slice(&q.frame);
                        first = first.or(q.stamp);
                        let n = q.frame.len();
                        i.queue.pop_front();
                        i.bytes -= n.min(i.bytes);
                    }
                    i.counts.writes += 1;
                    i.counts.written_bytes += scratch.len() as u64;
                    observe(&i, first);
                    Poll::Ready(Some(Batch::Many))
                }
            }
        })
        .await
    }
}

/// Coinbase's answer to a slow reader: what is queued is dropped and a close
/// frame goes out (or, if even that cannot, the socket is dropped).
fn overflow(i: &mut Inner) {
    i.queue.clear();
    i.pongs.clear();
    i.bytes = 0;
    i.queue.push_back(Queued::plain(frame::close_frame(super::close::POLICY, SLOW_CONSUMER)));
    i.state = State::Closing;
    i.ended = Some(End::SlowConsumer);
    i.slow = true;
    wake(&mut i.writer);
    wake(&mut i.watcher);
}

/// Keeps only the newest frame of each topic (and every frame of none), making
/// room for one more frame of `incoming`.
fn conflate(i: &mut Inner, incoming: Option<u64>) {
    let mut seen: Vec<u64> = incoming.into_iter().collect();
    let before = i.queue.len();
    let mut kept: VecDeque<Queued> = VecDeque::with_capacity(i.queue.len());
    for q in i.queue.drain(..).rev() {
        match q.topic {
            Some(t) if seen.contains(&t) => {}
            Some(t) => {
                seen.push(t);
                kept.push_front(q);
            }
            None => kept.push_front(q),
        }
    }
    i.bytes = kept.iter().map(|q| q.frame.len()).sum();
    i.counts.conflated += (before - kept.len()) as u64;
    i.queue = kept;
}

/// A write is about to hand a frame stamped `stamp` to the socket: its latency.
fn observe(i: &Inner, stamp: Option<Stamp>) {
    if let (Some(latency), Some(stamp)) = (&i.latency, stamp) {
        latency.borrow_mut().observe(&stamp);
    }
}

/// Why a close with `code` and `reason` ends a connection: an empty reason is
/// the answer to the client's own close.
fn end_of(code: u16, reason: &str) -> End {
    match (code, reason) {
        (_, "") => End::Client,
        (super::close::GOING_AWAY, _) => End::Shutdown,
        (_, r) if r.starts_with("idle timeout") => End::Idle,
        (_, SLOW_CONSUMER) => End::SlowConsumer,
        (super::close::POLICY, _) => End::Policy,
        _ => End::Error,
    }
}

enum Batch {
    One(Frame),
    Many,
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

/// Writes everything the outbox is given until its close frame is out (Ok) or it
/// is killed or the socket fails (Err).
pub async fn write_loop<W: AsyncWrite + Unpin + ?Sized>(outbox: &Outbox, w: &mut W) -> io::Result<()> {
    let mut scratch = Vec::new();
    while let Some(batch) = outbox.take(&mut scratch).await {
        match batch {
            Batch::One(f) => w.write_all(&f).await?,
            Batch::Many => w.write_all(&scratch).await?,
        }
        // Over TLS a write may return with records still buffered: they go now,
        // not with the next batch. (A plain socket has nothing to flush.)
        w.flush().await?;
        if scratch.capacity() > MAX_BATCH * 2 {
            scratch = Vec::new();
        }
    }
    match outbox.inner.borrow().state {
        State::Killed(why) => Err(io::Error::other(why)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::{Control, OpCode};

    fn run<F: std::future::Future>(f: F) -> F::Output {
        futures_lite::future::block_on(f)
    }

    #[test]
    fn each_write_observes_the_latency_of_its_first_stamped_frame() {
        use crate::protocol::Channel;
        let latency = Rc::new(RefCell::new(Latency::default()));
        let o = Outbox::new(1024).with_latency(latency.clone());
        let stamp = |channel| Some(Stamp { channel, received: std::time::Instant::now(), exchange_micros: Some(0) });
        o.push(frame::text(b"note")).unwrap();
        o.push_stamped(frame::text(b"a"), Some(1), stamp(Channel::Ticker)).unwrap();
        o.push_stamped(frame::text(b"b"), Some(2), stamp(Channel::Matches)).unwrap();
        o.close(1000, "");
        let mut out = Vec::new();
        run(write_loop(&o, &mut out)).unwrap();
        let l = latency.borrow();
        assert_eq!(l.relay.count(), 1, "one write of three frames and the close: one observation");
        assert_eq!((l.feed[Channel::Ticker.index()].count(), l.feed[Channel::Matches.index()].count()), (1, 0));
        assert_eq!(o.counts().writes, 1);
        assert_eq!(o.end(), End::Client, "a close with no reason answers the client's");
    }

    #[test]
    fn coalesces_pending_frames_into_one_write_and_ends_after_close() {
        let o = Outbox::new(1024);
        o.push(frame::text(b"a")).unwrap();
        o.push(frame::text(b"b")).unwrap();
        o.close(1000, "");
        let mut out = Vec::new();
        run(write_loop(&o, &mut out)).unwrap();
        assert_eq!(out, [&frame::text(b"a")[..], &frame::text(b"b"), &frame::close_frame(1000, "")].concat());
        assert!(o.push(frame::text(b"late")).is_ok(), "pushes after close are ignored");
    }

    #[test]
    fn a_push_over_the_cap_closes_with_1008_slow_consumer() {
        let o = Outbox::new(10);
        o.push(frame::text(b"12345678")).unwrap();
        assert_eq!(o.push(frame::text(b"x")), Err(Overflow));
        assert!(!o.is_open());
        let mut out = Vec::new();
        run(write_loop(&o, &mut out)).unwrap();
        assert_eq!(out, &frame::close_frame(1008, "slow consumer")[..], "queued data dropped, close sent");
    }

    #[test]
    fn only_the_newest_pongs_are_kept_and_they_go_first() {
        let pong = |i: u32| -> Frame { frame::encode(OpCode::Control(Control::Pong), &i.to_be_bytes(), None).into() };
        let o = Outbox::new(1024);
        o.push(frame::text(b"data")).unwrap();
        for i in 0..10_000u32 {
            o.push_pong(pong(i)).unwrap();
        }
        let newest: Vec<u8> = (10_000 - MAX_PENDING_PONGS as u32..10_000).flat_map(|i| pong(i).to_vec()).collect();
        assert_eq!(o.queued_bytes(), frame::text(b"data").len() + newest.len(), "16 pongs held, not 10,000");
        o.close(1000, "");
        let mut out = Vec::new();
        run(write_loop(&o, &mut out)).unwrap();
        let mut want = newest;
        want.extend_from_slice(&frame::text(b"data"));
        want.extend_from_slice(&frame::close_frame(1000, ""));
        assert_eq!(out, want);
    }

    #[test]
    fn pongs_and_pings_count_against_the_cap() {
        let o = Outbox::new(16);
        o.push(frame::text(b"1234567890")).unwrap();
        let pong: Frame = frame::encode(OpCode::Control(Control::Pong), b"12345678", None).into();
        assert_eq!(o.push_pong(pong), Err(Overflow));
        assert!(!o.is_open());
        let o = Outbox::new(16);
        o.push(frame::text(b"1234567890")).unwrap();
        let ping: Frame = frame::encode(OpCode::Control(Control::Ping), b"12345678", None).into();
        assert_eq!(o.push_control(ping), Err(Overflow));
    }

    #[test]
    fn a_killed_outbox_writes_nothing() {
        let o = Outbox::new(100);
        o.push(frame::text(b"data")).unwrap();
        o.kill("dropped");
        let mut out = Vec::new();
        assert!(run(write_loop(&o, &mut out)).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn conflation_keeps_the_newest_per_topic() {
        let f = |s: &str| frame::text(s.as_bytes());
        let o = Outbox::with_policy(3 * f("a1").len() + 1, SlowPolicy::Conflate);
        o.push_topic(f("a1"), Some(1)).unwrap();
        o.push_topic(f("b1"), Some(2)).unwrap();
        o.push_topic(f("a2"), Some(1)).unwrap();
        // Full: the next frame of topic 1 replaces both older ones.
        o.push_topic(f("a3"), Some(1)).unwrap();
        o.close(1000, "");
        let mut out = Vec::new();
        run(write_loop(&o, &mut out)).unwrap();
        assert_eq!(out, [&f("b1")[..], &f("a3"), &frame::close_frame(1000, "")].concat());
    }
}
