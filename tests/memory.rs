//! Memory under slow consumers: clients that stop reading cost the server at most
//! their queue cap each, measured on the real binary's resident set.

mod common;

use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::{http, relay_client, rss, simulator, DEADLINE};

const CAP: u64 = 4 << 20;

/// The relay binary relaying `upstream`, on a free port.
fn start(upstream: &str) -> (Child, std::net::SocketAddr) {
    common::start_binary(&["--upstream-url", upstream, "--client-queue-bytes", &CAP.to_string()])
}

/// A relay client whose socket has a small receive buffer, so that once it stops
/// reading, what it is sent piles up in the server's queue rather than in the
/// kernel's buffers (which the resident set does not show, and which would make
/// the test slow).
fn small_window_client(addr: std::net::SocketAddr) -> (tungstenite::WebSocket<std::net::TcpStream>, String) {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(v4) = addr else { panic!("the test relay listens on IPv4") };
    // SAFETY: plain socket calls on a descriptor this function owns; it is handed
    // to a TcpStream, which closes it.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let size: libc::c_int = 4096;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&size as *const libc::c_int).cast(), len);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(fd, (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of_val(&sa) as _);
        assert_eq!(rc, 0, "connect");
        std::net::TcpStream::from_raw_fd(fd)
    };
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream).expect("handshake");
    let welcome: serde_json::Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    let id = welcome["client_id"].as_str().expect("a welcome with the client id").to_string();
    (ws, id)
}

#[test]
fn stalled_clients_cost_at_most_their_queue_cap() {
    let sim = simulator(|c| {
        c.rate = 300.0;
        c.products = vec!["BTC-USD".into(), "ETH-USD".into()];
    });
    let (child, addr) = start(&sim.url());
    let child = KillOnDrop(child);
    let subscribe = |id: &str| {
        let path = "/api/v1/subscribe/BTC-USD?channels=ticker,matches";
        assert_eq!(http(addr, "POST", path, &format!("X-Client-Id: {id}\r\n")).0, 200);
    };
    let mut readers: Vec<_> = (0..36).map(|_| relay_client(addr)).collect();
    for (_, id) in &readers {
        subscribe(id);
    }
    let mut last: Vec<Option<u64>> = vec![None; readers.len()];
    let mut read_round = |readers: &mut Vec<(common::Client, String)>| {
        for (i, (c, _)) in readers.iter_mut().enumerate() {
            // Only matches are parsed: the readers must keep up with the feed.
            let text = c.text();
            if !text.starts_with(r#"{"type":"match""#) {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let id = v["trade_id"].as_u64().unwrap();
            if let Some(prev) = last[i] {
                assert_eq!(id, prev + 1, "reader {i} missed trades");
            }
            last[i] = Some(id);
        }
    };
    for _ in 0..300 {
        read_round(&mut readers);
    }
    let base = rss(child.id());

    // From here, the peak resident set is sampled while four more clients (a tenth
    // of them) subscribe and never read.
    let peak = Arc::new(AtomicU64::new(base));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), child.id());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(rss(pid), Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })
    };
    let stalled: Vec<_> = (0..4).map(|_| small_window_client(addr)).collect();
    for (_, id) in &stalled {
        subscribe(id);
    }
    // Read on until both stalled clients are dropped as slow consumers, and then on.
    let start = Instant::now();
    let clients = || http(addr, "GET", "/healthz", "").2["clients"].as_u64().unwrap();
    while clients() > readers.len() as u64 {
        assert!(start.elapsed() < 6 * DEADLINE, "the stalled clients were never dropped");
        for _ in 0..50 {
            read_round(&mut readers);
        }
    }
    for _ in 0..500 {
        read_round(&mut readers);
    }
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    let bound = base + stalled.len() as u64 * CAP;
    assert!(
        peak <= bound,
        "peak resident set {} KiB over base {} KiB + {} stalled x {} KiB",
        peak / 1024,
        base / 1024,
        stalled.len(),
        CAP / 1024
    );
    eprintln!("resident set: base {} KiB, peak {} KiB, bound {} KiB", base / 1024, peak / 1024, bound / 1024);
    drop(stalled);
}

/// The relay process, killed when the test ends (passed or not).
struct KillOnDrop(Child);

impl KillOnDrop {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
