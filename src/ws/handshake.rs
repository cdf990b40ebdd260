//! The RFC 6455 opening handshake, server and client side.

use tungstenite::handshake::derive_accept_key;

use crate::http::{Request, Response};

/// Whether a request asks to become a WebSocket.
pub fn is_upgrade(req: &Request) -> bool {
    req.header_has_token("Upgrade", "websocket")
}

/// Checks an upgrade request and returns the 101 response's bytes, or the error
/// response: 400 for a malformed request, 426 for a version other than 13.
pub fn accept(req: &Request) -> Result<Vec<u8>, Response> {
    if req.method != "GET" || req.version != 1 {
        return Err(Response::error(400, "bad_request", "a WebSocket upgrade must be an HTTP/1.1 GET"));
    }
    if !is_upgrade(req) || !req.header_has_token("Connection", "upgrade") {
        return Err(Response::error(400, "bad_request", "missing Upgrade: websocket / Connection: Upgrade"));
    }
    if req.header_str("Sec-WebSocket-Version") != Some("13") {
        return Err(Response::error(426, "upgrade_required", "only WebSocket version 13 is supported")
            .with_header("Sec-WebSocket-Version", "13"));
    }
    let key = req.header_str("Sec-WebSocket-Key").unwrap_or("");
    if !valid_key(key) {
        return Err(Response::error(400, "bad_request", "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes())
}

/// A key is 16 bytes in base64: 22 base64 characters and `==`.
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && key.ends_with("==")
        && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// A client's upgrade request for `path` on `host`, with a fresh random key.
/// Returns the request's bytes and the key.
pub fn client_request(host: &str, path: &str) -> (Vec<u8>, String) {
    let key = tungstenite::handshake::client::generate_key();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: hedgehog/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    (req.into_bytes(), key)
}

/// Why a server refused to become a WebSocket.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientHandshakeError {
    /// The response is not HTTP or is over 8 KiB: reconnect later.
    #[error("malformed handshake response")]
    Malformed,
    /// The server answered with another status.
    #[error("server answered {0} instead of 101")]
    Status(u16),
    /// The accept key does not match ours: the peer is not a WebSocket server.
    #[error("wrong Sec-WebSocket-Accept")]
    BadAccept,
}

/// Reads the server's response from the front of `buf`; `Ok(None)` means more bytes
/// are needed. On success returns how many bytes the head took.
pub fn client_response(buf: &[u8], key: &str) -> Result<Option<usize>, ClientHandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= 8192 => return Ok(None),
        _ => return Err(ClientHandshakeError::Malformed),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(ClientHandshakeError::Status(code));
    }
    let want = derive_accept_key(key.as_bytes());
    let ok =
        resp.headers.iter().any(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Accept") && h.value == want.as_bytes());
    if ok {
        Ok(Some(n))
    } else {
        Err(ClientHandshakeError::BadAccept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: &str) -> Request {
        let raw = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n{extra}\r\n"
        );
        crate::http::parse(raw.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn accepts_the_rfc_example_key() {
        let req = request("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        let resp = String::from_utf8(accept(&req).unwrap()).unwrap();
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{resp}");
    }

    #[test]
    fn refuses_bad_versions_and_keys() {
        let old = request("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        assert_eq!(accept(&old).unwrap_err().status, 426);
        let bad_key = request("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n");
        assert_eq!(accept(&bad_key).unwrap_err().status, 400);
    }

    #[test]
    fn client_checks_the_servers_answer() {
        let (_, key) = client_request("h", "/");
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\nX",
            derive_accept_key(key.as_bytes())
        );
        assert_eq!(client_response(good.as_bytes(), &key), Ok(Some(good.len() - 1)));
        assert_eq!(client_response(&good.as_bytes()[..20], &key), Ok(None));
        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(client_response(refused, &key), Err(ClientHandshakeError::Status(403)));
        let wrong = "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(client_response(wrong.as_bytes(), &key), Err(ClientHandshakeError::BadAccept));
    }
}
