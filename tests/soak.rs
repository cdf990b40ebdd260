//! Soak: the release binary stays up, flat and serving for `SOAK_SECONDS` (720 by
//! default, as CI runs it), well past the ~655 s at which glommio 0.9 used to end a
//! task whose pending accept had been re-polled 32,768 times (a 20 ms stop-flag poll
//! raced against the accept: see GLOMMIO notes, "A pending accept or connect").
//!
//! Beside this test, in the same run and for as long, [`cluster`] soaks issue 17's
//! cluster (two ingests, two edges, nats-server); its header says what it asserts.
//!
//! Run by `bash tests/soak.sh [SECONDS]`; ignored by `cargo test`. Three processes of
//! the release binary: the simulator, relay A under a small steady load, and relay B,
//! which nobody connects to until the end. What it asserts:
//! - relay A, all the time: WebSocket clients come and go (one a second) and toggle
//!   other pairs by REST; each sees every BTC-USD `match` trade id in order, no hole,
//!   repeat, `gap`, `upstream` or `error` note, and nothing of a pair after its
//!   `unsubscribed`; an NDJSON stream of ETH-USD likewise for the whole run; a client's
//!   pings are answered; `GET /livez` answers 200 every few seconds;
//! - after a warm-up, relay A's and the simulator's resident set and open descriptors
//!   stay within [`RSS_SLACK`] and [`FD_SLACK`] of their first value after it;
//! - no process exits or logs a panic, at any time;
//! - at the end: relay B's two shards, which accepted nothing for the whole run, each
//!   accept a WebSocket client and serve it live data; the simulator, which accepted
//!   nothing since the relays' upstream connections, accepts a new client and answers
//!   its subscribe; neither relay ever reconnected upstream (`connects` is 1) or
//!   counted a panic or a gap; SIGTERM ends each relay with status 0 within 10 s.
//!
//! With the old accept loops (an accept raced against a 20 ms timer) it fails at
//! ~655 s: the simulator's thread, then relay B's shards, panic with `Waker invariant
//! broken ... refcount: -32768`, and the next once-a-second check reads it in their
//! logs. Nothing here times the relay: every wait has a deadline, nothing more.

#[path = "soak/cluster.rs"]
mod cluster;
mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{http, Client, DEADLINE};
use serde_json::Value;
use tungstenite::Message;

/// Resident-set growth allowed after the warm-up. The history fills towards its
/// 1,000-message cap per topic during the run (a few MiB for the topics used here);
/// a leak of 16 KiB per connection over the run's ~2,000 connections would break it.
const RSS_SLACK: u64 = 32 << 20;
/// Descriptor growth allowed after the warm-up: the load holds ~15 connections at
/// once and opens ~2,000 in all, so a leak of one descriptor in 30 shows.
const FD_SLACK: usize = 64;
/// Where relay A is asked whether every shard answers.
const LIVENESS: &str = "/livez";
/// README: on SIGTERM the relay exits 0 "within 10 s" (here no client is left).
const EXIT_LIMIT: Duration = Duration::from_secs(10);
/// WebSocket clients of relay A at any time; the first `LONG_LIVED` stay for the run.
const CLIENTS: usize = 10;
const LONG_LIVED: usize = 2;
/// Pairs the clients subscribe to and leave again, one toggle every `TOGGLE`.
const CHURN_PAIRS: [&str; 4] = ["SOL-USD", "LTC-USD", "ADA-USD", "DOGE-USD"];
const TOGGLE: Duration = Duration::from_secs(2);
/// Pairs held for the whole run (BTC-USD by the long-lived clients, ETH-USD by the
/// NDJSON stream), so the relay never resubscribes them upstream: a `last_match`
/// amid their matches would hide a hole. A churned pair's topic empties and fills
/// again, and the simulator's fresh `last_match` may then follow the matches a
/// joiner already had; it restarts that pair's chain (counted in the summary).
const STEADY: [&str; 2] = ["BTC-USD", "ETH-USD"];
/// What gives a process away: a panic message, or glommio's waker refcount check.
const ALARMS: [&str; 2] = ["panicked", "Waker invariant"];

#[test]
#[ignore = "a 12-minute soak: run it with `bash tests/soak.sh [SECONDS]`"]
fn stays_up_flat_and_serving_past_the_accept_repoll_limit() {
    let secs = soak_seconds();
    let sim_args = ["simulate", "--host", "127.0.0.1", "--port", "0", "--seed", "1", "--rate", "5"];
    let sim = Proc::start("simulator", &sim_args, "simulator listening on ");
    let relay_args = ["--host", "127.0.0.1", "--port", "0", "--upstream-url", sim.addr.as_str()];
    let a = Proc::start("relay-a", &relay_args, "hedgehog listening on ");
    let b = Proc::start("relay-b", &relay_args, "hedgehog listening on ");
    // The load starts once both relays hold their upstream connection (a client of
    // a relay still connecting would rightly get an `upstream` note); from then on
    // neither relay B nor the simulator is asked to accept anything.
    a.wait_log("upstream: connected");
    b.wait_log("upstream: connected");
    let mut procs = [sim, a, b];
    let [sim, a, b] = &procs;
    println!("soak: {secs} s; simulator {}, relay A {}, relay B {} (quiet)", sim.addr, a.addr, b.addr);
    println!("soak: process logs in {}", Proc::log_dir().display());
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (a.addr.parse().unwrap(), b.addr.parse().unwrap());

    let run = drive(&mut procs, a_addr, secs);
    healthy("relay A", a_addr);
    let (attempts, rest_shards) = serves_from_every_shard(b_addr, 2, run.quiet);
    healthy("relay B", b_addr);
    simulator_accepts(&procs[0].addr, run.quiet);
    procs.iter_mut().for_each(Proc::check);
    let [sim, a, b] = &mut procs;
    let (a_signalled, b_signalled) = (a.signal(libc::SIGTERM), b.signal(libc::SIGTERM));
    let (a_took, b_took) = (a.exits_cleanly(a_signalled), b.exits_cleanly(b_signalled));
    sim.check();
    sim.signal(libc::SIGTERM);

    println!("soak: passed after {} s with relay B and the simulator accepting nothing throughout", run.quiet);
    println!("soak: {}; {} x {LIVENESS} 200", run.seen.summary(), run.live_checks);
    for s in &run.series {
        println!("soak: {}", s.summary());
    }
    println!(
        "soak: relay B served both shards' clients after {attempts} connection(s) (REST answered by shard(s) \
         {rest_shards:?}); SIGTERM: A exited 0 in {a_took:?}, B in {b_took:?}"
    );
}

/// `SOAK_SECONDS`, 720 by default, at least 30.
fn soak_seconds() -> u64 {
    let secs = std::env::var("SOAK_SECONDS").map_or(720, |s| s.parse().expect("SOAK_SECONDS: whole seconds"));
    assert!(secs >= 30, "SOAK_SECONDS must be at least 30");
    secs
}

/// What the run under load leaves for the summary.
struct Run {
    /// Seconds in which relay B and the simulator accepted nothing.
    quiet: u64,
    seen: Seen,
    series: [Series; 2],
    live_checks: u64,
}

/// Runs the load on relay A for `secs`, once a second checking every process and
/// replacing a client, every 3 s asking `LIVENESS`, every 5 s sampling memory.
fn drive(procs: &mut [Proc; 3], a_addr: SocketAddr, secs: u64) -> Run {
    let quiet_since = Instant::now();
    let end = quiet_since + Duration::from_secs(secs);
    // A safety net: no thread of the load runs on long after the end.
    let mut load = Load::start(a_addr, end + 10 * DEADLINE);
    let warm_up = (secs / 5).min(60);
    let [sim, a, _] = &*procs;
    let mut series = [Series::new("relay A", a.pid(), warm_up), Series::new("simulator", sim.pid(), warm_up)];
    let mut live_checks = 0;
    for tick in 1..=secs {
        if Instant::now() >= end {
            break;
        }
        std::thread::sleep((quiet_since + Duration::from_secs(tick)).saturating_duration_since(Instant::now()));
        procs.iter_mut().for_each(Proc::check);
        load.check();
        load.churn();
        if tick % 3 == 0 {
            let (status, _, body) = http(a_addr, "GET", LIVENESS, "");
            assert_eq!(status, 200, "GET {LIVENESS} on relay A at {tick} s: {body}");
            live_checks += 1;
        }
        if tick % 5 == 0 {
            series.iter_mut().for_each(|s| s.sample(tick));
        }
        if tick % 60 == 0 {
            println!("soak: {tick} s, {}; {}; {}", load.progress(), series[0].last(), series[1].last());
        }
    }
    let quiet = quiet_since.elapsed().as_secs();
    Run { quiet, seen: load.finish(), series, live_checks }
}

/// The end of the run, for a relay: it never reconnected upstream (so the
/// simulator accepted nothing from it after the start), and counted no panic or gap.
fn healthy(name: &str, addr: SocketAddr) {
    let (status, _, h) = http(addr, "GET", "/healthz", "");
    assert_eq!(status, 200, "{name} /healthz: {h}");
    assert_eq!(h["upstream"]["connects"], 1, "{name} reconnected upstream: {h}");
    assert_eq!(h["panics"], 0, "{name} contained a panic: {h}");
    assert_eq!(h["gaps"], 0, "{name} found a gap: {h}");
}

/// Connects to relay B until WebSocket clients of each of its `shards` shards have
/// had live data; returns the connections it took and the shards that answered REST.
fn serves_from_every_shard(addr: SocketAddr, shards: usize, quiet: u64) -> (u32, BTreeSet<String>) {
    let end = Instant::now() + 3 * DEADLINE;
    let (mut served, mut rest) = (BTreeSet::new(), BTreeSet::new());
    for attempt in 1..=64 {
        let (mut c, id) = relay_ws(addr)
            .unwrap_or_else(|e| panic!("relay B, quiet for {quiet} s, did not serve connection {attempt}: {e}"));
        let shard = id.split('-').next().unwrap_or_default().to_string();
        if served.contains(&shard) {
            assert!(Instant::now() < end, "relay B: only shard(s) {served:?} accepted in {attempt} connections");
            continue;
        }
        let (status, head, body) =
            http(addr, "POST", "/api/v1/subscribe/BTC-USD?channels=matches", &client_header(&id));
        assert_eq!(status, 200, "relay B, subscribing its shard {shard}'s client: {body}");
        rest.extend(header(&head, "X-Hedgehog-Shard"));
        c.until(&format!("a live match from relay B's shard {shard}"), |v| v["type"] == "match");
        served.insert(shard);
        if served.len() == shards {
            return (attempt, rest);
        }
    }
    panic!("relay B: only shard(s) {served:?} accepted in 64 connections");
}

/// The simulator, which accepted nothing since the relays connected, accepts a
/// Coinbase client and answers its subscribe.
fn simulator_accepts(url: &str, quiet: u64) {
    let mut c = connect_ws(url)
        .unwrap_or_else(|e| panic!("the simulator, with no new connection for {quiet} s, no longer accepts: {e}"));
    c.send(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["matches"]}"#);
    c.until("the simulator's subscriptions reply", |v| v["type"] == "subscriptions");
}

// ---------------------------------------------------------------------------------
// The processes.

/// One process of the release binary: its stderr copied to a log file and watched.
struct Proc {
    name: &'static str,
    child: Child,
    /// Where it listens, from its log (`127.0.0.1:PORT`, or `ws://...` for the simulator).
    addr: String,
    log: PathBuf,
    /// Log lines containing one of [`ALARMS`] (the first few).
    alarms: Arc<Mutex<Vec<String>>>,
    /// The thread that copies and watches stderr; it ends when the process does.
    watcher: Option<JoinHandle<()>>,
}

impl Proc {
    fn log_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("soak")
    }

    /// Starts the binary with `args` and two shards; waits for the log line with `marker`.
    fn start(name: &'static str, args: &[&str], marker: &'static str) -> Proc {
        Self::hedgehog(name, args, 2, marker)
    }

    /// Starts the binary with `args` and `shards` shards; waits for the log line with `marker`.
    fn hedgehog(name: &'static str, args: &[&str], shards: usize, marker: &'static str) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hedgehog"));
        cmd.args(args).env("WEB_CONCURRENCY", shards.to_string()).env("RUST_LOG", "info");
        Self::spawn(name, cmd, marker)
    }

    /// Starts `cmd`; waits for its stderr's line with `marker`.
    fn spawn(name: &'static str, mut cmd: Command, marker: &'static str) -> Proc {
        std::fs::create_dir_all(Self::log_dir()).expect("the log directory");
        let log = Self::log_dir().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("the log file");
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let alarms = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let watched = alarms.clone();
        let watcher = Some(std::thread::spawn(move || watch(stderr, file, marker, tx, &watched)));
        let mut p = Proc { name, child, addr: String::new(), log, alarms, watcher };
        p.addr = rx.recv_timeout(DEADLINE).unwrap_or_else(|_| panic!("{name} did not start: {}", p.log.display()));
        p
    }

    /// Waits until the log has a line containing `text`.
    fn wait_log(&self, text: &str) {
        let what = format!("{} to log {text:?}", self.name);
        common::wait_until(&what, || self.log_lines(text) > 0);
    }

    /// The log's lines so far that contain `text`.
    fn log_lines(&self, text: &str) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |l| l.lines().filter(|l| l.contains(text)).count())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics if the process has exited or logged an alarm.
    fn check(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("{} exited ({status}); its log: {}", self.name, self.log.display());
        }
        self.no_alarms();
    }

    fn no_alarms(&self) {
        let alarms = self.alarms.lock().unwrap();
        assert!(alarms.is_empty(), "{} logged: {alarms:#?}\n(its log: {})", self.name, self.log.display());
    }

    /// Sends `signal`; returns when it was sent.
    fn signal(&self, signal: libc::c_int) -> Instant {
        // SAFETY: kill(2) on our own child's pid, which `self.child` has not reaped.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill {} ({})", self.pid(), self.name);
        Instant::now()
    }

    /// Waits for the exit that `signalled` asked for; panics unless it is status 0
    /// within [`EXIT_LIMIT`]. Returns how long it took.
    fn exits_cleanly(&mut self, signalled: Instant) -> Duration {
        let (status, took) = self.exits(signalled);
        assert!(status.success(), "{} exited with {status} after SIGTERM; its log: {}", self.name, self.log.display());
        took
    }

    /// Waits for the exit that `signalled` asked for, within [`EXIT_LIMIT`], and for
    /// the rest of its log; returns its status and how long it took.
    fn exits(&mut self, signalled: Instant) -> (ExitStatus, Duration) {
        let status: ExitStatus = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(signalled.elapsed() < EXIT_LIMIT, "{} still running {EXIT_LIMIT:?} after SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = signalled.elapsed();
        // Its stderr is closed now: the watcher reads what is left, then ends.
        if let Some(watcher) = self.watcher.take() {
            watcher.join().expect("the log watcher");
        }
        self.no_alarms();
        (status, took)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies `stderr` to `file` line by line; sends the first word after `marker` on
/// `addr`; keeps the first lines that contain an alarm.
fn watch(
    stderr: impl std::io::Read,
    mut file: std::fs::File,
    marker: &str,
    addr: mpsc::Sender<String>,
    alarms: &Mutex<Vec<String>>,
) {
    for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line);
        let _ = writeln!(file, "{line}");
        if let Some(rest) = line.split(marker).nth(1) {
            let _ = addr.send(rest.split_whitespace().next().unwrap_or_default().to_string());
        }
        let mut alarms = alarms.lock().unwrap();
        if ALARMS.iter().any(|a| line.contains(a)) && alarms.len() < 20 {
            alarms.push(line.into_owned());
        }
    }
}

/// A process's resident set and open descriptors, sampled over the run.
struct Series {
    name: &'static str,
    pid: u32,
    /// (seconds into the run, resident bytes, descriptors)
    points: Vec<(u64, u64, usize)>,
    /// Seconds into the run before the bounds apply.
    warm_up: u64,
    /// The first sample after the warm-up: what the rest are held to.
    base: Option<(u64, usize)>,
}

impl Series {
    fn new(name: &'static str, pid: u32, warm_up: u64) -> Series {
        Series { name, pid, points: Vec::new(), warm_up, base: None }
    }

    /// Samples now; after the warm-up, panics if growth passes the bounds.
    fn sample(&mut self, at: u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).expect("/proc status");
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
        let rss = kib.trim().trim_end_matches("kB").trim().parse::<u64>().expect("VmRSS in kB") * 1024;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).expect("/proc fd").count();
        self.points.push((at, rss, fds));
        if at <= self.warm_up {
            return;
        }
        let (base_rss, base_fds) = *self.base.get_or_insert((rss, fds));
        assert!(
            rss <= base_rss + RSS_SLACK,
            "{}: resident set {} at {at} s; after the warm-up it was {}",
            self.name,
            mib(rss),
            mib(base_rss)
        );
        assert!(fds <= base_fds + FD_SLACK, "{}: {fds} descriptors at {at} s; after the warm-up {base_fds}", self.name);
    }

    fn last(&self) -> String {
        self.points.last().map_or(String::new(), |(_, rss, fds)| format!("{} {} {fds} fds", self.name, mib(*rss)))
    }

    fn summary(&self) -> String {
        let warm_up = self.warm_up;
        let after: Vec<_> = self.points.iter().filter(|p| p.0 > warm_up).collect();
        let (rss, fds) = (after.iter().map(|p| p.1), after.iter().map(|p| p.2));
        let (base_rss, base_fds) = self.base.unwrap_or_default();
        format!(
            "{}: {} samples after a {warm_up} s warm-up: resident {}..{} (base {}, bound +{}), descriptors {}..{} \
             (base {base_fds}, bound +{FD_SLACK})",
            self.name,
            after.len(),
            mib(rss.clone().min().unwrap_or_default()),
            mib(rss.max().unwrap_or_default()),
            mib(base_rss),
            mib(RSS_SLACK),
            fds.clone().min().unwrap_or_default(),
            fds.max().unwrap_or_default(),
        )
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

// ---------------------------------------------------------------------------------
// The load on relay A.

/// The load's threads: `CLIENTS` WebSocket clients (the churned ones replaced one at
/// a time), the NDJSON stream and the pinging client.
struct Load {
    addr: SocketAddr,
    /// No thread of the load runs past this.
    hard_end: Instant,
    clients: Vec<Worker>,
    others: Vec<Worker>,
    started: usize,
    seen: Seen,
}

impl Load {
    fn start(addr: SocketAddr, hard_end: Instant) -> Load {
        let mut load =
            Load { addr, hard_end, clients: Vec::new(), others: Vec::new(), started: 0, seen: Seen::default() };
        for _ in 0..CLIENTS {
            let client = load.client();
            load.clients.push(client);
        }
        load.others.push(Worker::spawn("ndjson".into(), move |stop| ndjson_stream(addr, stop, hard_end)));
        load.others.push(Worker::spawn("pinger".into(), move |stop| pinger(addr, stop, hard_end)));
        load
    }

    fn client(&mut self) -> Worker {
        self.started += 1;
        let (addr, hard_end, n) = (self.addr, self.hard_end, self.started);
        Worker::spawn(format!("client-{n}"), move |stop| ws_client(addr, n, stop, hard_end))
    }

    /// Replaces the next of the churned clients.
    fn churn(&mut self) {
        let slot = LONG_LIVED + self.started % (CLIENTS - LONG_LIVED);
        let fresh = self.client();
        let old = std::mem::replace(&mut self.clients[slot], fresh);
        self.seen.add(old.finish());
    }

    /// Panics if a thread of the load ended (by a failed check) before it was told to.
    fn check(&mut self) {
        Worker::none_ended(&mut self.clients);
        Worker::none_ended(&mut self.others);
    }

    fn progress(&self) -> String {
        format!("{} clients so far, {} trade ids checked", self.started, self.seen.trades)
    }

    fn finish(mut self) -> Seen {
        for w in self.clients.drain(..).chain(self.others.drain(..)) {
            self.seen.add(w.finish());
        }
        self.seen.clients = self.started;
        self.seen
    }
}

/// A thread of the load, told to stop by a flag; it returns what it saw.
struct Worker<T = Seen> {
    name: String,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<T>,
}

impl<T: Send + 'static> Worker<T> {
    fn spawn(name: String, f: impl FnOnce(&AtomicBool) -> T + Send + 'static) -> Worker<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new().name(name.clone()).spawn(move || f(&flag)).expect("a thread");
        Worker { name, stop, handle }
    }

    /// Stops the thread and returns what it saw; a failed check fails the soak.
    fn finish(self) -> T {
        self.tell();
        self.handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Raises the thread's flag (what it does then is its own).
    fn tell(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Panics if one of `workers` ended (by a failed check) before it was told to.
    fn none_ended(workers: &mut Vec<Worker<T>>) {
        if let Some(i) = workers.iter().position(|w| w.handle.is_finished()) {
            let w = workers.remove(i);
            let name = w.name.clone();
            w.finish();
            panic!("{name} ended on its own");
        }
    }
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    clients: usize,
    /// Match trade ids checked against their predecessor.
    trades: u64,
    ndjson_trades: u64,
    messages: u64,
    toggles: u64,
    /// See [`STEADY`].
    restarts: u64,
    pongs: u64,
}

impl Seen {
    fn add(&mut self, o: Seen) {
        self.trades += o.trades;
        self.ndjson_trades += o.ndjson_trades;
        self.messages += o.messages;
        self.toggles += o.toggles;
        self.restarts += o.restarts;
        self.pongs += o.pongs;
    }

    fn summary(&self) -> String {
        format!(
            "{} WebSocket clients, {} messages, {} trade ids checked in order ({} on the NDJSON stream), \
             {} REST toggles ({} chain restarts), {} pongs",
            self.clients, self.messages, self.trades, self.ndjson_trades, self.toggles, self.restarts, self.pongs
        )
    }
}

/// One WebSocket client of relay A, for its whole life: subscribed to BTC-USD
/// matches, toggling one other pair by REST every [`TOGGLE`], every message checked.
/// Once told to stop it leaves after its next BTC-USD match (so every client is
/// shown to get data), half of them with a close handshake, half by dropping.
fn ws_client(addr: SocketAddr, n: usize, stop: &AtomicBool, hard_end: Instant) -> Seen {
    let (mut c, id) = relay_ws(addr).unwrap_or_else(|e| panic!("client-{n}: {e}"));
    let who = format!("client-{n} ({id})");
    let (status, _, body) = http(addr, "POST", "/api/v1/subscribe/BTC-USD?channels=matches", &client_header(&id));
    assert_eq!(status, 200, "{who}: subscribe: {body}");
    let (mut ids, mut seen) = (TradeIds::default(), Seen::default());
    let mut next_toggle = Instant::now() + TOGGLE;
    let mut leave_by = None;
    while !(leave_by.is_some() && ids.since_mark("BTC-USD") > 0) {
        let now = Instant::now();
        if leave_by.is_none() && stop.load(Ordering::SeqCst) {
            leave_by = Some(now + DEADLINE);
            ids.mark("BTC-USD"); // it leaves after one more match
        }
        assert!(now < leave_by.unwrap_or(hard_end), "{who}: no BTC-USD match in {DEADLINE:?} (or never stopped)");
        if now >= next_toggle && leave_by.is_none() {
            toggle(addr, &id, &who, n + seen.toggles as usize);
            seen.toggles += 1;
            next_toggle = now + TOGGLE;
        }
        match c.next_message(now) {
            Some(Message::Text(t)) => ids.take(&who, &parse(&who, &t)),
            Some(Message::Close(f)) => panic!("{who}: closed by the relay: {f:?}"),
            _ => continue,
        }
        seen.messages += 1;
    }
    (seen.trades, seen.restarts) = (ids.checked, ids.restarts);
    if n.is_multiple_of(2) {
        let _ = c.ws.close(None);
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end && c.ws.read().is_ok() {}
    }
    seen
}

/// Subscribes to, or (every other time) unsubscribes from, one of [`CHURN_PAIRS`];
/// returns the note that says it took effect (its type and pair).
fn toggle(addr: SocketAddr, id: &str, who: &str, k: usize) -> (&'static str, &'static str) {
    let pair = CHURN_PAIRS[(k / 2) % CHURN_PAIRS.len()];
    let (method, path, note) = match k % 2 {
        0 => ("POST", format!("/api/v1/subscribe/{pair}?channels=matches"), "subscribed"),
        _ => ("DELETE", format!("/api/v1/subscribe/{pair}"), "unsubscribed"),
    };
    let (status, _, body) = http(addr, method, &path, &client_header(id));
    assert_eq!(status, 200, "{who}: {method} {path}: {body}");
    (note, pair)
}

/// `curl -N`: a plain GET of ETH-USD with no client id streams NDJSON until told to stop.
fn ndjson_stream(addr: SocketAddr, stop: &AtomicBool, hard_end: Instant) -> Seen {
    let who = "the NDJSON stream";
    let (mut r, mut buf) = open_stream(addr, "/api/v1/subscribe/ETH-USD", who);
    let (mut ids, mut seen) = (TradeIds::default(), Seen::default());
    let mut leave_by = None;
    while !(leave_by.is_some() && ids.since_mark("ETH-USD") > 0) {
        let now = Instant::now();
        if leave_by.is_none() && stop.load(Ordering::SeqCst) {
            leave_by = Some(now + DEADLINE);
            ids.mark("ETH-USD");
        }
        assert!(now < leave_by.unwrap_or(hard_end), "{who}: no ETH-USD match in {DEADLINE:?} (or never stopped)");
        if let Some(line) = next_line(&mut r, &mut buf, now) {
            ids.take(who, &parse(who, &line));
            seen.messages += 1;
        }
    }
    seen.ndjson_trades = ids.checked;
    seen.trades = ids.checked;
    seen
}

/// `GET path` as an NDJSON stream: past its head, and the buffer of [`next_line`].
fn open_stream(addr: SocketAddr, path: &str, who: &str) -> (BufReader<TcpStream>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n").as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut buf = Vec::new();
    let mut head = Vec::new();
    for _ in 0..64 {
        match next_line(&mut r, &mut buf, Instant::now() + DEADLINE) {
            Some(line) if line.is_empty() => break,
            Some(line) => head.push(line),
            None => panic!("{who}: no head in {DEADLINE:?}"),
        }
    }
    let head = head.join("\n");
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("application/x-ndjson"), "{who}: {head}");
    (r, buf)
}

/// The next line (without its end), or `None` once `deadline` has passed.
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>, deadline: Instant) -> Option<String> {
    loop {
        match r.read_until(b'\n', buf) {
            Ok(0) => panic!("the relay closed the stream"),
            Ok(_) if buf.ends_with(b"\n") => {
                let line = String::from_utf8_lossy(buf).trim_end().to_string();
                buf.clear();
                return Some(line);
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    return None;
                }
            }
            Err(e) => panic!("reading the stream: {e}"),
        }
    }
}

/// A client with no subscription that pings every two seconds and waits for its pong.
fn pinger(addr: SocketAddr, stop: &AtomicBool, hard_end: Instant) -> Seen {
    let (mut c, id) = relay_ws(addr).unwrap_or_else(|e| panic!("pinger: {e}"));
    let mut seen = Seen::default();
    while !stop.load(Ordering::SeqCst) {
        assert!(Instant::now() < hard_end, "pinger: never told to stop");
        let payload = (seen.pongs + 1).to_be_bytes().to_vec();
        c.ws.send(Message::Ping(payload.clone().into())).expect("send a ping");
        let deadline = Instant::now() + DEADLINE;
        loop {
            match c.next_message(deadline) {
                Some(Message::Pong(p)) if p[..] == payload[..] => break,
                Some(Message::Close(f)) => panic!("pinger ({id}): closed by the relay: {f:?}"),
                Some(_) => {}
                None => panic!("pinger ({id}): no pong in {DEADLINE:?}"),
            }
        }
        seen.pongs += 1;
        let idle_until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < idle_until && !stop.load(Ordering::SeqCst) {
            let _ = c.next_message(Instant::now());
        }
    }
    seen
}

/// Checks one stream's matches, per product: each trade id is its predecessor's
/// plus one, from the first `match` (or the `last_match` before it) after a subscribe;
/// nothing of a product follows its `unsubscribed`; no note says the stream broke.
#[derive(Default)]
struct TradeIds {
    chains: HashMap<String, Chain>,
    /// Products unsubscribed.
    off: HashSet<String>,
    /// Trade ids checked against their predecessor.
    checked: u64,
    /// `last_match`es that restarted a churned pair's live chain (see [`STEADY`]).
    restarts: u64,
}

/// One product's matches as one stream saw them.
#[derive(Default)]
struct Chain {
    /// The last trade id: of a `match`, or of the `last_match` that starts the chain.
    last: Option<u64>,
    /// Whether a live `match` has come since the subscription began.
    live: bool,
    /// Live matches since the last [`TradeIds::mark`].
    since_mark: u64,
}

impl TradeIds {
    fn take(&mut self, who: &str, v: &Value) {
        let product = v["product_id"].as_str().unwrap_or_default().to_string();
        let kind = v["type"].as_str().unwrap_or_default();
        if matches!(kind, "gap" | "upstream" | "error") {
            panic!("{who}: the relay says {v}");
        }
        if matches!(kind, "match" | "last_match") {
            assert!(!self.off.contains(&product), "{who}: {v} after unsubscribing {product}");
        }
        let chain = self.chains.entry(product.clone()).or_default();
        match (kind, v["trade_id"].as_u64()) {
            ("match", Some(id)) => {
                if let Some(prev) = chain.last {
                    assert_eq!(id, prev + 1, "{who}: {product} trade {id} after {prev}: a hole or a repeat");
                    self.checked += 1;
                }
                chain.last = Some(id);
                chain.live = true;
                chain.since_mark += 1;
            }
            ("last_match", Some(id)) => {
                if chain.live {
                    assert!(!STEADY.contains(&product.as_str()), "{who}: a last_match amid {product}'s matches: {v}");
                    self.restarts += 1;
                }
                chain.last = Some(id);
            }
            ("subscribed", _) => {
                self.off.remove(&product);
                self.chains.remove(&product);
            }
            ("unsubscribed", _) => {
                self.off.insert(product.clone());
                self.chains.remove(&product);
            }
            _ => {}
        }
    }

    /// Starts counting `product`'s live matches afresh.
    fn mark(&mut self, product: &str) {
        self.chains.entry(product.to_string()).or_default().since_mark = 0;
    }

    /// Live matches of `product` since the last `mark` (or the start).
    fn since_mark(&self, product: &str) -> u64 {
        self.chains.get(product).map_or(0, |c| c.since_mark)
    }
}

// ---------------------------------------------------------------------------------
// Connections that report failure rather than panic (relay B and the simulator may
// have stopped accepting) and wait generously (the machine is loaded).

fn connect_ws(url: &str) -> Result<Client, String> {
    let host = url.trim_start_matches("ws://").split('/').next().unwrap_or_default();
    let addr: SocketAddr = host.parse().map_err(|e| format!("{url}: {e}"))?;
    let stream = TcpStream::connect_timeout(&addr, DEADLINE).map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (ws, _) = tungstenite::client(url, stream).map_err(|e| format!("handshake with {url}: {e}"))?;
    ws.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    Ok(Client { ws })
}

/// A WebSocket client of a relay and the client id of its welcome.
fn relay_ws(addr: SocketAddr) -> Result<(Client, String), String> {
    let mut c = connect_ws(&format!("ws://{addr}/ws"))?;
    let end = Instant::now() + DEADLINE;
    let text = loop {
        match c.ws.read() {
            Ok(Message::Text(t)) => break t,
            Ok(other) => return Err(format!("{addr}: {other:?} before the welcome")),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                    && Instant::now() < end => {}
            Err(e) => return Err(format!("{addr}: no welcome: {e}")),
        }
    };
    let welcome: Value = serde_json::from_str(&text).map_err(|e| format!("welcome {text}: {e}"))?;
    let id = welcome["client_id"].as_str().ok_or(format!("not a welcome: {text}"))?;
    Ok((c, id.to_string()))
}

fn parse(who: &str, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{who}: not JSON ({e}): {text}"))
}

fn client_header(id: &str) -> String {
    format!("X-Client-Id: {id}\r\n")
}

/// The values of header `name` in a response head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

/// The checker itself, on known streams (these run in `cargo test`).
mod checks {
    use super::TradeIds;
    use serde_json::json;

    fn feed(messages: &[serde_json::Value]) -> TradeIds {
        let mut ids = TradeIds::default();
        messages.iter().for_each(|m| ids.take("test", m));
        ids
    }

    fn trade(kind: &str, product: &str, id: u64) -> serde_json::Value {
        json!({"type": kind, "product_id": product, "trade_id": id})
    }

    #[test]
    fn counts_consecutive_trades_from_a_last_match() {
        let ids =
            feed(&[trade("last_match", "BTC-USD", 7), trade("match", "BTC-USD", 8), trade("match", "BTC-USD", 9)]);
        assert_eq!(ids.checked, 2);
        assert_eq!(ids.since_mark("BTC-USD"), 2);
    }

    #[test]
    #[should_panic(expected = "a hole or a repeat")]
    fn finds_a_hole() {
        feed(&[trade("match", "BTC-USD", 8), trade("match", "BTC-USD", 10)]);
    }

    #[test]
    #[should_panic(expected = "a hole or a repeat")]
    fn finds_a_repeat() {
        feed(&[trade("last_match", "BTC-USD", 8), trade("match", "BTC-USD", 8)]);
    }

    #[test]
    #[should_panic(expected = "the relay says")]
    fn fails_on_a_gap_note() {
        feed(&[json!({"type": "gap", "product_id": "BTC-USD"})]);
    }

    #[test]
    #[should_panic(expected = "after unsubscribing")]
    fn finds_data_after_an_unsubscribe() {
        feed(&[
            trade("match", "SOL-USD", 1),
            json!({"type": "unsubscribed", "product_id": "SOL-USD"}),
            trade("match", "SOL-USD", 2),
        ]);
    }

    #[test]
    #[should_panic(expected = "a last_match amid")]
    fn a_steady_pair_may_not_restart() {
        feed(&[trade("match", "BTC-USD", 1), trade("last_match", "BTC-USD", 5), trade("match", "BTC-USD", 6)]);
    }

    #[test]
    fn a_churned_pair_restarts_at_a_last_match_and_again_after_a_subscribe() {
        let ids = feed(&[
            trade("match", "SOL-USD", 1),
            trade("last_match", "SOL-USD", 5),
            trade("match", "SOL-USD", 6),
            json!({"type": "unsubscribed", "product_id": "SOL-USD"}),
            json!({"type": "subscribed", "product_id": "SOL-USD"}),
            trade("match", "SOL-USD", 20),
            trade("match", "SOL-USD", 21),
        ]);
        assert_eq!((ids.checked, ids.restarts), (2, 1));
    }
}
