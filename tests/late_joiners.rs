//! Late joiners start from a correct state; gaps are detected and repaired; the
//! history answers queries and replays without a seam.

mod common;

use std::collections::BTreeMap;

use common::{http, relay, relay_client, simulator, wait_until, Client};
use hedgehog::server::RelayHandle;
use hedgehog::sim::{Fault, SimEvent, SimHandle};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// Relay clients until there is one on shard 0 and one on another shard (client
/// ids start with the shard), so both paths of a join are exercised.
fn clients_on_both_shards(addr: std::net::SocketAddr) -> Vec<(Client, String)> {
    let mut out: Vec<(Client, String)> = Vec::new();
    for _ in 0..32 {
        let (c, id) = relay_client(addr);
        let zero = id.starts_with("0-");
        if !out.iter().any(|(_, o)| o.starts_with("0-") == zero) {
            out.push((c, id));
        }
        if out.len() == 2 {
            break;
        }
    }
    out
}

/// Order book as a client rebuilds it: side -> price -> size.
#[derive(Debug, Default, PartialEq)]
struct Book(BTreeMap<(String, String), String>);

impl Book {
    fn from_snapshot(v: &Value) -> Book {
        let mut b = Book::default();
        for (side, key) in [("buy", "bids"), ("sell", "asks")] {
            for l in v[key].as_array().unwrap() {
                b.set(side, l[0].as_str().unwrap(), l[1].as_str().unwrap());
            }
        }
        b
    }

    fn set(&mut self, side: &str, price: &str, size: &str) {
        let key = (side.to_string(), price.to_string());
        if size.parse::<f64>().unwrap() == 0.0 {
            self.0.remove(&key);
        } else {
            self.0.insert(key, size.to_string());
        }
    }

    fn apply(&mut self, v: &Value) {
        for c in v["changes"].as_array().unwrap() {
            self.set(c[0].as_str().unwrap(), c[1].as_str().unwrap(), c[2].as_str().unwrap());
        }
    }
}

/// A simulator of one pair at `rate` trades a second, a two-shard relay, and an
/// early client subscribed to `channels` (keeping the pair streaming), which
/// has seen ten messages of type `kind`.
fn streaming(rate: f64, channels: &str, kind: &str) -> (SimHandle, RelayHandle, Client) {
    let sim = simulator(|c| {
        c.rate = rate;
        c.products = vec!["BTC-USD".into()];
    });
    let relay = relay(2, &sim.url());
    let (mut early, id) = relay_client(relay.addr);
    let path = format!("/api/v1/subscribe/BTC-USD?channels={channels}");
    assert_eq!(http(relay.addr, "POST", &path, &format!("X-Client-Id: {id}\r\n")).0, 200);
    for _ in 0..10 {
        early.until("early data", |v| v["type"] == kind);
    }
    (sim, relay, early)
}

#[test]
fn a_late_joiner_gets_the_latest_ticker_and_last_match_then_every_trade() {
    let (_sim, relay, _early) = streaming(30.0, "ticker,matches", "match");
    for (mut late, _) in clients_on_both_shards(relay.addr) {
        late.send(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker","matches"]}"#);
        late.until("subscriptions", |v| v["type"] == "subscriptions");
        // What a fresh subscriber of the feed gets first: a ticker and a last_match
        // (in either order), taken from the stream already flowing.
        let mut firsts = Vec::new();
        while firsts.len() < 2 {
            let v = json(&late.until("first", |v| v["type"] != "upstream"));
            firsts.push(v);
        }
        let kinds: Vec<&str> = firsts.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert!(kinds.contains(&"ticker") && kinds.contains(&"last_match"), "{kinds:?}");
        let last = firsts.iter().find(|v| v["type"] == "last_match").unwrap()["trade_id"].as_u64().unwrap();
        // Then every trade after it, none missed, none repeated.
        for expect in last + 1..last + 21 {
            let m = json(&late.until("match", |v| v["type"] == "match"));
            assert_eq!(m["trade_id"].as_u64().unwrap(), expect, "the trade after the last one seen");
        }
    }
}

#[test]
fn a_late_joiner_rebuilds_the_book_the_simulator_has() {
    let (sim, relay, _early) = streaming(40.0, "level2_batch", "l2update");
    for (mut late, _) in clients_on_both_shards(relay.addr) {
        late.send(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["level2_50"]}"#);
        late.until("subscriptions", |v| v["type"] == "subscriptions");
        let first = json(&late.until("the first message", |v| v["type"] != "upstream"));
        assert_eq!(first["type"], "snapshot", "a snapshot comes first: {first}");
        let mut book = Book::from_snapshot(&first);
        for _ in 0..10 {
            book.apply(&json(&late.until("updates", |v| v["type"] == "l2update")));
        }
        // Stop the market; the book a fresh direct subscriber gets is then the
        // simulator's own, and the late joiner's must come to equal it.
        sim.set_paused(true);
        let mut direct = Client::connect(&sim.url());
        direct.send(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["level2_batch"]}"#);
        let truth = Book::from_snapshot(&json(&direct.until("snapshot", |v| v["type"] == "snapshot")));
        let deadline = std::time::Instant::now() + common::DEADLINE;
        while book != truth {
            assert!(std::time::Instant::now() < deadline, "the late joiner's book never matched the simulator's");
            if let Some(tungstenite::Message::Text(t)) = late.next_message(std::time::Instant::now()) {
                let v = json(&t);
                if v["type"] == "l2update" {
                    book.apply(&v);
                }
            }
        }
        sim.set_paused(false);
    }
}

#[test]
fn a_gap_resubscribes_that_product_alone_and_tells_its_subscribers() {
    let sim = simulator(|c| {
        c.rate = 30.0;
        c.products = vec!["BTC-USD".into(), "ETH-USD".into()];
    });
    let relay = relay(2, &sim.url());
    let (mut c, id) = relay_client(relay.addr);
    let with_id = format!("X-Client-Id: {id}\r\n");
    assert_eq!(http(relay.addr, "POST", "/api/v1/subscribe/BTC-USD?channels=matches", &with_id).0, 200);
    assert_eq!(http(relay.addr, "POST", "/api/v1/subscribe/ETH-USD?channels=ticker", &with_id).0, 200);
    for _ in 0..5 {
        c.until("trades", |v| v["type"] == "match");
    }
    sim.inject(Fault::Skip);
    let gap = json(&c.until("the gap message", |v| v["type"] == "gap"));
    assert_eq!(gap["product_id"], "BTC-USD");
    assert!(gap["received_trade_id"].as_u64() > gap["expected_trade_id"].as_u64(), "{gap}");
    // A fresh last_match, then every trade after it.
    let last = json(&c.until("a fresh last_match", |v| v["type"] == "last_match"));
    let last = last["trade_id"].as_u64().unwrap();
    for expect in last + 1..last + 11 {
        let m = json(&c.until("trades after the gap", |v| v["type"] == "match"));
        assert_eq!(m["trade_id"].as_u64().unwrap(), expect);
    }
    let health = http(relay.addr, "GET", "/healthz", "").2;
    assert!(health["gaps"].as_u64().unwrap() >= 1, "{health}");
    assert_eq!(health["upstream"]["connects"], 1, "no reconnect: {health}");
    // On the feed: an unsubscribe naming BTC-USD alone, then its subscribe again.
    let requests: Vec<Value> = sim
        .events()
        .into_iter()
        .filter_map(|e| match e {
            SimEvent::Request(_, r) => Some(json(&r)),
            _ => None,
        })
        .collect();
    let unsub = requests.iter().position(|r| r["type"] == "unsubscribe").expect("an unsubscribe");
    let text = requests[unsub].to_string();
    assert!(text.contains("BTC-USD") && !text.contains("ETH-USD"), "{text}");
    assert!(requests[unsub..].iter().any(|r| r["type"] == "subscribe" && r.to_string().contains("BTC-USD")));
}

#[test]
fn history_is_queried_and_replayed_without_a_seam() {
    let (sim, relay, mut early) = streaming(30.0, "ticker,matches", "ticker");
    let mut tickers = Vec::new();
    while tickers.len() < 30 {
        let t = early.until("tickers", |v| v["type"] == "ticker");
        tickers.push(t);
    }
    // The newest 10 tickers, newest last, each exactly as relayed.
    let (status, head, _) = http(relay.addr, "GET", "/api/v1/history/BTC-USD?channel=ticker&limit=10", "");
    assert_eq!(status, 200, "{head}");
    let raw = common::http_raw(
        relay.addr,
        b"GET /api/v1/history/BTC-USD?channel=ticker&limit=10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .2;
    let list = json(&raw);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 10);
    let seqs: Vec<u64> = list.iter().map(|v| v["sequence"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "newest last: {seqs:?}");
    for t in &tickers[20..] {
        let seq = json(t)["sequence"].as_u64().unwrap();
        if seqs.contains(&seq) {
            assert!(raw.contains(t.as_str()), "the raw message, byte for byte");
        }
    }
    // since= a sequence, and since= a time.
    let since = seqs[5];
    let after = http(relay.addr, "GET", &format!("/api/v1/history/BTC-USD?channel=ticker&since={since}"), "").2;
    assert!(after.as_array().unwrap().iter().all(|v| v["sequence"].as_u64().unwrap() > since));
    let time = list[5]["time"].as_str().unwrap().to_string();
    let after = http(relay.addr, "GET", &format!("/api/v1/history/BTC-USD?channel=ticker&since={time}"), "").2;
    assert!(after.as_array().unwrap().iter().all(|v| v["time"].as_str().unwrap() >= time.as_str()));
    assert!(!after.as_array().unwrap().is_empty());
    // Bad queries: a status and a JSON body.
    for (q, code) in [("channel=nope", "bad_channel"), ("limit=0", "bad_limit"), ("since=yesterday", "bad_since")] {
        let (status, _, body) = http(relay.addr, "GET", &format!("/api/v1/history/BTC-USD?{q}"), "");
        assert_eq!((status, body["error"].as_str().unwrap()), (400, code), "{q}");
    }
    let health = http(relay.addr, "GET", "/healthz", "").2;
    assert!(health["history"]["bytes"].as_u64().unwrap() > 0, "{health}");

    // ?replay=N: the last N matches, then the live ones, without a gap or a repeat.
    // The market stands still while each late client joins, so the replay must
    // be exactly the ten trades up to the newest one.
    for (mut late, late_id) in clients_on_both_shards(relay.addr) {
        sim.set_paused(true);
        let newest = || {
            let h = http(relay.addr, "GET", "/api/v1/history/BTC-USD?channel=matches&limit=1", "").2;
            h[0]["trade_id"].as_u64().unwrap()
        };
        let mut last = newest();
        wait_until("the feed is quiet", || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let now = newest();
            std::mem::replace(&mut last, now) == now
        });
        let path = "/api/v1/subscribe/BTC-USD?channels=matches&replay=10";
        assert_eq!(http(relay.addr, "POST", path, &format!("X-Client-Id: {late_id}\r\n")).0, 200);
        let mut trades = Vec::new();
        while trades.len() < 10 {
            let v = json(&late.until("replayed matches", |v| v["type"] == "match"));
            trades.push(v["trade_id"].as_u64().unwrap());
        }
        assert_eq!(trades, ((last - 9)..=last).collect::<Vec<_>>(), "the last ten trades");
        sim.set_paused(false);
        while trades.len() < 25 {
            let v = json(&late.until("live matches", |v| v["type"] == "match"));
            trades.push(v["trade_id"].as_u64().unwrap());
        }
        assert!(trades.windows(2).all(|w| w[1] == w[0] + 1), "no gap or repeat at the seam: {trades:?}");
    }
}

#[test]
fn a_book_dropped_and_wanted_again_before_the_unsubscribe_went_out_comes_afresh() {
    // One shard, and both requests in one write: the relay drops the book when
    // the last subscriber leaves and takes the new subscriber before its
    // upstream client has run, so no unsubscribe goes out and the feed sends
    // no fresh snapshot. The relay must ask for one: without a book, a level2
    // subscriber would get updates to a book it never saw, forever.
    let sim = simulator(|c| {
        c.products = vec!["BTC-USD".into()];
        c.rate = 20.0;
    });
    let relay = common::relay_with(&sim.url(), |c| c.shards = 1);
    let url = format!("ws://{}/?mode=coinbase", relay.addr);
    let mut c = Client::connect(&url);
    let req = |kind: &str| format!(r#"{{"type":"{kind}","product_ids":["BTC-USD"],"channels":["level2_batch"]}}"#);
    c.send(&req("subscribe"));
    c.until("the first snapshot", |v| v["type"] == "snapshot");
    c.ws.write(tungstenite::Message::text(req("unsubscribe"))).unwrap();
    c.ws.write(tungstenite::Message::text(req("subscribe"))).unwrap();
    c.ws.flush().unwrap();
    c.until("the unsubscribe's reply", |v| {
        v["type"] == "subscriptions" && v["channels"].as_array().unwrap().is_empty()
    });
    c.until("the subscribe's reply", |v| v["type"] == "subscriptions");
    c.until("a fresh snapshot", |v| v["type"] == "snapshot" && v["product_id"] == "BTC-USD");
}
