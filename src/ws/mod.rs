//! WebSocket: handshakes, frames encoded once, per-connection outboxes, sessions.

pub mod frame;
mod handshake;
mod outbox;
mod session;

pub use frame::{close, close_frame, Decoder, Frame, FrameError, Message, Role};
pub use handshake::{accept, client_request, client_response, is_upgrade, ClientHandshakeError};
pub use outbox::{write_loop, Outbox, Overflow, SlowPolicy, SLOW_CONSUMER};
pub use session::{run as run_session, shut, Handler, Limits};
