//! Access control at every entry point, over real sockets: REST by client id
//! (and who owns a client), the SSE, NDJSON and WebSocket stream forms, the
//! in-band Coinbase subscribe, history and `?replay=`; every refusal's status,
//! body and log line; each kind of bad credential.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;

use common::access::{bearer, capture_log, client_as, key_entry, key_of, log_lines, now, rules, token, ws_as, SECRET};
use common::{http, simulator, wait_until, Client, DEADLINE};
use hedgehog::protocol::Channel;
use hedgehog::server::RelayHandle;
use hedgehog::sim::SimHandle;
use serde_json::{json, Value};

fn rules_text() -> String {
    format!(
        r#"
[classes.anonymous]
allow = ["BTC-USD"]
allow_channels = ["ticker"]

[classes.pro]
allow = ["*"]
deny = ["*-EUR"]
allow_channels = ["*"]
deny_channels = ["level2_batch"]
history = true
history_max_limit = 50
max_subscriptions = 3

[classes.ops]
allow = ["*"]
allow_channels = ["*"]
admin = true

{}{}{}
[tokens]
hs256_secret = "{SECRET}"
"#,
        key_entry("alice", "pro"),
        key_entry("bob", "pro"),
        key_entry("root", "ops")
    )
}

fn start() -> (SimHandle, RelayHandle) {
    capture_log();
    let sim = simulator(|c| c.rate = 5.0);
    let relay = common::relay_with(&sim.url(), |c| {
        c.shards = 2;
        c.channels = vec![Channel::Ticker, Channel::Matches];
        c.access = Some(rules(&rules_text()));
    });
    (sim, relay)
}

/// Relay clients of `credential` until there is one on each of the two shards.
fn on_both_shards(addr: SocketAddr, credential: Option<&str>) -> Vec<(Client, String)> {
    let mut out: Vec<(Client, String)> = Vec::new();
    while out.len() < 2 {
        let (c, id) = client_as(addr, credential);
        if !out.iter().any(|(_, o)| o[..2] == id[..2]) {
            out.push((c, id));
        }
    }
    out
}

/// `METHOD path` by client id, as `credential`.
fn by_id(addr: SocketAddr, method: &str, path: &str, id: &str, credential: Option<&str>) -> (u16, Value) {
    let headers = format!("X-Client-Id: {id}\r\n{}", credential.map(bearer).unwrap_or_default());
    let (status, _, body) = http(addr, method, path, &headers);
    (status, body)
}

fn forbidden(status_body: (u16, Value), wants: &[&str]) {
    let (status, body) = status_body;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");
    let message = body["message"].as_str().unwrap();
    for w in wants {
        assert!(message.contains(w), "{message:?} should name {w:?}");
    }
}

#[test]
fn rest_by_id_checks_the_rules_and_who_owns_the_client() {
    let (_sim, relay) = start();
    let (alice, bob, root) = (key_of("alice"), key_of("bob"), key_of("root"));
    for (_c, id) in on_both_shards(relay.addr, Some(&alice)) {
        let me = Some(alice.as_str());
        let sub = "/api/v1/subscribe/BTC-USD?channels=ticker,matches";
        assert_eq!(by_id(relay.addr, "POST", sub, &id, me).0, 200);
        let refused = by_id(relay.addr, "POST", "/api/v1/subscribe/ETH-EUR?channels=ticker", &id, me);
        forbidden(refused, &["ETH-EUR ticker", "class `pro` denies `*-EUR`"]);
        let refused = by_id(relay.addr, "POST", "/api/v1/subscribe/ETH-USD?channels=level2_batch", &id, me);
        forbidden(refused, &["ETH-USD level2_batch", "channel `level2_batch`"]);
        // Another principal, or anonymous, may not steer alice's client; an admin may.
        for other in [Some(bob.as_str()), None] {
            for (method, path) in [
                ("POST", "/api/v1/subscribe/ETH-USD"),
                ("DELETE", "/api/v1/subscribe/BTC-USD"),
                ("GET", "/api/v1/subscribe/BTC-USD"),
                ("GET", "/api/v1/subscribe"),
            ] {
                forbidden(by_id(relay.addr, method, path, &id, other), &[&id, "belongs to another principal"]);
            }
        }
        let listed = by_id(relay.addr, "GET", "/api/v1/subscribe", &id, Some(&root));
        assert_eq!(listed.0, 200, "{}", listed.1);
        assert_eq!(listed.1["subscriptions"][0]["product_id"], "BTC-USD");
        // The class's max_subscriptions (3), not the server's (100).
        assert_eq!(by_id(relay.addr, "POST", "/api/v1/subscribe/ETH-USD?channels=ticker", &id, me).0, 200);
        let (status, body) = by_id(relay.addr, "POST", "/api/v1/subscribe/SOL-USD?channels=ticker", &id, me);
        assert_eq!((status, body["error"].as_str()), (409, Some("too_many_subscriptions")), "{body}");
    }
    let lines = log_lines("principal=bob class=pro");
    assert!(lines.iter().any(|l| l.contains("belongs to another principal")), "{lines:?}");
    let lines = log_lines("principal=alice class=pro");
    assert!(lines.iter().any(|l| l.contains("ETH-EUR ticker: class `pro` denies `*-EUR`")), "{lines:?}");
    let all = common::access::all_log_lines();
    assert!(!all.iter().any(|l| l.contains(&alice) || l.contains(&bob)), "no key is ever logged");
}

/// The head of a streaming answer (the stream itself never ends by itself).
fn stream_head(addr: SocketAddr, path: &str, headers: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[test]
fn every_stream_form_is_checked_before_it_starts() {
    let (_sim, relay) = start();
    let alice = key_of("alice");
    let sse = format!("Accept: text/event-stream\r\n{}", bearer(&alice));
    assert!(stream_head(relay.addr, "/api/v1/subscribe/BTC-USD", &sse).starts_with("HTTP/1.1 200"));
    let (status, _, body) = http(relay.addr, "GET", "/api/v1/subscribe/ETH-EUR", &sse);
    forbidden((status, body), &["ETH-EUR ticker", "`*-EUR`"]);
    let ndjson = bearer(&alice);
    assert!(stream_head(relay.addr, "/api/v1/subscribe/ETH-USD", &ndjson).contains("application/x-ndjson"));
    let (status, _, body) = http(relay.addr, "GET", "/api/v1/subscribe/BTC-EUR?channels=matches", &ndjson);
    forbidden((status, body), &["BTC-EUR matches"]);
    // Anonymous: BTC-USD tickers only, and no history for ?replay=.
    let (status, _, body) = http(relay.addr, "GET", "/api/v1/subscribe/BTC-USD?channels=ticker,matches", "");
    forbidden((status, body), &["BTC-USD matches", "class `anonymous`"]);
    let (status, _, body) = http(relay.addr, "GET", "/api/v1/subscribe/BTC-USD?channels=ticker&replay=5", "");
    forbidden((status, body), &["may not read history"]);
    assert!(stream_head(relay.addr, "/api/v1/subscribe/BTC-USD?channels=ticker", "").starts_with("HTTP/1.1 200"));
    // The WebSocket form, with the key in the header or a token in ?token=.
    let refused = ws_as(relay.addr, "/api/v1/subscribe/ETH-EUR", Some(&alice)).err().expect("refused");
    forbidden(refused, &["ETH-EUR"]);
    let bob = token(json!({"sub": "bob", "class": "pro", "exp": now() + 600, "allow": ["BTC-*"]}));
    let mut c = ws_as(relay.addr, &format!("/api/v1/subscribe/BTC-USD?channels=matches&token={bob}"), None).unwrap();
    c.until("a match of BTC-USD", |v| v["type"] == "match" || v["type"] == "last_match");
    let path = format!("/api/v1/subscribe/ETH-USD?token={bob}");
    forbidden(ws_as(relay.addr, &path, None).err().expect("refused"), &["the token of `bob` does not allow `ETH-USD`"]);
    let lines = log_lines("access: refused principal=alice class=pro what=\"ETH-EUR ticker\"");
    assert!(lines.iter().any(|l| l.starts_with("WARN") && l.ends_with("class `pro` denies `*-EUR`")), "{lines:?}");
    assert!(!common::access::all_log_lines().iter().any(|l| l.contains(&bob)), "no token is ever logged");
}

#[test]
fn in_band_subscribes_get_coinbase_errors_and_only_what_is_allowed() {
    let (_sim, relay) = start();
    let (mut c, _) = client_as(relay.addr, None);
    c.send(r#"{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channels":["ticker","matches"]}"#);
    let mut errors = Vec::new();
    let reply = loop {
        let v = c.json();
        match v["type"].as_str() {
            Some("error") => errors.push(v),
            Some("subscriptions") => break v,
            _ => {}
        }
    };
    assert_eq!(errors.len(), 3, "{errors:?}");
    for what in ["ETH-USD ticker", "BTC-USD matches", "ETH-USD matches"] {
        let e = errors.iter().find(|e| e["reason"].as_str().unwrap().starts_with(what)).expect(what);
        assert_eq!(e["message"], "Failed to subscribe", "{e}");
        assert!(e["reason"].as_str().unwrap().contains("class `anonymous`"), "{e}");
    }
    assert_eq!(
        reply["channels"],
        json!([{"account_ids": null, "name": "ticker", "product_ids": ["BTC-USD"]}]),
        "{reply}"
    );
    // A late joiner gets the latest ticker of what it may have, and nothing else.
    for _ in 0..5 {
        let v: Value = serde_json::from_str(&c.until("a ticker", |v| v["type"] == "ticker")).unwrap();
        assert_eq!(v["product_id"], "BTC-USD", "{v}");
    }
    let lines = log_lines("principal=anonymous class=anonymous");
    assert!(lines.iter().any(|l| l.contains("ETH-USD ticker")), "{lines:?}");
    let (mut c, _) = client_as(relay.addr, Some(&key_of("alice")));
    c.send(r#"{"type":"subscribe","product_ids":["BTC-EUR"],"channels":["ticker"]}"#);
    let e = c.until("an error", |v| v["type"] == "error");
    assert!(e.contains("BTC-EUR ticker: class `pro` denies `*-EUR`"), "{e}");
}

#[test]
fn history_and_replay_need_the_history_right() {
    let (_sim, relay) = start();
    let alice = bearer(&key_of("alice"));
    let (status, _, body) = http(relay.addr, "GET", "/api/v1/history/BTC-USD", "");
    forbidden((status, body), &["class `anonymous` may not read history"]);
    assert_eq!(http(relay.addr, "GET", "/api/v1/history/BTC-USD?limit=10", &alice).0, 200);
    let (status, _, body) = http(relay.addr, "GET", "/api/v1/history/BTC-USD?limit=100", &alice);
    forbidden((status, body), &["at most 50"]);
    let (status, _, body) = http(relay.addr, "GET", "/api/v1/history/ETH-EUR?limit=10", &alice);
    forbidden((status, body), &["`*-EUR`"]);
    let (_c, anon) = client_as(relay.addr, None);
    let path = "/api/v1/subscribe/BTC-USD?channels=ticker&replay=5";
    forbidden(by_id(relay.addr, "POST", path, &anon, None), &["may not read history"]);
    assert_eq!(by_id(relay.addr, "POST", "/api/v1/subscribe/BTC-USD?channels=ticker&replay=0", &anon, None).0, 200);
    let (_c, id) = client_as(relay.addr, Some(&key_of("alice")));
    assert_eq!(by_id(relay.addr, "POST", path, &id, Some(&key_of("alice"))).0, 200);
    let lines = log_lines("principal=alice class=pro what=\"/api/v1/history/BTC-USD\"");
    assert!(lines.iter().any(|l| l.contains("may read at most 50 messages of history")), "{lines:?}");
}

#[test]
fn each_kind_of_bad_credential_is_a_401_that_never_quotes_it() {
    let (_sim, relay) = start();
    let alice = key_of("alice");
    let (_c, id) = client_as(relay.addr, Some(&alice));
    let good = |c: serde_json::Value| token(c);
    let claims = || json!({"sub": "alice", "class": "pro", "exp": now() + 600});
    let with = |k: &str, v: Value| {
        let mut c = claims();
        c[k] = v;
        c
    };
    let valid = good(claims());
    let parts: Vec<&str> = valid.split('.').collect();
    let mut typo = alice.clone();
    typo.replace_range(10..11, if &alice[10..11] == "0" { "1" } else { "0" });
    let other_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims(),
        &jsonwebtoken::EncodingKey::from_secret(b"another secret of at least 32 bytes!!"),
    )
    .unwrap();
    let bad = [
        (typo, "unknown API key"),
        ("hunter2".to_string(), "not an API key or a token"),
        (good(with("exp", json!(now() - 10))), ""),
        (good(with("nbf", json!(now() + 600))), ""),
        (good(with("class", json!("gold"))), "class `gold`"),
        (good(json!({"sub": "alice", "class": "pro"})), "exp"),
        (other_secret, ""),
        (format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]), ""),
    ];
    for (credential, says) in &bad {
        for (method, path) in [("POST", "/api/v1/subscribe/BTC-USD"), ("GET", "/api/v1/history/BTC-USD")] {
            let headers = format!("X-Client-Id: {id}\r\n{}", bearer(credential));
            let (status, head, body) = http(relay.addr, method, path, &headers);
            assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{body}");
            assert!(head.contains("WWW-Authenticate: Bearer realm=\"hedgehog\", error=\"invalid_token\""), "{head}");
            let message = body["message"].as_str().unwrap();
            assert!(message.contains(says) && !message.contains(credential.as_str()), "{message}");
        }
        let (status, body) = ws_as(relay.addr, &format!("/ws?token={credential}"), None).err().expect("refused");
        assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{body}");
    }
    let (status, head, _) = http(relay.addr, "GET", "/api/v1/history/BTC-USD", "Authorization: Basic YTpi\r\n");
    assert_eq!(status, 401, "{head}");
    // The right key and a valid token are taken.
    assert_eq!(by_id(relay.addr, "GET", "/api/v1/subscribe", &id, Some(&alice)).0, 200);
    assert_eq!(by_id(relay.addr, "GET", "/api/v1/subscribe", &id, Some(&valid)).0, 200, "same principal");
    wait_until("the refusals are logged", || log_lines("what=\"to authenticate\"").len() >= bad.len());
    let all = common::access::all_log_lines();
    assert!(!bad.iter().any(|(c, _)| all.iter().any(|l| l.contains(c.as_str()))), "no credential is logged");
}

#[test]
fn admins_list_and_disconnect_clients_of_every_shard() {
    let (_sim, relay) = start();
    let (alice, root) = (key_of("alice"), key_of("root"));
    let mut clients = on_both_shards(relay.addr, Some(&alice));
    let sub = format!("X-Client-Id: {}\r\n{}", clients[1].1, bearer(&alice));
    assert_eq!(http(relay.addr, "POST", "/api/v1/subscribe/BTC-USD?channels=ticker", &sub).0, 200);
    let (status, _, body) = http(relay.addr, "GET", "/api/v1/clients", &bearer(&root));
    assert_eq!(status, 200, "{body}");
    for (_, id) in &clients {
        let c = body["clients"].as_array().unwrap().iter().find(|c| c["client_id"] == id.as_str()).expect(id);
        assert_eq!((c["principal"].as_str(), c["class"].as_str()), (Some("alice"), Some("pro")), "{c}");
        let local = clients.iter().find(|(_, i)| i == id).unwrap().0.ws.get_ref().local_addr().unwrap();
        assert_eq!(c["address"], local.to_string(), "the client's own address: {c}");
        assert!(c["queue_bytes"].is_u64(), "{c}");
    }
    let held = body["clients"].as_array().unwrap().iter().find(|c| c["client_id"] == clients[1].1.as_str()).unwrap();
    assert_eq!(held["subscriptions"], json!([{"product_id": "BTC-USD", "channels": ["ticker"]}]));
    // Not for other classes, nor without credentials.
    for who in [bearer(&alice), String::new()] {
        let (status, _, body) = http(relay.addr, "GET", "/api/v1/clients", &who);
        forbidden((status, body), &["not an admin class"]);
        let path = format!("/api/v1/clients/{}", clients[0].1);
        forbidden(http_parts(http(relay.addr, "DELETE", &path, &who)), &["not an admin class"]);
    }
    for (c, id) in &mut clients {
        let (status, _, body) = http(relay.addr, "DELETE", &format!("/api/v1/clients/{id}"), &bearer(&root));
        assert_eq!((status, &body["disconnected"]), (200, &json!(true)), "{body}");
        assert_eq!(c.close_frame(), (1008, "disconnected by an admin".to_string()));
    }
    let gone = format!("/api/v1/clients/{}", clients[0].1);
    wait_until("the client is gone", || http(relay.addr, "DELETE", &gone, &bearer(&root)).0 == 404);
}

fn http_parts((status, _, body): (u16, String, Value)) -> (u16, Value) {
    (status, body)
}

#[test]
fn without_access_control_there_are_no_admin_endpoints() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = common::relay(2, &sim.url());
    let (_c, id) = common::relay_client(relay.addr);
    assert_eq!(http(relay.addr, "GET", "/api/v1/clients", "").0, 404);
    assert_eq!(http(relay.addr, "DELETE", &format!("/api/v1/clients/{id}"), "").0, 404);
}

#[test]
fn a_coinbase_client_may_bring_its_key_in_its_first_subscribe() {
    let (_sim, relay) = start();
    let (mut c, id) = client_as(relay.addr, None);
    let subscribe =
        |key: &str| format!(r#"{{"type":"subscribe","product_ids":["ETH-USD"],"channels":["matches"],"key":"{key}"}}"#);
    let unknown = format!("hh_{}", "0".repeat(64));
    c.send(&subscribe(&unknown));
    let e: Value = serde_json::from_str(&c.until("an error", |v| v["type"] == "error")).unwrap();
    assert_eq!((e["message"].as_str(), e["reason"].as_str()), (Some("Failed to subscribe"), Some("unknown API key")));
    let alice = key_of("alice");
    c.send(&subscribe(&alice));
    let reply = c.until("the subscriptions", |v| v["type"] == "subscriptions");
    assert!(reply.contains(r#""name":"matches","product_ids":["ETH-USD"]"#), "{reply}");
    // The client is alice's now: steered by her, not by anonymous callers.
    forbidden(by_id(relay.addr, "GET", "/api/v1/subscribe", &id, None), &["belongs to another principal"]);
    assert_eq!(by_id(relay.addr, "GET", "/api/v1/subscribe", &id, Some(&alice)).0, 200);
    c.send(&subscribe(&key_of("bob")));
    let e = c.until("an error", |v| v["type"] == "error");
    assert!(e.contains("a key comes with the first subscribe"), "{e}");
    let all = common::access::all_log_lines();
    assert!(!all.iter().any(|l| l.contains(&alice) || l.contains(&unknown)), "no key is ever logged");
}
