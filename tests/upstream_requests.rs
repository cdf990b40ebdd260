//! Thousands of pairs subscribed while the feed is unreachable: when it returns,
//! they go upstream in requests of bounded size (no "message too big" close), and
//! the pairs it does not list are refused here, with Coinbase's error, without
//! being asked for.

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use common::{http, relay_client, relay_with, sim_requests, simulator, Client, DEADLINE};
use hedgehog::sim::{SimEvent, SimHandle};
use hedgehog::upstream::MAX_REQUEST_BYTES;
use serde_json::{json, Value};

/// A relay with one client whose feed refuses every connection; the client has
/// subscribed `products` on `ticker` and `matches` (Coinbase's way, one message).
fn subscribed_while_down(sim: &SimHandle, products: &[String]) -> (hedgehog::server::RelayHandle, Client, String) {
    sim.set_refusing(true);
    let relay = relay_with(&sim.url(), |c| {
        // One shard: the client's subscriptions reach the upstream's desired set
        // before its `subscriptions` reply is written, so all of them are wanted
        // before the feed comes back.
        c.shards = 1;
        c.max_subscriptions = 10_000;
    });
    let (mut client, id) = relay_client(relay.addr);
    client.send(&json!({"type": "subscribe", "product_ids": products, "channels": ["ticker", "matches"]}).to_string());
    let reply: Value =
        serde_json::from_str(&client.until("the subscriptions reply", |v| v["type"] == "subscriptions")).expect("JSON");
    let ticker = reply["channels"].as_array().unwrap().iter().find(|c| c["name"] == "ticker").unwrap();
    assert_eq!(ticker["product_ids"].as_array().unwrap().len(), products.len(), "all taken while the feed is down");
    assert_eq!(health(&relay)["upstream"]["connects"], 0, "the feed is unreachable");
    (relay, client, id)
}

fn health(relay: &hedgehog::server::RelayHandle) -> Value {
    http(relay.addr, "GET", "/healthz", "").2
}

/// One connection was made, and it is still up: none was closed (for size or
/// anything else).
fn one_connection_kept(sim: &SimHandle, relay: &hedgehog::server::RelayHandle) {
    let events = sim.events();
    let connected = events.iter().filter(|e| matches!(e, SimEvent::Connected(_))).count();
    let closed: Vec<&SimEvent> = events.iter().filter(|e| matches!(e, SimEvent::Closed(_))).collect();
    assert_eq!((connected, closed), (1, vec![]));
    let h = health(relay);
    assert_eq!(h["upstream"]["connects"], 1, "{h}");
    assert_eq!(h["upstream"]["state"], "connected", "{h}");
}

#[test]
fn made_up_pairs_are_refused_here_and_the_real_one_flows() {
    let sim = simulator(|c| {
        c.rate = 40.0;
        c.products = vec!["BTC-USD".into(), "ETH-USD".into()];
    });
    let made_up: Vec<String> = (0..2000).map(|i| format!("MADE{i:04}-USD")).collect();
    let wanted = [made_up.clone(), vec!["BTC-USD".into()]].concat();
    let (relay, mut client, id) = subscribed_while_down(&sim, &wanted);
    sim.set_refusing(false);

    // Every made-up pair gets Coinbase's error, and the real pair's trades flow.
    let mut refused = BTreeSet::new();
    let mut trades = 0;
    let end = Instant::now() + 2 * DEADLINE;
    while refused.len() < made_up.len() || trades < 3 {
        assert!(Instant::now() < end, "{} refused, {trades} trades", refused.len());
        let v = client.json();
        match v["type"].as_str() {
            Some("error") => {
                assert_eq!(v["message"], "Failed to subscribe", "{v}");
                let reason = v["reason"].as_str().unwrap();
                let product = reason.strip_suffix(" is not a valid product").unwrap_or_else(|| panic!("{v}"));
                assert!(refused.insert(product.to_string()), "one error per product: {v}");
            }
            Some("match") => {
                assert_eq!(v["product_id"], "BTC-USD");
                trades += 1;
            }
            _ => {}
        }
    }
    assert_eq!(refused, made_up.iter().cloned().collect());

    // Their subscriptions ended; the real one stays.
    let (status, _, list) = http(relay.addr, "GET", "/api/v1/subscribe", &format!("X-Client-Id: {id}\r\n"));
    assert_eq!(status, 200);
    let products: Vec<&Value> = list["subscriptions"].as_array().unwrap().iter().map(|s| &s["product_id"]).collect();
    assert_eq!(products, vec!["BTC-USD"], "{list}");

    // The feed was asked for status first, then for the real pair only, and kept the connection.
    one_connection_kept(&sim, &relay);
    let sent = sim_requests(&sim);
    assert!(sent.iter().all(|r| r.len() <= MAX_REQUEST_BYTES));
    assert!(!sent.iter().any(|r| r.contains("MADE")), "a made-up pair was asked for: {sent:?}");
    assert!(sent.iter().any(|r| r.contains("BTC-USD")));

    // Now that the list is known, a made-up pair is refused at the door.
    let with_id = format!("X-Client-Id: {id}\r\n");
    let (status, _, body) = http(relay.addr, "POST", "/api/v1/subscribe/MADE9999-USD", &with_id);
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_product")), "{body}");
}

#[test]
fn a_flood_of_real_pairs_goes_in_bounded_requests() {
    // 1,500 products on ticker, matches and heartbeat: about 80 KB as one request,
    // more than the simulator (like Coinbase) takes in one message.
    let products: Vec<String> = (0..1500).map(|i| format!("PRODUCT{i:04}-USD")).collect();
    let sim = simulator(|c| {
        c.rate = 0.0; // each product's one trade, repeated to new subscribers, is enough
        c.products = products.clone();
    });
    let (relay, mut client, _) = subscribed_while_down(&sim, &products);
    sim.set_refusing(false);

    // Each product's latest ticker, which the feed repeats to a new subscriber,
    // reaches the client: every pair was asked for and granted.
    let mut tickers = BTreeSet::new();
    let end = Instant::now() + 2 * DEADLINE;
    while tickers.len() < products.len() {
        assert!(Instant::now() < end, "{} of {} tickers", tickers.len(), products.len());
        let v = client.json();
        assert_ne!(v["type"], "error", "{v}");
        if v["type"] == "ticker" {
            tickers.insert(v["product_id"].as_str().unwrap().to_string());
        }
    }

    one_connection_kept(&sim, &relay);
    let sent = sim_requests(&sim);
    let total: usize = sent.iter().map(String::len).sum();
    assert!(total > 64 * 1024, "more than one message may hold: {total} bytes");
    for r in &sent {
        assert!(r.len() <= MAX_REQUEST_BYTES, "a request of {} bytes", r.len());
    }
}
