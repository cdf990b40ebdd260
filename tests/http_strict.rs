//! Request framing as RFC 9112 requires it where leniency lets a proxy in front
//! smuggle requests: one agreed Content-Length in plain digits, no Transfer-Encoding
//! (and never beside a Content-Length), absolute-form targets routed by their path.
//! Each refusal is a JSON error and a close, and bytes after the refused head are
//! never served as another request.

mod common;

use common::{http_raw, relay, simulator, DEADLINE};
use serde_json::Value;

/// Every HTTP response in `bytes`, by its status line.
fn responses(bytes: &str) -> usize {
    bytes.matches("HTTP/1.1 ").count()
}

/// Sends `raw` on a fresh connection, which the relay must answer once with
/// `status` and a JSON error `code`, then close. Returns the error's message.
fn refused(addr: std::net::SocketAddr, raw: &str, status: u16, code: &str) -> String {
    let (got, head, body) = http_raw(addr, raw.as_bytes());
    assert_eq!(got, status, "{raw:?}\n{head}\n{body}");
    assert!(head.contains("Connection: close\r\n"), "{raw:?}\n{head}");
    assert!(head.contains("Content-Type: application/json\r\n"), "{raw:?}\n{head}");
    assert_eq!(responses(&head) + responses(&body), 1, "a second response to {raw:?}:\n{head}\n\n{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{raw:?}: not JSON ({e}): {body}"));
    assert_eq!(v["error"], code, "{raw:?}: {v}");
    v["message"].as_str().expect("a message").to_string()
}

#[test]
fn differing_content_lengths_are_refused_and_the_smuggled_request_is_not_served() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay(1, &sim.url());
    // A proxy reading the last Content-Length forwards one request with a 39-byte
    // body; a server reading the first would serve those bytes as a second request.
    let smuggled = "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n";
    for lengths in [
        format!("Content-Length: 0\r\nContent-Length: {}\r\n", smuggled.len()),
        format!("Content-Length: {}\r\nContent-Length: 0\r\n", smuggled.len()),
        format!("Content-Length: 0, {}\r\n", smuggled.len()),
    ] {
        let raw = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{lengths}\r\n{smuggled}");
        let message = refused(relay.addr, &raw, 400, "bad_request");
        assert!(message.contains("Content-Length values differ"), "{message}");
    }
}

#[test]
fn content_length_is_plain_digits() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay(1, &sim.url());
    for value in ["+5", "005", " 5 5", "-5", "5,"] {
        let raw = format!("POST /api/v1/subscribe/BTC-USD HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\nhello");
        let message = refused(relay.addr, &raw, 400, "bad_request");
        assert!(message.contains("Content-Length must be digits only"), "{value:?}: {message}");
    }
}

#[test]
fn transfer_encoding_is_not_implemented_and_named() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay(1, &sim.url());
    for coding in ["identity", "chunked"] {
        let raw = format!(
            "POST /api/v1/subscribe/BTC-USD HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\nGET /nope HTTP/1.1\r\n\r\n"
        );
        let message = refused(relay.addr, &raw, 501, "unsupported_transfer_encoding");
        let expected = format!("Transfer-Encoding: {coding} is not supported; send the body with Content-Length");
        assert_eq!(message, expected);
    }
}

#[test]
fn transfer_encoding_with_content_length_is_refused() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay(1, &sim.url());
    let smuggled = "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n";
    let raw = format!(
        "POST /api/v1/subscribe/BTC-USD HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let message = refused(relay.addr, &raw, 400, "bad_request");
    assert!(message.contains("both Transfer-Encoding and Content-Length"), "{message}");
}

#[test]
fn absolute_form_targets_are_routed_by_their_path() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay(1, &sim.url());
    for target in ["http://127.0.0.1/healthz", "https://relay.example:8443/healthz?x=1", "HTTP://127.0.0.1/healthz"] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, head, body) = http_raw(relay.addr, raw.as_bytes());
        assert_eq!(status, 200, "{target}\n{head}\n{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{target}: not JSON ({e}): {body}"));
        assert!(v.get("upstream").is_some(), "{target}: not the health report: {v}");
    }
}

#[test]
fn a_valid_keep_alive_pipeline_still_gets_every_answer() {
    use std::io::{Read, Write};
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay(1, &sim.url());
    let mut s = std::net::TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let pipeline = "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n\
                    GET http://127.0.0.1/nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    s.write_all(pipeline.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let statuses: Vec<&str> = out.match_indices("HTTP/1.1 ").map(|(i, _)| &out[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "404"], "{out}");
}
