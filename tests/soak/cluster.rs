//! The cluster soak: issue 17's roles, as release binaries, for `SOAK_SECONDS`,
//! beside the single-process soak (the two tests run at once, one shard a node).
//! The simulator, Debian's `nats-server` with JetStream, ingests `i1` (active:
//! started first) and `i2` (standby), edges `a` and `b`. What it asserts:
//! - all the time: a WebSocket client of edge a and an NDJSON stream of edge b
//!   each see every BTC-USD `match` trade id in order, with no hole, repeat, `gap`,
//!   `upstream` or `error` note; REST calls made on edge b for a's client
//!   (forwarded over NATS) toggle a churned pair every [`TOGGLE`], each answered
//!   200 and taking effect (its `subscribed` / `unsubscribed` note reaches the
//!   client; edge b counts each as forwarded); `/livez` and `/healthz` of every
//!   node answer every 3 s;
//! - the lease, renewed every second by `i1`, never lapses: the edges'
//!   `cluster.epoch` never changes and they follow `i1` (one `ingest_changed`
//!   each, at the start), `i1` stays `active` with one upstream connection and
//!   `i2` `standby`, neither logs `lease_lost` nor (past `i1`'s first)
//!   `lease_taken`, no node logs a NATS disconnect; the standby never connects
//!   upstream (`upstream.connects` 0, no `upstream: connected` line);
//! - after a warm-up, the resident set and descriptors of `i1`, both edges and
//!   nats-server stay within `RSS_SLACK` and `FD_SLACK` of their first value
//!   after it;
//! - no process exits or logs a panic;
//! - at the end: SIGTERM to `i1`: it exits 0 having logged `gave the lease up`,
//!   `i2` takes the lease, both clients get `reconnecting` then `connected`, a
//!   fresh `last_match` and [`AFTER_HANDOVER`] contiguous trades; then SIGTERM
//!   ends `i2` and the edges with status 0, and nats-server and the simulator
//!   (nats-server 2.9 exits 1 on SIGTERM, and `hedgehog simulate` ends by the
//!   signal: their status is shown, not held to 0).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::Message;

use super::common::nats::NATS_SERVER;
use super::common::{http, DEADLINE};
use super::{
    client_header, next_line, open_stream, parse, relay_ws, soak_seconds, toggle, Proc, Series, TradeIds, Worker,
};

/// One REST toggle of a churned pair, made on edge b for a's client, this often.
const TOGGLE: Duration = Duration::from_secs(3);
/// Contiguous BTC-USD trades each client must see after the handover's `last_match`.
const AFTER_HANDOVER: u64 = 10;
const PAIR: &str = "BTC-USD";

#[test]
#[ignore = "a 12-minute cluster soak: run it with `bash tests/soak.sh [SECONDS]`"]
fn a_cluster_stays_flat_on_one_lease_then_hands_it_over() {
    let secs = soak_seconds();
    let mut cl = Cluster::start();
    println!(
        "cluster soak: {secs} s; nats-server {}, ingest i1 {} (active), i2 {}, edges a {} and b {}",
        cl.nats.addr, cl.i1.addr, cl.i2.addr, cl.a.addr, cl.b.addr
    );
    let epoch = health(&cl.a, 200)["cluster"]["epoch"].clone();
    let run = drive(&mut cl, secs, &epoch);
    cl.lease_kept(&epoch, run.secs);
    let h = health(&cl.i1, 200);
    assert_eq!(h["upstream"]["connects"], 1, "i1 reconnected upstream: {h}");
    let handover = hand_over(&mut cl, &epoch, run.load);
    let stops = stop_the_rest(&mut cl);

    println!("cluster soak: passed after {} s on lease term {epoch} held by i1", run.secs);
    println!("cluster soak: {}; {}", handover.ws.summary(), handover.ndjson.summary());
    println!(
        "cluster soak: {} REST toggles on b for a's client, {} rounds of /livez and /healthz on 4 nodes",
        handover.ws.toggles, run.health_checks
    );
    for s in &run.series {
        println!("cluster soak: {}", s.summary());
    }
    println!(
        "cluster soak: SIGTERM: i1 exited 0 in {:?}; the edges followed i2 {:?} after it; {stops}",
        handover.exited, handover.followed
    );
}

/// The six processes.
struct Cluster {
    sim: Proc,
    nats: Proc,
    i1: Proc,
    i2: Proc,
    a: Proc,
    b: Proc,
}

impl Cluster {
    /// Starts everything; returns once i1 holds the lease and its upstream, and
    /// both edges follow it with the upstream connected.
    fn start() -> Cluster {
        let sim_args = ["simulate", "--host", "127.0.0.1", "--port", "0", "--seed", "2", "--rate", "5"];
        let sim = Proc::hedgehog("cluster-simulator", &sim_args, 1, "simulator listening on ");
        let nats = nats_server();
        let url = format!("nats://{}", nats.addr);
        // `ingest-i1` is node `i1` in role `ingest`.
        let node = |name: &'static str, up: &[&str]| {
            let (role, node) = name.split_once('-').expect("role-node");
            let mut args = vec!["--host", "127.0.0.1", "--port", "0", "--role", role, "--node", node, "--nats", &url];
            args.extend(up);
            Proc::hedgehog(name, &args, 1, "hedgehog listening on ")
        };
        let up = ["--upstream-url", sim.addr.as_str()];
        let i1 = node("ingest-i1", &up);
        i1.wait_log("lease_taken");
        i1.wait_log("upstream: connected");
        let i2 = node("ingest-i2", &up);
        let (a, b) = (node("edge-a", &[]), node("edge-b", &[]));
        let cl = Cluster { sim, nats, i1, i2, a, b };
        for edge in [&cl.a, &cl.b] {
            wait_for(&format!("{} to follow i1, connected", edge.name), || {
                let h = health(edge, 0);
                (h["cluster"]["active_ingest"] == "i1" && h["upstream"]["state"] == "connected").then_some(()).ok_or(h)
            });
        }
        let c = health(&cl.i2, 0)["cluster"].clone();
        assert_eq!((c["lease"].as_str(), c["active_ingest"].as_str()), (Some("standby"), Some("i1")), "i2: {c}");
        cl
    }

    fn all(&mut self) -> [&mut Proc; 6] {
        [&mut self.sim, &mut self.nats, &mut self.i1, &mut self.i2, &mut self.a, &mut self.b]
    }

    /// Every node answers `/livez` and `/healthz`; the lease is where it was at
    /// the start (term `epoch`, held by i1), with nothing logged about it since;
    /// no node lost NATS, and the edges followed one ingest only.
    fn lease_kept(&self, epoch: &Value, at: u64) {
        for node in [&self.i1, &self.i2, &self.a, &self.b] {
            let (status, _, body) = http(addr(node), "GET", "/livez", "");
            assert_eq!(status, 200, "{} /livez at {at} s: {body}", node.name);
        }
        for edge in [&self.a, &self.b] {
            let h = health(edge, 200);
            let c = &h["cluster"];
            assert_eq!((&c["epoch"], c["active_ingest"].as_str()), (epoch, Some("i1")), "{} at {at} s: {h}", edge.name);
            assert_eq!(h["upstream"]["state"], "connected", "{} at {at} s: {h}", edge.name);
        }
        let active = health(&self.i1, 200);
        assert_eq!(active["cluster"]["lease"], "active", "i1 at {at} s: {active}");
        let standby = health(&self.i2, 0);
        assert_eq!(standby["cluster"]["lease"], "standby", "i2 at {at} s: {standby}");
        assert_eq!(standby["upstream"]["connects"], 0, "i2, the standby, connected upstream: {standby}");
        for (node, taken) in [(&self.i1, 1), (&self.i2, 0)] {
            let lines = (node.log_lines("lease_taken"), node.log_lines("lease_lost"));
            assert_eq!(
                lines,
                (taken, 0),
                "{} at {at} s: lease_taken, lease_lost lines: {}",
                node.name,
                node.log.display()
            );
        }
        assert_eq!(self.i2.log_lines("upstream: connected"), 0, "i2, the standby, connected upstream");
        for node in [&self.i1, &self.i2, &self.a, &self.b] {
            let lost = node.log_lines("nats_disconnected");
            assert_eq!(lost, 0, "{} lost NATS by {at} s: {}", node.name, node.log.display());
        }
        for edge in [&self.a, &self.b] {
            let changes = edge.log_lines("ingest_changed");
            assert_eq!(changes, 1, "{} changed ingests by {at} s: {}", edge.name, edge.log.display());
        }
    }
}

/// Debian's nats-server with JetStream on a free port, its store under the logs.
fn nats_server() -> Proc {
    assert!(
        std::path::Path::new(NATS_SERVER).exists(),
        "{NATS_SERVER} is missing: the cluster soak needs the real NATS server (apt-get install nats-server)"
    );
    let store: PathBuf = Proc::log_dir().join("nats-store");
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store).expect("a store directory");
    let mut cmd = Command::new(NATS_SERVER);
    cmd.args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"]).arg(&store);
    Proc::spawn("nats-server", cmd, "Listening for client connections on ")
}

fn addr(node: &Proc) -> SocketAddr {
    node.addr.parse().unwrap_or_else(|e| panic!("{}: {:?} is not an address: {e}", node.name, node.addr))
}

/// A node's `/healthz`, whose status must be `status` (any, for 0).
fn health(node: &Proc, status: u16) -> Value {
    let (got, _, h) = http(addr(node), "GET", "/healthz", "");
    assert!(status == 0 || got == status, "{} /healthz {got}: {h}", node.name);
    h
}

/// Polls `probe` every 50 ms until it gives `Ok`, for up to three [`DEADLINE`]s.
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<T, Value>) -> T {
    let end = Instant::now() + 3 * DEADLINE;
    loop {
        match probe() {
            Ok(t) => return t,
            Err(last) => assert!(Instant::now() < end, "timed out waiting for {what}; last seen: {last}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the run under load leaves.
struct Run {
    secs: u64,
    load: [Worker<Feed>; 2],
    series: [Series; 4],
    health_checks: u64,
}

/// The load for `secs`: once a second every process is checked, every 3 s the
/// lease and every node's health, every 5 s memory and descriptors.
fn drive(cl: &mut Cluster, secs: u64, epoch: &Value) -> Run {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let hard_end = end + 10 * DEADLINE;
    let (a, b) = (addr(&cl.a), addr(&cl.b));
    let mut load = vec![
        Worker::spawn("ws-on-a".into(), move |stop| ws_on_a(a, b, stop, hard_end)),
        Worker::spawn("ndjson-on-b".into(), move |stop| ndjson_on_b(b, stop, hard_end)),
    ];
    let warm_up = (secs / 5).min(60);
    let mut series = [
        Series::new("ingest i1", cl.i1.pid(), warm_up),
        Series::new("edge a", cl.a.pid(), warm_up),
        Series::new("edge b", cl.b.pid(), warm_up),
        Series::new("nats-server", cl.nats.pid(), warm_up),
    ];
    let mut health_checks = 0;
    for tick in 1..=secs {
        std::thread::sleep((start + Duration::from_secs(tick)).saturating_duration_since(Instant::now()));
        cl.all().into_iter().for_each(Proc::check);
        Worker::none_ended(&mut load);
        if tick % 3 == 0 {
            cl.lease_kept(epoch, tick);
            health_checks += 1;
        }
        if tick % 5 == 0 {
            series.iter_mut().for_each(|s| s.sample(tick));
        }
        if tick % 60 == 0 {
            let last: Vec<String> = series.iter().map(Series::last).collect();
            println!("cluster soak: {tick} s; {}", last.join("; "));
        }
    }
    let load: [Worker<Feed>; 2] = load.try_into().unwrap_or_else(|_| unreachable!("both threads run"));
    Run { secs: start.elapsed().as_secs(), load, series, health_checks }
}

/// What the handover leaves for the summary.
struct Handover {
    ws: Feed,
    ndjson: Feed,
    exited: Duration,
    followed: Duration,
}

/// SIGTERM to i1 with both clients told to expect it: i1 exits 0 having given
/// the lease up, i2 takes it, the edges follow i2 under a new term, and each
/// client gets the notes, a fresh `last_match` and contiguous trades.
fn hand_over(cl: &mut Cluster, epoch: &Value, load: [Worker<Feed>; 2]) -> Handover {
    load.iter().for_each(Worker::tell);
    let signalled = cl.i1.signal(libc::SIGTERM);
    let exited = cl.i1.exits_cleanly(signalled);
    assert_eq!(cl.i1.log_lines("gave the lease up"), 1, "i1 did not give its lease up: {}", cl.i1.log.display());
    cl.i2.wait_log("lease_taken");
    for edge in [&cl.a, &cl.b] {
        wait_for(&format!("{} to follow i2, connected", edge.name), || {
            let h = health(edge, 0);
            let c = &h["cluster"];
            let moved = c["active_ingest"] == "i2" && c["epoch"] != *epoch && h["upstream"]["state"] == "connected";
            moved.then_some(()).ok_or(h)
        });
    }
    let followed = signalled.elapsed();
    let [ws, ndjson] = load.map(Worker::finish);
    // Every REST call on b for a's client went over NATS: the subscribe and the toggles.
    let forwarded = health(&cl.b, 200)["cluster"]["forwarded"].clone();
    assert_eq!(forwarded, serde_json::json!({"ok": ws.toggles + 1, "failed": 0}), "edge b's forwarded calls");
    Handover { ws, ndjson, exited, followed }
}

/// SIGTERM to i2 and the edges (each exits 0), then to nats-server and the simulator.
fn stop_the_rest(cl: &mut Cluster) -> String {
    let nodes = [&mut cl.i2, &mut cl.a, &mut cl.b];
    let signalled: Vec<Instant> = nodes.iter().map(|n| n.signal(libc::SIGTERM)).collect();
    let took: Vec<String> = nodes
        .into_iter()
        .zip(signalled)
        .map(|(n, s)| {
            let took = n.exits_cleanly(s);
            format!("{} in {took:?}", n.name)
        })
        .collect();
    let mut others = Vec::new();
    for p in [&mut cl.nats, &mut cl.sim] {
        let signalled = p.signal(libc::SIGTERM);
        let (status, _) = p.exits(signalled);
        others.push(format!("{} {status}", p.name));
    }
    format!("exited 0: {}; then {}", took.join(", "), others.join(", "))
}

// ---------------------------------------------------------------------------------
// The two clients.

/// A WebSocket client of edge a, subscribed to BTC-USD matches by REST on edge
/// b, which also toggles a churned pair every [`TOGGLE`], each change seen to
/// take effect (its note) before the next. Told to stop, it expects the handover.
fn ws_on_a(a: SocketAddr, b: SocketAddr, stop: &AtomicBool, hard_end: Instant) -> Feed {
    let (mut c, id) = relay_ws(a).unwrap_or_else(|e| panic!("the client of edge a: {e}"));
    let who = format!("the client of edge a ({id})");
    let path = format!("/api/v1/subscribe/{PAIR}?channels=matches");
    let (status, _, body) = http(b, "POST", &path, &client_header(&id));
    assert_eq!(status, 200, "{who}: subscribing on edge b: {body}");
    let mut feed = Feed::new(who.clone());
    let (mut next_toggle, mut pending) = (Instant::now() + TOGGLE, None);
    while !feed.done() {
        let now = Instant::now();
        feed.on_time(now, stop, hard_end);
        if let Some((note, pair, since)) = pending {
            assert!(now < since + DEADLINE, "{who}: no {note} note for {pair} in {DEADLINE:?}");
        } else if now >= next_toggle && !stop.load(Ordering::SeqCst) {
            let (note, pair) = toggle(b, &id, &who, feed.toggles as usize);
            (pending, next_toggle) = (Some((note, pair, now)), now + TOGGLE);
            feed.toggles += 1;
        }
        let v = match c.next_message(now) {
            Some(Message::Text(t)) => parse(&who, &t),
            Some(Message::Close(f)) => panic!("{who}: closed by the relay: {f:?}"),
            _ => continue,
        };
        if pending.is_some_and(|(note, pair, _)| v["type"] == note && v["product_id"] == pair) {
            pending = None;
        }
        feed.take(&v, stop);
    }
    feed
}

/// `curl -N` on edge b: an NDJSON stream of BTC-USD. Told to stop, it expects the handover.
fn ndjson_on_b(b: SocketAddr, stop: &AtomicBool, hard_end: Instant) -> Feed {
    let who = "the NDJSON stream of edge b";
    let (mut r, mut buf) = open_stream(b, &format!("/api/v1/subscribe/{PAIR}?channels=matches"), who);
    let mut feed = Feed::new(who.into());
    while !feed.done() {
        let now = Instant::now();
        feed.on_time(now, stop, hard_end);
        if let Some(line) = next_line(&mut r, &mut buf, now) {
            feed.take(&parse(who, &line), stop);
        }
    }
    feed
}

/// Where a client is in the handover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before it, and until its `reconnecting` note.
    Steady,
    Reconnecting,
    /// The `connected` note came: the next trade message is a fresh `last_match`.
    Connected,
    /// That `last_match` came: the chain runs on from it.
    Fresh,
}

/// One client's messages, checked: by [`TradeIds`] while the lease stays, then
/// the handover's notes in order, a fresh `last_match` and trades from it.
struct Feed {
    who: String,
    ids: TradeIds,
    phase: Phase,
    /// The last BTC-USD trade message, or the start.
    last_trade: Instant,
    /// When the flag was seen: the handover must be over three [`DEADLINE`]s later.
    told: Option<Instant>,
    messages: u64,
    toggles: u64,
    /// Trade ids checked before the handover.
    before: u64,
}

impl Feed {
    fn new(who: String) -> Feed {
        let ids = TradeIds::default();
        Feed {
            who,
            ids,
            phase: Phase::Steady,
            last_trade: Instant::now(),
            told: None,
            messages: 0,
            toggles: 0,
            before: 0,
        }
    }

    /// Panics if BTC-USD trades stopped for two [`DEADLINE`]s, or the handover is late.
    fn on_time(&mut self, now: Instant, stop: &AtomicBool, hard_end: Instant) {
        if self.told.is_none() && stop.load(Ordering::SeqCst) {
            self.told = Some(now);
            self.before = self.ids.checked;
        }
        let who = &self.who;
        assert!(now < hard_end, "{who}: never told of the handover");
        match self.told {
            None => assert!(now < self.last_trade + 2 * DEADLINE, "{who}: no {PAIR} trade for {:?}", 2 * DEADLINE),
            Some(t) => assert!(
                now < t + 3 * DEADLINE,
                "{who}: the handover not over after {:?}, at {:?}",
                3 * DEADLINE,
                self.phase
            ),
        }
    }

    /// Checks one message; `stop` says whether the handover has begun.
    fn take(&mut self, v: &Value, stop: &AtomicBool) {
        self.messages += 1;
        let who = &self.who;
        if v["type"] == "upstream" {
            assert!(stop.load(Ordering::SeqCst), "{who}: the relay says {v} before the handover");
            self.phase = match (self.phase, v["state"].as_str()) {
                (Phase::Steady, Some("reconnecting")) => Phase::Reconnecting,
                (Phase::Reconnecting, Some("connected")) => Phase::Connected,
                (phase, _) => panic!("{who}: {v} at {phase:?}: `reconnecting` then `connected` expected"),
            };
            return;
        }
        let trade = v["product_id"] == PAIR && (v["type"] == "match" || v["type"] == "last_match");
        if trade {
            self.last_trade = Instant::now();
            if self.phase == Phase::Connected {
                assert_eq!(v["type"], "last_match", "{who}: a fresh last_match first after the handover: {v}");
                self.ids.chains.remove(PAIR);
                self.phase = Phase::Fresh;
            }
        }
        self.ids.take(who, v);
    }

    /// The handover is over: [`AFTER_HANDOVER`] trades ran on from its `last_match`.
    fn done(&self) -> bool {
        self.phase == Phase::Fresh && self.ids.since_mark(PAIR) >= AFTER_HANDOVER
    }

    fn summary(&self) -> String {
        let after = self.ids.checked - self.before;
        format!(
            "{}: {} messages, {} trade ids in order, {after} more after the handover",
            self.who, self.messages, self.before
        )
    }
}
