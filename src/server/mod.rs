//! The server: `WEB_CONCURRENCY` glommio executors ("shards"), each pinned to a
//! CPU when there are enough, each accepting on the same port (SO_REUSEPORT) and
//! owning the connections it accepts. Shard 0 also owns the upstream client.
//!
//! - this file: start-up, the shards' threads, stop and fail-fast.
//! - [`shard`]: one shard's life (bus connect, serve, drain) and the stop signal.
//! - [`task`]: task queues, and panics contained to one connection.
//! - [`conn`]: the accept loop, admission, the HTTP keep-alive loop.
//! - [`websocket`]: upgrades, relay sessions (Coinbase in-band), `/echo`.
//! - [`stream`]: one pair as SSE or NDJSON.
//! - [`api`]: the REST API, the only place hub outcomes become statuses and JSON.
//! - [`health`]: `/livez`, `/readyz`, `/healthz`.
//! - [`auth`]: access control at the entry points: who, seats, refusals logged.
//! - [`tls`]: `--tls-cert`: the handshake, the certificate SIGHUP swaps, [`tls::Conn`].
//!
//! A shard's thread that ends while the relay runs (a panic outside a contained
//! connection, or any early return) is reported to the main thread at once
//! ([`RelayHandle::shard_ended`]): a half-alive relay is worse than a restarted one.

mod api;
mod auth;
mod cluster;
mod conn;
mod health;
mod metrics_port;
mod shard;
mod stream;
mod task;
mod tls;
mod ui;
mod websocket;

pub use conn::SHARD_HEADER;
pub use task::contained;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::config::ServeConfig;
use crate::hub::{self, Global};
use crate::record::Recorder;
use crate::sim::{self, SimConfig, SimHandle};
use shard::{Shard, Stop};

/// How long shards get, once told to stop outright, before the process gives up
/// on them (a shard that does not end by then is wedged).
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// A running relay. Dropping it stops every shard at once; [`RelayHandle::shutdown`]
/// stops them gracefully.
pub struct RelayHandle {
    /// The main port: plain, or TLS with `--tls-cert` and no `--tls-port`.
    pub addr: SocketAddr,
    /// `--tls-port`'s address, when TLS has a port of its own.
    pub tls_addr: Option<SocketAddr>,
    pub global: Arc<Global>,
    stop: Arc<Stop>,
    threads: Vec<(usize, JoinHandle<()>)>,
    ended: mpsc::Receiver<ShardEnd>,
    simulator: Option<SimHandle>,
    recorder: Option<Recorder>,
    /// `--config`'s file, read again by [`RelayHandle::reload`].
    config_file: Option<std::path::PathBuf>,
    /// `--tls-cert` and `--tls-key`, read again by [`RelayHandle::reload_tls`].
    tls: Option<Arc<tls::ServerTls>>,
}

/// A shard's thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardEnd {
    pub shard: usize,
    /// The panic that ended it, if one did.
    pub panic: Option<String>,
}

impl std::fmt::Display for ShardEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.panic {
            Some(p) => write!(f, "shard {} died: {p}", self.shard),
            None => write!(f, "shard {} ended unexpectedly", self.shard),
        }
    }
}

impl RelayHandle {
    /// Reads the `--config` file again (SIGHUP) and puts its access rules in
    /// force: for new requests at once, for open sessions at each shard's next
    /// look (see `hub::ACCESS_SWEEP`). `Ok`: what was loaded; `Err`: why not,
    /// and the rules in force stay. Access control is never turned on or off
    /// by a reload (a restart does that); `[server]` settings wait for a restart.
    pub fn reload(&self) -> Result<String, String> {
        let Some(path) = &self.config_file else { return Err("no --config file to reload".into()) };
        let refused = |why: String| format!("reload of {} refused, the rules in force stay: {why}", path.display());
        let rules = crate::config::reload_access(path).map_err(refused)?;
        match (rules, self.global.access_on()) {
            (Some(rules), true) => {
                let said = format!(
                    "access rules reloaded from {} ({} classes, {} keys); [server] settings apply at the next start",
                    path.display(),
                    rules.classes().count(),
                    rules.key_principals().count()
                );
                self.global.replace_access(rules).map_err(refused)?;
                Ok(said)
            }
            (None, true) => {
                Err(refused("the file has no [classes] now; restart hedgehog to turn access control off".into()))
            }
            (_, false) => Err(refused("access control is off; restart hedgehog to turn it on".into())),
        }
    }

    /// Reads `--tls-cert` and `--tls-key` again (SIGHUP): new handshakes get
    /// the new certificate, open connections keep theirs. `None`: TLS is off;
    /// `Err`: why not, and the certificate in force stays.
    pub fn reload_tls(&self) -> Option<Result<String, String>> {
        let tls = self.tls.as_ref()?;
        Some(tls.reload().map_err(|why| format!("TLS reload refused, the certificate in force stays: {why}")))
    }

    /// What SIGHUP does: the certificate (with TLS) and the access rules
    /// (with `--config`), each said or refused on its own.
    pub fn reload_all(&self) -> Vec<Result<String, String>> {
        let mut said: Vec<_> = self.reload_tls().into_iter().collect();
        if self.config_file.is_some() || said.is_empty() {
            said.push(self.reload());
        }
        said
    }

    /// Whether clients are served over TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The simulator serving as upstream in offline mode.
    pub fn simulator(&self) -> Option<&SimHandle> {
        self.simulator.as_ref()
    }

    /// Asks every shard to stop at once.
    pub fn stop(&self) {
        self.stop.now.store(true, Ordering::SeqCst);
    }

    /// A shard whose thread has ended, waiting up to `timeout` for one. While the
    /// relay runs, any answer means it is no longer whole.
    pub fn shard_ended(&self, timeout: Duration) -> Option<ShardEnd> {
        self.ended.recv_timeout(timeout).ok()
    }

    /// How often the shards have looked at their stop flags (the regression test
    /// of the accept loops drives this past glommio's waker limit).
    pub fn stop_polls(&self) -> u64 {
        self.stop.polls.load(Ordering::Relaxed)
    }

    /// Stops gracefully: no new connections, Close 1001 to every client, the
    /// upstream closed; every shard ends once its clients are gone or `grace` has
    /// passed, whichever is first, and is then stopped outright.
    ///
    /// `Ok(true)`: every shard ended within `grace`; `Ok(false)`: some had clients
    /// left and were stopped outright; `Err`: some shards did not end even then
    /// (named in the error): they are abandoned, and the caller should exit
    /// with a failure.
    pub fn shutdown(mut self, grace: Duration) -> Result<bool, String> {
        self.stop.draining.store(true, Ordering::SeqCst);
        let in_time = self.wait_for_threads(grace);
        self.stop();
        let stopped = self.wait_for_threads(STOP_GRACE);
        self.close_recorder();
        // An active ingest's upstream is closed: a standby may take over now.
        if let Some(link) = self.global.cluster() {
            link.release(Duration::from_secs(2));
        }
        if !stopped {
            let stuck: Vec<String> = self.threads.iter().map(|(id, _)| id.to_string()).collect();
            let stuck = stuck.join(", ");
            self.threads.clear(); // leaked: joining a wedged thread would block forever
            return Err(format!("shard(s) {stuck} did not stop within {:?}", grace + STOP_GRACE));
        }
        Ok(in_time)
    }

    /// Once shard 0 has stopped feeding it: the recording is flushed and closed.
    fn close_recorder(&mut self) {
        if let Some(recorder) = self.recorder.take() {
            recorder.close(crate::record::CLOSE_GRACE);
        }
    }

    /// Joins the threads that end within `limit`; true if all did.
    fn wait_for_threads(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let (done, running): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.threads).into_iter().partition(|(_, t)| t.is_finished());
            self.threads = running;
            for (_, t) in done {
                let _ = t.join();
            }
            if self.threads.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for every shard to end.
    pub fn join(mut self) {
        for (_, t) in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop();
        if !self.wait_for_threads(crate::SHUTDOWN_GRACE) {
            log::error!(event = "shard_stuck"; "{} shard(s) did not stop; abandoning them", self.threads.len());
            self.threads.clear();
        }
        self.close_recorder();
    }
}

/// Where each shard runs: shard i pinned to the i-th CPU this process may use
/// (so `taskset` is honoured, and shard 0 is on the lowest CPU), unpinned when
/// there are more shards than CPUs.
fn placements(n: usize) -> Vec<Placement> {
    let cpus = allowed_cpus();
    if n <= cpus.len() {
        cpus.into_iter().take(n).map(Placement::Fixed).collect()
    } else {
        log::info!(event = "shards_unpinned";
            "WEB_CONCURRENCY={n} exceeds the {} usable CPUs: shards are not pinned", cpus.len());
        (0..n).map(|_| Placement::Unbound).collect()
    }
}

/// The CPUs in this process's affinity mask, ascending. (glommio's `CpuSet` is a
/// hash set: its order differs from run to run, so it cannot say which is first.)
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and sched_getaffinity
    // writes at most size_of::<cpu_set_t>() bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } == 0;
    if !ok {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Offline mode: the simulator in-process, generating a market (`--simulate`)
/// or replaying a capture (`--replay FILE`), for the upstream to connect to.
fn offline_upstream(cfg: &ServeConfig) -> Result<Option<SimHandle>, String> {
    let (data, sim) = match &cfg.replay {
        Some(file) => {
            let (replay, speed, looping) = (Some(file.clone()), cfg.replay_speed, cfg.replay_loop);
            (
                format!("REPLAYED data from {}", file.display()),
                SimConfig { replay, speed, looping, ..SimConfig::default() },
            )
        }
        None if cfg.simulate => ("SIMULATED data from the built-in simulator".into(), SimConfig::default()),
        None => return Ok(None),
    };
    let sim = sim::spawn(SimConfig { port: 0, ..sim })?;
    log::warn!(event = "offline_mode"; "offline mode: relaying {data} at {}", sim.url());
    Ok(Some(sim))
}

/// Says, loudly, whether access control is on: an operator who forgot
/// `--config` must not believe the relay is closed.
fn announce_access(cfg: &ServeConfig) {
    match (&cfg.access, &cfg.config_file) {
        (None, None) => {
            log::warn!(event = "access_off"; "access control is OFF (no --config file): every client may do everything")
        }
        (None, Some(file)) => {
            log::warn!(event = "access_off";
                "access control is OFF ({} has no [classes]): every client may do everything", file.display())
        }
        (Some(access), _) => log::warn!(
            event = "access_on";
            "access control is ON: rules from {} ({} classes); SIGHUP reloads them",
            access.source().display(),
            access.classes().count()
        ),
    }
}

/// Starts the relay; returns once every shard listens.
pub fn start(mut cfg: ServeConfig) -> Result<RelayHandle, String> {
    record_panics();
    crate::metrics::mark_start();
    let mut addr: SocketAddr = format!("{}:{}", bracket(&cfg.host), cfg.port)
        .parse()
        .map_err(|_| format!("{}:{} is not a listen address", cfg.host, cfg.port))?;
    if cfg.port != 0 {
        crate::net::claim_port(addr)?;
    }
    let tls = cfg.tls.as_ref().map(tls::ServerTls::load).transpose()?.map(Arc::new);
    let mut tls_addr = match cfg.tls_port {
        Some(port) => {
            let a = SocketAddr::new(addr.ip(), port);
            if port != 0 {
                crate::net::claim_port(a)?;
            }
            Some(a)
        }
        None => None,
    };
    // First, so that a directory that cannot be written is the only thing said.
    let (recorder, mut tap) = match &cfg.record {
        Some(r) => Recorder::start(r).map(|(recorder, tap)| (Some(recorder), Some(tap)))?,
        None => (None, None),
    };
    let simulator = offline_upstream(&cfg)?;
    if let Some(sim) = &simulator {
        cfg.upstream.url = sim.url();
    }
    let endpoint = crate::upstream::Endpoint::parse(&cfg.upstream.url)?;
    if endpoint.tls {
        crate::net::tls_client_config(cfg.upstream.ca_file.as_deref())?;
    }
    // After every check that ends start-up, so a mistake is the only line said.
    announce_access(&cfg);
    let n = cfg.shards;
    let mut global = Global::new(&cfg).with_recording(recorder.as_ref().map(Recorder::stats));
    global.replay = simulator.as_ref().and_then(SimHandle::replay_progress);
    if cfg.role == crate::cluster::Role::Edge {
        // An edge's feed is what the active ingest publishes.
        global.upstream_url = format!("{} (the active ingest's feed)", cfg.cluster.urls.join(","));
    }
    let global = Arc::new(global);
    // Several nodes: the NATS thread, whose events shard 0 takes.
    let mut cluster_events = match cfg.role {
        crate::cluster::Role::All => None,
        role => {
            let node = cfg.node.map(|n| n.to_string()).unwrap_or_default();
            let (link, events) = crate::cluster::start(role, &node, cfg.cluster.clone())?;
            log::info!(event = "cluster", role = role.as_str(), node = node.as_str();
                "{} {node}, on NATS at {}", role.as_str(), cfg.cluster.urls.join(","));
            global.set_cluster(link);
            Some(events)
        }
    };
    let stop = Arc::new(Stop {
        draining: AtomicBool::new(false),
        now: AtomicBool::new(false),
        poll: cfg.stop_poll,
        polls: AtomicU64::new(0),
    });
    let mut ends = hub::bus_mesh(n, cfg.bus_capacity, cfg.bus_backlog);
    let mut placements = placements(n);
    let mut threads = Vec::new();
    let (ended_tx, ended) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    for id in 0..n {
        let shard = Shard {
            id,
            addr,
            bus: ends.remove(0),
            global: global.clone(),
            cfg: cfg.clone(),
            stop: stop.clone(),
            ready: ready_tx.clone(),
            tap: tap.take(),
            cluster_events: cluster_events.take(),
            tls: tls.as_ref().map(|t| t.acceptor()),
            tls_addr,
        };
        let placement = placements.remove(0);
        let watch = Watch { shard: id, ended: ended_tx.clone() };
        let thread = std::thread::Builder::new().name(format!("hedgehog-{id}")).spawn(move || {
            let _watch = watch; // reports this thread's end, by return or by unwind
            let ex = LocalExecutorBuilder::new(placement).io_memory(crate::IO_MEMORY).make();
            match ex {
                Ok(ex) => ex.run(shard.run()),
                Err(e) => drop(shard.ready.send(Err(crate::preflight::executor_failed(&format!("shard {id}"), &e)))),
            }
        });
        match thread {
            Ok(thread) => threads.push((id, thread)),
            Err(e) => return Err(abandon(format!("cannot start shard {id}: {e}"), &stop, threads)),
        }
        // Shard 0 may have been given port 0: the others bind the port it got.
        match wait_started(id, &ready_rx, &ended) {
            Ok((main, tls)) => (addr, tls_addr) = (main, tls),
            Err(e) => return Err(abandon(e, &stop, threads)),
        }
    }
    let scheme = if tls.is_some() && tls_addr.is_none() { "https:// and wss://" } else { "http:// and ws://" };
    let also = tls_addr.map(|a| format!(", TLS (https:// and wss://) on {a}")).unwrap_or_default();
    log::info!(event = "listening", addr:%;
        "hedgehog listening on {addr} ({scheme}){also} with {n} shard(s); upstream {}", global.upstream_url);
    let config_file = cfg.config_file.clone();
    Ok(RelayHandle { addr, tls_addr, global, stop, threads, ended, simulator, recorder, config_file, tls })
}

/// How long a shard may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// Waits for shard `id` to listen: the address it got, or why it did not (its
/// error, the panic that ended its thread, or silence past [`START_DEADLINE`]).
fn wait_started(
    id: usize,
    ready: &mpsc::Receiver<Result<shard::Bound, String>>,
    ended: &mpsc::Receiver<ShardEnd>,
) -> Result<shard::Bound, String> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        match ready.recv_timeout(Duration::from_millis(10)) {
            Ok(result) => return result,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(format!("shard {id} did not start")),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Ok(end) = ended.try_recv() {
            return Err(end.to_string());
        }
        if Instant::now() >= deadline {
            return Err(format!("shard {id} did not start within {START_DEADLINE:?}"));
        }
    }
}

/// Start-up failed (`why`): the shards already running are told to stop and
/// given [`STOP_GRACE`] to end, so that nothing of this relay outlives the error.
fn abandon(why: String, stop: &Stop, threads: Vec<(usize, JoinHandle<()>)>) -> String {
    stop.now.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + STOP_GRACE;
    for (id, thread) in threads {
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        match thread.is_finished() {
            true => drop(thread.join()),
            false => {
                log::error!(event = "shard_stuck", shard = id;
                    "shard {id} did not stop after a failed start; abandoning it")
            }
        }
    }
    why
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Lives on a shard's thread and says when that thread ends.
struct Watch {
    shard: usize,
    ended: mpsc::Sender<ShardEnd>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let panic = std::thread::panicking()
            .then(|| LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "(no message)".into()));
        let _ = self.ended.send(ShardEnd { shard: self.shard, panic });
    }
}

thread_local! {
    /// The last panic on this thread, as the panic hook saw it.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps each thread's last panic message, so a dying shard can name it.
fn record_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info.to_string().replace('\n', " ");
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
            previous(info);
        }));
    });
}
