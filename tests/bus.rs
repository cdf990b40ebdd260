//! The bus between shards keeps its two promises under pressure: everything
//! shard 0 sends a shard arrives in the order it was sent (notes never overtake
//! the feed messages queued before them), and no two shards can end up waiting
//! for each other. Both relays here shrink the bus (one message in flight per
//! pair of shards, a handful held back) so that it is full most of the time,
//! and the debug build's echo endpoint stalls shard 1 to back it up for sure.

mod common;

use std::time::Instant;

use common::{echo_client, exchange, http, relay_client, relay_with, simulator, Client, DEADLINE};

/// A relay whose bus is nearly always full.
fn tight_relay(sim_url: &str) -> hedgehog::server::RelayHandle {
    relay_with(sim_url, |c| {
        c.shards = 2;
        c.bus_capacity = 1;
        c.bus_backlog = 4;
        c.echo = true;
    })
}

/// A WebSocket client of the relay served by shard 1 (not the feed's owner,
/// so everything it gets crosses the bus).
fn client_on_shard_1(addr: std::net::SocketAddr) -> (Client, String) {
    let end = Instant::now() + DEADLINE;
    loop {
        let (c, id) = relay_client(addr);
        if id.starts_with("1-") {
            return (c, id);
        }
        assert!(Instant::now() < end, "no connection landed on shard 1");
    }
}

#[test]
fn an_upstream_note_never_overtakes_the_feed_messages_before_it() {
    // A rate the one-message bus keeps up with between stalls (at 2,000 trades
    // a second it fell further behind each round, and the loss note sat behind
    // seconds of feed still in the socket buffers).
    let sim = simulator(|c| {
        c.rate = 300.0;
        c.products = vec!["BTC-USD".into()];
    });
    let relay = tight_relay(&sim.url());
    let (mut c, id) = client_on_shard_1(relay.addr);
    let path = "/api/v1/subscribe/BTC-USD?channels=matches";
    assert_eq!(http(relay.addr, "POST", path, &format!("X-Client-Id: {id}\r\n")).0, 200);
    c.until("the first trade", |v| v["type"] == "match");
    let mut to_shard_0 = keep_alive_to_shard_0(relay.addr);
    for _ in 0..3 {
        // Shard 1 stops reading the bus for 3 s; once /livez says so, the feed
        // shard 0 owes it is backed up, and the upstream connection is dropped.
        let mut stall = echo_on_shard_1(relay.addr);
        stall.send(tungstenite::Message::text("hedgehog test: stall the shard")).unwrap();
        let end = Instant::now() + DEADLINE;
        while exchange(&mut to_shard_0, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").0 == 200 {
            assert!(Instant::now() < end, "shard 1 never stalled");
        }
        sim.drop_connections();
        // Between the note that the feed was lost and the one that it is back,
        // no trade may arrive: every trade before the loss was queued before it.
        c.until("the loss", |v| v["type"] == "upstream" && v["state"] != "connected");
        loop {
            let v = c.json();
            assert_ne!(v["type"], "match", "a trade after the upstream was announced lost: {v}");
            if v["type"] == "upstream" && v["state"] == "connected" {
                break;
            }
        }
        c.until("trades again", |v| v["type"] == "match");
    }
}

/// An echo connection served by shard 1.
fn echo_on_shard_1(addr: std::net::SocketAddr) -> tungstenite::WebSocket<std::net::TcpStream> {
    let end = Instant::now() + DEADLINE;
    loop {
        let (ws, shard) = echo_client(addr);
        if shard == 1 {
            return ws;
        }
        assert!(Instant::now() < end, "no echo connection landed on shard 1");
    }
}

/// A keep-alive HTTP connection served by shard 0.
fn keep_alive_to_shard_0(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let end = Instant::now() + DEADLINE;
    loop {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let (_, head) = exchange(&mut s, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
        if head.contains("X-Hedgehog-Shard: 0\r\n") {
            return s;
        }
        assert!(Instant::now() < end, "no connection landed on shard 0");
    }
}

#[test]
fn shards_asking_each_other_under_a_full_bus_never_wedge() {
    // Clients on both shards, each toggled through connections on both shards,
    // while the feed keeps shard 0's bus towards shard 1 full: shard 1 answers
    // shard 0's requests with joins towards shard 0 while shard 0 answers joins
    // towards shard 1. Before, each could wait for room towards the other.
    let sim = simulator(|c| {
        c.rate = 2000.0;
        c.products = vec!["BTC-USD".into(), "ETH-USD".into()];
    });
    // The clients read nothing until the end: their queues keep the newest
    // message per topic, so none is dropped as a slow consumer meanwhile.
    let relay = relay_with(&sim.url(), |c| {
        c.shards = 2;
        c.bus_capacity = 1;
        c.bus_backlog = 4;
        c.slow_consumer = hedgehog::ws::SlowPolicy::Conflate;
    });
    let clients: Vec<(Client, String)> = (0..8).map(|_| relay_client(relay.addr)).collect();
    assert!(clients.iter().any(|(_, id)| id.starts_with("1-")), "the kernel spread no client to shard 1");
    let pairs = ["BTC-USD", "ETH-USD"];
    for round in 0..60 {
        for (_, id) in &clients {
            let pair = pairs[round % 2];
            let path = format!("/api/v1/subscribe/{pair}?channels=matches,ticker,heartbeat");
            let method = if round % 4 < 2 { "POST" } else { "DELETE" };
            let (status, _, body) = http(relay.addr, method, &path, &format!("X-Client-Id: {id}\r\n"));
            assert_eq!(status, 200, "round {round}: {body}");
        }
    }
    // And the feed still reaches every client.
    for (_, id) in &clients {
        let path = "/api/v1/subscribe/BTC-USD?channels=matches";
        assert_eq!(http(relay.addr, "POST", path, &format!("X-Client-Id: {id}\r\n")).0, 200);
    }
    for (mut c, _) in clients {
        c.until("a trade", |v| v["type"] == "match");
    }
}
