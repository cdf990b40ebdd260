//! The executor pool: `WEB_CONCURRENCY` glommio executors, each pinned to a CPU
//! when there are enough, each accepting on the same port (SO_REUSEPORT) and
//! owning the connections it accepts. Shard 0 also owns the upstream client.

mod api;
mod conn;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future::or;
use glommio::net::TcpListener;
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};

use crate::config::ServeConfig;
use crate::hub::{self, BusEnds, Global, Hub, Owner};
use crate::sim::{self, SimConfig, SimHandle};

/// A running relay. Dropping it stops every shard at once; [`RelayHandle::shutdown`]
/// stops them gracefully.
pub struct RelayHandle {
    pub addr: SocketAddr,
    pub global: Arc<Global>,
    stop: Arc<Stop>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    simulator: Option<SimHandle>,
}

impl RelayHandle {
    /// The simulator serving as upstream in offline mode.
    pub fn simulator(&self) -> Option<&SimHandle> {
        self.simulator.as_ref()
    }

    /// Asks every shard to stop at once.
    pub fn stop(&self) {
        self.stop.now.store(true, Ordering::SeqCst);
    }

    /// Stops gracefully: no new connections, Close 1001 to every client, the
    /// upstream closed; every shard ends once its clients are gone or `grace` has
    /// passed, whichever is first. Returns whether it ended within `grace`.
    pub fn shutdown(mut self, grace: Duration) -> bool {
        self.stop.draining.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + grace;
        let threads = std::mem::take(&mut self.threads);
        let waiter = std::thread::spawn(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        while !waiter.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let in_time = waiter.is_finished();
        self.stop();
        let _ = waiter.join();
        in_time
    }

    /// Waits for every shard to end.
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// How shards are told to end.
#[derive(Default)]
struct Stop {
    /// Stop accepting, say goodbye, end when the clients are gone.
    draining: AtomicBool,
    /// End now.
    now: AtomicBool,
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
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
        log::info!("WEB_CONCURRENCY={n} exceeds the {} usable CPUs: shards are not pinned", cpus.len());
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

/// Starts the relay; returns once every shard listens.
pub fn start(mut cfg: ServeConfig) -> Result<RelayHandle, String> {
    let simulator = if cfg.simulate {
        let sim = sim::spawn(SimConfig { port: 0, ..SimConfig::default() })?;
        cfg.upstream.url = sim.url();
        log::warn!("offline mode: relaying SIMULATED data from the built-in simulator at {}", sim.url());
        Some(sim)
    } else {
        None
    };
    let endpoint = crate::upstream::Endpoint::parse(&cfg.upstream.url)?;
    if endpoint.tls {
        crate::net::tls_client_config(cfg.upstream.ca_file.as_deref())?;
    }
    let n = cfg.shards;
    let channels: Vec<usize> = cfg.channels.iter().filter_map(|c| hub::channel_index(c)).collect();
    let global = Arc::new(Global::new(&cfg, channels));
    let stop = Arc::new(Stop::default());
    let mut ends = hub::bus_mesh(n);
    let mut placements = placements(n);
    let mut threads = Vec::new();
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut addr: SocketAddr = format!("{}:{}", bracket(&cfg.host), cfg.port)
        .parse()
        .map_err(|_| format!("{}:{} is not a listen address", cfg.host, cfg.port))?;
    for id in 0..n {
        let shard = Shard {
            id,
            addr,
            bus: ends.remove(0),
            global: global.clone(),
            cfg: cfg.clone(),
            stop: stop.clone(),
            ready: ready_tx.clone(),
        };
        let builder =
            LocalExecutorBuilder::new(placements.remove(0)).name(&format!("hedgehog-{id}")).io_memory(crate::IO_MEMORY);
        let thread = builder.spawn(move || shard.run()).map_err(|e| format!("cannot start shard {id}: {e}"))?;
        threads.push(thread);
        // Shard 0 may have been given port 0: the others bind the port it got.
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(bound)) => addr = bound,
            Ok(Err(e)) => {
                stop.now.store(true, Ordering::SeqCst);
                return Err(e);
            }
            Err(_) => return Err(format!("shard {id} did not start")),
        }
    }
    log::info!("hedgehog listening on {addr} with {n} shard(s); upstream {}", cfg.upstream.url);
    Ok(RelayHandle { addr, global, stop, threads, simulator })
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// What one shard's thread is given.
struct Shard {
    id: usize,
    addr: SocketAddr,
    bus: BusEnds,
    global: Arc<Global>,
    cfg: ServeConfig,
    stop: Arc<Stop>,
    ready: mpsc::Sender<Result<SocketAddr, String>>,
}

impl Shard {
    async fn run(self) {
        let listener = match TcpListener::bind(self.addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.ready.send(Err(format!("cannot listen on {}: {e}", self.addr)));
                return;
            }
        };
        let _ = self.ready.send(listener.local_addr().map_err(|e| e.to_string()));
        let (bus, receivers) = self.bus.connect().await;
        let (owner, events) = match self.id {
            0 => match crate::upstream::spawn(self.cfg.upstream.clone()) {
                Ok((up, events)) => (Some(Owner::new(up, self.global.history)), Some(events)),
                Err(e) => {
                    log::error!("upstream: {e}");
                    return;
                }
            },
            _ => (None, None),
        };
        let hub = Hub::new(self.id, self.global.clone(), bus, owner);
        // Cross-shard traffic is latency-critical: a wake from another thread into a
        // latency-matters queue is served promptly (see GLOMMIO notes in the README).
        let queue =
            glommio::executor().create_task_queue(Shares::default(), Latency::Matters(Duration::from_millis(1)), "bus");
        for rx in receivers {
            let hub = hub.clone();
            let task = async move {
                while let Some(msg) = rx.recv().await {
                    hub.on_shard_msg(msg).await;
                }
            };
            glommio::spawn_local_into(task, queue).map(|t| t.detach()).ok();
        }
        if let Some(events) = events {
            glommio::spawn_local_into(hub::run_owner(hub.clone(), events), queue).map(|t| t.detach()).ok();
        }
        let ex = glommio::executor();
        let queues = conn::Queues {
            http: ex.create_task_queue(Shares::default(), Latency::Matters(Duration::from_millis(5)), "http"),
            sessions: ex.create_task_queue(Shares::default(), Latency::NotImportant, "sessions"),
        };
        let stop = self.stop;
        or(conn::accept_loop(listener, hub.clone(), queues), wait(&stop.draining, &stop.now)).await;
        // Draining: the listener is closed; tell everyone and let them go.
        hub.close_all(crate::ws::close::GOING_AWAY, "server shutting down");
        if let Some(owner) = hub.owner() {
            owner.upstream.stop();
        }
        let gone = async {
            while hub.local_clients() > 0 {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        };
        or(gone, wait(&stop.now, &stop.now)).await;
    }
}

/// Runs one connection's future, containing a panic inside it: glommio lets a
/// panicking task unwind through the executor, which ends the shard's thread and
/// every connection on it (tests/panics.rs shows both). Here the panic unwinds
/// only as far as this call; it is logged and counted (`panics` in /healthz), the
/// connection's state is dropped, and the shard goes on. Returns false after a panic.
///
/// What the future shares with other tasks (the hub's tables) is only ever
/// borrowed between awaits, so an unwind leaves no borrow held.
///
/// Not an `async fn`: one would keep `fut` twice in its state (the argument and
/// the wrapper), doubling the memory of every idle connection.
pub fn contained<'a, F>(global: &'a Global, what: &'a str, fut: F) -> impl std::future::Future<Output = bool> + 'a
where
    F: std::future::Future<Output = ()> + 'a,
{
    use futures_lite::FutureExt;
    let caught = std::panic::AssertUnwindSafe(fut).catch_unwind();
    async move { settle(global, what, caught.await) }
}

fn settle(global: &Global, what: &str, outcome: std::thread::Result<()>) -> bool {
    match outcome {
        Ok(()) => true,
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            log::error!("a panic in {what} was contained; that connection is closed: {why}");
            global.count_panic();
            false
        }
    }
}

/// Resolves once either flag is set.
async fn wait(a: &AtomicBool, b: &AtomicBool) {
    while !a.load(Ordering::SeqCst) && !b.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}
