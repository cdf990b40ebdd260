//! The relay through every fault the simulator can inject: it keeps serving its
//! clients, reconnects and resubscribes exactly the active set, tells subscribers,
//! records it in /healthz, and loses no subscription.

mod common;

use std::time::Duration;

use common::{http, relay_client, simulator, wait_until, Client};
use hedgehog::sim::{Fault, SimEvent, SimHandle};
use serde_json::Value;

struct Setup {
    sim: SimHandle,
    relay: hedgehog::server::RelayHandle,
    client: Client,
    client_id: String,
}

fn setup() -> Setup {
    let sim = simulator(|c| {
        c.rate = 40.0;
        c.products = vec!["BTC-USD".into(), "ETH-USD".into()];
        c.fault_for = Duration::from_millis(1500);
    });
    let cfg = hedgehog::config::ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        shards: 2,
        upstream: hedgehog::upstream::UpstreamConfig {
            url: sim.url(),
            stall_timeout: Duration::from_millis(800),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ..Default::default()
        },
        ..Default::default()
    };
    let relay = hedgehog::server::start(cfg).unwrap();
    let (mut client, id) = relay_client(relay.addr);
    let (status, _, _) = http(relay.addr, "POST", "/api/v1/subscribe/BTC-USD", &format!("X-Client-Id: {id}\r\n"));
    assert_eq!(status, 200);
    client.until("data", |v| v["type"] == "match" && v["product_id"] == "BTC-USD");
    Setup { sim, relay, client, client_id: id }
}

fn health(s: &Setup) -> Value {
    http(s.relay.addr, "GET", "/healthz", "").2
}

/// The subscribe requests the simulator got on each of its connections.
fn subscribes(sim: &SimHandle) -> Vec<(u64, Value)> {
    sim.events()
        .into_iter()
        .filter_map(|e| match e {
            SimEvent::Request(id, r) => Some((id, serde_json::from_str(&r).unwrap())),
            _ => None,
        })
        .collect()
}

/// After a fault that ends the feed connection: subscribers are told, the relay
/// reconnects, asks for exactly what its clients want, and data flows again.
fn reconnects_and_resubscribes(s: &mut Setup) {
    s.client.until("the reconnecting note", |v| v["type"] == "upstream" && v["state"] == "reconnecting");
    s.client.until("the connected note", |v| v["type"] == "upstream" && v["state"] == "connected");
    s.client.until("data again", |v| v["type"] == "match" && v["product_id"] == "BTC-USD");
    let h = health(s);
    assert!(h["upstream"]["connects"].as_u64().unwrap() >= 2, "{h}");
    assert!(h["upstream"]["last_error"].is_string(), "{h}");
    let subs = subscribes(&s.sim);
    let last_conn = subs.iter().map(|(id, _)| *id).max().unwrap();
    let mut asked: Vec<(String, String)> = Vec::new();
    for (_, req) in subs.iter().filter(|(id, _)| *id == last_conn) {
        for ch in req["channels"].as_array().unwrap() {
            match ch.as_str() {
                Some(name) => asked.push((name.into(), String::new())),
                None => {
                    for p in ch["product_ids"].as_array().unwrap() {
                        asked.push((ch["name"].as_str().unwrap().into(), p.as_str().unwrap().into()));
                    }
                }
            }
        }
    }
    asked.sort();
    let want = [("heartbeat", "BTC-USD"), ("matches", "BTC-USD"), ("status", ""), ("ticker", "BTC-USD")];
    let want: Vec<(String, String)> = want.iter().map(|(c, p)| (c.to_string(), p.to_string())).collect();
    assert_eq!(asked, want, "exactly the active set, resubscribed");
}

#[test]
fn a_clean_close_is_survived() {
    let mut s = setup();
    s.sim.inject(Fault::Drop);
    reconnects_and_resubscribes(&mut s);
}

#[test]
fn a_tcp_reset_is_survived() {
    let mut s = setup();
    s.sim.inject(Fault::Reset);
    reconnects_and_resubscribes(&mut s);
}

#[test]
fn a_stall_is_detected_and_survived() {
    let mut s = setup();
    s.sim.inject(Fault::Stall);
    reconnects_and_resubscribes(&mut s);
    assert!(health(&s)["upstream"]["last_error"].as_str().unwrap().contains("stalled"));
}

#[test]
fn an_oversized_frame_is_survived() {
    let mut s = setup();
    s.sim.inject(Fault::Oversized);
    reconnects_and_resubscribes(&mut s);
}

#[test]
fn refused_and_slow_reconnects_are_retried() {
    let mut s = setup();
    s.sim.inject(Fault::Refuse);
    s.sim.inject(Fault::Drop);
    reconnects_and_resubscribes(&mut s);
    s.sim.inject(Fault::SlowHandshake);
    s.sim.inject(Fault::Drop);
    reconnects_and_resubscribes(&mut s);
}

#[test]
fn junk_frames_are_counted_and_the_stream_goes_on() {
    let mut s = setup();
    s.sim.inject(Fault::Garbage);
    s.sim.inject(Fault::Binary);
    wait_until("the junk is counted", || health(&s)["upstream"]["malformed"].as_u64().unwrap_or(0) >= 2);
    for _ in 0..3 {
        s.client.until("data", |v| v["type"] == "match");
    }
    assert_eq!(health(&s)["upstream"]["connects"], 1, "junk is not a reason to reconnect");
}

#[test]
fn skipped_trade_ids_are_relayed_as_they_come() {
    let mut s = setup();
    let before = s.client.until("a match", |v| v["type"] == "match" && v["product_id"] == "BTC-USD");
    let before: Value = serde_json::from_str(&before).unwrap();
    s.sim.inject(Fault::Skip);
    let mut last = before["trade_id"].as_u64().unwrap();
    loop {
        let v: Value = serde_json::from_str(&s.client.until("matches", |v| v["type"] == "match")).unwrap();
        let id = v["trade_id"].as_u64().unwrap();
        if id > last + 1 {
            break; // the gap reached the client, and the stream continues past it
        }
        last = id;
    }
    s.client.until("more data", |v| v["type"] == "match");
}

#[test]
fn a_refused_subscribe_is_asked_again_without_a_reconnect() {
    let mut s = setup();
    s.sim.inject(Fault::Reject);
    wait_until("the reject fault is on", || s.sim.events().contains(&SimEvent::Fault(Fault::Reject)));
    // The client adds a product while the feed refuses subscriptions.
    let with_id = format!("X-Client-Id: {}\r\n", s.client_id);
    let (status, _, _) = http(s.relay.addr, "POST", "/api/v1/subscribe/ETH-USD", &with_id);
    assert_eq!(status, 200);
    s.client.until("the refusal note", |v| {
        v["type"] == "upstream" && v["reason"].as_str().is_some_and(|r| r.contains("refused"))
    });
    // BTC-USD keeps flowing meanwhile, and ETH-USD arrives once the feed accepts.
    s.client.until("BTC-USD during the refusal", |v| v["type"] == "match" && v["product_id"] == "BTC-USD");
    s.client.until("ETH-USD after a retry", |v| v["type"] == "match" && v["product_id"] == "ETH-USD");
    let h = health(&s);
    assert_eq!(h["upstream"]["connects"], 1, "no reconnect: {h}");
    assert!(h["upstream"]["refused"].as_u64().unwrap() >= 1, "{h}");
    // On the one connection: the ETH-USD subscribe was sent, refused, and sent again.
    let eth_asks = subscribes(&s.sim)
        .iter()
        .filter(|(_, r)| r["type"] == "subscribe" && r.to_string().contains("ETH-USD"))
        .count();
    assert!(eth_asks >= 2, "asked {eth_asks} times");
}
