//! The relay end to end with the simulator: WebSocket clients subscribed through
//! REST on other connections (so across shards), byte-exact fan-out, release of
//! subscriptions, streams, and every error on raw bytes.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{http, http_raw, relay, relay_client, sim_requests, simulator, wait_until, Client, DEADLINE};
use hedgehog::sim::SimHandle;
use serde_json::Value;

const PRODUCTS: [&str; 4] = ["BTC-USD", "ETH-USD", "SOL-USD", "LTC-USD"];

type Seen = Arc<Mutex<HashMap<(String, String, u64), String>>>;

/// A direct simulator client that records every ticker and match by
/// (type, product, sequence), in a thread, until dropped.
struct Direct {
    seen: Seen,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Direct {
    fn start(sim: &SimHandle) -> Direct {
        let mut c = Client::connect(&sim.url());
        let ids: Vec<String> = PRODUCTS.iter().map(|p| format!("{p:?}")).collect();
        c.send(&format!(r#"{{"type":"subscribe","product_ids":[{}],"channels":["ticker","matches"]}}"#, ids.join(",")));
        c.until("subscriptions", |v| v["type"] == "subscriptions");
        let seen: Seen = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Some(tungstenite::Message::Text(t)) = c.next_message(Instant::now()) else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                if let (Some(kind), Some(p), Some(seq)) =
                    (v["type"].as_str(), v["product_id"].as_str(), v["sequence"].as_u64())
                {
                    s.lock().unwrap().insert((kind.into(), p.into(), seq), t.to_string());
                }
            }
        });
        Direct { seen, stop, thread: Some(thread) }
    }

    /// What the simulator sent as (`kind`, `product`, `seq`), waiting for it.
    fn get(&self, kind: &str, product: &str, seq: u64) -> String {
        self.get_any(&[kind], product, seq)
    }

    /// The first of `kinds` seen with this product and sequence, waiting for one.
    fn get_any(&self, kinds: &[&str], product: &str, seq: u64) -> String {
        let mut out = None;
        wait_until(&format!("the direct client to see {kinds:?} {product} {seq}"), || {
            let seen = self.seen.lock().unwrap();
            out = kinds.iter().find_map(|k| seen.get(&(k.to_string(), product.to_string(), seq)).cloned());
            out.is_some()
        });
        out.unwrap()
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn subscribe(addr: std::net::SocketAddr, id: &str, pair: &str) -> (String, Value) {
    let (status, head, body) =
        http(addr, "POST", &format!("/api/v1/subscribe/{pair}"), &format!("X-Client-Id: {id}\r\n"));
    assert_eq!(status, 200, "{head}\n{body}");
    (head, body)
}

fn shard_of(head: &str) -> usize {
    let line = head.lines().find(|l| l.starts_with("X-Hedgehog-Shard:")).expect("shard header");
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

fn fan_out_is_byte_exact(shards: usize) {
    let sim = simulator(|c| {
        c.rate = 30.0;
        c.products = PRODUCTS.iter().map(|p| p.to_string()).collect();
    });
    let direct = Direct::start(&sim);
    let relay = relay(shards, &sim.url());
    let mut clients = Vec::new();
    for i in 0..8 {
        let (c, id) = relay_client(relay.addr);
        let pairs: BTreeSet<&str> = [PRODUCTS[i % 4], PRODUCTS[(i + 1 + i / 4) % 4]].into();
        for pair in &pairs {
            let (_, body) = subscribe(relay.addr, &id, &pair.to_lowercase());
            assert_eq!(body["product_id"], *pair);
            assert_eq!(body["client_id"], id.as_str());
            assert_eq!(body["channels"], serde_json::json!(["ticker", "matches"]));
            assert_eq!(body["subscribed"], true);
        }
        clients.push((c, id, pairs));
    }
    for (c, id, pairs) in &mut clients {
        let mut got = 0;
        let mut notes = 0;
        while got < 30 {
            let text = c.text();
            let v: Value = serde_json::from_str(&text).unwrap();
            let kind = v["type"].as_str().unwrap();
            if kind == "upstream" {
                continue; // the relay's own note that the feed connected
            }
            let product = v["product_id"].as_str().unwrap();
            assert!(pairs.contains(product), "{id} got {product}, subscribed to {pairs:?}");
            match kind {
                "subscribed" => notes += 1,
                "ticker" | "match" => {
                    assert_eq!(text, direct.get(kind, product, v["sequence"].as_u64().unwrap()), "byte for byte");
                    got += 1;
                }
                "last_match" => {
                    // The same trade the simulator sent as a match, or repeated as last_match.
                    let original = direct.get_any(&["last_match", "match"], product, v["sequence"].as_u64().unwrap());
                    let as_match = |t: &str| t.replacen(r#""type":"last_match""#, r#""type":"match""#, 1);
                    assert_eq!(as_match(&text), as_match(&original));
                }
                other => panic!("unexpected {other}: {text}"),
            }
        }
        assert_eq!(notes, pairs.len(), "one subscribed note per pair");
    }
    // A REST request served by a shard other than the client's own still reaches it.
    if shards > 1 {
        let (mut c, id, _) = clients.pop().unwrap();
        let owner: usize = id.split('-').next().unwrap().parse().unwrap();
        let mut crossed = false;
        for _ in 0..500 {
            let (head, _) = subscribe(relay.addr, &id, "ETH-USD");
            if shard_of(&head) != owner {
                crossed = true;
                break;
            }
        }
        assert!(crossed, "no request landed on another shard in 500 tries");
        c.until("ETH-USD data", |v| v["product_id"] == "ETH-USD" && v["type"] == "ticker");
    }
}

#[test]
fn fan_out_is_byte_exact_with_one_shard() {
    fan_out_is_byte_exact(1);
}

#[test]
fn fan_out_is_byte_exact_with_four_shards() {
    fan_out_is_byte_exact(4);
}

fn unsubscribed_upstream(sim: &SimHandle, channel: &str, product: &str) -> bool {
    sim_requests(sim).iter().any(|r| {
        let v: Value = serde_json::from_str(r).unwrap();
        v["type"] == "unsubscribe"
            && v["channels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == channel && c["product_ids"].as_array().unwrap().iter().any(|p| p == product))
    })
}

#[test]
fn delete_stops_delivery_and_the_last_subscriber_unsubscribes_upstream() {
    let sim = simulator(|c| c.rate = 40.0);
    let relay = relay(2, &sim.url());
    let (mut a, id_a) = relay_client(relay.addr);
    let (mut b, id_b) = relay_client(relay.addr);
    subscribe(relay.addr, &id_a, "BTC-USD");
    subscribe(relay.addr, &id_a, "ETH-USD");
    subscribe(relay.addr, &id_b, "BTC-USD");
    a.until("BTC-USD data", |v| v["product_id"] == "BTC-USD" && v["type"] == "ticker");
    let path = "/api/v1/subscribe/BTC-USD?channels=ticker,matches";
    let (status, _, body) = http(relay.addr, "DELETE", path, &format!("X-Client-Id: {id_a}\r\n"));
    assert_eq!(status, 200);
    assert_eq!(body["subscribed"], false);
    a.until("the unsubscribed note", |v| v["type"] == "unsubscribed" && v["product_id"] == "BTC-USD");
    // After the note, ETH-USD keeps flowing and BTC-USD never comes again.
    let mut eth = 0;
    while eth < 10 {
        let v = a.json();
        assert_ne!(v["product_id"], "BTC-USD", "delivery after DELETE: {v}");
        eth += usize::from(v["product_id"] == "ETH-USD");
    }
    // Idempotent.
    let (status, _, _) = http(relay.addr, "DELETE", path, &format!("X-Client-Id: {id_a}\r\n"));
    assert_eq!(status, 200);
    assert!(!unsubscribed_upstream(&sim, "ticker", "BTC-USD"), "b still listens");
    b.until("b keeps BTC-USD", |v| v["product_id"] == "BTC-USD" && v["type"] == "ticker");
    let (status, _, _) = http(relay.addr, "DELETE", "/api/v1/subscribe/BTC-USD", &format!("X-Client-Id: {id_b}\r\n"));
    assert_eq!(status, 200);
    wait_until("the relay unsubscribes BTC-USD upstream", || {
        unsubscribed_upstream(&sim, "ticker", "BTC-USD") && unsubscribed_upstream(&sim, "matches", "BTC-USD")
    });
}

#[test]
fn a_disconnect_releases_the_clients_subscriptions() {
    let sim = simulator(|c| c.rate = 40.0);
    let relay = relay(2, &sim.url());
    let (mut c, id) = relay_client(relay.addr);
    subscribe(relay.addr, &id, "SOL-USD");
    c.until("data", |v| v["product_id"] == "SOL-USD" && v["type"] == "match");
    let (_, _, listed) = http(relay.addr, "GET", "/api/v1/subscribe", &format!("X-Client-Id: {id}\r\n"));
    assert_eq!(
        listed["subscriptions"],
        serde_json::json!([{"product_id": "SOL-USD", "channels": ["ticker", "matches"]}])
    );
    assert_eq!(relay.global.clients(), 1);
    drop(c);
    wait_until("the relay unsubscribes SOL-USD upstream", || unsubscribed_upstream(&sim, "ticker", "SOL-USD"));
    wait_until("the client count drops", || relay.global.clients() == 0);
    let (status, _, body) = http(relay.addr, "GET", "/api/v1/subscribe", &format!("X-Client-Id: {id}\r\n"));
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_client")));
}

/// Reads from a raw streaming response until `n` lines satisfy `pred`.
fn read_stream(
    addr: std::net::SocketAddr,
    request: &str,
    n: usize,
    pred: impl Fn(&str) -> bool,
) -> (String, Vec<String>) {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut lines = Vec::new();
    while lines.len() < n {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
        let line = line.trim_end_matches('\n').to_string();
        if pred(&line) {
            lines.push(line);
        }
    }
    (head, lines)
}

#[test]
fn streams_as_ndjson_sse_and_websocket() {
    let sim = simulator(|c| c.rate = 40.0);
    let relay = relay(2, &sim.url());
    let (head, lines) =
        read_stream(relay.addr, "GET /api/v1/subscribe/eth-usd HTTP/1.1\r\nHost: x\r\n\r\n", 5, |l| !l.is_empty());
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: application/x-ndjson\r\n"), "{head}");
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["type"], "subscribed");
    for l in &lines[1..] {
        let v: Value = serde_json::from_str(l).unwrap();
        if v["type"] != "upstream" {
            assert_eq!(v["product_id"], "ETH-USD", "{v}");
        }
    }
    let request =
        "GET /api/v1/subscribe/BTC-USD?channels=matches HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    let (head, events) = read_stream(relay.addr, request, 4, |l| l.starts_with("data: "));
    assert!(head.contains("Content-Type: text/event-stream\r\n"), "{head}");
    for e in &events[1..] {
        let v: Value = serde_json::from_str(&e["data: ".len()..]).unwrap();
        assert!(["match", "last_match", "upstream"].contains(&v["type"].as_str().unwrap()), "{v}");
    }
    let mut ws = Client::connect(&format!("ws://{}/api/v1/subscribe/LTC-USD", relay.addr));
    assert_eq!(ws.json()["type"], "welcome");
    ws.until("LTC-USD data", |v| v["product_id"] == "LTC-USD" && v["type"] == "ticker");
    drop(ws);
    wait_until("every stream client is released", || relay.global.clients() == 0);
}

fn error_of(status: u16, head: &str, body: &Value, code: &str) {
    assert!(head.contains("Content-Type: application/json"), "{head}");
    assert_eq!(body["error"], code, "{head}\n{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
}

#[test]
fn every_error_is_a_status_with_a_json_body() {
    let sim = simulator(|c| c.rate = 5.0);
    let relay = relay(2, &sim.url());
    let (mut c, id) = relay_client(relay.addr);
    subscribe(relay.addr, &id, "BTC-USD");
    wait_until("the product list is known", || relay.global.upstream().products > 0);
    let with_id = format!("X-Client-Id: {id}\r\n");
    let cases: [(&str, &str, &str, u16, &str); 9] = [
        ("POST", "/api/v1/subscribe/BTCUSD", with_id.as_str(), 400, "bad_pair"),
        ("POST", "/api/v1/subscribe/FOO-BAR", with_id.as_str(), 404, "unknown_product"),
        ("POST", "/api/v1/subscribe/BTC-USD?channels=full", with_id.as_str(), 400, "bad_channel"),
        ("POST", "/api/v1/subscribe/BTC-USD", "", 400, "missing_client_id"),
        (
            "POST",
            "/api/v1/subscribe/BTC-USD",
            "X-Client-Id: 0-1-00000000000000000000000000000000\r\n",
            404,
            "unknown_client",
        ),
        ("POST", "/api/v1/subscribe/BTC-USD", "X-Client-Id: nonsense\r\n", 404, "unknown_client"),
        ("GET", "/nowhere", "", 404, "not_found"),
        ("PATCH", "/api/v1/subscribe/BTC-USD", "", 405, "method_not_allowed"),
        ("GET", "/api/v1/subscribe/BTC-USD?channels=", "", 400, "bad_channel"),
    ];
    for (method, path, headers, status, code) in cases {
        let (got, head, body) = http(relay.addr, method, path, headers);
        assert_eq!(got, status, "{method} {path}: {head}\n{body}");
        error_of(status, &head, &body, code);
    }
    let (_, head, _) = http(relay.addr, "DELETE", "/healthz", "");
    assert!(head.contains("Allow: GET\r\n"), "{head}");
    let raw_cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000)).into_bytes(), 431, "header_too_large"),
        (b"POST /api/v1/subscribe/BTC-USD HTTP/1.1\r\nContent-Length: 70000\r\n\r\n".to_vec(), 413, "body_too_large"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400, "bad_request"),
        (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec(), 426, "upgrade_required"),
        (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: x\r\n\r\n".to_vec(), 400, "bad_request"),
    ];
    for (raw, status, code) in raw_cases {
        let (got, head, body) = http_raw(relay.addr, &raw);
        assert_eq!(got, status, "{head}\n{body}");
        error_of(status, &head, &serde_json::from_str(&body).unwrap(), code);
    }
    // None of that disturbed the client streaming on the same relay.
    for _ in 0..3 {
        c.until("data still flows", |v| v["product_id"] == "BTC-USD" && v["type"] == "ticker");
    }
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    use std::io::{Read, Write};
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay(1, &sim.url());
    let mut s = std::net::TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let statuses: Vec<&str> = out.match_indices("HTTP/1.1 ").map(|(i, _)| &out[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "404", "200"], "{out}");
}

#[test]
fn health_reports_upstream_shards_and_clients() {
    let sim = simulator(|c| c.rate = 5.0);
    let relay = relay(3, &sim.url());
    let (_c, _) = relay_client(relay.addr);
    wait_until("the upstream connects", || relay.global.upstream().state == "connected");
    let (status, _, h) = http(relay.addr, "GET", "/healthz", "");
    assert_eq!(status, 200);
    assert_eq!(h["shards"], 3);
    assert_eq!(h["clients"], 1);
    assert_eq!(h["simulated"], false);
    assert_eq!(h["upstream"]["state"], "connected");
    assert!(h["upstream"]["since"].as_str().unwrap().ends_with('Z'));
    assert!(h["upstream"]["messages"].as_u64().is_some());
}

#[test]
fn subscriptions_made_while_the_upstream_is_down_apply_when_it_comes() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let relay = relay(2, &format!("ws://127.0.0.1:{port}"));
    let (mut c, id) = relay_client(relay.addr);
    subscribe(relay.addr, &id, "ETH-USD");
    let (status, _, _) = http(relay.addr, "POST", "/api/v1/subscribe/NOPE-USD", &format!("X-Client-Id: {id}\r\n"));
    assert_eq!(status, 200, "unknown products are accepted while the product list is unknown");
    let (_, _, h) = http(relay.addr, "GET", "/healthz", "");
    assert_ne!(h["upstream"]["state"], "connected");
    let _sim = simulator(|c| {
        c.port = port;
        c.rate = 40.0;
    });
    let error = c.until("the error about NOPE-USD", |v| v["type"] == "error");
    assert_eq!(error, r#"{"type":"error","message":"Failed to subscribe","reason":"NOPE-USD is not a valid product"}"#);
    c.until("ETH-USD data", |v| v["product_id"] == "ETH-USD" && v["type"] == "ticker");
}

#[test]
fn offline_mode_says_it_is_simulated() {
    let cfg = hedgehog::config::ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        shards: 1,
        upstream: Default::default(),
        channels: vec![hedgehog::protocol::Channel::Ticker],
        simulate: true,
        ..Default::default()
    };
    let relay = hedgehog::server::start(cfg).unwrap();
    assert!(relay.simulator().is_some());
    let (_, _, h) = http(relay.addr, "GET", "/healthz", "");
    assert_eq!(h["simulated"], true);
    assert!(h["upstream"]["url"].as_str().unwrap().starts_with("ws://127.0.0.1:"));
    let (mut c, id) = relay_client(relay.addr);
    subscribe(relay.addr, &id, "BTC-USD");
    c.until("simulated data", |v| v["type"] == "ticker");
}

#[test]
fn bad_web_concurrency_is_a_one_line_error_and_exit_2() {
    for bad in ["0", "-2", "many", "99999"] {
        let out =
            std::process::Command::new(env!("CARGO_BIN_EXE_hedgehog")).env("WEB_CONCURRENCY", bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("hedgehog: WEB_CONCURRENCY="), "{err}");
    }
}
