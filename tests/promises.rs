//! What the README promises of every answer: the shard header on each one the
//! server writes (streams and errors included), and one answer for a pair the
//! feed does not list, whichever path names it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use common::{http, http_raw, relay, simulator, wait_until, DEADLINE};

/// The head of a streaming answer (it never ends by itself).
fn stream_head(addr: std::net::SocketAddr, extra: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET /api/v1/subscribe/BTC-USD HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
    let mut head = String::new();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            return head;
        }
        head.push_str(&line);
    }
}

#[test]
fn every_answer_names_its_shard() {
    let sim = simulator(|_| {});
    let relay = relay(2, &sim.url());
    let addr = relay.addr;
    wait_until("products listed", || http(addr, "GET", "/healthz", "").2["upstream"]["products"].as_u64() > Some(0));
    for head in [stream_head(addr, ""), stream_head(addr, "Accept: text/event-stream\r\n")] {
        assert!(head.starts_with("HTTP/1.1 200 ") && head.contains("X-Hedgehog-Shard: "), "{head}");
    }
    let cases: [&[u8]; 6] = [
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"PATCH /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /api/v1/subscribe/FOO-BAR HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/subscribe/nonsense HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"\x16\x03\x01 not http\r\n\r\n",
    ];
    for raw in cases {
        let (status, head, body) = http_raw(addr, raw);
        assert!(status >= 200 && head.contains("X-Hedgehog-Shard: "), "{head}\n{body}");
    }
    let ws = TcpStream::connect(addr).unwrap();
    let (_ws, resp) = tungstenite::client(format!("ws://{addr}/ws"), ws).unwrap();
    assert!(resp.headers().contains_key("X-Hedgehog-Shard"), "the 101 too");
}

#[test]
fn an_unlisted_pair_is_404_on_history_as_on_subscribe() {
    let sim = simulator(|_| {});
    let relay = relay(1, &sim.url());
    let addr = relay.addr;
    wait_until("products listed", || http(addr, "GET", "/healthz", "").2["upstream"]["products"].as_u64() > Some(0));
    let (status, _, history) = http(addr, "GET", "/api/v1/history/FOO-BAR", "");
    let (_, _, stream) = http_raw(addr, b"GET /api/v1/subscribe/FOO-BAR HTTP/1.1\r\nHost: x\r\n\r\n");
    let stream: serde_json::Value = serde_json::from_str(&stream).unwrap();
    assert_eq!((status, history["error"].as_str()), (404, Some("unknown_product")), "{history}");
    assert_eq!(history, stream);
    assert_eq!(http(addr, "GET", "/api/v1/history/BTC-USD", "").0, 200);
}

#[test]
fn streams_are_served_from_the_sessions_task_queue() {
    // SSE and NDJSON streams are sessions like WebSockets: served from the
    // sessions queue, so a heavy stream cannot slow REST and handshakes in the
    // http queue. (The debug build names the queue in the stream's head.)
    let sim = simulator(|_| {});
    let relay = relay(2, &sim.url());
    let addr = relay.addr;
    wait_until("products listed", || http(addr, "GET", "/healthz", "").2["upstream"]["products"].as_u64() > Some(0));
    for head in [stream_head(addr, ""), stream_head(addr, "Accept: text/event-stream\r\n")] {
        assert!(head.contains("X-Hedgehog-Queue: sessions\r\n"), "{head}");
    }
}
