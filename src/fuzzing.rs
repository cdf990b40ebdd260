//! The entry points of the fuzz targets in `fuzz/`, kept in the library so that
//! the corpora (every input the fuzzer kept, and every crash it ever found) are
//! replayed by an ordinary test (`tests/fuzz_corpora.rs`) on the stable toolchain.
//!
//! Each takes arbitrary bytes, runs them through the code that meets the outside
//! world, and checks what must hold whatever the input. A panic is a bug.

use crate::http::{self, Request};
use crate::protocol;
use crate::upstream::FeedMessage;
use crate::ws::frame::{Decoder, Message, Role};
use crate::ws::{self};

/// HTTP requests from a client: the parser (pipelined requests included), the
/// router, the WebSocket handshake and the query and header helpers.
pub fn http_request(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((req, used))) = http::parse(rest) {
        assert!(used > 0 && used <= rest.len(), "the parser used {used} of {} bytes", rest.len());
        route(&req);
        rest = &rest[used..];
    }
}

fn route(req: &Request) {
    let upgrade = ws::is_upgrade(req);
    if let Ok(route) = http::route(&req.method, &req.path, upgrade) {
        if upgrade {
            if let Ok(answer) = ws::accept(req) {
                assert!(answer.starts_with(b"HTTP/1.1 101 "));
            }
        }
        let _ = route;
    }
    let _ = req.keep_alive();
    let _ = req.query_param("channels");
    let _ = req.query_param("client_id");
    let _ = req.header_has_token("Connection", "upgrade");
    let _ = http::percent_decode(&req.path);
}

/// WebSocket frames from a client (masked) and from the upstream (unmasked),
/// delivered in two reads split where the first byte says.
pub fn ws_frames(data: &[u8]) {
    let split = data.first().map_or(0, |b| usize::from(*b) % (data.len() + 1));
    for role in [Role::Server, Role::Client] {
        let max = 4096;
        let mut dec = Decoder::new(role, max).with_read_size(64);
        for part in [&data[..split], &data[split..]] {
            dec.feed(part);
            loop {
                match dec.next_message() {
                    Ok(Some(m)) => check_message(&m, max),
                    Ok(None) => break,
                    Err(e) => {
                        assert!((1002..=1009).contains(&e.close_code()));
                        dec.discard();
                        break;
                    }
                }
            }
        }
    }
}

fn check_message(m: &Message, max: usize) {
    match m {
        Message::Text(t) => {
            assert!(std::str::from_utf8(t).is_ok(), "text messages are checked to be UTF-8");
            assert!(t.len() <= max);
        }
        Message::Binary(b) => assert!(b.len() <= max),
        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
        Message::Close(Some((code, reason))) => assert!(*code >= 1000 && reason.len() <= 123),
        Message::Close(None) => {}
    }
}

/// Messages from the upstream feed: the routing-key scanner and what the upstream
/// client reads from `subscriptions`, `error` and `status` messages; and the same
/// bytes as a Coinbase subscribe request, sorted out as the simulator and the
/// relay sort out their clients' requests.
pub fn upstream_message(data: &[u8]) {
    if let Some(m) = FeedMessage::new(data) {
        assert_eq!(m.body(), data, "a relayed message is the bytes that arrived");
        let _ = protocol::Channel::of_message(m.kind());
        if let Some(p) = m.product() {
            let _ = protocol::normalize_product(p);
        }
        match m.kind() {
            "subscriptions" => {
                let _ = crate::upstream::parse_subscriptions(data);
            }
            "status" => {
                let _ = crate::protocol::listed_products(data);
            }
            _ => {}
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = protocol::product_of_error(text);
    }
    if let Ok(request) = protocol::parse_request(data) {
        let _ = request.classify(protocol::Channel::is_relayed, |p| protocol::normalize_product(p).is_some());
    }
}
