//! Access control's limits and its closed doors, over real sockets: connections
//! per principal and per class, request rates per class, a relay without an
//! `anonymous` class (401 everywhere data is), a class denied everything, and a
//! refusal log that a flood cannot fill.

mod common;

use std::net::SocketAddr;

use common::access::{bearer, capture_log, client_as, key_entry, key_of, log_lines, rules, ws_as};
use common::{exchange, http, simulator, wait_until};
use hedgehog::protocol::Channel;
use hedgehog::server::RelayHandle;
use hedgehog::sim::SimHandle;
use serde_json::Value;

fn start(text: &str) -> (SimHandle, RelayHandle) {
    capture_log();
    let sim = simulator(|c| c.rate = 5.0);
    let relay = common::relay_with(&sim.url(), |c| {
        c.shards = 2;
        c.channels = vec![Channel::Ticker];
        c.access = Some(rules(text));
    });
    (sim, relay)
}

fn limited() -> String {
    format!(
        r#"
[classes.pro]
allow = ["*"]
allow_channels = ["*"]
max_connections_per_principal = 2

[classes.basic]
allow = ["BTC-USD"]
allow_channels = ["ticker"]
max_connections = 2
max_request_rate = 3

{}{}{}"#,
        key_entry("alice", "pro"),
        key_entry("carol", "basic"),
        key_entry("dave", "basic")
    )
}

fn too_many(refused: Result<common::Client, (u16, Value)>, says: &str) {
    let (status, body) = refused.err().expect("refused");
    assert_eq!((status, body["error"].as_str()), (429, Some("too_many_connections")), "{body}");
    assert!(body["message"].as_str().unwrap().contains(says), "{body}");
}

#[test]
fn connections_per_principal_and_per_class_are_capped_across_shards() {
    let (_sim, relay) = start(&limited());
    let alice = key_of("alice");
    let first = client_as(relay.addr, Some(&alice));
    let second = client_as(relay.addr, Some(&alice));
    too_many(ws_as(relay.addr, "/ws", Some(&alice)), "`alice` holds its class `pro`'s limit of 2");
    let (status, _, body) = http(relay.addr, "GET", "/api/v1/subscribe/BTC-USD", &bearer(&alice));
    assert_eq!((status, body["error"].as_str()), (429, Some("too_many_connections")), "a stream is a connection");
    // A REST request takes no seat: alice can still steer her clients.
    let headers = format!("X-Client-Id: {}\r\n{}", first.1, bearer(&alice));
    assert_eq!(http(relay.addr, "POST", "/api/v1/subscribe/BTC-USD", &headers).0, 200);
    drop((first, second));
    wait_until("a seat is free again", || ws_as(relay.addr, "/ws", Some(&alice)).is_ok());
    let (carol, dave) = (key_of("carol"), key_of("dave"));
    let _c = client_as(relay.addr, Some(&carol));
    let _d = client_as(relay.addr, Some(&dave));
    too_many(ws_as(relay.addr, "/ws", Some(&dave)), "class `basic` holds its limit of 2");
    let lines = log_lines("principal=dave class=basic");
    assert!(lines.iter().any(|l| l.contains("what=\"a connection\"")), "{lines:?}");
}

#[test]
fn a_class_has_its_own_request_rate() {
    let (_sim, relay) = start(&limited());
    let carol = bearer(&key_of("carol"));
    let mut s = std::net::TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let req = format!("GET /api/v1/history/BTC-USD HTTP/1.1\r\nHost: x\r\n{carol}\r\n");
    let statuses: Vec<u16> = (0..20).map(|_| exchange(&mut s, &req).0).collect();
    let first = statuses.iter().position(|s| *s == 429).expect("a 429 within 20 requests at 3 a second");
    assert!(first >= 3, "a burst of the class's rate first: {statuses:?}");
    let (status, text) = exchange(&mut s, &req);
    if status == 429 {
        assert!(text.contains("\"rate_limited\"") && text.contains("more than 3 requests"), "{text}");
    }
    // The server-wide rate (20,000) still holds for a class that sets none.
    let mut s = std::net::TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let alice = bearer(&key_of("alice"));
    let req = format!("GET /api/v1/history/BTC-USD HTTP/1.1\r\nHost: x\r\n{alice}\r\n");
    assert!((0..20).all(|_| exchange(&mut s, &req).0 == 403), "no history right, and no rate limit");
    // On a WebSocket, in-band messages count.
    let (mut c, _) = client_as(relay.addr, Some(&key_of("carol")));
    for _ in 0..20 {
        c.send(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker"]}"#);
    }
    c.until("rate limited", |v| v["type"] == "error" && v["message"] == "rate limited");
}

/// Every entry point that gives data: the streams, a subscribe by id, history.
fn data_entry_points(addr: SocketAddr, id: &str) -> Vec<(u16, String, Value)> {
    let by_id = format!("X-Client-Id: {id}\r\n");
    vec![
        http(addr, "GET", "/api/v1/subscribe/BTC-USD", "Accept: text/event-stream\r\n"),
        http(addr, "GET", "/api/v1/subscribe/BTC-USD", ""),
        http(addr, "POST", "/api/v1/subscribe/BTC-USD", &by_id),
        http(addr, "GET", "/api/v1/subscribe/BTC-USD?replay=5", ""),
        http(addr, "GET", "/api/v1/history/BTC-USD", ""),
    ]
}

/// The entry points that steer or show a client by id, giving no data.
fn steering_entry_points(addr: SocketAddr, id: &str) -> Vec<(u16, String, Value)> {
    let by_id = format!("X-Client-Id: {id}\r\n");
    vec![
        http(addr, "DELETE", "/api/v1/subscribe/BTC-USD", &by_id),
        http(addr, "GET", "/api/v1/subscribe/BTC-USD", &by_id),
        http(addr, "GET", "/api/v1/subscribe", &by_id),
    ]
}

#[test]
fn without_an_anonymous_class_every_data_entry_point_is_401() {
    let (_sim, relay) = start(&limited());
    let (_c, id) = client_as(relay.addr, Some(&key_of("alice")));
    let all = [data_entry_points(relay.addr, &id), steering_entry_points(relay.addr, &id)].concat();
    for (status, head, body) in all {
        assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{head}");
        assert!(head.contains("WWW-Authenticate: Bearer realm=\"hedgehog\"\r\n"), "{head}");
        assert_eq!(body["message"], "credentials required");
    }
    for path in ["/ws", "/", "/api/v1/subscribe/BTC-USD"] {
        let (status, body) = ws_as(relay.addr, path, None).err().expect("refused");
        assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{path}");
    }
    for path in ["/healthz", "/livez", "/"] {
        assert_eq!(http(relay.addr, "GET", path, "").0, 200, "{path} needs no credentials");
    }
}

#[test]
fn a_class_denied_everything_connects_only_because_the_file_says_so() {
    let text = format!("[classes.anonymous]\nallow = [\"*\"]\ndeny = [\"*\"]\nallow_channels = [\"*\"]\n{}", limited());
    let (_sim, relay) = start(&text);
    let (mut c, id) = client_as(relay.addr, None);
    for (status, head, body) in data_entry_points(relay.addr, &id) {
        assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{head}");
    }
    // Its own client, which holds nothing, it may still list and unsubscribe.
    for (status, head, _) in steering_entry_points(relay.addr, &id) {
        assert_eq!(status, 200, "{head}");
    }
    c.send(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker"]}"#);
    let e = c.until("an error", |v| v["type"] == "error");
    assert!(e.contains("class `anonymous` denies `*`"), "{e}");
}

#[test]
fn a_flood_of_refusals_cannot_flood_the_log() {
    let text = format!("[classes.anonymous]\nallow = [\"ETH-USD\"]\nallow_channels = [\"*\"]\n{}", limited());
    let (_sim, relay) = start(&text);
    let mut s = std::net::TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let req = "GET /api/v1/history/SOL-USD HTTP/1.1\r\nHost: x\r\n\r\n";
    let refused = "principal=anonymous class=anonymous what=\"/api/v1/history/SOL-USD\"";
    for _ in 0..300 {
        assert_eq!(exchange(&mut s, req).0, 403);
    }
    let logged = log_lines(refused).len();
    assert!(logged < 300, "{logged} of 300 refusals logged");
    wait_until("the next line says how many were not logged", || {
        let mut s = std::net::TcpStream::connect(relay.addr).unwrap();
        exchange(&mut s, req);
        !log_lines("refusals not logged (over the log rate)").is_empty()
    });
}
