//! `hedgehog healthcheck`: one plain HTTP `GET /healthz` of the relay on this
//! host, for a container's `HEALTHCHECK`, so that the image needs no curl.
//!
//! Exit 0 when the relay answers 200 within the deadline, 1 (one line on stderr)
//! otherwise: a refused connection, no answer in time, or another status (503
//! while the relay is not ready, as `/healthz` says). It reads `HEDGEHOG_PORT`
//! or `PORT` and `HEDGEHOG_HOST` or `HOST` as the relay does, so the image's
//! environment points it at the relay.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Where to ask, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `host:port` to connect to (the wildcard listen addresses mean loopback).
    pub addr: String,
    /// The whole exchange's deadline: connect, send, and the status line back.
    pub timeout: Duration,
}

/// The default deadline: under Docker's default `HEALTHCHECK --timeout` (30 s)
/// and the Dockerfile's (5 s), so the check says why rather than being killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// Reads `healthcheck [--host H] [--port P] [--timeout S]`, over `HOST` and `PORT`.
pub fn parse(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Result<Target, String> {
    // As the relay reads them: `HEDGEHOG_HOST`/`HEDGEHOG_PORT` (every flag's
    // variable) over `HOST`/`PORT`; an empty variable is unset.
    let var = |names: [&str; 2]| names.into_iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
    let (mut host, mut port) = (var(["HEDGEHOG_HOST", "HOST"]), var(["HEDGEHOG_PORT", "PORT"]));
    let mut timeout = DEFAULT_TIMEOUT;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (name, inline): (&str, Option<&str>) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (arg, None),
        };
        let value = match inline {
            Some(v) => v.to_string(),
            None => rest.next().ok_or_else(|| format!("healthcheck: {name} needs a value"))?.to_string(),
        };
        match name {
            "--host" => host = Some(value),
            "--port" => port = Some(value),
            "--timeout" => timeout = seconds(&value)?,
            _ => return Err(format!("usage: hedgehog healthcheck [--host H] [--port P] [--timeout S] (not {name:?})")),
        }
    }
    let port = port.unwrap_or_else(|| "8080".into());
    let port: u16 = port.trim().parse().map_err(|_| format!("healthcheck: port {port:?} is not a port number"))?;
    Ok(Target { addr: format!("{}:{port}", loopback_for(host.as_deref().unwrap_or(""))), timeout })
}

fn seconds(v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("healthcheck: --timeout {v:?} is not a number of seconds above 0"))
}

/// The address to reach a relay listening on `host`: a wildcard is reached on loopback.
fn loopback_for(host: &str) -> String {
    match host.trim() {
        "" | "0.0.0.0" => "127.0.0.1".into(),
        "::" | "[::]" => "[::1]".into(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.into(),
    }
}

/// Asks `target` for `/healthz`: `Ok` with the status line on 200, `Err` with
/// the one line saying what went wrong otherwise.
pub fn run(target: &Target) -> Result<String, String> {
    let deadline = Instant::now() + target.timeout;
    let fail =
        |what: &str, e: &dyn std::fmt::Display| format!("healthcheck of http://{}/healthz: {what}: {e}", target.addr);
    let addr = resolve(&target.addr).map_err(|e| fail("cannot resolve", &e))?;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut stream = TcpStream::connect_timeout(&addr, left()).map_err(|e| fail("cannot connect", &e))?;
    stream.set_write_timeout(Some(left())).map_err(|e| fail("socket", &e))?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", target.addr);
    stream.write_all(request.as_bytes()).map_err(|e| fail("cannot send", &e))?;
    let line = status_line(&mut stream, deadline).map_err(|e| fail("no answer", &e))?;
    match line.split(' ').nth(1) {
        Some("200") => Ok(line),
        _ => Err(fail("unhealthy", &line)),
    }
}

fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::other("no address"))
}

/// Reads until the first line is complete, the peer closes, or `deadline`.
fn status_line(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline passed"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    match text.split("\r\n").next().filter(|l| l.starts_with("HTTP/")) {
        Some(line) => Ok(line.to_string()),
        None => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not HTTP: {:?}", text.trim()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    /// A server that answers one connection with `answer` (after reading the request).
    fn server(answer: &'static [u8]) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).unwrap();
            assert!(req[..n].starts_with(b"GET /healthz HTTP/1.1\r\n"));
            s.write_all(answer).unwrap();
        });
        Target { addr, timeout: Duration::from_secs(10) }
    }

    #[test]
    fn defaults_follow_the_relays_environment() {
        let t = parse(&[], &env(&[])).unwrap();
        assert_eq!(t, Target { addr: "127.0.0.1:8080".into(), timeout: DEFAULT_TIMEOUT });
        let t = parse(&[], &env(&[("PORT", "9000"), ("HOST", "0.0.0.0")])).unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000");
        assert_eq!(parse(&[], &env(&[("HOST", "::")])).unwrap().addr, "[::1]:8080");
        assert_eq!(parse(&[], &env(&[("HOST", "10.1.2.3")])).unwrap().addr, "10.1.2.3:8080");
        let both = env(&[("PORT", "9000"), ("HEDGEHOG_PORT", "9001"), ("HEDGEHOG_HOST", "10.0.0.1")]);
        assert_eq!(parse(&[], &both).unwrap().addr, "10.0.0.1:9001", "the relay's own precedence");
    }

    #[test]
    fn flags_win_over_the_environment() {
        let t = parse(&["--port", "81", "--host=::1", "--timeout", "0.5"], &env(&[("PORT", "9000")])).unwrap();
        assert_eq!(t, Target { addr: "[::1]:81".into(), timeout: Duration::from_millis(500) });
    }

    #[test]
    fn mistakes_are_one_line() {
        assert!(parse(&["--bogus", "1"], &env(&[])).unwrap_err().starts_with("usage: hedgehog healthcheck"));
        assert!(parse(&["--port"], &env(&[])).unwrap_err().contains("needs a value"));
        assert!(parse(&[], &env(&[("PORT", "http")])).unwrap_err().contains("not a port number"));
        assert!(parse(&["--timeout", "0"], &env(&[])).unwrap_err().contains("above 0"));
    }

    #[test]
    fn a_200_is_healthy() {
        let t = server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(run(&t), Ok("HTTP/1.1 200 OK".to_string()));
    }

    #[test]
    fn a_503_is_unhealthy_and_says_so() {
        let t = server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let e = run(&t).unwrap_err();
        assert!(e.contains("unhealthy: HTTP/1.1 503 Service Unavailable"), "{e}");
    }

    #[test]
    fn silence_ends_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let t = Target { addr: listener.local_addr().unwrap().to_string(), timeout: Duration::from_millis(200) };
        let e = run(&t).unwrap_err();
        assert!(e.contains("no answer"), "{e}");
        drop(listener);
    }

    #[test]
    fn a_closed_port_cannot_connect() {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let e = run(&Target { addr, timeout: Duration::from_secs(5) }).unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
    }
}
