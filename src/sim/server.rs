//! The simulator's executor: accept loop, sessions, and the market's tick.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::sleep;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::feed::{Conn, Feed, SimProduct, Source};
use super::market::{MarketBook, Spec};
use super::replay::Replay;
use super::{Control, SimConfig, SimEvent};
use crate::net::{self, BoxIo};
use crate::protocol::{self, Channel};
use crate::ws::{self, close, Outbox};

/// How often the market moves and batches go out.
const TICK: Duration = Duration::from_millis(10);
/// `level2_batch` groups changes over this long, as Coinbase does.
const L2_BATCH: Duration = Duration::from_millis(50);
/// Per-connection outbound cap. The relay reads fast; a client that falls this far
/// behind is dropped, as Coinbase drops slow consumers.
const OUTBOX_BYTES: usize = 64 << 20;
/// A replay waits (its clock too) while any subscriber has this much queued: at
/// full speed, that is what paces it. One turn plays about this much at most.
const REPLAY_BACKLOG: usize = 4 << 20;
/// A subscriber that holds a replay up for this long is dropped as a slow
/// consumer, so one reader that stops cannot stop the replay for the others.
const REPLAY_HOLD_UP: Duration = Duration::from_secs(5);
/// Largest client message accepted.
const MAX_MESSAGE: usize = 64 * 1024;

type Ready = Result<(SocketAddr, Option<String>), String>;

/// The simulator thread's body: builds everything, reports readiness on `ready`,
/// and serves until `control.stop` is set.
pub fn run_thread(cfg: SimConfig, control: Arc<Control>, ready: Sender<Ready>) {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("hedgehog-sim")
        .io_memory(crate::IO_MEMORY)
        .make();
    let ex = match ex {
        Ok(ex) => ex,
        Err(e) => {
            let _ = ready.send(Err(crate::preflight::executor_failed("the simulator's executor", &e)));
            return;
        }
    };
    ex.run(async move {
        let _beat = crate::pacemaker::attach();
        let (listener, tls, feed) = match setup(&cfg, control.clone()) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                let _ = ready.send(Err(format!("the simulator's listener has no address: {e}")));
                return;
            }
        };
        let pem = tls.as_ref().map(|(_, pem)| pem.clone());
        let _ = ready.send(Ok((addr, pem)));
        let acceptor = tls.map(|(config, _)| futures_rustls::TlsAcceptor::from(config));
        let feed = Rc::new(RefCell::new(feed));
        let ticker = glommio::spawn_local(tick_loop(feed.clone(), cfg.clone())).detach();
        // The accept loop runs as its own task, woken only by its own accepts: a
        // pending glommio accept polled from a combinator that wakes for other
        // reasons (the stop poll below) gains a waker clone per poll and panics
        // once the task's i16 reference count overflows (~655 s at 50 polls a
        // second). tests/accept_wakeups.rs drives this past the limit in seconds.
        let acceptor = glommio::spawn_local(accept_loop(listener, acceptor, feed));
        watch_stop(&control, cfg.stop_poll).await;
        acceptor.cancel().await;
        ticker.cancel();
    });
}

type Setup = (TcpListener, Option<(Arc<rustls::ServerConfig>, String)>, Feed);

fn setup(cfg: &SimConfig, control: Arc<Control>) -> Result<Setup, String> {
    let (source, specs) = match &cfg.replay {
        Some(path) => {
            let replay = Replay::load(path, cfg.speed, cfg.looping)?;
            let _ = control.replay.set(replay.progress());
            let specs = replay.products().iter().filter_map(|p| Spec::for_id(p)).collect();
            (Source::Replay(replay), specs)
        }
        None => market(cfg)?,
    };
    let tls = if cfg.tls { Some(net::self_signed_server()?) } else { None };
    if let (Some(path), Some((_, pem))) = (&cfg.cert_out, &tls) {
        std::fs::write(path, pem).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))
        .map_err(|e| format!("cannot listen on {}:{}: {e}", cfg.host, cfg.port))?;
    Ok((listener, tls, Feed::new(source, specs, control)))
}

fn market(cfg: &SimConfig) -> Result<(Source, Vec<Spec>), String> {
    let mut rng = match cfg.seed {
        Some(seed) => SmallRng::seed_from_u64(seed),
        None => SmallRng::seed_from_u64(rand::random()),
    };
    let mut specs = Vec::new();
    let mut products = Vec::new();
    for id in &cfg.products {
        let spec = Spec::for_id(id).ok_or_else(|| format!("not a product id: {id:?} (want BASE-QUOTE)"))?;
        let mut book = MarketBook::new(spec.clone(), &mut rng);
        // One trade before anyone connects, so a subscriber always gets a latest ticker.
        let t = book.step(&mut rng);
        let last_ticker = Some(ws::frame::text(book.ticker(&t).as_bytes()));
        let last_match = last_match_frame(&book.match_message(&t, &mut rng));
        book.pending_changes.clear();
        specs.push(spec);
        products.push(SimProduct { book, last_ticker, last_match, due: 0.0 });
    }
    Ok((Source::Market { products, rng }, specs))
}

/// The `last_match` a new subscriber gets for the trade `match_json` reports.
fn last_match_frame(match_json: &str) -> Option<ws::Frame> {
    protocol::last_match(match_json.as_bytes()).map(|text| ws::frame::text(&text))
}

/// Resolves once the handle asks the simulator to stop, looking every `poll`
/// (zero: at every turn of the executor, for the tests).
async fn watch_stop(control: &Control, poll: Duration) {
    loop {
        control.stop_polls.fetch_add(1, Ordering::Relaxed);
        if control.stop.load(Ordering::SeqCst) {
            return;
        }
        if poll.is_zero() {
            futures_lite::future::yield_now().await;
        } else {
            sleep(poll).await;
        }
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<futures_rustls::TlsAcceptor>, feed: Rc<RefCell<Feed>>) {
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("simulator: accept failed: {e}");
                sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if feed.borrow().refusing() {
            drop(stream); // the `refuse` fault: accepted and closed at once
            continue;
        }
        next_id += 1;
        let (feed, tls) = (feed.clone(), tls.clone());
        glommio::spawn_local(async move {
            if let Err(e) = serve(stream, tls, feed, next_id).await {
                log::debug!("simulator: connection {next_id}: {e}");
            }
        })
        .detach();
    }
}

async fn serve(
    stream: TcpStream,
    tls: Option<futures_rustls::TlsAcceptor>,
    feed: Rc<RefCell<Feed>>,
    id: u64,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let mut io: BoxIo = match tls {
        Some(acceptor) => Box::new(acceptor.accept(stream).await.map_err(|e| format!("TLS: {e}"))?),
        None => Box::new(stream),
    };
    let mut buf = Vec::new();
    let req = match net::read_request(&mut io, &mut buf).await {
        Ok(Some(req)) => req,
        Ok(None) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let response = match ws::accept(&req) {
        Ok(bytes) => bytes,
        Err(resp) => {
            let _ = io.write_all(&resp.to_bytes(true)).await;
            return Err(format!("refused upgrade: {}", resp.status));
        }
    };
    let delay = feed.borrow().windows.handshake_delay(Instant::now());
    if let Some(delay) = delay {
        sleep(delay).await; // the `slow-handshake` fault
    }
    io.write_all(&response).await.map_err(|e| e.to_string())?;
    let outbox = Rc::new(Outbox::new(OUTBOX_BYTES));
    let conn = Conn {
        outbox: outbox.clone(),
        fd,
        subs: Default::default(),
        subscribed: false,
        since: Instant::now(),
        backlogged_since: None,
    };
    feed.borrow_mut().conns.insert(id, conn);
    feed.borrow().control.record(SimEvent::Connected(id));
    let handler = SessionHandler { feed: feed.clone(), id };
    let limits =
        ws::Limits { max_message: MAX_MESSAGE, ping_every: Duration::from_secs(20), idle_after: Duration::ZERO };
    ws::run_session(io, buf, outbox, limits, handler).await;
    let mut f = feed.borrow_mut();
    f.conns.remove(&id);
    f.control.record(SimEvent::Closed(id));
    Ok(())
}

struct SessionHandler {
    feed: Rc<RefCell<Feed>>,
    id: u64,
}

impl ws::Handler for SessionHandler {
    async fn on_text(&mut self, text: Vec<u8>, _outbox: &Outbox) {
        self.feed.borrow_mut().on_text(self.id, &text);
    }

    async fn on_binary(&mut self, _data: Vec<u8>, outbox: &Outbox) {
        let error = crate::protocol::error_message("Malformed JSON", "binary messages are not accepted");
        let _ = outbox.push(ws::frame::text(error.as_bytes()));
    }
}

/// Moves the market (or the replay) on, and sends what is due.
async fn tick_loop(feed: Rc<RefCell<Feed>>, cfg: SimConfig) {
    let now = Instant::now();
    let mut clock = Clock {
        last: now,
        last_l2: now,
        last_heartbeat: now,
        drops_seen: 0,
        next_fault: now + cfg.fault_every,
        fault_turn: 0,
        trading_from: now + cfg.hold,
    };
    loop {
        let busy = tick(&mut feed.borrow_mut(), &mut clock, &cfg);
        if busy {
            futures_lite::future::yield_now().await;
        } else {
            sleep(TICK).await;
        }
    }
}

/// When the tick loop last did each of its periodic jobs.
struct Clock {
    last: Instant,
    last_l2: Instant,
    last_heartbeat: Instant,
    drops_seen: u64,
    next_fault: Instant,
    fault_turn: usize,
    trading_from: Instant,
}

/// One tick; true when more is due at once (a replay at full speed).
fn tick(f: &mut Feed, clock: &mut Clock, cfg: &SimConfig) -> bool {
    let (rate, subscribe_timeout) = (cfg.rate, cfg.subscribe_timeout);
    let now = Instant::now();
    if !cfg.faults.is_empty() && now >= clock.next_fault {
        clock.next_fault = now + cfg.fault_every;
        f.control.inject_later(cfg.faults[clock.fault_turn % cfg.faults.len()]);
        clock.fault_turn += 1;
    }
    for fault in f.control.take_faults() {
        f.apply(fault, cfg.fault_for);
    }
    let drops = f.control.drops.load(Ordering::SeqCst);
    if drops != clock.drops_seen {
        clock.drops_seen = drops;
        for conn in f.conns.values() {
            conn.outbox.kill("dropped by the simulator");
        }
    }
    close_silent(f, now, subscribe_timeout);
    let trading = now >= clock.trading_from && !f.control.is_paused();
    let elapsed = now.duration_since(clock.last);
    let busy = match &f.source {
        Source::Market { .. } => {
            if trading {
                trade(f, rate * elapsed.as_secs_f64());
            }
            if now.duration_since(clock.last_l2) >= L2_BATCH {
                clock.last_l2 = now;
                send_l2(f);
            }
            if now.duration_since(clock.last_heartbeat) >= Duration::from_secs(1) {
                clock.last_heartbeat = now;
                send_heartbeats(f);
            }
            false
        }
        Source::Replay(_) => replay(f, trading.then_some(elapsed)),
    };
    clock.last = now;
    busy
}

fn close_silent(f: &Feed, now: Instant, timeout: Duration) {
    if timeout.is_zero() {
        return;
    }
    for conn in f.conns.values() {
        if !conn.subscribed && now.duration_since(conn.since) > timeout && conn.outbox.is_open() {
            conn.outbox.close(close::POLICY, "no subscribe message received in time");
        }
    }
}

fn trade(f: &mut Feed, owed: f64) {
    let Feed { source: Source::Market { products, rng }, .. } = f else { return };
    let mut out = Vec::new();
    for p in products.iter_mut() {
        p.due += owed;
        while p.due >= 1.0 {
            p.due -= 1.0;
            let t = p.book.step(rng);
            let ticker = ws::frame::text(p.book.ticker(&t).as_bytes());
            let m = p.book.match_message(&t, rng);
            p.last_match = last_match_frame(&m);
            p.last_ticker = Some(ticker.clone());
            out.push((p.book.spec.id.clone(), ticker, ws::frame::text(m.as_bytes())));
        }
    }
    for (product, ticker, m) in out {
        f.deliver(Channel::Matches, &product, &m);
        f.deliver(Channel::Ticker, &product, &ticker);
    }
}

fn send_l2(f: &mut Feed) {
    let mut out = Vec::new();
    if let Source::Market { products, .. } = &mut f.source {
        for p in products.iter_mut() {
            out.push((p.book.spec.id.clone(), p.book.take_l2update()));
        }
    }
    for (product, update) in out {
        if let Some(u) = update.filter(|_| f.wanted(Channel::Level2Batch, &product)) {
            f.deliver(Channel::Level2Batch, &product, &ws::frame::text(u.as_bytes()));
        }
    }
}

fn send_heartbeats(f: &Feed) {
    let Source::Market { products, .. } = &f.source else { return };
    for p in products {
        if f.wanted(Channel::Heartbeat, &p.book.spec.id) {
            f.deliver(Channel::Heartbeat, &p.book.spec.id, &ws::frame::text(p.book.heartbeat().as_bytes()));
        }
    }
}

/// Plays the replay on by `elapsed` (`None`: held, by `--hold` or a pause) and
/// sends what is due; true when more is due at once (full speed).
fn replay(f: &mut Feed, elapsed: Option<Duration>) -> bool {
    // The clock starts at the first subscription to a product: a relay's
    // `status`-only subscribe, made to learn the products, does not start it.
    let subscribed = f.conns.values().any(|c| c.subs.iter().any(|(ch, ps)| ch.takes_products() && !ps.is_empty()));
    let backlog = replay_backlog(f);
    let Source::Replay(r) = &mut f.source else { return false };
    if subscribed {
        r.start();
    }
    let Some(elapsed) = elapsed else { return false };
    if backlog {
        return false; // the clock waits with it, so nothing is skipped
    }
    // A turn's worth is bounded in bytes too: a burst of big messages (level2
    // snapshots) spreads over turns instead of overflowing a reader's outbox.
    let turn = r.play(elapsed, 1024, REPLAY_BACKLOG);
    let Source::Replay(r) = &f.source else { return false };
    for i in turn.due {
        let (rec, product) = r.record(i);
        f.deliver(rec.channel, product, &rec.frame);
    }
    turn.more
}

/// Whether a subscriber's queue holds the replay up; a subscriber that has for
/// [`REPLAY_HOLD_UP`] is dropped (and holds nothing up any more).
fn replay_backlog(f: &mut Feed) -> bool {
    let now = Instant::now();
    let mut backlog = false;
    for (id, conn) in f.conns.iter_mut() {
        if conn.outbox.queued_bytes() <= REPLAY_BACKLOG || !conn.outbox.is_open() {
            conn.backlogged_since = None;
            continue;
        }
        let since = *conn.backlogged_since.get_or_insert(now);
        if now.duration_since(since) >= REPLAY_HOLD_UP {
            log::warn!(
                "simulator: connection {id} dropped as a slow consumer (held the replay up for {REPLAY_HOLD_UP:?})"
            );
            conn.outbox.kill("slow consumer");
            conn.backlogged_since = None;
        } else {
            backlog = true;
        }
    }
    backlog
}
