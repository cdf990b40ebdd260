//! RFC 6455 framing: frames encoded once into shareable bytes, and an incremental
//! decoder that turns received bytes into whole messages.
//!
//! tungstenite parses and formats the frame headers; this file adds what a
//! zero-copy fan-out needs: server frames built once and shared by reference, and a
//! decoder that works on a buffer fed by any async stream.

use std::io::Cursor;
use std::sync::Arc;

use futures_lite::{AsyncRead, AsyncReadExt};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// An encoded frame, shared by every connection (and shard) that sends it.
pub type Frame = Arc<[u8]>;

/// Close codes used by hedgehog.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
}

/// One whole message as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: its code and reason, if it had any.
    Close(Option<(u16, String)>),
}

/// Why a peer's frames cannot be accepted. Each maps to the close code the
/// connection ends with; the caller closes that one connection.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The peer broke the framing rules: close with 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A message over the size limit: close with 1009.
    #[error("message too big")]
    TooBig,
    /// A text message that is not UTF-8: close with 1007.
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
}

impl FrameError {
    /// The close code this error ends the connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => close::PROTOCOL,
            FrameError::TooBig => close::TOO_BIG,
            FrameError::InvalidUtf8 => close::INVALID_DATA,
        }
    }
}

/// Encodes one frame; `mask` is required from clients and forbidden from servers.
pub fn encode(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let header = FrameHeader { opcode, mask, ..FrameHeader::default() };
    let len = payload.len() as u64;
    let mut out = Vec::with_capacity(header.len(len) + payload.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(len, &mut out);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        apply_mask(&mut out[start..], mask);
    }
    out
}

/// A server text frame, encoded once.
pub fn text(payload: &[u8]) -> Frame {
    encode(OpCode::Data(Data::Text), payload, None).into()
}

/// A server binary frame.
pub fn binary(payload: &[u8]) -> Frame {
    encode(OpCode::Data(Data::Binary), payload, None).into()
}

/// A close frame's payload: the code, then the reason (cut to fit 123 bytes).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// A server close frame.
pub fn close_frame(code: u16, reason: &str) -> Frame {
    encode(OpCode::Control(Control::Close), &close_payload(code, reason), None).into()
}

/// The opcode and payload of an unmasked frame made by [`encode`] (a server frame).
pub fn split_server_frame(frame: &[u8]) -> Option<(u8, &[u8])> {
    let opcode = frame.first()? & 0x0f;
    let (len, at): (usize, usize) = match *frame.get(1)? & 0x7f {
        126 => (u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(frame.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    Some((opcode, frame.get(at..at.checked_add(len)?)?))
}

/// XORs `buf` with the 4-byte mask, in place.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Which side reads: a server reads masked frames, a client unmasked ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Turns received bytes into messages. Feed it with [`Decoder::read_from`] or
/// [`Decoder::feed`], then take messages with [`Decoder::next_message`].
pub struct Decoder {
    role: Role,
    max_message: usize,
    /// Received bytes are `buf[start..end]`; beyond `end` is room to read into.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    partial: Option<(bool, Vec<u8>)>,
    /// How much to read at a time; also what an idle buffer shrinks back to.
    read_size: usize,
    /// Bytes still missing from the frame at the front of the buffer.
    missing: usize,
}

impl Decoder {
    pub fn new(role: Role, max_message: usize) -> Self {
        Decoder { role, max_message, buf: Vec::new(), start: 0, end: 0, partial: None, read_size: 8192, missing: 0 }
    }

    /// Sets how much to read at a time. Small for the many mostly-silent client
    /// sessions (memory per idle connection), large for the upstream feed.
    pub fn with_read_size(mut self, n: usize) -> Self {
        self.read_size = n.max(16);
        self
    }

    /// Drops everything buffered (after a framing error, the rest is noise).
    pub fn discard(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Adds received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.compact();
        self.buf.truncate(self.end);
        self.buf.extend_from_slice(data);
        self.end = self.buf.len();
    }

    /// Reads once from `r` into the buffer; `Ok(0)` is end of stream. Cancel-safe:
    /// dropped before completion, it leaves the received bytes as they were.
    pub async fn read_from<R: AsyncRead + Unpin + ?Sized>(&mut self, r: &mut R) -> std::io::Result<usize> {
        self.compact();
        let want = self.end + self.read_size.max(self.missing);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let n = r.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.capacity() > 4 * self.read_size {
                self.buf = Vec::new();
            }
        } else if self.start > 0 && self.start >= self.end / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            let mut cur = Cursor::new(&self.buf[self.start..self.end]);
            let (header, len) = match FrameHeader::parse(&mut cur) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(_) => return Err(FrameError::Protocol("bad frame header")),
            };
            self.check(&header, len)?;
            let head = cur.position() as usize;
            let len = len as usize;
            if self.end - self.start < head + len {
                self.missing = head + len - (self.end - self.start);
                return Ok(None);
            }
            self.missing = 0;
            let at = self.start + head;
            self.start = at + len;
            let payload = &mut self.buf[at..at + len];
            if let Some(mask) = header.mask {
                apply_mask(payload, mask);
            }
            let payload = payload.to_vec();
            if let Some(msg) = self.assemble(&header, payload)? {
                return Ok(Some(msg));
            }
        }
    }

    fn check(&self, h: &FrameHeader, len: u64) -> Result<(), FrameError> {
        if h.rsv1 || h.rsv2 || h.rsv3 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(FrameError::Protocol("client frames must be masked")),
            (Role::Client, true) => return Err(FrameError::Protocol("server frames must not be masked")),
            _ => {}
        }
        if let OpCode::Control(_) = h.opcode {
            if !h.is_final || len > 125 {
                return Err(FrameError::Protocol("bad control frame"));
            }
        }
        // Saturating: a peer may claim a length of up to 2^64 - 1 (found by fuzzing:
        // a fragment's length plus such a claim wrapped around and passed).
        let pending = self.partial.as_ref().map_or(0, |(_, p)| p.len()) as u64;
        if pending.saturating_add(len) > self.max_message as u64 {
            return Err(FrameError::TooBig);
        }
        Ok(())
    }

    fn assemble(&mut self, h: &FrameHeader, payload: Vec<u8>) -> Result<Option<Message>, FrameError> {
        let data_start = |is_text| match self.partial {
            Some(_) => Err(FrameError::Protocol("new message inside a fragmented one")),
            None => Ok(is_text),
        };
        let is_text = match h.opcode {
            OpCode::Control(Control::Ping) => return Ok(Some(Message::Ping(payload))),
            OpCode::Control(Control::Pong) => return Ok(Some(Message::Pong(payload))),
            OpCode::Control(Control::Close) => return parse_close(payload).map(|c| Some(Message::Close(c))),
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Err(FrameError::Protocol("reserved opcode"))
            }
            OpCode::Data(Data::Text) => data_start(true)?,
            OpCode::Data(Data::Binary) => data_start(false)?,
            OpCode::Data(Data::Continue) => match self.partial.take() {
                None => return Err(FrameError::Protocol("continuation without a message")),
                Some((is_text, mut sofar)) => {
                    sofar.extend_from_slice(&payload);
                    return self.finish(h.is_final, is_text, sofar);
                }
            },
        };
        self.finish(h.is_final, is_text, payload)
    }

    fn finish(&mut self, fin: bool, is_text: bool, data: Vec<u8>) -> Result<Option<Message>, FrameError> {
        if !fin {
            self.partial = Some((is_text, data));
            return Ok(None);
        }
        if !is_text {
            return Ok(Some(Message::Binary(data)));
        }
        std::str::from_utf8(&data).map_err(|_| FrameError::InvalidUtf8)?;
        Ok(Some(Message::Text(data)))
    }
}

fn parse_close(p: Vec<u8>) -> Result<Option<(u16, String)>, FrameError> {
    match p.len() {
        0 => Ok(None),
        1 => Err(FrameError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            let reason = String::from_utf8(p[2..].to_vec()).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = encode(op, payload, Some([1, 2, 3, 4]));
        if !fin {
            f[0] &= 0x7f;
        }
        f
    }

    #[test]
    fn rfc_6455_examples() {
        // Section 5.7: a single-frame unmasked text message "Hello".
        assert_eq!(&*text(b"Hello"), &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        // The masked "Hello" with mask 37 fa 21 3d.
        let masked = encode(OpCode::Data(Data::Text), b"Hello", Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(masked, [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        let mut d = Decoder::new(Role::Server, 1 << 16);
        d.feed(&masked);
        assert_eq!(d.next_message(), Ok(Some(Message::Text(b"Hello".to_vec()))));
    }

    #[test]
    fn reassembles_fragments_with_control_frames_between() {
        let mut d = Decoder::new(Role::Server, 1 << 16);
        d.feed(&client_frame(OpCode::Data(Data::Text), false, b"Hel"));
        d.feed(&client_frame(OpCode::Control(Control::Ping), true, b"p"));
        d.feed(&client_frame(OpCode::Data(Data::Continue), true, b"lo"));
        assert_eq!(d.next_message(), Ok(Some(Message::Ping(b"p".to_vec()))));
        assert_eq!(d.next_message(), Ok(Some(Message::Text(b"Hello".to_vec()))));
        assert_eq!(d.next_message(), Ok(None));
    }

    #[test]
    fn waits_for_partial_input_byte_by_byte() {
        let frame = client_frame(OpCode::Data(Data::Binary), true, &[7; 300]);
        let mut d = Decoder::new(Role::Server, 1 << 16);
        for b in &frame[..frame.len() - 1] {
            d.feed(std::slice::from_ref(b));
            assert_eq!(d.next_message(), Ok(None));
        }
        d.feed(&frame[frame.len() - 1..]);
        assert_eq!(d.next_message(), Ok(Some(Message::Binary(vec![7; 300]))));
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (text(b"unmasked").to_vec(), FrameError::Protocol("client frames must be masked")),
            (
                client_frame(OpCode::Data(Data::Continue), true, b"x"),
                FrameError::Protocol("continuation without a message"),
            ),
            (client_frame(OpCode::Data(Data::Text), true, &[0xff, 0xfe]), FrameError::InvalidUtf8),
            (client_frame(OpCode::Data(Data::Binary), true, &[0; 100]), FrameError::TooBig),
            (
                client_frame(OpCode::Control(Control::Close), true, &[0x03, 0xed]),
                FrameError::Protocol("invalid close code"),
            ),
            (client_frame(OpCode::Control(Control::Ping), false, b""), FrameError::Protocol("bad control frame")),
        ];
        for (bytes, want) in cases {
            let mut d = Decoder::new(Role::Server, 64);
            d.feed(&bytes);
            assert_eq!(d.next_message(), Err(want.clone()), "{want}");
        }
        assert_eq!(FrameError::TooBig.close_code(), 1009);
    }

    #[test]
    fn a_huge_claimed_length_after_a_fragment_is_too_big() {
        // A text fragment, then a frame claiming 2^64 - 1 bytes: the two lengths
        // must not wrap around to something small.
        let mut bytes = client_frame(OpCode::Data(Data::Text), false, b"ab");
        bytes.extend_from_slice(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
        let mut d = Decoder::new(Role::Server, 64);
        d.feed(&bytes);
        assert_eq!(d.next_message(), Err(FrameError::TooBig));
    }

    #[test]
    fn server_frames_split_back_into_payloads() {
        for len in [0, 5, 125, 126, 65_535, 65_536, 70_000] {
            let payload = vec![b'a'; len];
            let f = text(&payload);
            assert_eq!(split_server_frame(&f), Some((1, &payload[..])), "{len}");
        }
        assert_eq!(split_server_frame(&close_frame(1001, "bye")).map(|(op, _)| op), Some(8));
        assert_eq!(split_server_frame(&[0x81, 10, b'x']), None);
    }

    #[test]
    fn a_cancelled_read_leaves_no_trace() {
        struct Never;
        impl AsyncRead for Never {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::task::Poll::Pending
            }
        }
        let mut d = Decoder::new(Role::Server, 1 << 16);
        d.feed(&client_frame(OpCode::Data(Data::Text), false, b"He"));
        let pending = futures_lite::future::block_on(futures_lite::future::poll_once(d.read_from(&mut Never)));
        assert!(pending.is_none());
        d.feed(&client_frame(OpCode::Data(Data::Continue), true, b"llo"));
        assert_eq!(d.next_message(), Ok(Some(Message::Text(b"Hello".to_vec()))));
    }

    #[test]
    fn reads_close_frames_and_cuts_long_reasons() {
        let mut d = Decoder::new(Role::Client, 1 << 16);
        d.feed(&close_frame(1008, "slow consumer"));
        assert_eq!(d.next_message(), Ok(Some(Message::Close(Some((1008, "slow consumer".into()))))));
        assert_eq!(close_payload(1000, &"é".repeat(100)).len(), 2 + 122);
    }
}
