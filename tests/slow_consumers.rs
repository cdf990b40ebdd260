//! A client that stops reading is dropped (close 1008 "slow consumer" when it can
//! still be sent); everyone else keeps receiving every message.

mod common;

use common::{http, relay_client, simulator, wait_until};

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
        client_queue_bytes: 64 * 1024,
        ..Default::default()
    };
    let relay = hedgehog::shard::start(cfg).unwrap();
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
    // The last client stops reading; its socket stays open.
    let (stalled, _) = clients.pop().unwrap();
    let mut readers = clients;
    let mut last: Vec<Option<u64>> = vec![None; readers.len()];
    let mut seen = 0;
    // Read until the stalled client is gone, and well past it.
    let mut gone_at = None;
    let start = std::time::Instant::now();
    while gone_at.is_none_or(|at| seen < at + 2_000) {
        assert!(start.elapsed() < 3 * common::DEADLINE, "the stalled client was never dropped");
        for (i, (c, _)) in readers.iter_mut().enumerate() {
            let v = c.json();
            if v["type"] != "match" {
                continue;
            }
            let id = v["trade_id"].as_u64().unwrap();
            if let Some(prev) = last[i] {
                assert_eq!(id, prev + 1, "client {i} missed trades");
            }
            last[i] = Some(id);
            seen += 1;
        }
        if gone_at.is_none() && relay.global.clients() == readers.len() {
            gone_at = Some(seen);
        }
    }
    wait_until("the stalled client is dropped", || relay.global.clients() == readers.len());
    drop(stalled);
}
