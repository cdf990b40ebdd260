//! `--log-format json` on the real binary, through a run that logs a lot: good
//! and bad keys and tokens (in headers, in `?token=`, in-band), refused
//! subscriptions, bad requests, a flood of them, a SIGHUP reload and a SIGTERM.
//! Every stderr line is a JSON object with the stable fields; the expected events
//! are there with their fields; no key, token or secret used appears anywhere;
//! and the flood is held to the per-client budget.

mod common;

use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use common::access::{bearer, key_entry, key_of, now, token, ws_as, SECRET};
use common::{http, http_raw, Running, DEADLINE};
use serde_json::{json, Value};

/// The stable fields every line has.
const FIELDS: [&str; 6] = ["time", "level", "target", "shard", "event", "message"];

/// The binary's stderr, line by line, as it comes; and every line seen so far.
struct Log {
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Log {
    /// The next line (parsed) that `want` accepts, reading until the deadline.
    fn until(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let line = self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no log line: {what}; so far:\n{}", self.seen.join("\n")));
            self.seen.push(line.clone());
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if want(&v) {
                return v;
            }
        }
    }

    /// Every line until the binary's stderr closes.
    fn rest(&mut self) {
        let end = Instant::now() + DEADLINE;
        while let Ok(line) = self.lines.recv_timeout(end.saturating_duration_since(Instant::now())) {
            self.seen.push(line);
        }
    }
}

fn event(v: &Value, name: &str) -> bool {
    v["event"] == name
}

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("hedgehog.toml");
    let text = format!(
        "[classes.pro]\nallow = [\"BTC-USD\"]\nallow_channels = [\"ticker\"]\n\n{}[tokens]\nhs256_secret = \"{SECRET}\"\n",
        key_entry("alice", "pro")
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn start(path: &std::path::Path) -> (Running, Log) {
    let args = ["--simulate", "--host", "127.0.0.1", "--port", "0", "--log-format", "json", "--config"];
    let args: Vec<&str> = args.into_iter().chain([path.to_str().unwrap()]).collect();
    let (child, lines) = Running::hedgehog(&args, &[("WEB_CONCURRENCY", "2"), ("RUST_LOG", "info")]);
    (child, Log { lines, seen: Vec::new() })
}

#[test]
fn json_logs_parse_line_by_line_and_never_hold_a_credential() {
    let dir = std::env::temp_dir().join(format!("hedgehog-logs-{}", std::process::id()));
    let path = config(&dir);
    let (child, mut log) = start(&path);
    let listening = log.until("listening", |v| event(v, "listening"));
    let addr: SocketAddr = listening["addr"].as_str().unwrap().parse().unwrap();

    let alice = key_of("alice");
    let wrong_key = key_of("mallory");
    let tina = token(json!({"sub": "tina", "class": "pro", "exp": now() + 600}));
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "tina", "class": "pro", "exp": now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not the relay's secret, but 32 bytes or more"),
    )
    .unwrap();

    // A good key on an admin endpoint it may not use: 403, logged with who.
    assert_eq!(http(addr, "GET", "/api/v1/clients", &bearer(&alice)).0, 403);
    let refused = log.until("alice refused", |v| event(v, "refused") && v["principal"] == "alice");
    assert_eq!(refused["class"], "pro");
    assert!(refused["reason"].as_str().unwrap().contains("not an admin class"), "{refused}");
    assert!(refused["shard"].is_u64(), "a shard's line names it: {refused}");

    // Bad credentials in the header and in `?token=`: 401, logged without them.
    assert_eq!(http(addr, "GET", "/api/v1/clients", &bearer(&wrong_key)).0, 401);
    assert_eq!(ws_as(addr, &format!("/ws?token={forged}"), None).err().map(|(s, _)| s), Some(401));
    assert_eq!(ws_as(addr, &format!("/ws?token={wrong_key}"), None).err().map(|(s, _)| s), Some(401));
    let unknown = log.until("an unknown credential refused", |v| event(v, "refused") && v["principal"] == "-");
    assert!(unknown["reason"].is_string(), "{unknown}");

    // A good token in `?token=`: a session; a pair its class denies is refused.
    let mut c = ws_as(addr, &format!("/ws?token={tina}"), None).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.json()["type"], "welcome");
    c.send(&json!({"type": "subscribe", "product_ids": ["ETH-USD"], "channels": ["ticker"]}).to_string());
    let denied = log.until("tina's ETH-USD refused", |v| event(v, "refused") && v["principal"] == "tina");
    assert_eq!((denied["class"].as_str(), denied["level"].as_str()), (Some("pro"), Some("warn")));
    // And a bad key in-band.
    let in_band = json!({"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["ticker"], "key": wrong_key});
    c.send(&in_band.to_string());
    log.until("the in-band key refused", |v| event(v, "refused") && v["what"] == "to authenticate in-band");

    // Bad requests, one carrying credentials everywhere it can.
    let (status, _, _) = http_raw(addr, b"NONSENSE\r\n\r\n");
    assert_eq!(status, 400);
    let sly = format!(
        "GET /ws?token={tina} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\nTransfer-Encoding: {alice}\r\n\r\n"
    );
    assert_eq!(http_raw(addr, sly.as_bytes()).0, 501);
    let upgrade = format!(
        "GET /ws?token={tina} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    assert_eq!(http_raw(addr, upgrade.as_bytes()).0, 400, "no Sec-WebSocket-Key");
    let failed = log.until("a failed handshake", |v| event(v, "handshake_failed"));
    assert!(failed["reason"].as_str().unwrap().contains("Sec-WebSocket-Key"), "{failed}");
    let bad = log.seen.iter().find(|l| l.contains("\"event\":\"bad_request\"")).expect("a bad request logged");
    let bad: Value = serde_json::from_str(bad).unwrap();
    assert!(bad["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{bad}");
    assert!(bad["reason"].is_string(), "{bad}");

    // A flood of bad requests: held to the budget, and the log says so.
    let began = Instant::now();
    let (tx, said) = std::sync::mpsc::channel();
    let flood = std::thread::spawn(move || {
        let mut sent = 0u64;
        while said.try_recv().is_err() {
            http_raw(addr, b"NONSENSE\r\n\r\n");
            sent += 1;
        }
        sent
    });
    let held = log.until("lines held back", |v| event(v, "log_suppressed"));
    let _ = tx.send(());
    let sent = flood.join().unwrap();
    assert!(held["count"].as_u64().unwrap() > 0, "{held}");
    let logged = log.seen.iter().filter(|l| l.contains("\"event\":\"bad_request\"")).count() as u64;
    let windows = began.elapsed().as_secs() + 2;
    let budget = u64::from(hedgehog::logs::CLIENT_EVENTS_PER_SECOND) * windows;
    assert!(logged <= budget && logged < sent, "{logged} lines for {sent} bad requests");

    // A reload, then a clean stop.
    child.signal("-HUP");
    log.until("reloaded", |v| event(v, "reload"));
    child.signal("-TERM");
    log.until("stopping", |v| event(v, "stopping"));
    log.until("stopped", |v| event(v, "stopped"));
    log.rest();

    let events: Vec<String> = log
        .seen
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            for field in FIELDS {
                assert!(v.get(field).is_some(), "no {field}: {line}");
            }
            let time = v["time"].as_str().unwrap();
            assert!(time.len() == 27 && time.ends_with('Z') && time.as_bytes()[19] == b'.', "RFC 3339, µs: {line}");
            assert!(v["shard"].is_null() || v["shard"].is_u64(), "{line}");
            v["event"].as_str().unwrap().to_string()
        })
        .collect();
    for want in [
        "access_on",
        "offline_mode",
        "listening",
        "reload",
        "stopping",
        "stopped",
        "upstream_connected",
        "refused",
        "bad_request",
        "handshake_failed",
    ] {
        assert!(events.iter().any(|e| e == want), "no {want} event in {events:?}");
    }
    let secrets = [alice.as_str(), wrong_key.as_str(), tina.as_str(), forged.as_str(), SECRET];
    // A token's signature alone would be a leak too.
    let signatures = [tina.rsplit('.').next().unwrap(), forged.rsplit('.').next().unwrap()];
    for line in &log.seen {
        for secret in secrets.iter().chain(&signatures) {
            assert!(!line.contains(secret), "a credential in the log: {line}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
