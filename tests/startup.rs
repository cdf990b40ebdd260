//! A relay that cannot start every shard does not start at all: `start` returns
//! the failing shard's reason at once, and the shards that had started stop and
//! let go of the port (before, they waited forever for their missing peer, still
//! listening: the kernel accepted connections that nobody would ever serve).

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

#[test]
fn a_shard_that_fails_to_start_fails_the_start_and_stops_the_others() {
    let sim = hedgehog::sim::spawn(hedgehog::sim::SimConfig { port: 0, ..Default::default() }).unwrap();
    // A port that is free now (the relay needs a fixed one, to look at it after).
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = hedgehog::config::ServeConfig {
        host: "127.0.0.1".into(),
        port,
        shards: 3,
        upstream: hedgehog::upstream::UpstreamConfig { url: sim.url(), ..Default::default() },
        fail_start: Some(2),
        ..Default::default()
    };
    let err = hedgehog::server::start(cfg).err().expect("the start fails");
    assert!(err.starts_with("shard 2 died: ") && err.contains("told to fail at start"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    // Shards 0 and 1 had started listening: they are gone, and the port is free.
    // (std binds without SO_REUSEPORT: it fails while any shard still listens.)
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let end = Instant::now() + Duration::from_secs(20);
    while let Err(e) = TcpListener::bind(addr) {
        assert!(Instant::now() < end, "port {port} still held after the failed start: {e}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
