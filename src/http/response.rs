//! Responses: every API answer is JSON, errors included.

/// The reason phrase of the statuses hedgehog sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A response ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Response {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    /// An error: `{"error":"<code>","message":"<text for a person>"}`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({"error": code, "message": message.into()}))
    }

    /// A JSON response whose body is already JSON text.
    pub fn raw_json(status: u16, body: Vec<u8>) -> Self {
        Response { status, headers: vec![("Content-Type", "application/json".into())], body }
    }

    /// A plain-text response of `content_type`.
    pub fn text(status: u16, content_type: &str, body: String) -> Self {
        Response { status, headers: vec![("Content-Type", content_type.into())], body: body.into_bytes() }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire; `close` adds `Connection: close`.
    pub fn to_bytes(&self, close: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        // A 304 has no body, and its Content-Length would be the 200's (RFC 9110 8.6).
        if self.status != 304 {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_json_with_code_and_message() {
        let r = Response::error(404, "not_found", "no route for /x").with_header("X-A", "1");
        let text = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Type: application/json\r\nX-A: 1\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"not_found\",\"message\":\"no route for /x\"}"));
    }
}
