//! The simulator speaks Coinbase Exchange's feed protocol (FEED.md), checked over
//! raw frames with an independent client.

mod common;

use std::io::Write;

use common::{has_fixture_fields, keys, simulator, wait_until, Client};
use hedgehog::sim::SimEvent;
use serde_json::{json, Value};

fn channels(v: &Value) -> Value {
    assert_eq!(v["type"], "subscriptions", "{v}");
    let mut out = serde_json::Map::new();
    for c in v["channels"].as_array().unwrap() {
        let mut ids: Vec<String> =
            c["product_ids"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().into()).collect();
        ids.sort();
        assert!(c["account_ids"].is_null());
        out.insert(c["name"].as_str().unwrap().into(), json!(ids));
    }
    Value::Object(out)
}

#[test]
fn top_level_products_apply_to_every_channel_and_replies_are_cumulative() {
    let sim = simulator(|c| c.rate = 0.0);
    let mut c = Client::connect(&sim.url());
    c.send(r#"{"type":"subscribe","product_ids":["ETH-USD","ETH-EUR"],"channels":["heartbeat",{"name":"ticker","product_ids":["ETH-BTC","ETH-USD"]}]}"#);
    let subs = c.until("subscriptions", |v| v["type"] == "subscriptions");
    let subs: Value = serde_json::from_str(&subs).unwrap();
    assert_eq!(
        channels(&subs),
        json!({"heartbeat": ["ETH-EUR", "ETH-USD"], "ticker": ["ETH-BTC", "ETH-EUR", "ETH-USD"]})
    );
    c.send(r#"{"type":"subscribe","channels":[{"name":"matches","product_ids":["BTC-USD"]}]}"#);
    let v: Value = serde_json::from_str(&c.until("second reply", |v| v["type"] == "subscriptions")).unwrap();
    assert_eq!(channels(&v)["matches"], json!(["BTC-USD"]));
    assert_eq!(channels(&v)["heartbeat"], json!(["ETH-EUR", "ETH-USD"]), "earlier subscriptions stay listed");
    c.send(r#"{"type":"unsubscribe","product_ids":["ETH-USD"],"channels":["ticker"]}"#);
    let v: Value = serde_json::from_str(&c.until("third reply", |v| v["type"] == "subscriptions")).unwrap();
    assert_eq!(channels(&v)["ticker"], json!(["ETH-BTC", "ETH-EUR"]));
    c.send(r#"{"type":"unsubscribe","channels":["heartbeat"]}"#);
    let v: Value = serde_json::from_str(&c.until("fourth reply", |v| v["type"] == "subscriptions")).unwrap();
    assert!(channels(&v).get("heartbeat").is_none(), "a channel without products drops whole: {v}");
}

#[test]
fn an_invalid_product_is_an_error_then_a_partial_accept() {
    let sim = simulator(|c| c.rate = 0.0);
    let mut c = Client::connect(&sim.url());
    c.send(r#"{"type":"subscribe","product_ids":["GIBBERISH-USD","BTC-USD"],"channels":["ticker"]}"#);
    let e = c.json();
    assert_eq!(
        e,
        json!({"type":"error","message":"Failed to subscribe","reason":"GIBBERISH-USD is not a valid product"})
    );
    has_fixture_fields(&e, "ticker/unsubscribe-error.json");
    let v = c.json();
    assert_eq!(channels(&v), json!({"ticker": ["BTC-USD"]}));
}

#[test]
fn coinbase_error_texts_and_the_connection_stays_open() {
    let sim = simulator(|c| c.rate = 0.0);
    let mut c = Client::connect(&sim.url());
    let cases = [
        (r#"{"type":"subscribe","product_ids":["BTC-USD"]}"#, "Failed to subscribe", "No channels provided"),
        (r#"{"type":"unsubscribe","channels":[]}"#, "Failed to unsubscribe", "No channels provided"),
        (
            r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["level2"]}"#,
            "Failed to subscribe",
            "level2, level3, and full channels now require authentication. https://docs.cloud.coinbase.com/exchange/docs/websocket-auth",
        ),
        (r#"{"type":"subscribe","channels":[{"name":"ticker","product_ids":[]}]}"#, "Failed to subscribe", " is not a valid product"),
        (r#"{"type":"hello","channels":["ticker"]}"#, "Failed to subscribe", "Type has to be either subscribe or unsubscribe"),
    ];
    for (request, message, reason) in cases {
        c.send(request);
        let e = c.until("an error", |v| v["type"] == "error");
        let e: Value = serde_json::from_str(&e).unwrap();
        assert_eq!((e["message"].as_str().unwrap(), e["reason"].as_str().unwrap()), (message, reason), "{request}");
    }
    c.send("this is not json");
    let e = c.json();
    assert_eq!(e["type"], "error");
    assert_eq!(e["message"], "Malformed JSON");
    c.send(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker"]}"#);
    c.until("a ticker after all those errors", |v| v["type"] == "ticker");
}

#[test]
fn a_connection_that_never_subscribes_is_closed() {
    let sim = simulator(|c| c.subscribe_timeout = std::time::Duration::from_millis(300));
    let mut c = Client::connect(&sim.url());
    let (code, reason) = c.close_frame();
    assert_eq!(code, 1008);
    assert!(reason.contains("subscribe"), "{reason}");
}

#[test]
fn new_subscribers_get_the_latest_ticker_and_last_match_unchanged() {
    let sim = simulator(|c| c.rate = 0.0);
    let sub = r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker","matches"]}"#;
    let first_two = |c: &mut Client| {
        let (mut ticker, mut last_match) = (None, None);
        while ticker.is_none() || last_match.is_none() {
            let t = c.text();
            let v: Value = serde_json::from_str(&t).unwrap();
            match v["type"].as_str().unwrap() {
                "ticker" => ticker = Some(t),
                "last_match" => last_match = Some(t),
                "subscriptions" => {}
                other => panic!("unexpected {other} before the repeats"),
            }
        }
        (ticker.unwrap(), last_match.unwrap())
    };
    let mut first = Client::connect(&sim.url());
    first.send(sub);
    let (t1, m1) = first_two(&mut first);
    let mut second = Client::connect(&sim.url());
    second.send(sub);
    let (t2, m2) = first_two(&mut second);
    assert_eq!(t1, t2, "the same bytes, time and sequence");
    assert_eq!(m1, m2);
    let t: Value = serde_json::from_str(&t1).unwrap();
    let m: Value = serde_json::from_str(&m1).unwrap();
    has_fixture_fields(&t, "ticker/BTC-USD.json");
    has_fixture_fields(&m, "matches/BTC-USD.json");
    assert_eq!((&t["trade_id"], &t["sequence"], &t["price"]), (&m["trade_id"], &m["sequence"], &m["price"]));
}

#[test]
fn trades_stream_with_rising_ids_and_per_product_sequences() {
    let sim = simulator(|c| {
        c.rate = 200.0;
        c.products = vec!["BTC-USD".into(), "ETH-USD".into()];
    });
    let mut c = Client::connect(&sim.url());
    c.send(r#"{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channels":["matches","ticker"]}"#);
    let mut last: std::collections::HashMap<(String, String), (u64, u64)> = Default::default();
    let mut matches = 0;
    while matches < 200 {
        let v = c.json();
        let kind = v["type"].as_str().unwrap().to_string();
        if kind == "subscriptions" {
            continue;
        }
        let product = v["product_id"].as_str().unwrap().to_string();
        let (trade, seq) = (v["trade_id"].as_u64().unwrap(), v["sequence"].as_u64().unwrap());
        assert!(v["price"].is_string() && v["time"].as_str().unwrap().ends_with('Z'));
        if let Some((t0, s0)) = last.insert((kind.clone(), product), (trade, seq)) {
            assert_eq!(trade, t0 + 1, "trade ids rise by one: {v}");
            assert!(seq > s0, "sequences rise: {v}");
        }
        if kind == "match" {
            matches += 1;
            assert!(["buy", "sell"].contains(&v["side"].as_str().unwrap()));
        }
    }
}

#[test]
fn level2_batch_starts_with_a_snapshot_then_applies_updates() {
    let sim = simulator(|c| c.rate = 100.0);
    let mut c = Client::connect(&sim.url());
    c.send(r#"{"type":"subscribe","product_ids":["ETH-EUR"],"channels":["level2_50"]}"#);
    let v = c.json();
    assert_eq!(channels(&v), json!({"level2_batch": ["ETH-EUR"]}));
    let snap = c.json();
    assert_eq!(snap["type"], "snapshot");
    has_fixture_fields(&snap, "level2/snapshot.json");
    let mut bids: std::collections::BTreeMap<String, f64> = Default::default();
    let mut asks: std::collections::BTreeMap<String, f64> = Default::default();
    let price = |s: &Value| s.as_str().unwrap().parse::<f64>().unwrap();
    let best_bid = snap["bids"][0][0].clone();
    for (side, map) in [("bids", &mut bids), ("asks", &mut asks)] {
        let levels = snap[side].as_array().unwrap();
        assert!(levels.len() > 5);
        for pair in levels.windows(2) {
            let (a, b) = (price(&pair[0][0]), price(&pair[1][0]));
            assert!(if side == "bids" { a > b } else { a < b }, "{side} sorted");
        }
        for l in levels {
            map.insert(l[0].as_str().unwrap().into(), price(&l[1]));
        }
    }
    assert!(price(&best_bid) < price(&snap["asks"][0][0]), "not crossed");
    for _ in 0..10 {
        let u = c.until("l2update", |v| v["type"] == "l2update");
        let u: Value = serde_json::from_str(&u).unwrap();
        has_fixture_fields(&u, "level2/l2update.json");
        for ch in u["changes"].as_array().unwrap() {
            let map = if ch[0] == "buy" { &mut bids } else { &mut asks };
            let size = price(&ch[2]);
            if size == 0.0 {
                map.remove(ch[1].as_str().unwrap());
            } else {
                map.insert(ch[1].as_str().unwrap().into(), size);
            }
        }
    }
    let top_bid = bids.keys().map(|p| p.parse::<f64>().unwrap()).fold(f64::MIN, f64::max);
    let top_ask = asks.keys().map(|p| p.parse::<f64>().unwrap()).fold(f64::MAX, f64::min);
    assert!(top_bid < top_ask, "the rebuilt book is not crossed: {top_bid} {top_ask}");
}

#[test]
fn heartbeats_and_status_carry_the_fixture_fields() {
    let sim = simulator(|c| c.rate = 5.0);
    let mut c = Client::connect(&sim.url());
    c.send(r#"{"type":"subscribe","product_ids":["ETH-EUR"],"channels":["heartbeat","status"]}"#);
    let v = c.json();
    assert_eq!(channels(&v), json!({"heartbeat": ["ETH-EUR"], "status": []}));
    let status: Value = serde_json::from_str(&c.until("status", |v| v["type"] == "status")).unwrap();
    let products = status["products"].as_array().unwrap();
    assert_eq!(products.len(), 20);
    let fixture: Value = serde_json::from_str(include_str!("fixtures/status/status.json")).unwrap();
    for k in keys(&fixture["products"][0]) {
        assert!(products[0].get(&k).is_some(), "status product lacks {k}");
    }
    for k in keys(&fixture["currencies"][0]) {
        assert!(status["currencies"][0].get(&k).is_some(), "status currency lacks {k}");
    }
    let h1: Value = serde_json::from_str(&c.until("heartbeat", |v| v["type"] == "heartbeat")).unwrap();
    has_fixture_fields(&h1, "heartbeat/ETH-EUR.json");
    let h2: Value = serde_json::from_str(&c.until("heartbeat", |v| v["type"] == "heartbeat")).unwrap();
    assert!(h2["sequence"].as_u64() >= h1["sequence"].as_u64());
    assert!(h2["last_trade_id"].as_u64() >= h1["last_trade_id"].as_u64());
}

#[test]
fn replay_is_byte_exact_and_skips_what_is_not_a_message() {
    let lines = [
        r#"{"type":"ticker","sequence":10,"product_id":"BTC-USD","price":"1.00","time":"2021-04-17T16:43:37.000000Z","trade_id":1}"#,
        "not json at all",
        r#"{"type":"match","trade_id":2,"side":"sell","size":"1","price":"1.01","product_id":"BTC-USD","sequence":11,"time":"2021-04-17T16:43:37.001000Z"}"#,
        r#"[1,2,3]"#,
        r#"{"type":"l2update","product_id":"ETH-USD","changes":[["buy","1.0","0"]],"time":"2021-04-17T16:43:37.002000Z"}"#,
        r#"{"type": "ticker", "sequence": 12, "product_id": "BTC-USD", "price": "1.02",   "time":"2021-04-17T16:43:37.003000Z","trade_id":3}"#,
    ];
    let dir = std::env::temp_dir().join(format!("hedgehog-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("feed.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    drop(f);
    let sim = simulator(|c| {
        c.replay = Some(path.clone());
        c.speed = 0.0;
    });
    let mut c = Client::connect(&sim.url());
    c.send(
        r#"{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channels":["ticker","matches","level2_batch"]}"#,
    );
    c.until("subscriptions", |v| v["type"] == "subscriptions");
    let got: Vec<String> = (0..4).map(|_| c.text()).collect();
    assert_eq!(got, [lines[0], lines[2], lines[4], lines[5]]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_simulator_records_what_clients_asked() {
    let sim = simulator(|c| c.rate = 0.0);
    let mut c = Client::connect(&sim.url());
    let request = r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker"]}"#;
    c.send(request);
    c.until("ticker", |v| v["type"] == "ticker");
    wait_until("the request is logged", || {
        sim.events().iter().any(|e| matches!(e, SimEvent::Request(_, r) if r == request))
    });
    sim.drop_connections();
    wait_until("the connection is dropped", || sim.events().iter().any(|e| matches!(e, SimEvent::Closed(_))));
}
