//! Configurable limits: subscriptions per client, message size, server pings and
//! the idle timeout, each answered with a status or close code a person understands.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{http, relay_client, simulator, Client, DEADLINE};
use hedgehog::config::ServeConfig;

fn relay_with(sim: &hedgehog::sim::SimHandle, adjust: impl FnOnce(&mut ServeConfig)) -> hedgehog::server::RelayHandle {
    let mut cfg = ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        shards: 2,
        upstream: hedgehog::upstream::UpstreamConfig { url: sim.url(), ..Default::default() },
        ..Default::default()
    };
    adjust(&mut cfg);
    hedgehog::server::start(cfg).unwrap()
}

#[test]
fn subscriptions_per_client_are_capped_with_409() {
    let sim = simulator(|c| c.rate = 5.0);
    let relay = relay_with(&sim, |c| c.max_subscriptions = 3);
    let (_c, id) = relay_client(relay.addr);
    let with_id = format!("X-Client-Id: {id}\r\n");
    assert_eq!(http(relay.addr, "POST", "/api/v1/subscribe/BTC-USD", &with_id).0, 200);
    assert_eq!(http(relay.addr, "POST", "/api/v1/subscribe/ETH-USD?channels=ticker", &with_id).0, 200);
    assert_eq!(http(relay.addr, "POST", "/api/v1/subscribe/BTC-USD", &with_id).0, 200, "idempotent, within the cap");
    let (status, head, body) = http(relay.addr, "POST", "/api/v1/subscribe/SOL-USD", &with_id);
    assert_eq!(status, 409, "{head}");
    assert_eq!(body["error"], "too_many_subscriptions");
    assert!(body["message"].as_str().unwrap().contains('3'));
}

#[test]
fn messages_over_the_configured_size_close_with_1009() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay_with(&sim, |c| c.max_message_bytes = 1024);
    let (mut c, _) = relay_client(relay.addr);
    c.send(&"x".repeat(2000));
    assert_eq!(c.close_frame().0, 1009);
}

/// A raw WebSocket that never sends a frame (so never answers a ping).
fn silent_client(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    s
}

/// Frames read off a raw socket, past the handshake.
struct Raw {
    s: std::net::TcpStream,
    buf: Vec<u8>,
    at: Option<usize>,
}

impl Raw {
    /// Skips frames until one with `opcode`; returns its payload.
    fn frame_with(&mut self, opcode: u8) -> Vec<u8> {
        loop {
            if self.at.is_none() {
                self.at = self.buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
            }
            if let Some(i) = self.at {
                if i + 2 <= self.buf.len() {
                    let len = (self.buf[i + 1] & 0x7f) as usize;
                    assert!(len < 126, "short frames only here");
                    if i + 2 + len <= self.buf.len() {
                        let (op, payload) = (self.buf[i] & 0x0f, self.buf[i + 2..i + 2 + len].to_vec());
                        self.at = Some(i + 2 + len);
                        if op == opcode {
                            return payload;
                        }
                        continue;
                    }
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("read");
            assert!(n > 0, "closed before a frame with opcode {opcode}");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[test]
fn the_server_pings_and_closes_silent_clients() {
    let sim = simulator(|c| {
        c.rate = 50.0;
        c.products = vec!["BTC-USD".into()];
    });
    let relay = relay_with(&sim, |c| {
        c.ping_interval = Duration::from_millis(100);
        c.idle_timeout = Duration::from_secs(3);
    });
    // A client that answers pings (tungstenite does, as it reads) stays.
    let (mut alive, id) = relay_client(relay.addr);
    assert_eq!(
        http(relay.addr, "POST", "/api/v1/subscribe/BTC-USD?channels=matches", &format!("X-Client-Id: {id}\r\n")).0,
        200
    );
    let mut silent = Raw { s: silent_client(relay.addr), buf: Vec::new(), at: None };
    let watcher = std::thread::spawn(move || {
        assert_eq!(silent.frame_with(9), b"hedgehog", "a server ping");
        let close = silent.frame_with(8);
        assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1008);
        assert!(String::from_utf8_lossy(&close[2..]).contains("idle timeout"));
    });
    // Meanwhile the answering client keeps reading, well past the idle timeout.
    while !watcher.is_finished() {
        alive.until("data", |v| v["type"] == "match");
    }
    watcher.join().expect("the silent client was pinged, then closed");
    for _ in 0..40 {
        alive.until("data after the silent one was closed", |v| v["type"] == "match");
    }
    let _: &mut Client = &mut alive;
}

#[test]
fn connections_per_ip_are_capped_with_429() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay_with(&sim, |c| c.max_connections_per_ip = 2);
    let (first, _) = relay_client(relay.addr);
    let (_second, _) = relay_client(relay.addr);
    let (status, head, body) = http(relay.addr, "GET", "/healthz", "");
    assert_eq!(status, 429, "{head}");
    assert_eq!(body["error"], "too_many_connections");
    drop(first);
    common::wait_until("a place frees up when a client leaves", || http(relay.addr, "GET", "/healthz", "").0 == 200);
}

#[test]
fn requests_over_the_rate_get_429_and_the_connection_stays() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay_with(&sim, |c| c.max_request_rate = 2);
    // 40 pipelined requests on one connection: a bucket of 2 that refills at 2 a
    // second cannot pass them all unless the server took 19 s over them.
    let mut raw = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(39);
    raw.push_str("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut s = std::net::TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("all 40 answered, then closed");
    let statuses: Vec<&str> = out.match_indices("HTTP/1.1 ").map(|(i, _)| &out[i + 9..i + 12]).collect();
    assert_eq!(statuses.len(), 40, "every request is answered on the same connection");
    assert_eq!(&statuses[..2], ["200", "200"], "the burst passes");
    assert!(statuses.iter().all(|s| *s == "200" || *s == "429"), "{statuses:?}");
    assert!(statuses.contains(&"429"), "{statuses:?}");
    let limited = &out[out.find("HTTP/1.1 429").unwrap()..];
    let limited = &limited[..limited[1..].find("HTTP/1.1 ").map_or(limited.len(), |i| i + 1)];
    assert!(limited.contains("Retry-After: 1\r\n"), "{limited}");
    let body: serde_json::Value = serde_json::from_str(limited.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert!(body["message"].as_str().unwrap().contains("2 requests per second"), "{body}");
    // The limit is per connection: a new one is served at once.
    assert_eq!(http(relay.addr, "GET", "/healthz", "").0, 200);
}

#[test]
fn websocket_messages_over_the_rate_get_an_error_and_the_session_stays() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay_with(&sim, |c| c.max_request_rate = 2);
    let (mut c, id) = relay_client(relay.addr);
    for _ in 0..40 {
        c.send(r#"{"type":"hello"}"#);
    }
    c.until("a rate-limit error", |v| v["type"] == "error" && v["message"] == "rate limited");
    // REST on another connection still works for this client, and it is still open.
    let path = "/api/v1/subscribe";
    assert_eq!(http(relay.addr, "GET", path, &format!("X-Client-Id: {id}\r\n")).0, 200);
}

#[test]
fn the_echo_endpoint_exists_only_with_the_flag() {
    let sim = simulator(|c| c.rate = 0.0);
    let off = relay_with(&sim, |_| {});
    let (status, _, body) = http(off.addr, "GET", "/echo", "");
    assert_eq!(status, 404);
    assert!(body["message"].as_str().unwrap().contains("--echo"), "{body}");

    let on = relay_with(&sim, |c| c.echo = true);
    let mut c = Client::connect(&format!("ws://{}/echo", on.addr));
    c.send("hello, echo");
    assert_eq!(c.text(), "hello, echo", "text comes back first: the echo endpoint has no welcome");
    c.ws.send(tungstenite::Message::Binary(vec![0u8, 1, 2, 255].into())).unwrap();
    match c.next_message(std::time::Instant::now() + DEADLINE) {
        Some(tungstenite::Message::Binary(b)) => assert_eq!(&b[..], [0, 1, 2, 255]),
        other => panic!("expected the binary message back, got {other:?}"),
    }
}
