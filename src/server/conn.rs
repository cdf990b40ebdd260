//! The accept loop and one accepted connection: admission, then HTTP/1.1
//! requests (keep-alive, pipelined) until it upgrades to a WebSocket
//! ([`super::websocket`]) or becomes a stream of one pair ([`super::stream`]).

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsAcceptor;
use glommio::net::{TcpListener, TcpStream};

use super::task::Queues;
use super::tls::{self, Conn, Secured};
use super::{api, auth, stream, websocket};
use crate::access::Principal;
use crate::http::{self, Request, Response, Route};
use crate::hub::{Admission, Hub, IpSlot};
use crate::metrics::Handshake;
use crate::net::{self, Deadlines, Phase, ReadError};
use crate::rate::RateLimit;
use crate::ws;

/// The longest wait between failed accepts (typically: out of descriptors).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this long about failed accepts, with their count.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// What a connection over `--max-connections` gets to ask for a health check.
const RESERVE_DEADLINE: Duration = Duration::from_secs(2);

/// Accepts until cancelled. Runs as a task of its own (see `Shard::run`): nothing
/// but its own accepts may wake it. With `tls`, every connection is TLS.
pub async fn accept_loop(listener: TcpListener, hub: Rc<Hub>, queues: Queues, tls: Option<TlsAcceptor>) {
    let mut backoff = Duration::from_millis(5);
    let (mut failed, mut last_log) = (0u64, None::<Instant>);
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if failed > 0 && last_log.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                    log::warn!(event = "accept_resumed"; "accepting again after {failed} failed accepts");
                    (failed, last_log) = (0, Some(Instant::now()));
                }
                backoff = Duration::from_millis(5);
                admit(stream, &hub, queues, tls.as_ref());
            }
            Err(e) => {
                // Typically out of file descriptors: back off until some free up,
                // and say so without flooding the log.
                failed += 1;
                if last_log.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                    log::warn!(event = "accept_failed";
                        "accept failed ({failed} so far): {e}; retrying within {ACCEPT_BACKOFF_MAX:?}");
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
fn admit(stream: TcpStream, hub: &Rc<Hub>, queues: Queues, tls: Option<&TlsAcceptor>) {
    let admission = match stream.peer_addr() {
        Ok(a) => hub.global.admit(a.ip()),
        Err(_) => return,
    };
    let shard = hub.id;
    let task = match admission {
        Admission::Open(slot) => {
            let conn = serve(stream, hub.clone(), queues, slot, tls.cloned());
            let global = hub.global.clone();
            glommio::spawn_local_into(
                async move {
                    super::task::contained(&global, "an HTTP connection", conn).await;
                },
                queues.http,
            )
        }
        Admission::Reserve(slot) => {
            glommio::spawn_local_into(reserve(stream, hub.clone(), slot, tls.cloned()), queues.http)
        }
        // Over TLS, a refusal would cost a handshake (a signature) per
        // connection of a flood from one address: it is closed unanswered.
        Admission::PerIpFull if tls.is_some() => {
            let message = format!("at most {} connections from one address (closed before TLS)", hub.global.max_per_ip);
            log_turned_away(&stream, log::Level::Warn, "too_many_connections", &message);
            return;
        }
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
    log_turned_away(&stream, log::Level::Warn, "too_many_connections", &message);
    let resp = with_shard(Response::error(429, "too_many_connections", message), shard);
    let _ = stream.write_all(&resp.to_bytes(true)).await;
}

/// A connection past `--max-connections`: it may ask for a health check within a
/// short deadline; anything else gets 503 `server_full`. Either way it is closed.
async fn reserve(stream: TcpStream, hub: Rc<Hub>, _slot: IpSlot, tls: Option<TlsAcceptor>) {
    let short = Deadlines {
        first_byte: RESERVE_DEADLINE,
        head: RESERVE_DEADLINE,
        body: RESERVE_DEADLINE,
        keep_alive: RESERVE_DEADLINE,
    };
    let Some(mut stream) = secured(stream, &hub, tls.as_ref(), &short).await else { return };
    let mut buf = Vec::new();
    let Ok(Some(req)) = net::read_request_within(&mut stream, &mut buf, RESERVE_DEADLINE, &short).await else { return };
    let resp = match http::route(&req.method, &req.path, false) {
        Ok(route @ (Route::Health | Route::Live | Route::Ready)) => {
            Box::pin(api::handle(&hub, route, &req, None)).await
        }
        _ => {
            let message =
                format!("the server holds its limit of {} connections; try again later", hub.global.max_connections);
            log_turned_away(&stream, log::Level::Warn, "server_full", &message);
            Response::error(503, "server_full", message).with_header("Retry-After", "1")
        }
    };
    Box::pin(close_after(stream, &resp, hub.id)).await;
}

/// The connection as it is to be served: plain, or TLS once the handshake is
/// done. `None`: it has been dealt with (closed, or answered 400 for plain HTTP
/// on the TLS port), and counted.
async fn secured(stream: TcpStream, hub: &Hub, tls: Option<&TlsAcceptor>, d: &Deadlines) -> Option<Conn> {
    let Some(acceptor) = tls else { return Some(Conn::Plain(stream)) };
    // For the log line of a failed handshake (which takes the stream).
    let peer = stream.peer_addr().ok();
    match tls::secure(stream, acceptor, d.first_byte, d.head).await {
        Secured::Tls(conn) => {
            hub.count_tls(Handshake::Ok);
            Some(conn)
        }
        Secured::Silent => None,
        Secured::Plain(stream) => {
            hub.count_tls(Handshake::PlainHttp);
            let message = "this port speaks TLS only: use https:// or wss://";
            log_turned_away(&stream, log::Level::Info, "tls_handshake_failed", "plain HTTP on the TLS port");
            let resp = Response::error(400, "tls_required", message);
            hub.count_request(UNROUTED, resp.status, Instant::now());
            Box::pin(close_after(stream, &resp, hub.id)).await;
            None
        }
        Secured::Refused(how, why) => {
            hub.count_tls(how);
            log_turned_away(&peer, log::Level::Info, "tls_handshake_failed", &why);
            None
        }
    }
}

/// `slot` holds this connection's place in its IP's count for as long as it lives.
async fn serve(stream: TcpStream, hub: Rc<Hub>, queues: Queues, slot: IpSlot, tls: Option<TlsAcceptor>) {
    let _ = stream.set_nodelay(true);
    let deadlines = hub.global.deadlines;
    let Some(mut stream) = secured(stream, &hub, tls.as_ref(), &deadlines).await else { return };
    let mut buf = Vec::new();
    let mut rate = RateLimit::new(hub.global.max_request_rate);
    let mut idle = deadlines.first_byte;
    loop {
        let req = match net::read_request_within(&mut stream, &mut buf, idle, &deadlines).await {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Io(_)) | Err(ReadError::TimedOut(Phase::Idle)) => return,
            Err(ReadError::TimedOut(phase)) => {
                let part = if phase == Phase::Head { "head" } else { "body" };
                let resp =
                    Response::error(408, "request_timeout", format!("the request {part} did not arrive in time"));
                hub.count_request(UNROUTED, resp.status, Instant::now());
                return Box::pin(close_after(stream, &resp, hub.id)).await;
            }
            Err(ReadError::Parse(e)) => {
                let (status, code) = e.status();
                // Not the text of an unsupported Transfer-Encoding: the client wrote it.
                let reason = if status == 501 { code.to_string() } else { e.to_string() };
                log_turned_away(&stream, log::Level::Info, "bad_request", &reason);
                let resp = Response::error(status, code, e.to_string());
                hub.count_request(UNROUTED, resp.status, Instant::now());
                return Box::pin(close_after(stream, &resp, hub.id)).await;
            }
        };
        idle = deadlines.keep_alive;
        let started = Instant::now();
        let routed = http::route(&req.method, &req.path, ws::is_upgrade(&req));
        let name = routed.as_ref().map_or(UNROUTED, Route::name);
        let resp = match routed {
            _ if !rate.allow() => rate_limited(rate.per_second()),
            Ok(route) => match auth::who(&hub, &route, &req) {
                Err(e) => e.response(),
                Ok(who) => {
                    if who.is_some() {
                        rate.set_rate(auth::request_rate(&hub.global, who.as_ref()));
                    }
                    match route {
                        Route::WebSocket => {
                            let conn = handoff(stream, buf, hub, queues, slot, who);
                            return websocket::upgrade(conn, &req, None).await;
                        }
                        Route::Echo if hub.global.echo => {
                            let conn = handoff(stream, buf, hub, queues, slot, None);
                            return Box::pin(websocket::echo(conn, &req)).await;
                        }
                        // The rare and larger paths are boxed: a connection's task is as
                        // big as its largest state, for as long as the connection lives.
                        Route::Pair(pair) if !names_client(&req) => {
                            let conn = handoff(stream, buf, hub, queues, slot, who);
                            return Box::pin(stream::stream_pair(conn, req, &pair)).await;
                        }
                        route => Box::pin(api::handle(&hub, route, &req, who.as_ref())).await,
                    }
                }
            },
            Err(resp) => resp,
        };
        // Upgrades and streams left above: they are counted as connections.
        hub.count_request(name, resp.status, started);
        if !req.keep_alive() {
            return Box::pin(close_after(stream, &resp, hub.id)).await;
        }
        if stream.write_all(&with_shard(resp, hub.id).to_bytes(false)).await.is_err() {
            return;
        }
    }
}

/// A connection leaving the HTTP loop to become a session (a WebSocket or a
/// stream): what the session takes over.
pub(super) struct Handoff {
    pub stream: Conn,
    /// Bytes read past the request: the client's first frames.
    pub leftover: Vec<u8>,
    pub hub: Rc<Hub>,
    pub queues: Queues,
    /// The connection's place in its address's count, for as long as it lives.
    pub slot: IpSlot,
    /// Who the session is, when access control is on.
    pub who: Option<Principal>,
}

fn handoff(
    stream: Conn,
    leftover: Vec<u8>,
    hub: Rc<Hub>,
    queues: Queues,
    slot: IpSlot,
    who: Option<Principal>,
) -> Handoff {
    Handoff { stream, leftover, hub, queues, slot, who }
}

/// One line (budgeted: see `logs::per_client`) about a connection turned away or
/// a request that could not be read: `event`, the peer and why. The peer is
/// looked up only for a line that is written: a flood costs no more than before.
pub(super) fn log_turned_away(stream: &impl Peer, level: log::Level, event: &'static str, reason: &str) {
    crate::logs::per_client(|| {
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "-".into());
        log::log!(level, event, peer = peer.as_str(), reason; "{event} from {peer}: {reason}");
    });
}

/// What a log line names a connection by.
pub(super) trait Peer {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr>;
}

impl Peer for TcpStream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        TcpStream::peer_addr(self).map_err(std::io::Error::from)
    }
}

impl Peer for Option<std::net::SocketAddr> {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.ok_or_else(|| std::io::Error::other("no peer address"))
    }
}

impl Peer for Conn {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        Conn::peer_addr(self)
    }
}

/// Every answer names the shard that wrote it, for operators tracing requests.
pub(super) fn with_shard(resp: Response, shard: usize) -> Response {
    resp.with_header(SHARD_HEADER, shard.to_string())
}

/// The route label of a request that matched no route (or was not read whole).
const UNROUTED: &str = "unmatched";

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
pub(super) async fn close_after<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, resp: &Response, shard: usize) {
    if stream.write_all(&with_shard(resp.clone(), shard).to_bytes(true)).await.is_err() {
        return;
    }
    // For TLS: close_notify, then the socket's writing side.
    let _ = stream.close().await;
    let drain = async {
        let mut sink = [0u8; 256];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    or(drain, glommio::timer::sleep(Duration::from_secs(2))).await;
}
