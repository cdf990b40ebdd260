//! One accepted connection: HTTP/1.1 requests (keep-alive, pipelined) until it
//! upgrades to a WebSocket or becomes a stream of one pair.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::TaskQueueHandle;
use serde_json::json;

use super::api;
use crate::http::{self, Request, Response, Route};
use crate::hub::{channel_index, Admission, ClientId, Hub, IpSlot, Op};
use crate::net::{self, Deadlines, Phase, ReadError};
use crate::protocol::{self, RequestKind};
use crate::rate::RateLimit;
use crate::ws::{self, close, Outbox};

/// The task queues a shard runs its connections in.
#[derive(Clone, Copy)]
pub struct Queues {
    /// HTTP requests, handshakes and REST: kept responsive while fan-out is heavy.
    pub http: TaskQueueHandle,
    /// WebSocket and stream sessions: the fan-out's writers.
    pub sessions: TaskQueueHandle,
}

/// The longest wait between failed accepts (typically: out of descriptors).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this long about failed accepts, with their count.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// What a connection over `--max-connections` gets to ask for a health check.
const RESERVE_DEADLINE: Duration = Duration::from_secs(2);

/// Accepts until cancelled. Runs as a task of its own (see `Shard::run`): nothing
/// but its own accepts may wake it.
pub async fn accept_loop(listener: TcpListener, hub: Rc<Hub>, queues: Queues) {
    let mut backoff = Duration::from_millis(5);
    let (mut failed, mut last_log) = (0u64, None::<Instant>);
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if failed > 0 && last_log.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                    log::warn!("accepting again after {failed} failed accepts");
                    (failed, last_log) = (0, Some(Instant::now()));
                }
                backoff = Duration::from_millis(5);
                admit(stream, &hub, queues);
            }
            Err(e) => {
                // Typically out of file descriptors: back off until some free up,
                // and say so without flooding the log.
                failed += 1;
                if last_log.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                    log::warn!("accept failed ({failed} so far): {e}; retrying within {ACCEPT_BACKOFF_MAX:?}");
                    last_log = Some(Instant::now());
                }
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Gives an accepted connection its task: served, served from the reserve
/// (health checks only), or refused (429) when its address is at its limit.
fn admit(stream: TcpStream, hub: &Rc<Hub>, queues: Queues) {
    let admission = match stream.peer_addr() {
        Ok(a) => hub.global.admit(a.ip()),
        Err(_) => return,
    };
    let shard = hub.id;
    let task = match admission {
        Admission::Open(slot) => {
            let conn = serve(stream, hub.clone(), queues, slot);
            let global = hub.global.clone();
            glommio::spawn_local_into(
                async move {
                    super::contained(&global, "an HTTP connection", conn).await;
                },
                queues.http,
            )
        }
        Admission::Reserve(slot) => glommio::spawn_local_into(reserve(stream, hub.clone(), slot), queues.http),
        Admission::PerIpFull => glommio::spawn_local_into(too_many(stream, hub.global.max_per_ip, shard), queues.http),
    };
    if let Ok(task) = task {
        task.detach();
    }
}

/// A connection over its IP's limit: 429 and close at once. It holds no slot, so
/// it does not linger to drain what the peer sends: a flood of them must not
/// hold descriptors beyond the budget.
async fn too_many(mut stream: TcpStream, limit: usize, shard: usize) {
    let message = format!("at most {limit} connections from one address");
    let resp = with_shard(Response::error(429, "too_many_connections", message), shard);
    let _ = stream.write_all(&resp.to_bytes(true)).await;
}

/// A connection past `--max-connections`: it may ask for a health check within a
/// short deadline; anything else gets 503 `server_full`. Either way it is closed.
async fn reserve(mut stream: TcpStream, hub: Rc<Hub>, _slot: IpSlot) {
    let short = Deadlines {
        first_byte: RESERVE_DEADLINE,
        head: RESERVE_DEADLINE,
        body: RESERVE_DEADLINE,
        keep_alive: RESERVE_DEADLINE,
    };
    let mut buf = Vec::new();
    let Ok(Some(req)) = net::read_request_within(&mut stream, &mut buf, RESERVE_DEADLINE, &short).await else { return };
    let resp = match http::route(&req.method, &req.path, false) {
        Ok(route @ (Route::Health | Route::Live | Route::Ready)) => Box::pin(api::handle(&hub, route, &req)).await,
        _ => {
            let message =
                format!("the server holds its limit of {} connections; try again later", hub.global.max_connections);
            Response::error(503, "server_full", message).with_header("Retry-After", "1")
        }
    };
    Box::pin(close_after(stream, &resp, hub.id)).await;
}

/// `slot` holds this connection's place in its IP's count for as long as it lives.
async fn serve(mut stream: TcpStream, hub: Rc<Hub>, queues: Queues, slot: IpSlot) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut rate = RateLimit::new(hub.global.max_request_rate);
    let deadlines = hub.global.deadlines;
    let mut idle = deadlines.first_byte;
    loop {
        let req = match net::read_request_within(&mut stream, &mut buf, idle, &deadlines).await {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Io(_)) | Err(ReadError::TimedOut(Phase::Idle)) => return,
            Err(ReadError::TimedOut(phase)) => {
                let part = if phase == Phase::Head { "head" } else { "body" };
                let resp =
                    Response::error(408, "request_timeout", format!("the request {part} did not arrive in time"));
                return Box::pin(close_after(stream, &resp, hub.id)).await;
            }
            Err(ReadError::Parse(e)) => {
                let (status, code) = e.status();
                let resp = Response::error(status, code, e.to_string());
                return Box::pin(close_after(stream, &resp, hub.id)).await;
            }
        };
        idle = deadlines.keep_alive;
        let resp = match http::route(&req.method, &req.path, ws::is_upgrade(&req)) {
            _ if !rate.allow() => rate_limited(hub.global.max_request_rate),
            Ok(route) => match route {
                Route::WebSocket => return upgrade(stream, &req, buf, hub, None, queues, slot).await,
                Route::Echo if hub.global.echo => return Box::pin(echo(stream, &req, buf, hub, queues, slot)).await,
                // The rare and larger paths are boxed: a connection's task is as big
                // as its largest state, for as long as the connection lives.
                Route::Pair(pair) if !names_client(&req) => {
                    return Box::pin(stream_pair(stream, req, buf, hub, &pair, queues, slot)).await
                }
                route => Box::pin(api::handle(&hub, route, &req)).await,
            },
            Err(resp) => resp,
        };
        if !req.keep_alive() {
            return Box::pin(close_after(stream, &resp, hub.id)).await;
        }
        if stream.write_all(&with_shard(resp, hub.id).to_bytes(false)).await.is_err() {
            return;
        }
    }
}

/// Every answer names the shard that wrote it, for operators tracing requests.
fn with_shard(resp: Response, shard: usize) -> Response {
    resp.with_header(SHARD_HEADER, shard.to_string())
}

/// The header that names the shard.
pub const SHARD_HEADER: &str = "X-Hedgehog-Shard";

/// The answer to a request over the connection's rate; the connection stays open.
fn rate_limited(limit: u32) -> Response {
    let message = format!("more than {limit} requests per second on one connection; slow down");
    Response::error(429, "rate_limited", message).with_header("Retry-After", "1".to_string())
}

fn names_client(req: &Request) -> bool {
    req.header("X-Client-Id").is_some() || req.query_param("client_id").is_some()
}

/// Answers, then closes without resetting the peer: our side is shut for writing
/// and what the peer still sends is read and dropped until it hangs up (or 2 s).
async fn close_after(mut stream: TcpStream, resp: &Response, shard: usize) {
    if stream.write_all(&with_shard(resp.clone(), shard).to_bytes(true)).await.is_err() {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let drain = async {
        let mut sink = [0u8; 256];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    or(drain, glommio::timer::sleep(Duration::from_secs(2))).await;
}

/// Answers an upgrade request: the handshake, or the error and a close.
async fn upgrade(
    stream: TcpStream,
    req: &Request,
    leftover: Vec<u8>,
    hub: Rc<Hub>,
    pre: Option<Op>,
    queues: Queues,
    slot: IpSlot,
) {
    // `?mode=coinbase`: Coinbase's messages only, for clients that expect nothing else.
    let pure = req.query_param("mode").as_deref() == Some("coinbase");
    match ws::accept(req) {
        Ok(handshake) => {
            let handshake = handshake_with_shard(handshake, hub.id);
            websocket(stream, handshake, leftover, hub, Start { pre, pure }, queues, slot).await
        }
        Err(resp) => Box::pin(close_after(stream, &resp, hub.id)).await,
    }
}

/// The 101 answer with the shard header added before its blank line.
fn handshake_with_shard(mut handshake: Vec<u8>, shard: usize) -> Vec<u8> {
    let at = handshake.len().saturating_sub(2);
    let header = format!("{SHARD_HEADER}: {shard}\r\n");
    handshake.splice(at..at, header.bytes());
    handshake
}

/// How a WebSocket client starts.
struct Start {
    /// Already subscribed to a pair (`GET /api/v1/subscribe/{pair}` with an upgrade).
    pre: Option<Op>,
    /// Coinbase's messages only (`?mode=coinbase`).
    pure: bool,
}

/// A WebSocket client, optionally already subscribed to a pair. Only what the
/// session needs is kept: this future lives as long as the connection.
async fn websocket(
    mut stream: TcpStream,
    handshake: Vec<u8>,
    leftover: Vec<u8>,
    hub: Rc<Hub>,
    start: Start,
    queues: Queues,
    slot: IpSlot,
) {
    let Start { pre, pure } = start;
    if stream.write_all(&handshake).await.is_err() {
        return;
    }
    drop(handshake);
    let outbox = hub.new_outbox();
    let Some(id) = hub.register(outbox.clone(), pure) else {
        outbox.close(close::INTERNAL, "no room for another client");
        let _ = ws::write_loop(&outbox, &mut stream).await;
        return;
    };
    if !pure {
        let welcome = json!({"type": "welcome", "client_id": id.to_string()}).to_string();
        let _ = outbox.push(ws::frame::text(welcome.as_bytes()));
    }
    // The session gets a task of its own, holding only what it needs; this
    // connection's HTTP task ends here and its memory is freed. From here to
    // `unregister`, a panic ends this session only, and the client is still
    // unregistered.
    //
    // The served part is boxed before the task's own future is made, so the
    // stream and the session state are stored once, not once per layer of
    // async block (an idle connection's memory is mostly this).
    let session = Session { hub: hub.clone(), id, pre, rate: RateLimit::new(hub.global.max_request_rate) };
    let served = Box::pin(ws::run_session(stream, leftover, outbox, hub.global.limits, session));
    let session = async move {
        super::contained(&hub.global, "a WebSocket session", served).await;
        Box::pin(hub.unregister(id)).await;
        drop(slot);
    };
    if let Ok(task) = glommio::spawn_local_into(session, queues.sessions) {
        task.detach();
    }
}

/// A relay client's session: Coinbase `subscribe` and `unsubscribe` messages on
/// the WebSocket itself, answered as Coinbase answers them. They change the same
/// subscriptions as the REST API.
struct Session {
    hub: Rc<Hub>,
    id: ClientId,
    /// A subscription to make before anything is read (a pre-subscribed stream).
    pre: Option<Op>,
    rate: RateLimit,
}

impl ws::Handler for Session {
    async fn on_start(&mut self) {
        if let Some(op) = self.pre.take() {
            let _ = Box::pin(self.hub.execute(self.id, op)).await;
        }
    }

    fn on_ping(&mut self, outbox: &Outbox) -> bool {
        let allowed = self.rate.allow();
        if !allowed {
            let _ = outbox.push(ws::frame::text(
                protocol::error_message("rate limited", "too many messages per second; slow down").as_bytes(),
            ));
        }
        allowed
    }

    async fn on_text(&mut self, text: Vec<u8>, outbox: &Outbox) {
        // Boxed: a session's task is as big as its largest state for as long as the
        // connection lives, and most clients never send a message.
        Box::pin(self.handle(text, outbox)).await
    }
}

impl Session {
    async fn handle(&mut self, text: Vec<u8>, outbox: &Outbox) {
        let send = |text: &str| {
            let _ = outbox.push(ws::frame::text(text.as_bytes()));
        };
        if !self.rate.allow() {
            return send(&protocol::error_message("rate limited", "too many messages per second; slow down"));
        }
        let req = match protocol::parse_request(&text) {
            Ok(req) => req,
            Err(error) => return send(&error),
        };
        let classified = req.classify(protocol::Channel::is_relayed, |p| self.hub.is_product(p));
        for error in &classified.errors {
            send(error);
        }
        // The hub still keys channels by index; every relayed channel has one.
        let channels = classified.channels.into_iter().filter_map(|(ch, ps)| Some((channel_index(ch.name())?, ps)));
        let subscribe = req.kind == RequestKind::Subscribe;
        let op = Op::Coinbase { subscribe, channels: channels.collect() };
        if let Err(e) = self.hub.execute(self.id, op).await {
            send(&protocol::error_message(req.kind.failure(), &e.message));
        }
    }
}

/// `GET /echo` (only with `--echo`): a WebSocket that sends back every message it
/// gets, so a conformance suite can drive hedgehog's WebSocket implementation.
/// It has the relay's limits and outbox, but no client id and no subscriptions.
async fn echo(mut stream: TcpStream, req: &Request, leftover: Vec<u8>, hub: Rc<Hub>, queues: Queues, slot: IpSlot) {
    let handshake = match ws::accept(req) {
        Ok(h) => handshake_with_shard(h, hub.id),
        Err(resp) => return close_after(stream, &resp, hub.id).await,
    };
    if stream.write_all(&handshake).await.is_err() {
        return;
    }
    let outbox = hub.new_outbox();
    let session = async move {
        super::contained(
            &hub.global,
            "an echo session",
            ws::run_session(stream, leftover, outbox, hub.global.limits, Echo),
        )
        .await;
        drop(slot);
    };
    if let Ok(task) = glommio::spawn_local_into(session, queues.sessions) {
        task.detach();
    }
}

struct Echo;

/// What a debug build's echo endpoint panics on.
#[cfg(debug_assertions)]
const PANIC_REQUEST: &[u8] = b"hedgehog test: panic here";
/// What makes a debug build's echo endpoint panic outside any connection's
/// containment, ending its shard's thread (tests/fail_fast.rs).
#[cfg(debug_assertions)]
const PANIC_SHARD_REQUEST: &[u8] = b"hedgehog test: panic the shard";
/// What makes a debug build's echo endpoint block its shard's thread, so that
/// the shard answers nothing and cannot stop (tests/fail_fast.rs).
#[cfg(debug_assertions)]
const WEDGE_SHARD_REQUEST: &[u8] = b"hedgehog test: wedge the shard";

impl ws::Handler for Echo {
    async fn on_text(&mut self, text: Vec<u8>, outbox: &Outbox) {
        // A debug build's echo endpoint fails on request, so the tests can show
        // that a panic ends one connection and not its shard (tests/panics.rs),
        // and that a shard that dies or hangs ends the process (tests/fail_fast.rs).
        #[cfg(debug_assertions)]
        #[allow(clippy::panic)]
        {
            if text == PANIC_REQUEST {
                panic!("the echo endpoint was asked to panic");
            }
            if text == PANIC_SHARD_REQUEST {
                // glommio runs a new task at once, inside this one: it panics
                // after its first turn, from the executor itself.
                let shard = async {
                    futures_lite::future::yield_now().await;
                    panic!("the echo endpoint was asked to panic its shard")
                };
                glommio::spawn_local(shard).detach();
            }
            if text == WEDGE_SHARD_REQUEST {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let _ = outbox.push(ws::frame::text(&text));
    }

    async fn on_binary(&mut self, data: Vec<u8>, outbox: &Outbox) {
        let _ = outbox.push(ws::frame::binary(&data));
    }
}

/// How a stream of one pair is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    /// `text/event-stream`: `data: <message>` and a blank line.
    Sse,
    /// `application/x-ndjson`: one message per line.
    Ndjson,
}

/// `GET /api/v1/subscribe/{pair}` without a client id: this connection itself
/// becomes the subscriber, as a WebSocket, SSE or NDJSON stream.
async fn stream_pair(
    mut stream: TcpStream,
    req: Request,
    leftover: Vec<u8>,
    hub: Rc<Hub>,
    pair: &str,
    queues: Queues,
    slot: IpSlot,
) {
    let op = match api::product(&hub, pair).and_then(|p| {
        Ok(Op::Subscribe { product: p, channels: api::channels(&hub, &req)?, replay: api::replay(&hub, &req)? })
    }) {
        Ok(op) => op,
        Err(e) => return Box::pin(close_after(stream, &Response::error(e.status, e.code, e.message), hub.id)).await,
    };
    if ws::is_upgrade(&req) {
        return upgrade(stream, &req, leftover, hub, Some(op), queues, slot).await;
    }
    let sse = req.header_str("Accept").is_some_and(|a| a.contains("text/event-stream"));
    let kind = if sse { StreamKind::Sse } else { StreamKind::Ndjson };
    let outbox = hub.new_outbox();
    let Some(id) = hub.register(outbox.clone(), false) else {
        let resp = with_shard(Response::error(503, "full", "no room for another client"), hub.id);
        let _ = stream.write_all(&resp.to_bytes(true)).await;
        return;
    };
    let content_type = if sse { "text/event-stream" } else { "application/x-ndjson" };
    drop((req, leftover));
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\nX-Client-Id: {id}\r\n{SHARD_HEADER}: {}\r\nConnection: close\r\n\r\n",
        hub.id
    );
    super::contained(&hub.global, "a stream", async {
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let _ = hub.execute(id, op).await;
        let (mut rd, mut wr) = futures_lite::io::split(stream);
        // The client sends nothing more; reading only notices when it leaves.
        let reader = async {
            let mut sink = [0u8; 256];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let writer = stream_writer(&outbox, &mut wr, kind);
        or(
            reader,
            or(writer, async {
                outbox.abandoned(Duration::from_secs(2)).await;
            }),
        )
        .await;
    })
    .await;
    Box::pin(hub.unregister(id)).await;
}

/// Writes each queued message as an SSE event or an NDJSON line.
async fn stream_writer<W: AsyncWrite + Unpin>(outbox: &Outbox, w: &mut W, kind: StreamKind) {
    let mut out = Vec::new();
    while let Some(frames) = outbox.take_frames().await {
        out.clear();
        for f in &frames {
            let Some((opcode, payload)) = ws::frame::split_server_frame(f) else { continue };
            if opcode == 8 {
                break;
            }
            match kind {
                StreamKind::Sse => {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(payload);
                    out.extend_from_slice(b"\n\n");
                }
                StreamKind::Ndjson => {
                    out.extend_from_slice(payload);
                    out.push(b'\n');
                }
            }
        }
        if w.write_all(&out).await.is_err() {
            return;
        }
    }
}
