//! Every connection has a deadline until it is a WebSocket or a stream: silence,
//! a head or body trickled byte by byte, or an idle keep-alive connection each
//! end at theirs, so none can hold a descriptor forever. (The deadlines are
//! shortened here; the defaults are in the README.)

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{http, relay_client, relay_with, simulator, DEADLINE};
use hedgehog::server::RelayHandle;
use hedgehog::sim::SimHandle;

const SHORT: Duration = Duration::from_secs(1);

fn relay() -> (SimHandle, RelayHandle) {
    let sim = simulator(|_| {});
    let relay = relay_with(&sim.url(), |c| {
        c.shards = 2;
        (c.first_byte_timeout, c.header_timeout, c.body_timeout, c.keepalive_timeout) = (SHORT, SHORT, SHORT, SHORT);
    });
    (sim, relay)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Everything the server sends until it closes (or the deadline).
fn rest(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn silent_connections_are_closed_at_the_first_byte_deadline() {
    let (_sim, relay) = relay();
    let mut conns: Vec<TcpStream> = (0..200).map(|_| connect(relay.addr)).collect();
    for c in &mut conns {
        assert_eq!(rest(c), "", "closed without a word");
    }
    assert_eq!(http(relay.addr, "GET", "/livez", "").0, 200);
}

#[test]
fn heads_trickled_a_byte_at_a_time_get_408_at_their_deadline() {
    let (_sim, relay) = relay();
    let mut conns: Vec<Option<TcpStream>> = (0..100)
        .map(|_| {
            let s = connect(relay.addr);
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            Some(s)
        })
        .collect();
    let mut answers = Vec::new();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let end = Instant::now() + DEADLINE;
    // One byte per connection every 50 ms: the head never ends by itself.
    for &byte in head.iter().cycle().take(10_000) {
        if conns.iter().all(Option::is_none) || Instant::now() > end {
            break;
        }
        for slot in conns.iter_mut() {
            let Some(s) = slot else { continue };
            let _ = s.write_all(&[byte]);
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(n) => {
                    let mut text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    s.set_read_timeout(Some(DEADLINE)).unwrap();
                    text.push_str(&rest(s));
                    answers.push(text);
                    *slot = None;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("{e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50)); // the trickle's pace, not a wait for the server
    }
    assert_eq!(answers.len(), 100, "every trickle ended");
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 408 "), "{a}");
        assert!(a.contains(r#""error":"request_timeout""#) && a.contains("X-Hedgehog-Shard: "), "{a}");
    }
}

#[test]
fn a_body_that_never_arrives_gets_408() {
    let (_sim, relay) = relay();
    let mut s = connect(relay.addr);
    s.write_all(b"POST /api/v1/subscribe/BTC-USD HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let answer = rest(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("request body did not arrive in time"), "{answer}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let (_sim, relay) = relay();
    let mut s = connect(relay.addr);
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = rest(&mut s);
    assert!(answer.starts_with("HTTP/1.1 200 "), "answered, then closed when idle: {answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1);
}

#[test]
fn websocket_clients_are_not_held_to_the_http_deadlines() {
    let (_sim, relay) = relay();
    let (mut client, id) = relay_client(relay.addr);
    // Silent for three times the deadlines.
    let quiet_until = Instant::now() + SHORT * 3;
    let heard = client.next_message(quiet_until);
    assert!(heard.is_none(), "nothing was asked for: {heard:?}");
    let (status, _, _) = http(relay.addr, "POST", "/api/v1/subscribe/BTC-USD", &format!("X-Client-Id: {id}\r\n"));
    assert_eq!(status, 200);
    client.until("data", |v| v["type"] == "ticker" || v["type"] == "match");
}
