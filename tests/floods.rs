//! Pings are requests like any other: a flood of them holds at most 16 pongs
//! (RFC 6455 lets a server answer only the newest ping), counts towards the request rate,
//! and a flooder that does not read is closed as a slow consumer, while everyone
//! else keeps every trade.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{http, relay_client, relay_with, rss, simulator, Running, DEADLINE};

/// A masked, empty client ping frame.
const PING: [u8; 6] = [0x89, 0x80, 1, 2, 3, 4];

/// A WebSocket client on a raw socket, past its handshake; its client id.
fn raw_client(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream).expect("handshake");
    let welcome: serde_json::Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    let id = welcome["client_id"].as_str().unwrap().to_string();
    (ws.into_inner(), id)
}

/// Sends `n` pings in large writes, never reading; stops early if the server
/// has hung up. Returns how many were sent.
fn flood(s: &mut TcpStream, n: usize) -> usize {
    let chunk: Vec<u8> = PING.iter().copied().cycle().take(PING.len() * 1000).collect();
    for sent in (0..n).step_by(1000) {
        if s.write_all(&chunk).is_err() {
            return sent;
        }
    }
    n
}

#[test]
fn a_ping_flood_from_a_client_that_does_not_read_holds_a_few_pongs() {
    // No request rate, so every ping is answered: only the pong queue is tested.
    let (child, addr) = common::start_binary(&["--simulate", "--max-request-rate", "0"]);
    let child = Running(child);
    let (mut flooder, _) = raw_client(addr);
    let before = rss(child.0.id());
    // Before, each unread pong was queued outside the cap: ~175 MB a million.
    let sent = flood(&mut flooder, 300_000);
    assert_eq!(sent, 300_000, "the server keeps reading");
    assert_eq!(http(addr, "GET", "/livez", "").0, 200);
    let grown = rss(child.0.id()).saturating_sub(before);
    assert!(grown < 16 << 20, "300,000 unread pings grew the relay by {grown} bytes");
    // The flooder reads at last: pongs, and the connection still works.
    let mut buf = vec![0u8; 1 << 16];
    assert!(flooder.read(&mut buf).unwrap() > 0);
}

#[test]
fn a_ping_flood_over_the_rate_is_closed_as_a_slow_consumer_and_others_keep_every_trade() {
    let sim = simulator(|c| c.rate = 50.0);
    let relay = relay_with(&sim.url(), |c| {
        c.shards = 2;
        c.max_request_rate = 100;
        c.client_queue_bytes = 64 * 1024;
    });
    let addr = relay.addr;
    let (mut reader, id) = relay_client(addr);
    let sub =
        |id: &str| http(addr, "POST", "/api/v1/subscribe/BTC-USD?channels=matches", &format!("X-Client-Id: {id}\r\n"));
    assert_eq!(sub(&id).0, 200);
    reader.until("subscribed", |v| v["type"] == "subscribed");
    let (mut flooder, flooder_id) = raw_client(addr);
    assert_eq!(sub(&flooder_id).0, 200);

    let flooding = std::thread::spawn(move || {
        flood(&mut flooder, 200_000);
        // Now read what reached the socket before the relay let go of it.
        let mut got = Vec::new();
        let _ = flooder.read_to_end(&mut got);
        got
    });
    let mut last: Option<u64> = None;
    let end = Instant::now() + Duration::from_secs(3);
    while !flooding.is_finished() || Instant::now() < end {
        let v = reader.json();
        if v["type"] == "match" {
            let id = v["trade_id"].as_u64().unwrap();
            if let Some(prev) = last {
                assert_eq!(id, prev + 1, "the reader missed a trade during the flood");
            }
            last = Some(id);
        }
    }
    assert!(last.is_some(), "trades flowed during the flood");
    let got = flooding.join().unwrap();
    // Its close frame, if it got out before the socket was dropped, says why.
    if let Some(at) = got.windows(2).rposition(|w| w[0] == 0x88) {
        let reason = String::from_utf8_lossy(&got[at + 4..]);
        assert!(reason.starts_with("slow consumer"), "closed for {reason:?}");
    }
    assert_eq!(http(addr, "GET", "/livez", "").0, 200);
}

#[test]
fn pings_count_towards_the_request_rate() {
    let sim = simulator(|_| {});
    let relay = relay_with(&sim.url(), |c| {
        c.shards = 1;
        c.max_request_rate = 100;
    });
    let (mut client, _) = raw_client(relay.addr);
    // A thousand pings in one write: far past a burst of 100.
    let pings: Vec<u8> = PING.iter().copied().cycle().take(PING.len() * 1000).collect();
    client.write_all(&pings).unwrap();
    let stream = client.try_clone().unwrap();
    let mut ws = tungstenite::WebSocket::from_raw_socket(stream, tungstenite::protocol::Role::Client, None);
    let mut pongs = 0;
    loop {
        match ws.read().expect("the session stays open") {
            tungstenite::Message::Pong(_) => pongs += 1,
            tungstenite::Message::Text(t) if t.contains("rate limited") => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pongs <= 100, "{pongs} pongs for 100 allowed pings (only the newest are kept)");
    // Within the rate again, a ping is answered.
    ws.get_mut().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let quiet = Instant::now() + Duration::from_millis(1100);
    while Instant::now() < quiet {
        let _ = ws.read(); // what is left of the burst's answers
    }
    ws.get_mut().set_read_timeout(Some(DEADLINE)).unwrap();
    ws.send(tungstenite::Message::Ping(b"again".to_vec().into())).unwrap();
    loop {
        match ws.read().expect("still open") {
            tungstenite::Message::Pong(p) if p.as_ref() == b"again" => break,
            _ => {}
        }
    }
}
