//! Existing Coinbase Exchange clients against hedgehog, changing only the URL.
//!
//! `Feed` below is a Coinbase-style client written from the exchange's protocol
//! notes alone: it connects, sends `subscribe`/`unsubscribe` messages, and reads
//! the messages the protocol defines, ignoring unknown types as Coinbase clients
//! do. It knows nothing of hedgehog. The tests run it against the simulator
//! directly and against the relay, and compare what each receives.

mod common;

use std::time::{Duration, Instant};

use common::{http, relay, simulator, DEADLINE};
use serde_json::Value;

/// The message types the Coinbase feed defines.
const COINBASE_TYPES: [&str; 11] = [
    "subscriptions",
    "error",
    "heartbeat",
    "status",
    "ticker",
    "match",
    "last_match",
    "snapshot",
    "l2update",
    "received",
    "done",
];

/// A Coinbase-style feed client.
struct Feed {
    ws: tungstenite::WebSocket<std::net::TcpStream>,
    /// Messages of types it does not know, skipped.
    pub unknown: Vec<String>,
}

impl Feed {
    fn connect(url: &str) -> Feed {
        let addr = url.trim_start_matches("ws://").split('/').next().unwrap().to_string();
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (ws, _) = tungstenite::client(url, stream).expect("handshake");
        Feed { ws, unknown: Vec::new() }
    }

    fn send(&mut self, msg: &str) {
        self.ws.send(tungstenite::Message::text(msg)).unwrap();
    }

    /// The next message of a known type, raw.
    fn next(&mut self) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < end, "no message before the deadline");
            match self.ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if COINBASE_TYPES.contains(&v["type"].as_str().unwrap_or("")) {
                        return t.to_string();
                    }
                    self.unknown.push(t.to_string());
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next message of type `kind`, raw.
    fn next_of(&mut self, kind: &str) -> String {
        loop {
            let m = self.next();
            if m.contains(&format!(r#""type":"{kind}""#)) {
                return m;
            }
        }
    }

    /// The replies to one request: every `error`, then the `subscriptions` message.
    fn request(&mut self, msg: &str) -> Vec<String> {
        self.send(msg);
        let mut out = Vec::new();
        loop {
            let m = self.next();
            let v: Value = serde_json::from_str(&m).unwrap();
            match v["type"].as_str() {
                Some("error") => out.push(m),
                Some("subscriptions") => {
                    out.push(m);
                    return out;
                }
                _ => {}
            }
        }
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// The requests of the protocol notes, each answered by the relay exactly as the
/// feed itself answers it.
#[test]
fn requests_are_answered_word_for_word_as_the_feed_answers_them() {
    let sim = simulator(|c| c.rate = 5.0);
    let relay = relay(2, &sim.url());
    let mut direct = Feed::connect(&sim.url());
    let mut relayed = Feed::connect(&format!("ws://{}/?mode=coinbase", relay.addr));
    // Let the relay learn the product list first, as a real deployment has.
    common::wait_until("the relay knows the products", || {
        http(relay.addr, "GET", "/healthz", "").2["upstream"]["products"].as_u64().unwrap_or(0) > 0
    });
    let requests = [
        r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker","matches"]}"#,
        r#"{"type":"subscribe","product_ids":["ETH-USD","GIBBERISH-USD"],"channels":["matches"]}"#,
        // A product not held (nor listed): nothing changes, nothing is refused.
        r#"{"type":"unsubscribe","product_ids":["NOPE-USD"],"channels":["matches"]}"#,
        r#"{"type":"subscribe","product_ids":["ETH-USD"],"channels":[{"name":"ticker","product_ids":["SOL-USD"]}]}"#,
        r#"{"type":"subscribe","channels":[{"name":"ticker","product_ids":[]}]}"#,
        r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["level2"]}"#,
        r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker_dance"]}"#,
        r#"{"type":"unsubscribe","product_ids":["BTC-USD"],"channels":["matches"]}"#,
        r#"{"type":"unsubscribe","channels":["ticker"]}"#,
        r#"{"type":"unsubscribe","product_ids":["ETH-USD"],"channels":["level2_50"]}"#,
    ];
    for req in requests {
        let want = direct.request(req);
        let got = relayed.request(req);
        assert_eq!(got.len(), want.len(), "{req}\nrelay: {got:?}\nfeed: {want:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(json(g), json(w), "{req}");
        }
    }
    // Requests answered with an error alone.
    let no_channels = r#"{"type":"subscribe","product_ids":["BTC-USD"]}"#;
    for bad in [no_channels, r#"{"type":"dance","channels":["ticker"]}"#, "{not json"] {
        direct.send(bad);
        relayed.send(bad);
        let (w, g) = (direct.next_of("error"), relayed.next_of("error"));
        assert_eq!(json(&g)["message"], json(&w)["message"], "{bad}");
    }
    assert!(relayed.unknown.is_empty(), "pure Coinbase mode sent {:?}", relayed.unknown);
}

/// A client that connects to the root URL, as Coinbase clients do, gets the data
/// the feed sends, byte for byte; hedgehog's welcome is a type it ignores.
#[test]
fn a_coinbase_client_works_against_the_root_url() {
    let sim = simulator(|c| c.rate = 20.0);
    let relay = relay(2, &sim.url());
    let sub = r#"{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channels":["matches"]}"#;
    let mut direct = Feed::connect(&sim.url());
    let mut relayed = Feed::connect(&format!("ws://{}", relay.addr));
    direct.request(sub);
    relayed.request(sub);
    let mut by_trade = std::collections::HashMap::new();
    for _ in 0..200 {
        let m = direct.next_of("match");
        let v = json(&m);
        by_trade.insert((v["product_id"].as_str().unwrap().to_string(), v["trade_id"].as_u64().unwrap()), m);
    }
    let mut compared = 0;
    while compared < 50 {
        let m = relayed.next_of("match");
        let v = json(&m);
        let key = (v["product_id"].as_str().unwrap().to_string(), v["trade_id"].as_u64().unwrap());
        if let Some(want) = by_trade.get(&key) {
            assert_eq!(&m, want, "byte for byte");
            compared += 1;
        }
    }
    // What it skipped were hedgehog's own messages (the welcome, and an upstream
    // note if the feed connection came up after it subscribed).
    let hedgehogs = ["welcome", "upstream"];
    assert!(
        relayed.unknown.iter().all(|u| hedgehogs.contains(&json(u)["type"].as_str().unwrap())),
        "{:?}",
        relayed.unknown
    );
}

/// REST and in-band subscriptions are one state.
#[test]
fn rest_and_in_band_subscriptions_are_one_state() {
    let sim = simulator(|c| c.rate = 5.0);
    let relay = relay(2, &sim.url());
    let (mut c, id) = common::relay_client(relay.addr);
    let with_id = format!("X-Client-Id: {id}\r\n");
    assert_eq!(http(relay.addr, "POST", "/api/v1/subscribe/BTC-USD?channels=ticker", &with_id).0, 200);
    c.send(r#"{"type":"subscribe","product_ids":["ETH-USD"],"channels":["matches"]}"#);
    let reply = json(&c.until("subscriptions", |v| v["type"] == "subscriptions"));
    assert_eq!(
        reply["channels"],
        json(
            r#"[{"name":"matches","product_ids":["ETH-USD"],"account_ids":null},{"name":"ticker","product_ids":["BTC-USD"],"account_ids":null}]"#
        )
    );
    let list = http(relay.addr, "GET", "/api/v1/subscribe", &with_id).2;
    let pairs: Vec<(String, Value)> = list["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["product_id"].as_str().unwrap().to_string(), s["channels"].clone()))
        .collect();
    assert_eq!(
        pairs,
        [("BTC-USD".to_string(), json(r#"["ticker"]"#)), ("ETH-USD".to_string(), json(r#"["matches"]"#))]
    );
    // Unsubscribing in-band what REST subscribed.
    c.send(r#"{"type":"unsubscribe","product_ids":["BTC-USD"],"channels":["ticker"]}"#);
    let reply = json(&c.until("subscriptions", |v| v["type"] == "subscriptions"));
    assert_eq!(reply["channels"].as_array().unwrap().len(), 1, "{reply}");
    let list = http(relay.addr, "GET", "/api/v1/subscribe/BTC-USD", &with_id).2;
    assert_eq!(list["subscribed"], false, "{list}");
}

/// A Coinbase client that subscribes to a pair already streaming gets, first,
/// the same messages a fresh subscriber of the feed itself gets: the latest
/// ticker, the last match and a snapshot of the book. The market stands still
/// while both subscribe, so both answers describe the same moment.
#[test]
fn a_late_coinbase_client_starts_where_a_direct_one_does() {
    let sim = simulator(|c| {
        c.rate = 30.0;
        c.products = vec!["BTC-USD".into()];
    });
    let relay = relay(2, &sim.url());
    let sub = r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker","matches","level2_batch"]}"#;
    let mut early = Feed::connect(&format!("ws://{}/?mode=coinbase", relay.addr));
    early.request(sub);
    for _ in 0..10 {
        early.next_of("l2update");
    }
    sim.set_paused(true);
    // Quiet: no new trade reaches the history for a while.
    let mut last_seen = String::new();
    common::wait_until("the market to stand still", || {
        let before = last_seen.clone();
        let t = http(relay.addr, "GET", "/api/v1/history/BTC-USD?channel=matches&limit=1", "").2;
        last_seen = t.to_string();
        std::thread::sleep(Duration::from_millis(150));
        before == last_seen
    });
    let mut direct = Feed::connect(&sim.url());
    let mut late = Feed::connect(&format!("ws://{}/?mode=coinbase", relay.addr));
    direct.request(sub);
    late.request(sub);
    let firsts = |f: &mut Feed| {
        let mut got = std::collections::BTreeMap::new();
        while got.len() < 3 {
            let m = f.next();
            let kind = json(&m)["type"].as_str().unwrap().to_string();
            got.insert(kind, json(&m));
        }
        got
    };
    let (want, got) = (firsts(&mut direct), firsts(&mut late));
    assert_eq!(got.keys().collect::<Vec<_>>(), ["last_match", "snapshot", "ticker"]);
    assert_eq!(got, want, "the same first messages as from the feed itself");
    assert!(late.unknown.is_empty(), "{:?}", late.unknown);
}
