//! A server-side WebSocket session: one task that reads client frames and drains
//! the connection's outbox, ending when either side is done.

use std::future::pending;
use std::rc::Rc;

use futures_lite::future::or;
use futures_lite::{AsyncRead, AsyncWrite};
use tungstenite::protocol::frame::coding::{Control, OpCode};

use super::frame::{self, close, Decoder, Message, Role};
use super::outbox::{write_loop, Outbox};

/// What a session does with the messages its client sends.
pub trait Handler {
    /// A whole text message (already checked to be UTF-8).
    fn on_text(&mut self, text: Vec<u8>, outbox: &Outbox);

    /// A binary message; by default refused with 1003.
    fn on_binary(&mut self, _data: Vec<u8>, outbox: &Outbox) {
        outbox.close(close::UNSUPPORTED, "binary messages are not accepted");
    }
}

/// Runs the session until the client leaves, the close handshake completes, or the
/// outbox is killed. `leftover` holds bytes read past the handshake.
pub async fn run<S, H>(stream: S, leftover: &[u8], outbox: Rc<Outbox>, max_message: usize, mut handler: H)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let reader = async {
        let mut dec = Decoder::new(Role::Server, max_message);
        dec.feed(leftover);
        loop {
            match dec.next_message() {
                Ok(Some(msg)) => {
                    if !dispatch(msg, &outbox, &mut handler) {
                        break;
                    }
                }
                Ok(None) => match dec.read_from(&mut rd).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                Err(e) => {
                    outbox.close(e.close_code(), &e.to_string());
                    break;
                }
            }
        }
        // Closing: the writer ends the session once the close frame is out.
        pending::<()>().await
    };
    let writer = async {
        let _ = write_loop(&outbox, &mut wr).await;
    };
    let killed = async {
        let why = outbox.killed().await;
        log::debug!("session dropped: {why}");
    };
    or(reader, or(writer, killed)).await;
}

/// Handles one message; false once the session is closing.
fn dispatch<H: Handler>(msg: Message, outbox: &Outbox, handler: &mut H) -> bool {
    match msg {
        Message::Ping(p) => outbox.push_control(frame::encode(OpCode::Control(Control::Pong), &p, None).into()),
        Message::Pong(_) => {}
        Message::Text(t) => handler.on_text(t, outbox),
        Message::Binary(b) => handler.on_binary(b, outbox),
        Message::Close(c) => {
            let code = c.map_or(close::NORMAL, |(code, _)| code);
            outbox.close(code, "");
            return false;
        }
    }
    outbox.is_open()
}
