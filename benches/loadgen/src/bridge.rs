//! The NATS bridge: subscribes to the simulator like the relay does and
//! publishes each message, unchanged, to nats-server on `CHANNEL.PRODUCT`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

pub fn run(sim_url: &str, nats: &str, products: &[String], channel: &str) -> Result<(), String> {
    let mut pubs = TcpStream::connect(nats).map_err(|e| format!("cannot reach NATS at {nats}: {e}"))?;
    pubs.set_nodelay(true).map_err(|e| e.to_string())?;
    pubs.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n").map_err(|e| e.to_string())?;
    // Answer the server's pings so it keeps the publisher.
    let mut pong = pubs.try_clone().map_err(|e| e.to_string())?;
    let reader = BufReader::new(pubs.try_clone().map_err(|e| e.to_string())?);
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if line.starts_with("PING") && pong.write_all(b"PONG\r\n").is_err() {
                return;
            }
        }
    });
    let addr = sim_url.trim_start_matches("ws://");
    let stream = TcpStream::connect(addr).map_err(|e| format!("cannot reach the simulator: {e}"))?;
    let (mut ws, _) = tungstenite::client(sim_url, stream).map_err(|e| e.to_string())?;
    let ids: Vec<String> = products.iter().map(|p| format!("{p:?}")).collect();
    let sub = format!(r#"{{"type":"subscribe","product_ids":[{}],"channels":["{channel}"]}}"#, ids.join(","));
    ws.send(tungstenite::Message::text(sub)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    loop {
        let msg = ws.read().map_err(|e| e.to_string())?;
        let tungstenite::Message::Text(text) = msg else { continue };
        let f = crate::parse::fields(&text);
        if f.product.is_empty() {
            continue;
        }
        out.clear();
        write!(out, "PUB {channel}.{} {}\r\n", f.product, text.len()).map_err(|e| e.to_string())?;
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
        pubs.write_all(&out).map_err(|e| format!("NATS write: {e}"))?;
    }
}
