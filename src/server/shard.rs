//! One shard's life: start, connect the bus, serve until told to stop, drain.
//! And the stop signal every shard watches.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::net::TcpListener;
use glommio::{Latency, Shares};

use super::{conn, task};
use crate::config::ServeConfig;
use crate::hub::{self, BusEnds, Global, Hub, Owner};
use crate::record::Tap;

/// How shards are told to end.
pub(super) struct Stop {
    /// Stop accepting, say goodbye, end when the clients are gone.
    pub(super) draining: AtomicBool,
    /// End now.
    pub(super) now: AtomicBool,
    /// How often the flags are looked at (zero: at every turn of the executor,
    /// for the tests).
    pub(super) poll: Duration,
    /// Times the flags were looked at, all shards together.
    pub(super) polls: AtomicU64,
}

/// What one shard's thread is given.
pub(super) struct Shard {
    pub(super) id: usize,
    pub(super) addr: SocketAddr,
    pub(super) bus: BusEnds,
    pub(super) global: Arc<Global>,
    pub(super) cfg: ServeConfig,
    pub(super) stop: Arc<Stop>,
    pub(super) ready: mpsc::Sender<Result<Bound, String>>,
    /// Shard 0's: where the upstream client hands each message to the recorder.
    pub(super) tap: Option<Tap>,
    /// Shard 0's, with `--role ingest|edge`: what the NATS thread hears.
    pub(super) cluster_events: Option<tokio::sync::mpsc::Receiver<crate::cluster::Ev>>,
    /// With `--tls-cert`: every connection on the main port is TLS, or, with
    /// `tls_addr` (`--tls-port`), every connection on that port.
    pub(super) tls: Option<futures_rustls::TlsAcceptor>,
    pub(super) tls_addr: Option<SocketAddr>,
}

/// Where a shard listens: the main port, and the TLS port of `--tls-port`.
pub(super) type Bound = (SocketAddr, Option<SocketAddr>);

impl Shard {
    pub(super) async fn run(self) {
        let _beat = crate::pacemaker::attach();
        #[allow(clippy::panic)]
        if self.cfg.fail_start == Some(self.id) {
            panic!("shard {} was told to fail at start (a test)", self.id);
        }
        let listener = match TcpListener::bind(self.addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.ready.send(Err(format!("cannot listen on {}: {e}", self.addr)));
                return;
            }
        };
        let tls_listener = match self.tls_addr {
            Some(addr) => match TcpListener::bind(addr) {
                Ok(l) => Some(l),
                Err(e) => {
                    let _ = self.ready.send(Err(format!("cannot listen on --tls-port {addr}: {e}")));
                    return;
                }
            },
            None => None,
        };
        // Shard 0 serves `--metrics-addr`; a listener it cannot have ends start-up.
        let metrics_listener = match self.cfg.metrics_addr.filter(|_| self.id == 0) {
            Some(addr) => match TcpListener::bind(addr) {
                Ok(l) => {
                    if let Ok(bound) = l.local_addr() {
                        self.global.set_metrics_addr(bound);
                        log::info!(event = "metrics_listening", addr:% = bound; "metrics on http://{bound}/metrics");
                    }
                    Some(l)
                }
                Err(e) => {
                    let _ = self.ready.send(Err(format!("cannot listen on --metrics-addr {addr}: {e}")));
                    return;
                }
            },
            None => None,
        };
        let bound = |l: &TcpListener| l.local_addr().map_err(|e| e.to_string());
        let _ = self
            .ready
            .send(bound(&listener).and_then(|main| Ok((main, tls_listener.as_ref().map(bound).transpose()?))));
        // Every peer must connect; one that failed to start never will, and then
        // the stop signal ends the wait (start() raises it on any failure).
        let connected = futures_lite::future::or(async { Some(self.bus.connect().await) }, async {
            self.stop.wait(true).await;
            None
        });
        let Some((bus, receivers)) = connected.await else { return };
        use crate::cluster::Role;
        let role = self.cfg.role;
        // An edge's owner events come from NATS, through the cluster task.
        let mut edge_feed = None;
        let (owner, events) = match self.id {
            0 if role == Role::Edge => {
                let (tx, rx) = glommio::channels::local_channel::new_bounded(4096);
                edge_feed = Some(tx);
                let part = hub::ClusterPart::Edge(hub::EdgePart::default());
                let up = crate::upstream::Upstream::detached();
                (Some(Owner::with_cluster(up, self.global.history, Some(part))), Some(rx))
            }
            0 => match crate::upstream::spawn_recorded(self.cfg.upstream.clone(), self.tap, role == Role::Ingest) {
                Ok((up, events)) => {
                    let part =
                        self.global.cluster().and_then(|l| hub::IngestPart::new(l)).map(hub::ClusterPart::Ingest);
                    (Some(Owner::with_cluster(up, self.global.history, part)), Some(events))
                }
                Err(e) => {
                    log::error!(event = "upstream_failed"; "upstream: {e}");
                    return;
                }
            },
            _ => (None, None),
        };
        let hub = Hub::new(self.global.clone(), bus, owner);
        // Cross-shard traffic is latency-critical: a wake from another thread into a
        // latency-matters queue is served promptly, not at the next preemption tick.
        let queue =
            glommio::executor().create_task_queue(Shares::default(), Latency::Matters(Duration::from_millis(1)), "bus");
        for rx in receivers {
            let hub = hub.clone();
            let task = async move {
                while let Some(msg) = rx.recv().await {
                    hub.handle(msg);
                    glommio::yield_if_needed().await;
                }
            };
            glommio::spawn_local_into(task, queue).map(|t| t.detach()).ok();
        }
        // The throttled tier's due messages (a timer of its own, never raced
        // against an accept or a connect).
        let flusher = hub.clone();
        glommio::spawn_local_into(async move { flusher.flush_throttled().await }, queue).map(|t| t.detach()).ok();
        // Reloaded rules and expiring tokens, for this shard's open sessions.
        if hub.global.access_on() {
            let watcher = hub.clone();
            glommio::spawn_local_into(async move { watcher.watch_access().await }, queue).map(|t| t.detach()).ok();
        }
        if let Some(events) = events {
            glommio::spawn_local_into(hub::run_owner(hub.clone(), events), queue).map(|t| t.detach()).ok();
        }
        if let Some(events) = self.cluster_events {
            super::cluster::spawn(hub.clone(), events, edge_feed, queue);
        }
        let queues = task::Queues::new();
        // The accept loop is a task of its own, and nothing but its own waker ever
        // polls it: glommio 0.9's accept (like connect) adds a clone of the task's
        // waker to its source on EVERY poll while pending, and the task's reference
        // count is an i16. Raced in one future against the 20 ms stop poll below, a
        // shard that accepted nothing for ~655 s died ("Waker invariant broken").
        // tests/accept_wakeups.rs drives the stop poll past that limit in seconds.
        let (plain, tls) = match tls_listener {
            Some(l) => (None, Some(glommio::spawn_local(conn::accept_loop(l, hub.clone(), queues, self.tls)))),
            None => (self.tls, None),
        };
        let acceptor = glommio::spawn_local(conn::accept_loop(listener, hub.clone(), queues, plain));
        let scrapes = metrics_listener.map(|l| glommio::spawn_local(super::metrics_port::accept_loop(l, hub.clone())));
        let stop = self.stop;
        stop.wait(true).await;
        if let Some(scrapes) = scrapes {
            scrapes.cancel().await;
        }
        if let Some(tls) = tls {
            tls.cancel().await;
        }
        acceptor.cancel().await; // drops the listener: this shard takes no new connection
                                 // Draining: tell everyone and let them go.
        hub.close_all(crate::ws::close::GOING_AWAY, "server shutting down");
        if let Some(owner) = hub.owner() {
            owner.upstream.stop();
        }
        let gone = async {
            while hub.local_clients() > 0 {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        };
        futures_lite::future::or(gone, stop.wait(false)).await;
    }
}

impl Stop {
    /// Resolves once `now` is set, or `draining` too if `or_draining`.
    pub(super) async fn wait(&self, or_draining: bool) {
        loop {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.now.load(Ordering::SeqCst) || (or_draining && self.draining.load(Ordering::SeqCst)) {
                return;
            }
            if self.poll.is_zero() {
                futures_lite::future::yield_now().await;
            } else {
                glommio::timer::sleep(self.poll).await;
            }
        }
    }
}
