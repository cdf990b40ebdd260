//! The relay's WebSocket sessions on raw frames: ping/pong, fragmented masked
//! messages, the close handshake, and the size limit.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{relay, simulator, DEADLINE};

/// A raw connection that has completed the handshake; returns it and the welcome.
fn raw_ws(addr: std::net::SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
    let (op, welcome) = read_frame(&mut s);
    assert_eq!(op, 1);
    (s, welcome)
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [9u8, 8, 7, 6];
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one unmasked server frame: (opcode, payload).
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (h[0] & 0x0f, payload)
}

#[test]
fn ping_fragments_and_close_handshake() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay(2, &sim.url());
    let (mut s, welcome) = raw_ws(relay.addr);
    let welcome: serde_json::Value = serde_json::from_slice(&welcome).unwrap();
    assert_eq!(welcome["type"], "welcome");
    let id = welcome["client_id"].as_str().unwrap();
    let (shard, rest) = id.split_once('-').unwrap();
    assert!(shard.parse::<usize>().unwrap() < 2, "the id names its shard: {id}");
    assert_eq!(rest.rsplit('-').next().unwrap().len(), 32, "128 random bits: {id}");

    s.write_all(&frame(true, 9, b"are you there")).unwrap();
    assert_eq!(read_frame(&mut s), (10, b"are you there".to_vec()));

    // A fragmented text message with a ping between its fragments: one reply.
    s.write_all(&[frame(false, 1, b"{\"type\":"), frame(true, 9, b"p"), frame(true, 0, b"\"hello\"}")].concat())
        .unwrap();
    assert_eq!(read_frame(&mut s), (10, b"p".to_vec()));
    let (op, reply) = read_frame(&mut s);
    assert_eq!(op, 1);
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["type"], "error", "{reply}");

    s.write_all(&frame(true, 8, &[0x03, 0xe8])).unwrap();
    let (op, payload) = read_frame(&mut s);
    assert_eq!((op, &payload[..2]), (8, &[0x03, 0xe8][..]), "close is echoed with its code");
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "then the server closes the socket");
}

#[test]
fn a_burst_of_pings_gets_a_pong_for_each_in_order() {
    // Autobahn 2.10: ten pings in one write, and ten pongs back. Only a flood of
    // more than the outbox holds (16) loses its oldest pongs.
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay(1, &sim.url());
    let (mut s, _) = raw_ws(relay.addr);
    let burst: Vec<u8> = (0..10).flat_map(|i| frame(true, 9, format!("payload-{i}").as_bytes())).collect();
    s.write_all(&burst).unwrap();
    for i in 0..10 {
        assert_eq!(read_frame(&mut s), (10, format!("payload-{i}").into_bytes()), "pong {i}");
    }
}

#[test]
fn messages_over_64_kib_close_with_1009() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay(1, &sim.url());
    let (mut s, _) = raw_ws(relay.addr);
    s.write_all(&frame(true, 1, &vec![b'a'; 70_000])).unwrap();
    let (op, payload) = read_frame(&mut s);
    assert_eq!(op, 8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1009);
    assert!(!payload[2..].is_empty(), "with a reason");
}

#[test]
fn unmasked_client_frames_are_a_protocol_error() {
    let sim = simulator(|c| c.rate = 0.0);
    let relay = relay(1, &sim.url());
    let (mut s, _) = raw_ws(relay.addr);
    s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    let (op, payload) = read_frame(&mut s);
    assert_eq!((op, u16::from_be_bytes([payload[0], payload[1]])), (8, 1002));
}
