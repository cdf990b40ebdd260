//! A beat from outside every executor, so that none sleeps through its own timers.
//!
//! glommio 0.9 puts timers and the cross-thread wake-up eventfd on its latency
//! ring, and an idle executor sleeps on its main ring, linked to the latency
//! ring by a poll of that ring's descriptor. That link sometimes fails to fire
//! (DataDog/glommio#547, open): the executor then sleeps through every timer
//! and every wake from another shard until something completes on the main
//! ring (a socket). Seen here as shard 0 asleep for 20 s with its flush task
//! owed room on the bus and its 20 ms stop poll due (tests/bus.rs, under load,
//! about one run in ten), woken at last by an unrelated socket reset.
//!
//! The remedy keeps the main ring from ever being idle for long: one process-wide
//! thread sends a one-byte datagram every [`PERIOD`] to each registered executor's
//! loopback UDP socket, whose receive is always pending on that executor's main
//! ring. Each beat wakes a sleeping executor, which then runs its due timers and
//! drains its shared channels as it does after any wake-up. A lost wake-up thus
//! costs at most one period instead of hanging the relay. An executor that is
//! awake anyway pays one small read per period.

use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How long the worst lost wake-up can last.
pub const PERIOD: Duration = Duration::from_millis(10);

thread_local! {
    /// Beats this thread's executor has received.
    static BEATS: Cell<u64> = const { Cell::new(0) };
}

/// Beats this thread's executor has received (zero unless [`attach`]ed).
pub fn beats() -> u64 {
    BEATS.with(Cell::get)
}

/// The beating thread's socket and whom it beats for.
struct Heart {
    addr: SocketAddr,
    /// The executors' sockets. Bounded by the executors alive: each takes its
    /// address out again when it ends (see [`Registration`]).
    targets: Mutex<Vec<SocketAddr>>,
}

/// Takes an executor's socket off the list when its task is dropped.
struct Registration {
    heart: Arc<Heart>,
    addr: SocketAddr,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut t) = self.heart.targets.lock() {
            t.retain(|a| *a != self.addr);
        }
    }
}

/// The process's heart, started on first use.
fn heart() -> Result<Arc<Heart>, String> {
    static HEART: OnceLock<Result<Arc<Heart>, String>> = OnceLock::new();
    HEART.get_or_init(start).clone()
}

fn start() -> Result<Arc<Heart>, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("cannot bind the pacemaker's socket: {e}"))?;
    // A beat that finds the receiver's buffer full is not needed: one is queued.
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = socket.local_addr().map_err(|e| e.to_string())?;
    let heart = Arc::new(Heart { addr, targets: Mutex::new(Vec::new()) });
    let beating = heart.clone();
    std::thread::Builder::new()
        .name("hedgehog-pacemaker".into())
        .spawn(move || loop {
            std::thread::sleep(PERIOD);
            let targets = beating.targets.lock().map(|t| t.clone()).unwrap_or_default();
            for t in targets {
                let _ = socket.send_to(&[0], t);
            }
        })
        .map_err(|e| format!("cannot start the pacemaker thread: {e}"))?;
    Ok(heart)
}

/// The current executor's beat; it stops when this is dropped.
pub struct Beat {
    _task: glommio::Task<()>,
    /// The executor's socket, which the pacemaker beats.
    addr: SocketAddr,
}

impl Beat {
    /// The executor's socket, which the pacemaker beats.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Gives the current glommio executor its beat: a task that keeps a receive
/// pending on its main ring, until the returned [`Beat`] is dropped (keep it for
/// as long as the executor runs). Without it the executor still works, exposed
/// to the hang above; so a failure is logged, not fatal.
pub fn attach() -> Option<Beat> {
    match try_attach() {
        Ok((task, addr)) => Some(Beat { _task: task, addr }),
        Err(e) => {
            log::warn!(event = "pacemaker";
                "pacemaker: {e}; this executor may sleep through a timer until its next socket event");
            None
        }
    }
}

fn try_attach() -> Result<(glommio::Task<()>, SocketAddr), String> {
    let heart = heart()?;
    let socket = glommio::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("cannot bind: {e}"))?;
    let addr = socket.local_addr().map_err(|e| e.to_string())?;
    heart.targets.lock().map_err(|_| "the pacemaker's list is poisoned".to_string())?.push(addr);
    let registration = Registration { heart, addr };
    let task = glommio::spawn_local(async move {
        // Beats only from the pacemaker: a connected socket takes no other datagram.
        if let Err(e) = socket.connect(registration.heart.addr).await {
            log::warn!(event = "pacemaker"; "pacemaker: cannot connect: {e}");
            return;
        }
        let mut buf = [0u8; 16];
        let mut failures = 0;
        // A receive error is transient (an ICMP error queued on the socket);
        // many in a row would mean the socket is unusable, and looping on it
        // would only burn the core.
        while failures < 100 {
            match socket.recv(&mut buf).await {
                Ok(_) => {
                    failures = 0;
                    BEATS.with(|b| b.set(b.get() + 1));
                }
                Err(_) => failures += 1,
            }
        }
        log::warn!(event = "pacemaker"; "pacemaker: the socket keeps failing; this executor goes without its beat");
        drop(registration);
    });
    Ok((task, addr))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn an_attached_executor_gets_beats_until_it_lets_go() {
        let heart = super::heart().unwrap();
        let (beats, addr) =
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().unwrap().run(async {
                let beat = super::attach().expect("attached");
                let addr = beat.addr();
                let end = Instant::now() + Duration::from_secs(30);
                while super::beats() < 3 && Instant::now() < end {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                assert!(heart.targets.lock().unwrap().contains(&addr));
                drop(beat);
                (super::beats(), addr)
            });
        assert!(beats >= 3, "{beats} beats");
        assert!(!heart.targets.lock().unwrap().contains(&addr), "still beaten after the beat was dropped");
    }
}
