//! `ws://` and `wss://` URLs.

/// Where to connect, from a WebSocket URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Endpoint {
    /// Parses `ws://host[:port][/path]` or `wss://...` (IPv6 hosts in brackets).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let bad = |why: &str| format!("bad upstream URL {url:?}: {why}");
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(bad("it must start with ws:// or wss://"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().map_err(|_| bad("the port is not a number"))?),
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || authority.contains('@') {
            return Err(bad("it has no host"));
        }
        Ok(Endpoint { tls, host: host.to_string(), port, path })
    }

    /// The Host header's value.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_in_use() {
        let e = Endpoint::parse("wss://ws-feed.exchange.coinbase.com").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path.as_str()),
            (true, "ws-feed.exchange.coinbase.com", 443, "/")
        );
        let e = Endpoint::parse("ws://127.0.0.1:8765/feed?x=1").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port, e.path.as_str()), (false, "127.0.0.1", 8765, "/feed?x=1"));
        assert_eq!(e.authority(), "127.0.0.1:8765");
        let e = Endpoint::parse("ws://[::1]:9000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9000));
        assert_eq!(e.authority(), "[::1]:9000");
    }

    #[test]
    fn refuses_other_urls() {
        for u in ["http://x", "ws://", "ws://host:port", "wss://user@host", "feed"] {
            assert!(Endpoint::parse(u).is_err(), "{u}");
        }
    }
}
