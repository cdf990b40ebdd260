//! The clients: WebSocket connections to hedgehog, nats-server or the ceiling,
//! subscribed as each expects, measuring every message they receive.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use hedgehog::net::BoxIo;
use hedgehog::ws::{self, Decoder, Message, Role};
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::parse::fields;
use crate::stats::Stats;
use crate::tls::Tls;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Hedgehog,
    Nats,
    Ceiling,
}

/// What the clients of one process do.
pub struct Plan {
    pub target: Target,
    pub addr: SocketAddr,
    /// hedgehog's REST address (usually `addr`).
    pub rest: SocketAddr,
    pub source: Ipv4Addr,
    /// Products per client.
    pub subs: Vec<Vec<String>>,
    pub channel: String,
    /// The `type` of the messages measured: `match` for `matches`, `ticker` for `ticker`.
    pub kind: &'static str,
    /// Connect only: no subscriptions (idle capacity).
    pub idle: bool,
    /// An API key or token, sent as `Authorization: Bearer` on the upgrade and on
    /// every REST subscribe (hedgehog with access control on).
    pub bearer: Option<String>,
    /// The stream is thinned on purpose (a throttled class): a gap in trade ids is
    /// counted as `skipped`, not `lost`; a repeat or a step back is still a dup.
    pub thinned: bool,
    /// wss:// and https:// (`--ca FILE`) instead of ws:// and http://.
    pub tls: Option<Tls>,
}

/// The message `type` a channel's stream is measured by.
pub fn kind_of(channel: &str) -> Result<&'static str, String> {
    match channel {
        "matches" => Ok("match"),
        "ticker" => Ok("ticker"),
        c => Err(format!("--channel {c}: only matches and ticker carry trade ids to measure by")),
    }
}

/// `Authorization: Bearer ...` and its line end, or nothing.
fn auth_header(bearer: Option<&str>) -> String {
    bearer.map_or_else(String::new, |b| format!("Authorization: Bearer {b}\r\n"))
}

/// Opens a TCP connection from `source` (any port) to `addr`.
pub fn connect(source: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    // Take the port at connect time, so ports are per destination, not per source.
    let one: libc::c_int = 1;
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of_val(&one) as libc::socklen_t,
        );
    }
    s.bind(&SocketAddr::from((source, 0)).into())?;
    // Blocking, but bounded: a server whose accept queue is full must not stall
    // this process's executor for the kernel's two-minute SYN retry.
    s.connect_timeout(&addr.into(), std::time::Duration::from_secs(3))?;
    s.set_nodelay(true)?;
    Ok(TcpStream::from(s))
}

/// A connection to `addr` from `source`, in TLS when `tls` is given; and, then,
/// the version and suite negotiated.
async fn open(source: Ipv4Addr, addr: SocketAddr, tls: Option<&Tls>) -> Result<(BoxIo, Option<String>), String> {
    let tcp = connect(source, addr).map_err(|e| format!("connect: {e}"))?;
    match tls {
        Some(tls) => tls.open(tcp).await.map(|(io, negotiated)| (io, Some(negotiated))),
        None => Ok((Box::new(tcp), None)),
    }
}

/// The upgrade request, with the bearer's header if there is one; and its key.
fn upgrade_request(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (Vec<u8>, String) {
    let (mut req, key) = ws::client_request(&addr.to_string(), path);
    // The request ends with its blank line: the header goes before it.
    req.truncate(req.len() - 2);
    req.extend_from_slice(format!("{}\r\n", auth_header(bearer)).as_bytes());
    (req, key)
}

/// A WebSocket client handshake on `stream`; returns bytes read past the response.
async fn handshake(stream: &mut BoxIo, addr: SocketAddr, path: &str, bearer: Option<&str>) -> Result<Vec<u8>, String> {
    let (req, key) = upgrade_request(addr, path, bearer);
    stream.write_all(&req).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    loop {
        if let Some(n) = ws::client_response(&buf, &key).map_err(|e| e.to_string())? {
            return Ok(buf.split_off(n));
        }
        let mut chunk = vec![0u8; 2048];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn send_text(stream: &mut BoxIo, text: &str) -> std::io::Result<()> {
    let frame = ws::frame::encode(OpCode::Data(Data::Text), text.as_bytes(), Some([1, 2, 3, 4]));
    stream.write_all(&frame).await
}

/// Per-client loss and duplicate tracking: the last trade id per product.
struct Seen(Vec<(u16, u64)>);

/// One client, from connect to the end of the run.
pub async fn client(i: usize, plan: Rc<Plan>, stats: Rc<RefCell<Stats>>, rest: Rc<RestPool>) {
    if let Err(e) = run(i, &plan, &stats, &rest).await {
        stats.borrow_mut().error(format!("client {i}: {e}"));
    }
}

async fn run(i: usize, plan: &Plan, stats: &Rc<RefCell<Stats>>, rest: &RestPool) -> Result<(), String> {
    let (mut stream, negotiated) = open(plan.source, plan.addr, plan.tls.as_ref()).await?;
    {
        let mut s = stats.borrow_mut();
        s.connected += 1;
        if s.tls.is_none() {
            s.tls = negotiated;
        }
    }
    let path = if plan.target == Target::Hedgehog { "/ws" } else { "/" };
    let leftover = handshake(&mut stream, plan.addr, path, plan.bearer.as_deref()).await?;
    let mut dec = Decoder::new(Role::Client, 1 << 22).with_read_size(16 * 1024);
    dec.feed(&leftover);
    let products = &plan.subs[i % plan.subs.len()];
    let mut nats = NatsReader::default();
    match plan.target {
        Target::Hedgehog => {
            let welcome = next_text(&mut dec, &mut stream).await?;
            let f = serde_json::from_slice::<serde_json::Value>(&welcome).map_err(|e| e.to_string())?;
            let id = f["client_id"].as_str().ok_or("no client id in the welcome")?.to_string();
            if !plan.idle {
                for p in products {
                    let path = format!("/api/v1/subscribe/{p}?channels={}", plan.channel);
                    let status = rest.post(path, id.clone()).await?;
                    if status != 200 {
                        return Err(format!("subscribe answered {status}"));
                    }
                }
            }
        }
        Target::Nats => {
            next_text(&mut dec, &mut stream).await?; // INFO
            let mut cmd = String::from("CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
            if !plan.idle {
                for (sid, p) in products.iter().enumerate() {
                    cmd.push_str(&format!("SUB {}.{p} {}\r\n", plan.channel, sid + 1));
                }
            }
            cmd.push_str("PING\r\n");
            send_text(&mut stream, &cmd).await.map_err(|e| e.to_string())?;
            while !nats.ponged {
                let t = next_text(&mut dec, &mut stream).await?;
                nats.feed(&t, &mut |_| {});
            }
        }
        Target::Ceiling => {
            if !plan.idle {
                let list: Vec<String> = products.iter().map(|p| format!("{p:?}")).collect();
                send_text(&mut stream, &format!(r#"{{"products":[{}]}}"#, list.join(",")))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    stats.borrow_mut().ready += 1;
    let mut seen = Seen(Vec::with_capacity(products.len()));
    loop {
        let payload = next_text(&mut dec, &mut stream).await?;
        let mut pongs = Vec::new();
        match plan.target {
            Target::Nats => nats.feed(&payload, &mut |m| {
                if m == b"PING" {
                    pongs.push(());
                } else {
                    measure(m, plan, stats, &mut seen);
                }
            }),
            _ => measure(&payload, plan, stats, &mut seen),
        }
        for _ in pongs {
            send_text(&mut stream, "PONG\r\n").await.map_err(|e| e.to_string())?;
        }
    }
}

/// The next text or binary message's payload.
async fn next_text(dec: &mut Decoder, stream: &mut BoxIo) -> Result<Vec<u8>, String> {
    loop {
        match dec.next_message().map_err(|e| e.to_string())? {
            Some(Message::Text(t)) | Some(Message::Binary(t)) => return Ok(t),
            Some(Message::Close(c)) => return Err(format!("closed by the server: {c:?}")),
            Some(_) => {}
            None => {
                if dec.read_from(stream).await.map_err(|e| e.to_string())? == 0 {
                    return Err("the server closed the connection".into());
                }
            }
        }
    }
}

fn measure(payload: &[u8], plan: &Plan, stats: &Rc<RefCell<Stats>>, seen: &mut Seen) {
    let Ok(text) = std::str::from_utf8(payload) else { return };
    let f = fields(text);
    if f.kind != plan.kind {
        return;
    }
    let now = hedgehog::clock::now_micros();
    let mut s = stats.borrow_mut();
    let product = s.product_index(f.product);
    if let Some(id) = f.trade_id {
        match seen.0.iter_mut().find(|(p, _)| *p == product) {
            Some((_, last)) => {
                if s.measuring {
                    if id <= *last {
                        s.dups += 1;
                    } else if plan.thinned {
                        s.skipped += id - *last - 1;
                    } else {
                        s.lost += id - *last - 1;
                    }
                }
                *last = (*last).max(id);
            }
            None => seen.0.push((product, id)),
        }
    }
    if s.measuring {
        s.deliveries += 1;
        if let Some(t) = f.time {
            let _ = s.hist.record((now - t).max(1) as u64);
        }
    }
}

/// Reads the NATS protocol out of WebSocket payloads.
#[derive(Default)]
struct NatsReader {
    buf: Vec<u8>,
    ponged: bool,
}

impl NatsReader {
    /// Feeds bytes; calls `on` with each message payload, or `PING`.
    fn feed(&mut self, bytes: &[u8], on: &mut dyn FnMut(&[u8])) {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while let Some(end) = find_crlf(&self.buf[at..]) {
            let line = &self.buf[at..at + end];
            if line.starts_with(b"MSG ") {
                let size: usize = std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let start = at + end + 2;
                if self.buf.len() < start + size + 2 {
                    break;
                }
                on(&self.buf[start..start + size]);
                at = start + size + 2;
                continue;
            }
            if line == b"PONG" {
                self.ponged = true;
            } else if line == b"PING" {
                on(b"PING");
            }
            at += end + 2;
        }
        self.buf.drain(..at);
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// A few keep-alive HTTP connections that carry the clients' REST subscribes.
pub struct RestPool {
    workers: Vec<LocalSender<Job>>,
    next: std::cell::Cell<usize>,
}

type Job = (String, String, LocalSender<Result<u16, String>>);

impl RestPool {
    pub fn new(addr: SocketAddr, source: Ipv4Addr, size: usize, bearer: Option<&str>, tls: Option<Tls>) -> RestPool {
        let auth = auth_header(bearer);
        // Its own latency-matters queue: subscribing must not wait behind thousands
        // of clients busy reading messages.
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::default(),
            glommio::Latency::Matters(std::time::Duration::from_millis(1)),
            "rest",
        );
        let workers = (0..size)
            .map(|_| {
                // Each worker serves its jobs in order; the queue bounds how many
                // clients wait on it (a full queue makes the next client wait).
                let (tx, rx) = local_channel::new_bounded::<Job>(1024);
                let (auth, tls) = (auth.clone(), tls.clone());
                let worker = async move {
                    let mut conn: Option<BoxIo> = None;
                    while let Some((path, id, reply)) = rx.recv().await {
                        let r = post(&mut conn, (addr, source, tls.as_ref()), &path, &id, &auth).await;
                        if r.is_err() {
                            conn = None;
                        }
                        let _ = reply.send(r).await;
                    }
                };
                if let Ok(task) = glommio::spawn_local_into(worker, queue) {
                    task.detach();
                }
                tx
            })
            .collect();
        RestPool { workers, next: std::cell::Cell::new(0) }
    }

    pub async fn post(&self, path: String, id: String) -> Result<u16, String> {
        let (tx, rx) = local_channel::new_bounded(1);
        let w = self.next.get() % self.workers.len();
        self.next.set(w + 1);
        self.workers[w].send((path, id, tx)).await.map_err(|_| "the REST pool is gone")?;
        rx.recv().await.unwrap_or_else(|| Err("no REST answer".into()))
    }
}

async fn post(
    conn: &mut Option<BoxIo>,
    (addr, source, tls): (SocketAddr, Ipv4Addr, Option<&Tls>),
    path: &str,
    id: &str,
    auth: &str,
) -> Result<u16, String> {
    if conn.is_none() {
        *conn = Some(open(source, addr, tls).await.map_err(|e| format!("REST {e}"))?.0);
    }
    let s = conn.as_mut().expect("just connected");
    let req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nX-Client-Id: {id}\r\n{auth}Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= n + len {
                return Ok(resp.code.unwrap_or(0));
            }
        }
        let mut chunk = vec![0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("REST connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_is_a_header_of_the_upgrade() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().expect("an address");
        for bearer in [None, Some("hh_00ff")] {
            let (req, _) = upgrade_request(addr, "/ws", bearer);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Request::new(&mut headers);
            assert_eq!(parsed.parse(&req), Ok(httparse::Status::Complete(req.len())));
            let auth = parsed.headers.iter().find(|h| h.name == "Authorization").map(|h| h.value);
            assert_eq!(auth, bearer.map(|b| format!("Bearer {b}")).as_deref().map(str::as_bytes));
        }
    }

    #[test]
    fn nats_messages_split_across_frames() {
        let mut r = NatsReader::default();
        let mut got = Vec::new();
        r.feed(b"INFO {}\r\nPONG\r\nMSG matches.BTC-USD 1 5\r\nhel", &mut |m| got.push(m.to_vec()));
        assert!(r.ponged);
        r.feed(b"lo\r\nPING\r\nMSG a 2 2\r\nhi\r\n", &mut |m| got.push(m.to_vec()));
        assert_eq!(got, [b"hello".to_vec(), b"PING".to_vec(), b"hi".to_vec()]);
    }
}
