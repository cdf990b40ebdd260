//! A server-side WebSocket session: one task that reads client frames and drains
//! the connection's outbox, ending when either side is done.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tungstenite::protocol::frame::coding::{Control, OpCode};

use super::frame::{self, close, Decoder, Message, Role};
use super::outbox::{write_loop, Outbox};

/// What a session does with the messages its client sends. The reader waits for
/// each message to be handled before it reads the next, so replies keep the
/// order of requests and a client that floods waits for its own answers.
// Sessions run on one shard's thread: no `Send` bound is wanted on these futures.
#[allow(async_fn_in_trait)]
pub trait Handler {
    /// Before the first frame is read.
    async fn on_start(&mut self) {}

    /// A whole text message (already checked to be UTF-8).
    async fn on_text(&mut self, text: Vec<u8>, outbox: &Outbox);

    /// A ping arrived: whether to answer it (false: it was over the client's
    /// request rate, and the handler has said so). Pings count as requests.
    fn on_ping(&mut self, _outbox: &Outbox) -> bool {
        true
    }

    /// A binary message; by default refused with 1003.
    async fn on_binary(&mut self, _data: Vec<u8>, outbox: &Outbox) {
        outbox.close(close::UNSUPPORTED, "binary messages are not accepted");
    }
}

/// Per-session limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message accepted; bigger closes with 1009.
    pub max_message: usize,
    /// Server ping interval; zero: no pings (and no idle close).
    pub ping_every: Duration,
    /// Close a client silent for this long; zero: never.
    pub idle_after: Duration,
}

/// Clients of a relay send little: small reads keep an idle session's buffer small.
const CLIENT_READ_SIZE: usize = 512;

/// After our close frame is out, how long the peer has to answer and hang up.
const LINGER: Duration = Duration::from_secs(2);

/// Runs the session until the client leaves, the close handshake completes, or the
/// outbox is killed. `leftover` holds bytes read past the handshake.
///
/// Closing follows RFC 6455: when we close first, the reader keeps reading (and
/// ignoring data) until the peer's close frame or hang-up, so the peer is never
/// reset with bytes in flight and always gets our close frame; when the peer
/// closes first, we answer and hang up.
pub async fn run<S, H>(stream: S, leftover: Vec<u8>, outbox: Rc<Outbox>, limits: Limits, mut handler: H)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    handler.on_start().await;
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let peer_closed = Cell::new(false);
    let last_heard = Cell::new(Instant::now());
    // The reader is done; if a close frame is still queued, the writer gets time to
    // send it (the session ends as soon as the writer is done).
    let wait_for_writer = || async {
        if !outbox.is_open() {
            glommio::timer::sleep(LINGER).await;
        }
    };
    let reader = async {
        let mut dec = Decoder::new(Role::Server, limits.max_message).with_read_size(CLIENT_READ_SIZE);
        dec.feed(&leftover);
        drop(leftover);
        let mut closing = false;
        // Reads and decodes of a flooding client are always ready: without a turn
        // given back when glommio asks for one (its preemption timer, or I/O for
        // other queues), one session would hold its shard (and its fan-out, health
        // checks and shutdown) for as long as the flood lasts.
        loop {
            glommio::yield_if_needed().await;
            let next = dec.next_message();
            if matches!(next, Ok(Some(_))) {
                last_heard.set(Instant::now());
            }
            match next {
                // The peer answered our close: the handshake is complete.
                Ok(Some(Message::Close(_))) if closing && !peer_closed.get() => return,
                Ok(Some(Message::Close(c))) => {
                    peer_closed.set(true);
                    outbox.close(c.map_or(close::NORMAL, |(code, _)| code), "");
                    closing = true;
                }
                Ok(Some(msg)) if !closing => closing = !dispatch(msg, &outbox, &mut handler).await,
                Ok(Some(_)) => {}
                Ok(None) => match dec.read_from(&mut rd).await {
                    Ok(0) | Err(_) => return wait_for_writer().await,
                    Ok(_) => {}
                },
                Err(e) => {
                    // The framing is lost: close, and drop what else arrives.
                    outbox.close(e.close_code(), &e.to_string());
                    dec.discard();
                    while matches!(dec.read_from(&mut rd).await, Ok(n) if n > 0) {
                        dec.discard();
                    }
                    return wait_for_writer().await;
                }
            }
        }
    };
    let writer = async {
        // Once our close frame is out: hang up at once if the peer closed first,
        // else give it time to answer.
        if write_loop(&outbox, &mut wr).await.is_ok() && !peer_closed.get() {
            glommio::timer::sleep(LINGER).await;
        }
    };
    let killed = async {
        let why = outbox.abandoned(LINGER).await;
        log::debug!("session dropped: {why}");
    };
    // Server pings; a client that sends nothing (not even a pong) for `idle_after`
    // is closed. It never ends the session itself: the close frame does.
    let keepalive = async {
        if limits.ping_every.is_zero() {
            return std::future::pending().await;
        }
        loop {
            glommio::timer::sleep(limits.ping_every).await;
            if !limits.idle_after.is_zero() && last_heard.get().elapsed() >= limits.idle_after {
                outbox.close(close::POLICY, "idle timeout: nothing received");
                return std::future::pending().await;
            }
            let _ = outbox.push_control(frame::encode(OpCode::Control(Control::Ping), b"hedgehog", None).into());
        }
    };
    or(reader, or(writer, or(killed, keepalive))).await;
    shut(&mut wr).await;
}

/// How long the end of a session may wait for its last bytes (TLS's
/// close_notify) to leave: a peer that reads nothing more cannot hold it.
const SHUT_DEADLINE: Duration = Duration::from_secs(1);

/// Shuts the writing side: over TLS a close_notify first, so the peer sees a
/// clean end of the stream rather than a truncation; a plain socket sends its FIN.
pub async fn shut<W: AsyncWrite + Unpin>(w: &mut W) {
    or(
        async {
            let _ = w.close().await;
        },
        glommio::timer::sleep(SHUT_DEADLINE),
    )
    .await;
}

/// Handles one message; false once the session is closing.
async fn dispatch<H: Handler>(msg: Message, outbox: &Outbox, handler: &mut H) -> bool {
    match msg {
        Message::Ping(p) => {
            if handler.on_ping(outbox) {
                let _ = outbox.push_pong(frame::encode(OpCode::Control(Control::Pong), &p, None).into());
            }
        }
        Message::Pong(_) => {}
        Message::Text(t) => handler.on_text(t, outbox).await,
        Message::Binary(b) => handler.on_binary(b, outbox).await,
        // The reader answers close frames itself.
        Message::Close(_) => return false,
    }
    outbox.is_open()
}
