//! The ceiling: the least a fan-out server can do. It accepts WebSocket clients,
//! takes each one's product list, and for every message writes the same
//! pre-encoded frame (stamped with its send time, like the simulator's) to each
//! subscribed socket, one write per delivery, with no other logic. What it
//! reaches is this machine's limit for the workload.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hedgehog::ws::{Decoder, Message, Role};

/// A client's product list and its socket, handed from admission to the send loop.
type Admitted = (Vec<String>, TcpStream);

struct Sub {
    stream: TcpStream,
    /// Bytes of a frame the socket did not take whole; sent before anything new.
    rest: Vec<u8>,
}

/// Serves until killed; sends nothing for the first `hold` seconds.
pub fn run(listen: &str, rate: f64, products: &[String], hold: f64) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    eprintln!("ceiling listening on {}", listener.local_addr().map_err(|e| e.to_string())?);
    // Admitted clients wait here until the send loop takes them in at its next
    // tick, so admission never waits for a fan-out in progress.
    let pending: Arc<Mutex<Vec<Admitted>>> = Arc::default();
    let admitted = pending.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let admitted = admitted.clone();
            std::thread::spawn(move || {
                if let Ok(client) = admit(stream) {
                    admitted.lock().expect("lock").push(client);
                }
            });
        }
    });
    let mut subs: HashMap<String, Vec<Sub>> = HashMap::new();
    let mut trade_ids: Vec<u64> = vec![1; products.len()];
    let start = Instant::now() + Duration::from_secs_f64(hold);
    let mut sent = 0u64;
    loop {
        for (products, stream) in pending.lock().expect("lock").drain(..) {
            for p in products {
                if let Ok(s) = stream.try_clone() {
                    subs.entry(p).or_default().push(Sub { stream: s, rest: Vec::new() });
                }
            }
        }
        // Messages due by now, across products, at `rate` per product.
        let due = (Instant::now().saturating_duration_since(start).as_secs_f64() * rate) as u64;
        while sent < due {
            for (i, p) in products.iter().enumerate() {
                let frame = hedgehog::ws::frame::text(message(p, trade_ids[i]).as_bytes());
                trade_ids[i] += 1;
                for sub in subs.get_mut(p).into_iter().flatten() {
                    deliver(sub, &frame);
                }
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// One write; a frame the socket cannot take whole is finished before the next.
fn deliver(sub: &mut Sub, frame: &[u8]) {
    if !sub.rest.is_empty() {
        match sub.stream.write(&sub.rest) {
            Ok(n) => drop(sub.rest.drain(..n)),
            Err(_) => return,
        }
        if !sub.rest.is_empty() {
            return; // still behind: this frame is lost to this client
        }
    }
    match sub.stream.write(frame) {
        Ok(n) if n < frame.len() => sub.rest.extend_from_slice(&frame[n..]),
        _ => {}
    }
}

fn message(product: &str, trade_id: u64) -> String {
    format!(
        r#"{{"type":"match","trade_id":{trade_id},"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"d50ec984-77a8-460a-b958-66f114b0de9b","side":"sell","size":"0.01000000","price":"100.00","product_id":"{product}","sequence":{trade_id},"time":"{}"}}"#,
        hedgehog::clock::now_iso()
    )
}

/// Handshake, then the client's `{"products":[...]}`; the socket turns non-blocking.
fn admit(mut stream: TcpStream) -> Result<Admitted, String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let req = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((req, used)) = hedgehog::http::parse(&buf).map_err(|e| e.to_string())? {
            buf.drain(..used);
            break req;
        }
    };
    let resp = hedgehog::ws::accept(&req).map_err(|r| format!("refused: {}", r.status))?;
    stream.write_all(&resp).map_err(|e| e.to_string())?;
    let mut dec = Decoder::new(Role::Server, 1 << 16);
    dec.feed(&buf);
    let products = loop {
        match dec.next_message().map_err(|e| e.to_string())? {
            Some(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_slice(&t).map_err(|e| e.to_string())?;
                let list = v["products"].as_array().cloned().unwrap_or_default();
                break list.iter().filter_map(|p| p.as_str().map(str::to_string)).collect();
            }
            Some(_) => {}
            None => {
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed".into());
                }
                dec.feed(&chunk[..n]);
            }
        }
    };
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok((products, stream))
}
