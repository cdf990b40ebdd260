//! `hedgehog simulate`: a feed server that speaks Coinbase Exchange's WebSocket
//! protocol, for tests, benchmarks and offline development.
//!
//! One glommio executor runs it all: an accept loop, one session task per client,
//! and a tick loop that moves the market (or plays a capture of the real feed,
//! `replay/`) and sends what each client subscribed to.

mod fault;
mod feed;
mod market;
mod replay;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use fault::Fault;
pub use market::{Spec, DEFAULT_PRODUCTS};
pub use replay::ReplayProgress;

/// The simulator's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub host: String,
    pub port: u16,
    /// Serve `wss://` with a self-signed certificate generated at start.
    pub tls: bool,
    /// Where to write that certificate's PEM, so clients can trust it.
    pub cert_out: Option<PathBuf>,
    pub products: Vec<String>,
    /// Trades per second per product.
    pub rate: f64,
    pub seed: Option<u64>,
    /// A capture of the feed to replay instead of the market (`sim/replay/`).
    pub replay: Option<PathBuf>,
    /// Replay speed-up; 0 replays as fast as possible.
    pub speed: f64,
    /// At the end of the capture, start again from the top.
    pub looping: bool,
    /// Connections that send no subscribe within this are closed; zero disables.
    pub subscribe_timeout: Duration,
    /// No trades for this long after start (subscribers can all join first).
    pub hold: Duration,
    /// Faults injected on a schedule, in turn, every `fault_every`.
    pub faults: Vec<Fault>,
    pub fault_every: Duration,
    /// How long a lasting fault (stall, refuse, slow handshake) lasts.
    pub fault_for: Duration,
    /// How often the simulator's thread looks at its stop flag (the accept-loop
    /// regression test shortens it).
    pub stop_poll: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            host: "127.0.0.1".into(),
            port: 8765,
            tls: false,
            cert_out: None,
            products: DEFAULT_PRODUCTS.iter().map(|(p, _, _)| p.to_string()).collect(),
            rate: 3.0,
            seed: None,
            replay: None,
            speed: 1.0,
            looping: false,
            subscribe_timeout: Duration::from_secs(5),
            hold: Duration::ZERO,
            faults: Vec::new(),
            fault_every: Duration::from_secs(10),
            fault_for: Duration::from_secs(3),
            stop_poll: Duration::from_millis(20),
        }
    }
}

/// Something that happened at the simulator, as tests observe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    /// Connection `id` was accepted and upgraded.
    Connected(u64),
    /// Connection `id` sent this text message.
    Request(u64, String),
    /// Connection `id` ended.
    Closed(u64),
    /// A fault was applied.
    Fault(Fault),
}

/// Shared between the simulator's thread and whoever holds its [`SimHandle`].
#[derive(Default)]
pub struct Control {
    stop: AtomicBool,
    /// Times the stop flag was looked at.
    stop_polls: AtomicU64,
    stalled: AtomicBool,
    refusing: AtomicBool,
    paused: AtomicBool,
    drops: AtomicU64,
    events: Mutex<Vec<SimEvent>>,
    /// Faults asked for and not yet applied.
    faults: Mutex<Vec<Fault>>,
    /// How far the replay has got, when replaying.
    replay: std::sync::OnceLock<Arc<ReplayProgress>>,
}

impl Control {
    fn record(&self, e: SimEvent) {
        if let Ok(mut events) = self.events.lock() {
            if events.len() < 100_000 {
                events.push(e);
            }
        }
    }

    fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    fn inject_later(&self, fault: Fault) {
        if let Ok(mut f) = self.faults.lock() {
            f.push(fault);
        }
    }

    fn take_faults(&self) -> Vec<Fault> {
        self.faults.lock().map(|mut f| std::mem::take(&mut *f)).unwrap_or_default()
    }
}

/// A running simulator.
pub struct SimHandle {
    pub addr: SocketAddr,
    /// The PEM of the certificate, when serving TLS.
    pub cert_pem: Option<String>,
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// The URL a client connects to.
    pub fn url(&self) -> String {
        match self.cert_pem {
            Some(_) => format!("wss://localhost:{}", self.addr.port()),
            None => format!("ws://{}", self.addr),
        }
    }

    /// Everything seen so far, in order.
    pub fn events(&self) -> Vec<SimEvent> {
        self.control.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Closes every client connection (the clients may reconnect).
    pub fn drop_connections(&self) {
        self.control.drops.fetch_add(1, Ordering::SeqCst);
    }

    /// Injects `fault` at the next tick (lasting faults last `fault_for`).
    pub fn inject(&self, fault: Fault) {
        self.control.inject_later(fault);
    }

    /// While paused, the market stands still: no trades, so no tickers, matches
    /// or book changes; heartbeats and requests go on. A replay plays nothing
    /// while paused (and its clock does not run).
    pub fn set_paused(&self, paused: bool) {
        self.control.paused.store(paused, Ordering::SeqCst);
    }

    /// While stalled, sockets stay open and nothing is sent or answered.
    pub fn set_stalled(&self, stalled: bool) {
        self.control.stalled.store(stalled, Ordering::SeqCst);
    }

    /// How often the simulator has looked at its stop flag.
    pub fn stop_polls(&self) -> u64 {
        self.control.stop_polls.load(Ordering::Relaxed)
    }

    /// While refusing, new connections are accepted and closed at once (the
    /// `refuse` fault, for as long as the test wants): the feed is unreachable.
    pub fn set_refusing(&self, refusing: bool) {
        self.control.refusing.store(refusing, Ordering::SeqCst);
    }

    /// How far the replay has got, when the simulator replays a capture.
    pub fn replay_progress(&self) -> Option<Arc<ReplayProgress>> {
        self.control.replay.get().cloned()
    }

    /// Waits until the simulator stops (for the CLI).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the simulator on its own thread; returns once it is listening.
pub fn spawn(cfg: SimConfig) -> Result<SimHandle, String> {
    let control = Arc::new(Control::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let thread_control = control.clone();
    let thread = std::thread::Builder::new()
        .name("hedgehog-sim".into())
        .spawn(move || server::run_thread(cfg, thread_control, tx))
        .map_err(|e| format!("cannot start the simulator thread: {e}"))?;
    match rx.recv() {
        Ok(Ok((addr, cert_pem))) => Ok(SimHandle { addr, cert_pem, control, thread: Some(thread) }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err("the simulator thread ended before listening".into()),
    }
}
