//! HTTP/1.1 requests read with httparse, within fixed limits.

/// The most a request head may take.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most headers a request may carry.
pub const MAX_HEADERS: usize = 64;
/// The largest body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// A request as read off the wire; names of headers are kept as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The query string without `?`, empty when there is none.
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Why a request cannot be read. Each answers with its status and closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// 431: the head is over [`MAX_HEAD`] or has more than [`MAX_HEADERS`] headers.
    #[error("request head too large")]
    HeadTooLarge,
    /// 413: the body is over [`MAX_BODY`].
    #[error("request body too large")]
    BodyTooLarge,
    /// 400: the bytes are not an HTTP/1.x request we accept.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl ParseError {
    /// The status code that answers this error, and its machine-readable code.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            ParseError::HeadTooLarge => (431, "header_too_large"),
            ParseError::BodyTooLarge => (413, "body_too_large"),
            ParseError::Malformed(_) => (400, "bad_request"),
        }
    }
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// A header as text, trimmed; `None` if absent or not UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.header(name)?).ok().map(str::trim)
    }

    /// Whether the comma-separated header `name` holds `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }

    /// Whether the connection stays open after the response.
    pub fn keep_alive(&self) -> bool {
        if self.version == 0 {
            self.header_has_token("Connection", "keep-alive")
        } else {
            !self.header_has_token("Connection", "close")
        }
    }
}

/// Parses one request from the front of `buf`. `Ok(None)`: more bytes are needed.
/// On success, also returns how many bytes of `buf` it used.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => return Err(ParseError::HeadTooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(ParseError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeadTooLarge),
        Err(_) => return Err(ParseError::Malformed("not an HTTP/1.x request")),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut out = Request {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        version: req.version.unwrap_or(1),
        headers: req.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect(),
        body: Vec::new(),
    };
    if out.header("Transfer-Encoding").is_some() {
        return Err(ParseError::Malformed("chunked request bodies are not supported"));
    }
    let body_len = match out.header_str("Content-Length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| ParseError::Malformed("bad Content-Length"))?,
    };
    if body_len > MAX_BODY {
        return Err(ParseError::BodyTooLarge);
    }
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    out.body = buf[head_len..head_len + body_len].to_vec();
    Ok(Some((out, head_len + body_len)))
}

/// Decodes `%XX` escapes and `+` as space; bad escapes are kept as written.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_request_with_query_and_body() {
        let raw = b"POST /api/v1/subscribe/btc-usd?channels=ticker%2Cmatches&x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}GET";
        let (req, used) = parse(raw).unwrap().unwrap();
        assert_eq!(used, raw.len() - 3);
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/api/v1/subscribe/btc-usd"));
        assert_eq!(req.query_param("channels").as_deref(), Some("ticker,matches"));
        assert_eq!(req.query_param("x").as_deref(), Some(""));
        assert_eq!(req.body, b"{}");
        assert!(req.keep_alive());
    }

    #[test]
    fn partial_input_is_not_an_error() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab";
        for end in 0..raw.len() {
            assert_eq!(parse(&raw[..end]), Ok(None));
        }
    }

    #[test]
    fn limits_answer_with_their_status() {
        let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(big_head.as_bytes()).unwrap_err().status().0, 431);
        let many: String = (0..70).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).unwrap_err().status().0, 431);
        let body = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(parse(body.as_bytes()).unwrap_err().status().0, 413);
        assert_eq!(parse(b"\x16\x03\x01garbage\r\n\r\n").unwrap_err().status().0, 400);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").unwrap_err().status().0, 400);
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%2Cb+c%zz%4"), "a,b c%zz%4");
    }
}
