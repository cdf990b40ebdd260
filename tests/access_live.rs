//! Access control that changes under open sessions, over real sockets: a token
//! that expires (the notice, then 1008 "token expired"; a stream ends), a fresh
//! token sent in-band (`{"type":"auth"}`) that keeps the session past the old
//! expiry, bad refreshes refused, and a reload of the rules (`RelayHandle::reload`,
//! what SIGHUP calls) adding and removing rights: a subscription the new rules
//! deny ends with its note, a removed key's session is closed, a new key works,
//! and a bad file changes nothing.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::access::{bearer, capture_log, client_as, key_entry, key_of, now, token, ws_as, SECRET};
use common::{http, simulator, Client, DEADLINE};
use hedgehog::protocol::Channel;
use hedgehog::server::RelayHandle;
use hedgehog::sim::SimHandle;
use serde_json::{json, Value};
use tungstenite::Message;

/// Writes `text` as a config file of its own and returns its path.
fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hedgehog-access-live-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hedgehog.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A simulator and a two-shard relay whose rules are read from `path`.
fn start(path: &Path) -> (SimHandle, RelayHandle) {
    capture_log();
    let sim = simulator(|c| c.rate = 20.0);
    let rules = hedgehog::config::reload_access(path).expect("a good file").expect("classes");
    let relay = common::relay_with(&sim.url(), |c| {
        c.shards = 2;
        c.channels = vec![Channel::Ticker, Channel::Matches];
        c.config_file = Some(path.to_path_buf());
        c.access = Some(rules);
    });
    (sim, relay)
}

fn tokens_table() -> String {
    format!("[tokens]\nhs256_secret = \"{SECRET}\"\n")
}

/// A token of `sub` in class `pro`, expiring `secs` from now.
fn pro_token(sub: &str, secs: u64, allow: Option<&[&str]>) -> String {
    let mut claims = json!({"sub": sub, "class": "pro", "exp": now() + secs});
    if let Some(allow) = allow {
        claims["allow"] = json!(allow);
    }
    token(claims)
}

const PRO: &str = "[classes.pro]\nallow = [\"*\"]\nallow_channels = [\"*\"]\n";

fn subscribe(c: &mut Client, product: &str) {
    c.send(&json!({"type": "subscribe", "product_ids": [product], "channels": ["ticker"]}).to_string());
}

fn is_ticker_of(v: &Value, product: &str) -> bool {
    v["type"] == "ticker" && v["product_id"] == product
}

/// What an NDJSON stream of `path` as `credential` writes until the relay ends
/// it (or the deadline passes): its lines.
fn ndjson_until_closed(addr: SocketAddr, path: &str, credential: &str) -> Vec<Value> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n{}\r\n", bearer(credential));
    s.write_all(req.as_bytes()).unwrap();
    let (end, mut out, mut buf) = (Instant::now() + 2 * DEADLINE, Vec::new(), [0u8; 4096]);
    loop {
        assert!(Instant::now() < end, "the stream did not end");
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[test]
fn a_session_whose_token_expires_is_warned_then_closed_with_1008() {
    let path = config_file("expiry", &format!("{PRO}{}", tokens_table()));
    let (_sim, relay) = start(&path);
    // A WebSocket: the notice (less than 30 s left: at once), then the close.
    let bob = pro_token("bob", 4, None);
    let (mut c, _) = client_as(relay.addr, Some(&bob));
    subscribe(&mut c, "BTC-USD");
    let notice: Value = serde_json::from_str(&c.until("the expiry notice", |v| v["type"] == "auth")).unwrap();
    assert_eq!((notice["event"].as_str(), notice["principal"].as_str()), (Some("expiring"), Some("bob")), "{notice}");
    assert!(notice["expires"].as_str().is_some_and(|t| t.ends_with('Z')), "{notice}");
    assert_eq!(c.close_frame(), (1008, "token expired".to_string()));
    // A stream (it cannot refresh): the notice, then the end of the stream.
    let lines =
        ndjson_until_closed(relay.addr, "/api/v1/subscribe/BTC-USD?channels=ticker", &pro_token("carol", 4, None));
    assert!(lines.iter().any(|v| is_ticker_of(v, "BTC-USD")), "data flowed before the expiry");
    let notice = lines.iter().position(|v| v["type"] == "auth" && v["event"] == "expiring");
    assert!(notice.is_some(), "the stream was warned: {lines:?}");
    // And the token itself is refused now.
    let (status, body) = ws_as(relay.addr, "/ws", Some(&bob)).err().expect("refused");
    assert_eq!((status, body["message"].as_str()), (401, Some("token expired")), "{body}");
}

#[test]
fn a_fresh_token_in_band_keeps_the_session_past_the_old_expiry() {
    let path = config_file(
        "refresh",
        &format!("{PRO}[classes.basic]\nallow = [\"*\"]\nallow_channels = [\"*\"]\n{}", tokens_table()),
    );
    let (_sim, relay) = start(&path);
    let first = pro_token("bob", 4, None);
    let old_expiry = now() + 4;
    let (mut c, _) = client_as(relay.addr, Some(&first));
    subscribe(&mut c, "BTC-USD");
    c.until("a BTC-USD ticker", |v| is_ticker_of(v, "BTC-USD"));
    let auth = |c: &mut Client, message: Value| {
        c.send(&message.to_string());
        let reply =
            c.until("the answer to auth", |v| v["type"] == "auth" && v["event"] != "expiring" || v["type"] == "error");
        serde_json::from_str::<Value>(&reply).unwrap()
    };
    // Refused, each with Coinbase's error shape; nothing changes.
    let other_principal = pro_token("mallory", 3600, None);
    let other_class = token(json!({"sub": "bob", "class": "basic", "exp": now() + 3600}));
    let expired = pro_token("bob", 0, None);
    let bad_signature = format!("{}x", pro_token("bob", 3600, None));
    for (message, reason) in [
        (json!({"type": "auth", "token": other_principal}), "`mallory`'s of class `pro`; this session is `bob`'s"),
        (json!({"type": "auth", "token": other_class}), "`bob`'s of class `basic`"),
        (json!({"type": "auth", "token": expired}), "token expired"),
        (json!({"type": "auth", "token": bad_signature}), "signature"),
        (json!({"type": "auth", "token": "hh_unknown"}), "unknown API key"),
        (json!({"type": "auth"}), "needs a `token`"),
    ] {
        let reply = auth(&mut c, message);
        assert_eq!(
            (reply["type"].as_str(), reply["message"].as_str()),
            (Some("error"), Some("Failed to authenticate"))
        );
        assert!(reply["reason"].as_str().unwrap().contains(reason), "{reply} should say {reason:?}");
    }
    // A fresh token whose `allow` is narrower: taken, and the subscription it
    // no longer allows ends with its note, right after the acceptance.
    let fresh = pro_token("bob", 3600, Some(&["ETH-*"]));
    let reply = auth(&mut c, json!({"type": "auth", "token": fresh}));
    assert_eq!((reply["event"].as_str(), reply["principal"].as_str()), (Some("accepted"), Some("bob")), "{reply}");
    assert_eq!(reply["class"], "pro");
    let note = loop {
        let v = c.json();
        if v["type"] == "unsubscribed" {
            break v;
        }
        assert!(is_ticker_of(&v, "BTC-USD"), "only data already queued comes between: {v}");
    };
    assert_eq!((note["product_id"].as_str(), note["channels"].clone()), (Some("BTC-USD"), json!(["ticker"])));
    assert!(note["reason"].as_str().unwrap().contains("BTC-USD ticker"), "{note}");
    subscribe(&mut c, "ETH-USD");
    // Past the first token's expiry (and a sweep after it), the session is open
    // and the data flows.
    let end = Instant::now() + 2 * DEADLINE;
    while now() < old_expiry + 2 {
        assert!(Instant::now() < end, "the clock did not pass the old expiry");
        match c.next_message(end) {
            Some(Message::Close(close)) => panic!("closed after a refresh: {close:?}"),
            Some(Message::Text(t)) => assert!(!t.contains("\"BTC-USD\"") || !t.contains("ticker"), "{t}"),
            _ => {}
        }
    }
    c.until("an ETH-USD ticker after the old expiry", |v| is_ticker_of(v, "ETH-USD"));
}

fn rules_v1() -> String {
    format!(
        "{PRO}[classes.basic]\nallow = [\"BTC-*\", \"ETH-*\"]\nallow_channels = [\"ticker\"]\n{}{}",
        key_entry("alice", "pro"),
        key_entry("bob", "basic")
    )
}

/// v1 with `ETH-*` denied to `pro`, bob's key removed and carol's added.
fn rules_v2() -> String {
    format!(
        "[classes.pro]\nallow = [\"*\"]\ndeny = [\"ETH-*\"]\nallow_channels = [\"*\"]\n\
         [classes.basic]\nallow = [\"BTC-*\", \"ETH-*\"]\nallow_channels = [\"ticker\"]\n{}{}",
        key_entry("alice", "pro"),
        key_entry("carol", "basic")
    )
}

#[test]
fn a_reload_adds_and_removes_rights_under_open_sessions() {
    let path = config_file("reload", &rules_v1());
    let (_sim, relay) = start(&path);
    let (alice, bob, carol) = (key_of("alice"), key_of("bob"), key_of("carol"));
    let (mut a, alice_id) = client_as(relay.addr, Some(&alice));
    subscribe(&mut a, "ETH-USD");
    subscribe(&mut a, "BTC-USD");
    a.until("an ETH-USD ticker", |v| is_ticker_of(v, "ETH-USD"));
    let (mut b, _) = client_as(relay.addr, Some(&bob));
    assert_eq!(ws_as(relay.addr, "/ws", Some(&carol)).err().map(|(s, _)| s), Some(401), "carol has no key yet");
    // alice's NDJSON stream of ETH-USD: the new rules take all it has.
    let stream = std::thread::spawn({
        let (addr, alice) = (relay.addr, alice.clone());
        move || ndjson_until_closed(addr, "/api/v1/subscribe/ETH-USD?channels=ticker", &alice)
    });
    common::wait_until("alice's stream is open", || relay.global.sessions_of("pro", "alice") == 2);

    std::fs::write(&path, rules_v2()).unwrap();
    let said = relay.reload().expect("reloaded");
    assert!(said.contains("2 classes, 2 keys"), "{said}");
    // alice: ETH-USD ends with its note naming the rule; BTC-USD goes on.
    let note: Value = serde_json::from_str(&a.until("the note", |v| v["type"] == "unsubscribed")).unwrap();
    assert_eq!((note["client_id"].as_str(), note["product_id"].as_str()), (Some(alice_id.as_str()), Some("ETH-USD")));
    assert_eq!(note["reason"], "ETH-USD ticker: class `pro` denies `ETH-*`", "{note}");
    a.until("a BTC-USD ticker after the reload", |v| is_ticker_of(v, "BTC-USD"));
    let end = Instant::now() + Duration::from_secs(2);
    while let Some(m) = a.next_message(end).filter(|_| Instant::now() < end) {
        assert!(!m.to_text().unwrap_or("").contains("\"ETH-USD\""), "ETH-USD after its note: {m}");
    }
    // ... and may not have it again, in-band or by REST.
    subscribe(&mut a, "ETH-USD");
    let refused: Value = serde_json::from_str(&a.until("the refusal", |v| v["type"] == "error")).unwrap();
    assert!(refused["reason"].as_str().unwrap().contains("denies `ETH-*`"), "{refused}");
    let headers = format!("X-Client-Id: {alice_id}\r\n{}", bearer(&alice));
    assert_eq!(http(relay.addr, "POST", "/api/v1/subscribe/ETH-USD?channels=ticker", &headers).0, 403);
    let lines = stream.join().unwrap();
    assert!(lines.iter().any(|v| v["type"] == "unsubscribed" && v["product_id"] == "ETH-USD"), "{lines:?}");
    // bob's key is gone: his session is closed; carol's is new: she connects.
    let (code, reason) = b.close_frame();
    assert_eq!((code, reason.as_str()), (1008, "access withdrawn: its API key was removed"));
    let (mut c, _) = client_as(relay.addr, Some(&carol));
    subscribe(&mut c, "BTC-USD");
    c.until("carol's BTC-USD ticker", |v| is_ticker_of(v, "BTC-USD"));

    // A bad file, or one without classes: refused, the rules in force stay.
    std::fs::write(&path, format!("{}\n[classes.pro]\nalow = []\n", rules_v2())).unwrap();
    let e = relay.reload().unwrap_err();
    assert!(e.contains("refused, the rules in force stay") && e.contains("hedgehog.toml:"), "{e}");
    std::fs::write(&path, "[server]\nport = 0\n").unwrap();
    let e = relay.reload().unwrap_err();
    assert!(e.contains("restart hedgehog to turn access control off"), "{e}");
    assert!(ws_as(relay.addr, "/ws", Some(&carol)).is_ok(), "carol's key still works");
    assert_eq!(ws_as(relay.addr, "/ws", Some(&bob)).err().map(|(s, _)| s), Some(401));
}

/// The real binary: SIGHUP reads the file again. A new key works once the log
/// says the rules were reloaded; a bad file is logged, and the rules stay.
#[test]
fn sighup_reloads_the_rules_of_the_binary() {
    let ops = "[classes.ops]\nallow = [\"*\"]\nallow_channels = [\"*\"]\nadmin = true\n";
    let path = config_file("sighup", &format!("{ops}{}", key_entry("alice", "ops")));
    let args = ["--simulate", "--host", "127.0.0.1", "--port", "0", "--config", path.to_str().unwrap()];
    let (child, lines) = common::Running::hedgehog(&args, &[("WEB_CONCURRENCY", "2"), ("RUST_LOG", "info")]);
    let line_with = |want: &str| -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            match lines.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(want) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {want:?}"),
            }
        }
    };
    let listening = line_with("hedgehog listening on ");
    let addr: SocketAddr =
        listening.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let hup = || child.signal("-HUP");
    let clients_as = |who: &str| http(addr, "GET", "/api/v1/clients", &bearer(&key_of(who))).0;
    assert_eq!((clients_as("alice"), clients_as("carol")), (200, 401));

    std::fs::write(&path, format!("{ops}{}{}", key_entry("alice", "ops"), key_entry("carol", "ops"))).unwrap();
    hup();
    let said = line_with("SIGHUP: ");
    assert!(said.contains("access rules reloaded") && said.contains("2 keys"), "{said}");
    assert_eq!(clients_as("carol"), 200);

    std::fs::write(&path, "[classes.ops]\nallow = [\"*\"\n").unwrap();
    hup();
    let said = line_with("SIGHUP: ");
    assert!(
        said.contains("ERROR") && said.contains("the rules in force stay") && said.contains("hedgehog.toml:"),
        "{said}"
    );
    assert_eq!((clients_as("alice"), clients_as("carol")), (200, 200), "the old rules stay");
}

/// A validly signed token whose `exp` the clock cannot hold is a bad claim
/// (401, or Coinbase's error in-band), not a panic.
#[test]
fn a_token_with_an_exp_past_the_clock_is_refused() {
    let path = config_file("exp-max", &format!("{PRO}{}", tokens_table()));
    let (_sim, relay) = start(&path);
    let huge = token(json!({"sub": "bob", "class": "pro", "exp": u64::MAX}));
    let (status, _, body) = http(relay.addr, "GET", "/api/v1/clients", &bearer(&huge));
    assert_eq!((status, body["message"].as_str()), (401, Some("token's `exp` claim is malformed")), "{body}");
    let (mut c, _) = client_as(relay.addr, Some(&pro_token("bob", 3600, None)));
    c.send(&json!({"type": "auth", "token": huge}).to_string());
    let reply: Value = serde_json::from_str(&c.until("the answer", |v| v["type"] == "error")).unwrap();
    assert_eq!(reply["message"], "Failed to authenticate", "{reply}");
    assert!(relay.shard_ended(Duration::ZERO).is_none());
}

/// A reload verifies open sessions' tokens again: after the secret is rotated
/// (a leak), a session of an old token is closed; a key that now names
/// another class is closed too, so that it connects again into that class's
/// limits; a refresh to a sooner expiry is warned and closed then; a key a
/// Coinbase client brought in its subscribe, removed, closes its session.
#[test]
fn a_reload_closes_sessions_whose_credential_changed() {
    let basic = "[classes.basic]\nallow = [\"*\"]\nallow_channels = [\"*\"]\nmax_connections_per_principal = 1\n";
    let anon = "[classes.anonymous]\nallow = [\"BTC-USD\"]\nallow_channels = [\"ticker\"]\n";
    let v1 = format!("{anon}{PRO}{basic}{}{}{}", key_entry("alice", "pro"), key_entry("carol", "pro"), tokens_table());
    let path = config_file("credentials", &v1);
    let (_sim, relay) = start(&path);
    let (mut bob, _) = client_as(relay.addr, Some(&pro_token("bob", 24 * 3600, None)));
    let (mut alice, _) = client_as(relay.addr, Some(&key_of("alice")));
    let mut coinbase = ws_as(relay.addr, "/ws?mode=coinbase", None).unwrap_or_else(|e| panic!("{e:?}"));
    let sub = json!({"type": "subscribe", "product_ids": ["ETH-USD"], "channels": ["ticker"], "key": key_of("carol")});
    coinbase.send(&sub.to_string());
    coinbase.until("carol's ETH-USD data", |v| is_ticker_of(v, "ETH-USD"));
    // A sooner expiry by refresh: warned and closed then.
    let (mut dave, _) = client_as(relay.addr, Some(&pro_token("dave", 3600, None)));
    dave.send(&json!({"type": "auth", "token": pro_token("dave", 3, None)}).to_string());
    dave.until("the notice", |v| v["type"] == "auth" && v["event"] == "expiring");
    assert_eq!(dave.close_frame(), (1008, "token expired".to_string()));

    let rotated = "[tokens]\nhs256_secret = \"a brand new HS256 secret of 32+ bytes, after a leak\"\n";
    std::fs::write(&path, format!("{anon}{PRO}{basic}{}{rotated}", key_entry("alice", "basic"))).unwrap();
    relay.reload().expect("reloaded");
    let (code, reason) = bob.close_frame();
    assert_eq!(code, 1008);
    assert!(reason.starts_with("access withdrawn: its token is refused by the new rules"), "{reason}");
    let (code, reason) = alice.close_frame();
    assert_eq!(code, 1008);
    assert!(reason.contains("now belongs to `alice` of class `basic`; connect again"), "{reason}");
    assert_eq!(coinbase.close_frame(), (1008, "access withdrawn: its API key was removed".to_string()));
    // alice connects again, into basic's one seat.
    let _again = client_as(relay.addr, Some(&key_of("alice")));
    assert_eq!(ws_as(relay.addr, "/ws", Some(&key_of("alice"))).err().map(|e| e.0), Some(429));
}
