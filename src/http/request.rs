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

/// Why a request cannot be read. Each is answered with its status and a JSON error,
/// then the connection is closed: where the next request would start is not known.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// 431: the head is over [`MAX_HEAD`] or has more than [`MAX_HEADERS`] headers.
    #[error("request head too large")]
    HeadTooLarge,
    /// 413: the body is over [`MAX_BODY`], or its Content-Length is too long a number to hold.
    #[error("request body too large")]
    BodyTooLarge,
    /// 400: the bytes are not an HTTP/1.x request we accept.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// 400: the head states the body's length in ways that disagree: Content-Length
    /// values that differ, or Transfer-Encoding beside Content-Length (RFC 9112 6.3).
    /// A proxy in front may have framed the body differently, so the bytes after the
    /// head may be a request smuggled past it: answer and close, never serve them.
    #[error("ambiguous request length: {0}")]
    AmbiguousLength(&'static str),
    /// 501: the request has a Transfer-Encoding, kept here as received (lossily
    /// decoded and shortened). hedgehog reads bodies by Content-Length only, so it
    /// cannot find where this body ends: answer and close.
    #[error("Transfer-Encoding: {0} is not supported; send the body with Content-Length")]
    UnsupportedTransferEncoding(String),
}

impl ParseError {
    /// The status code that answers this error, and its machine-readable code.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            ParseError::HeadTooLarge => (431, "header_too_large"),
            ParseError::BodyTooLarge => (413, "body_too_large"),
            ParseError::Malformed(_) | ParseError::AmbiguousLength(_) => (400, "bad_request"),
            ParseError::UnsupportedTransferEncoding(_) => (501, "unsupported_transfer_encoding"),
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
    let (path, query) = path_and_query(req.path.unwrap_or("/"))?;
    let body_len = body_length(req.headers)?;
    let mut out = Request {
        method: req.method.unwrap_or("").to_string(),
        path,
        query,
        version: req.version.unwrap_or(1),
        headers: req.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect(),
        body: Vec::new(),
    };
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    out.body = buf[head_len..head_len + body_len].to_vec();
    Ok(Some((out, head_len + body_len)))
}

/// The path and query of a request target. Origin-form (`/p?q`) is taken as sent.
/// Absolute-form (`http://host:8080/p?q`), which HTTP/1.1 servers must accept
/// (RFC 9112 3.2.2), loses its authority: no route depends on the host. No path
/// after the authority means `/`. Other forms (`*`, `host:port`) are kept as sent,
/// and no route matches them.
fn path_and_query(target: &str) -> Result<(String, String), ParseError> {
    let origin = match strip_http_scheme(target) {
        None => target,
        Some(rest) => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let authority = &rest[..end];
            if authority.is_empty() {
                return Err(ParseError::Malformed("an absolute-form target needs a host"));
            }
            // RFC 9110 4.2.4: userinfo is likely there to disguise the host; an error.
            if authority.contains('@') {
                return Err(ParseError::Malformed("user info in the request target is not accepted"));
            }
            &rest[end..]
        }
    };
    let (path, query) = origin.split_once('?').unwrap_or((origin, ""));
    let path = if path.is_empty() { "/" } else { path };
    Ok((path.to_string(), query.to_string()))
}

/// `target` after `http://` or `https://` (schemes are case-insensitive), if it has one.
fn strip_http_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme).then(|| target.get(scheme.len()..)).flatten()
    })
}

/// The most of a Transfer-Encoding echoed back in an error message.
const ECHOED_CODING: usize = 64;

/// The body's length, from the framing headers (RFC 9112 6.1 to 6.3). Any
/// Transfer-Encoding is refused, and with a Content-Length too it is taken as a
/// smuggling attempt. No Content-Length means no body.
fn body_length(headers: &[httparse::Header]) -> Result<usize, ParseError> {
    let values = |name: &str| -> Vec<&[u8]> {
        headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value).collect()
    };
    let codings = values("Transfer-Encoding");
    let lengths = values("Content-Length");
    if codings.is_empty() {
        return content_length(&lengths);
    }
    if !lengths.is_empty() {
        return Err(ParseError::AmbiguousLength("both Transfer-Encoding and Content-Length are present"));
    }
    let received = codings.iter().map(|v| String::from_utf8_lossy(v)).collect::<Vec<_>>().join(", ");
    let mut shown: String = received.chars().take(ECHOED_CODING).collect();
    if shown.len() < received.len() {
        shown.push_str("...");
    }
    Err(ParseError::UnsupportedTransferEncoding(shown))
}

/// Why a Content-Length value is refused.
const BAD_CONTENT_LENGTH: &str = "Content-Length must be digits only, without sign, spaces or leading zeros";

/// One length from every Content-Length value received. Each must be `1*DIGIT`
/// with no sign, inner space or leading zero (`0` itself aside): `+5`, `005` or
/// `5 5` is read differently by different parsers, and no real client sends them.
/// A repeated value, in several headers or in a comma-separated list, counts once
/// (RFC 9112 6.3 allows it: every reader agrees on the length); differing values
/// are refused, and so are empty elements (`5,`). A number too long for `usize`
/// is a body too large (413), which it is: the syntax is valid, the size is not.
fn content_length(values: &[&[u8]]) -> Result<usize, ParseError> {
    let mut agreed: Option<&[u8]> = None;
    for element in values.iter().flat_map(|v| v.split(|&b| b == b',')) {
        let digits = element.trim_ascii();
        if !is_decimal_length(digits) {
            return Err(ParseError::Malformed(BAD_CONTENT_LENGTH));
        }
        match agreed {
            Some(first) if first != digits => return Err(ParseError::AmbiguousLength("Content-Length values differ")),
            _ => agreed = Some(digits),
        }
    }
    let Some(digits) = agreed else { return Ok(0) };
    digits
        .iter()
        .try_fold(0usize, |n, &d| n.checked_mul(10)?.checked_add(usize::from(d - b'0')))
        .filter(|&n| n <= MAX_BODY)
        .ok_or(ParseError::BodyTooLarge)
}

/// `1*DIGIT` without leading zeros, so that equal lengths are equal bytes.
fn is_decimal_length(digits: &[u8]) -> bool {
    let canonical = digits.len() == 1 || digits.first() != Some(&b'0');
    !digits.is_empty() && canonical && digits.iter().all(u8::is_ascii_digit)
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

    /// The head of a `POST /` with these header lines.
    fn head(headers: &str) -> String {
        format!("POST / HTTP/1.1\r\nHost: a\r\n{headers}\r\n")
    }

    /// A `POST /` with these header lines, then `rest`, parsed.
    fn post(headers: &str, rest: &str) -> Result<Option<(Request, usize)>, ParseError> {
        parse(format!("{}{rest}", head(headers)).as_bytes())
    }

    #[test]
    fn content_length_is_plain_digits() {
        for value in ["+5", "-5", "005", "00", "5 5", "0x5", "5.0", "", "5,", ",5", "\u{0665}"] {
            assert_eq!(
                post(&format!("Content-Length: {value}\r\n"), "hello"),
                Err(ParseError::Malformed(BAD_CONTENT_LENGTH)),
                "{value:?}"
            );
        }
        for (value, len) in [("5", 5), (" 5 ", 5), ("0", 0), ("\t5", 5)] {
            let headers = format!("Content-Length: {value}\r\n");
            let (req, used) = post(&headers, "helloGET").unwrap().unwrap();
            assert_eq!((&req.body[..], used), (&b"hello"[..len], head(&headers).len() + len), "{value:?}");
        }
    }

    #[test]
    fn content_length_too_long_for_usize_is_a_body_too_large() {
        for value in ["65537", "18446744073709551616", "99999999999999999999999999999999"] {
            assert_eq!(post(&format!("Content-Length: {value}\r\n"), ""), Err(ParseError::BodyTooLarge), "{value}");
        }
        assert_eq!(post(&format!("Content-Length: {MAX_BODY}\r\n"), ""), Ok(None));
    }

    #[test]
    fn differing_content_lengths_are_refused() {
        let differing = Err(ParseError::AmbiguousLength("Content-Length values differ"));
        for headers in [
            "Content-Length: 0\r\nContent-Length: 5\r\n",
            "Content-Length: 5\r\ncontent-length: 0\r\n",
            "Content-Length: 5, 0\r\n",
            "Content-Length: 5\r\nContent-Length: 5, 6\r\n",
            "Content-Length: 5\r\nContent-Length: 99999999999999999999999\r\n",
        ] {
            assert_eq!(post(headers, "hello"), differing, "{headers:?}");
        }
        assert_eq!(post(&format!("Content-Length: {}\r\nContent-Length: 5\r\n", "9".repeat(30)), ""), differing);
    }

    #[test]
    fn repeated_equal_content_lengths_count_once() {
        for headers in
            ["Content-Length: 5\r\nContent-Length: 5\r\n", "Content-Length: 5,5\r\n", "Content-Length: 5 , 5\r\n"]
        {
            let (req, used) = post(headers, "helloGET").unwrap().unwrap();
            assert_eq!((&req.body[..], used), (&b"hello"[..], head(headers).len() + 5), "{headers:?}");
        }
    }

    #[test]
    fn transfer_encoding_is_not_implemented_and_named() {
        let cases = [
            ("Transfer-Encoding: identity\r\n", "identity"),
            ("Transfer-Encoding: chunked\r\n", "chunked"),
            ("transfer-encoding: gzip, chunked\r\n", "gzip, chunked"),
            ("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", "gzip, chunked"),
        ];
        for (headers, named) in cases {
            let e = post(headers, "0\r\n\r\n").unwrap_err();
            assert_eq!(e, ParseError::UnsupportedTransferEncoding(named.into()), "{headers:?}");
            assert_eq!(e.status(), (501, "unsupported_transfer_encoding"));
        }
        let e = post("Transfer-Encoding: identity\r\n", "").unwrap_err();
        assert_eq!(e.to_string(), "Transfer-Encoding: identity is not supported; send the body with Content-Length");
        let long = post(&format!("Transfer-Encoding: {}\r\n", "x".repeat(1000)), "").unwrap_err();
        assert_eq!(long, ParseError::UnsupportedTransferEncoding(format!("{}...", "x".repeat(ECHOED_CODING))));
    }

    #[test]
    fn transfer_encoding_with_content_length_is_refused() {
        let both = || ParseError::AmbiguousLength("both Transfer-Encoding and Content-Length are present");
        for headers in [
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: identity\r\n",
            "Content-Length: +5\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert_eq!(post(headers, "hello"), Err(both()), "{headers:?}");
        }
        assert_eq!(both().status(), (400, "bad_request"));
    }

    #[test]
    fn absolute_form_targets_are_routed_by_path_and_query() {
        let cases = [
            ("http://host:8080/healthz?x=1", "/healthz", "x=1"),
            ("https://host/api/v1/subscribe/BTC-USD", "/api/v1/subscribe/BTC-USD", ""),
            ("HTTP://Host", "/", ""),
            ("http://127.0.0.1:8080?x=1", "/", "x=1"),
            ("http://[::1]:80/ws", "/ws", ""),
            ("/healthz?x=1", "/healthz", "x=1"),
            ("*", "*", ""),
        ];
        for (target, path, query) in cases {
            let (req, _) = parse(format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).unwrap().unwrap();
            assert_eq!((req.path.as_str(), req.query.as_str()), (path, query), "{target}");
        }
        for (target, why) in [
            ("http:///healthz", "an absolute-form target needs a host"),
            ("http://user@host/healthz", "user info in the request target is not accepted"),
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(parse(raw.as_bytes()), Err(ParseError::Malformed(why)), "{target}");
        }
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%2Cb+c%zz%4"), "a,b c%zz%4");
    }
}
