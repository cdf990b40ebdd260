//! A client that stops reading is dropped (close 1008 "slow consumer" when it can
//! still be sent); everyone else keeps receiving every message.

mod common;

use common::{http, relay_client, simulator};

#[test]
fn a_stalled_tenth_of_the_clients_costs_the_others_nothing() {
    let sim = simulator(|c| {
        c.rate = 1000.0;
        c.products = vec!["BTC-USD".into()];
    });
    let cfg = hedgehog::config::ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        shards: 2,
        upstream: hedgehog::upstream::UpstreamConfig { url: sim.url(), ..Default::default() },
        // Room for a second of the feed: a healthy reader the busy test machine
        // holds up for a moment is not taken for a slow one.
        client_queue_bytes: 1 << 20,
        ..Default::default()
    };
    let relay = hedgehog::server::start(cfg).unwrap();
    let mut clients: Vec<_> = (0..10).map(|_| relay_client(relay.addr)).collect();
    for (_, id) in &clients {
        let (status, _, _) = http(
            relay.addr,
            "POST",
            "/api/v1/subscribe/BTC-USD?channels=ticker,matches",
            &format!("X-Client-Id: {id}\r\n"),
        );
        assert_eq!(status, 200);
    }
    // The last client stops reading; its socket stays open. Its receive buffer is
    // kept small, so the relay notices within seconds (loopback's can grow to 32 MiB).
    let (stalled, _) = clients.pop().unwrap();
    common::small_receive_buffer(stalled.ws.get_ref());
    // Each reader has a thread of its own, so that a busy machine slows the test's
    // reading no more than a real client's.
    let gone = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (mut c, _))| {
            let gone = gone.clone();
            std::thread::spawn(move || {
                let (mut last, mut after) = (None::<u64>, 0);
                // Read until the stalled client is gone, and well past it.
                while after < 200 {
                    // Only matches are parsed: a reader keeps up on a busy machine.
                    let text = c.text();
                    if !text.contains(r#""type":"match""#) {
                        continue;
                    }
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let id = v["trade_id"].as_u64().unwrap();
                    if let Some(prev) = last {
                        assert_eq!(id, prev + 1, "client {i} missed trades");
                    }
                    last = Some(id);
                    if gone.load(std::sync::atomic::Ordering::SeqCst) {
                        after += 1;
                    }
                }
            })
        })
        .collect();
    let n = readers.len();
    // Its socket's buffers fill first (megabytes on loopback): a longer deadline.
    let start = std::time::Instant::now();
    while relay.global.clients() != n {
        assert!(start.elapsed() < 3 * common::DEADLINE, "the stalled client was never dropped");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    gone.store(true, std::sync::atomic::Ordering::SeqCst);
    for r in readers {
        r.join().expect("a reader kept every trade");
    }
    drop(stalled);
}
