//! A connection that streams one pair as Server-Sent Events or NDJSON
//! (`GET /api/v1/subscribe/{pair}` without an upgrade or a client id).

use std::time::Duration;

use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::api::ApiError;
use super::conn::{close_after, with_shard, Handoff, SHARD_HEADER};
use super::task::{contained, Queues};
use super::tls::Conn;
use super::{api, auth, websocket};
use crate::access::Principal;
use crate::http::{Request, Response};
use crate::hub::{ClientId, ClientKind, Hub, Op};
use crate::metrics::Entry;
use crate::ws::{self, Outbox};

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
pub(super) async fn stream_pair(conn: Handoff, req: Request, pair: &str) {
    let hub = conn.hub.clone();
    let op = match subscription(&hub, &req, pair, conn.who.as_ref()) {
        Ok(op) => op,
        Err(e) => return Box::pin(close_after(conn.stream, &e.response(), hub.id)).await,
    };
    hub.count_operation(Entry::Stream, true);
    if ws::is_upgrade(&req) {
        return websocket::upgrade(conn, &req, Some(op)).await;
    }
    let seat = match auth::seat(&hub.global, conn.who.as_ref()) {
        Ok(seat) => seat,
        Err(e) => return Box::pin(close_after(conn.stream, &e.response(), hub.id)).await,
    };
    let Handoff { mut stream, leftover, hub, queues, slot, who } = conn;
    let sse = req.header_str("Accept").is_some_and(|a| a.contains("text/event-stream"));
    let kind = if sse { StreamKind::Sse } else { StreamKind::Ndjson };
    let outbox = hub.new_outbox();
    let Some(id) = hub.register(
        outbox.clone(),
        if sse { ClientKind::Sse } else { ClientKind::Ndjson },
        who,
        stream.peer_addr().ok(),
    ) else {
        let resp = with_shard(Response::error(503, "full", "no room for another client"), hub.id);
        let _ = stream.write_all(&resp.to_bytes(true)).await;
        return;
    };
    drop((req, leftover));
    // The stream is a session like a WebSocket's: a task of its own in the
    // sessions queue, so that heavy streams do not slow REST and handshakes.
    let session = async move {
        contained(&hub.global, "a stream", serve_stream(stream, &hub, &outbox, id, op, kind, queues)).await;
        super::task::log_slow_consumer(&outbox, id);
        hub.unregister(id);
        drop((slot, seat));
    };
    // Spawning fails only when the executor is going away; the client goes with it.
    if let Ok(task) = glommio::spawn_local_into(session, queues.sessions) {
        task.detach();
    }
}

/// The subscription a stream asks for, checked: the pair, the channels,
/// `?replay=`, and with access control on whether `who` may have them (403).
fn subscription(hub: &Hub, req: &Request, pair: &str, who: Option<&Principal>) -> Result<Op, ApiError> {
    let product = api::product(hub, pair)?;
    let (channels, replay) = (api::channels(hub, req)?, api::replay(hub, req)?);
    if let Some(p) = who {
        p.may_join(&product, &channels, replay).map_err(|d| auth::forbidden(&hub.global, d))?;
    }
    Ok(Op::Subscribe { product, channels, replay })
}

/// Streams to the client until it leaves or falls too far behind.
async fn serve_stream(
    mut stream: Conn,
    hub: &Hub,
    outbox: &Outbox,
    id: ClientId,
    op: Op,
    kind: StreamKind,
    queues: Queues,
) {
    let content_type = match kind {
        StreamKind::Sse => "text/event-stream",
        StreamKind::Ndjson => "application/x-ndjson",
    };
    // A debug build says which task queue serves the stream (tests/promises.rs).
    let queue = match cfg!(debug_assertions) {
        true => format!("X-Hedgehog-Queue: {}\r\n", queues.current()),
        false => String::new(),
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\nX-Client-Id: {id}\r\n{SHARD_HEADER}: {}\r\n{queue}Connection: close\r\n\r\n",
        hub.id
    );
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
    let writer = stream_writer(outbox, &mut wr, kind);
    let abandoned = async {
        outbox.abandoned(Duration::from_secs(2)).await;
    };
    or(reader, or(writer, abandoned)).await;
    ws::shut(&mut wr).await;
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
        if w.write_all(&out).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
}
