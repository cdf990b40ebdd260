//! Shared test helpers: start the simulator on port 0, talk to it with an
//! independent blocking WebSocket client, wait for conditions under deadlines.
#![allow(dead_code)]

pub mod access;
pub mod nats;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use hedgehog::sim::{self, SimConfig, SimHandle};
use serde_json::Value;
use tungstenite::{Message, WebSocket};

/// Generous: the tests run on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A simulator on a free loopback port.
pub fn simulator(adjust: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut cfg = SimConfig { port: 0, seed: Some(1), ..SimConfig::default() };
    adjust(&mut cfg);
    sim::spawn(cfg).expect("simulator starts")
}

/// Polls `cond` until it holds or the deadline passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A plain blocking WebSocket client (tungstenite), independent of hedgehog's code.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn connect(url: &str) -> Client {
        let addr = url.trim_start_matches("ws://").split('/').next().unwrap().to_string();
        let stream = TcpStream::connect(&addr).expect("connect");
        // A loaded machine may take a while to answer the handshake; reads
        // after it time out quickly so that a test can look at the clock.
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let (ws, _) = tungstenite::client(url, stream).expect("handshake");
        ws.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Client { ws }
    }

    pub fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// The next message of any kind, or `None` at the deadline.
    pub fn next_message(&mut self, deadline: Instant) -> Option<Message> {
        loop {
            match self.ws.read() {
                Ok(m) => return Some(m),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The next text message, raw.
    pub fn text(&mut self) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.next_message(deadline).expect("a message before the deadline") {
                Message::Text(t) => return t.to_string(),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    }

    /// The next text message, parsed.
    pub fn json(&mut self) -> Value {
        let t = self.text();
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
    }

    /// Skips messages until one satisfies `pred`; returns its raw text.
    pub fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            let t = self.text();
            let v: Value = serde_json::from_str(&t).expect("JSON");
            if pred(&v) {
                return t;
            }
        }
    }

    /// Waits for the server's close frame; returns its code and reason.
    pub fn close_frame(&mut self) -> (u16, String) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.next_message(deadline).expect("a close before the deadline") {
                Message::Close(Some(c)) => return (c.code.into(), c.reason.to_string()),
                Message::Close(None) => return (1005, String::new()),
                _ => {}
            }
        }
    }
}

/// The keys of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

/// Every key of the fixture's (top-level) object is in `v`.
pub fn has_fixture_fields(v: &Value, fixture: &str) {
    let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let f: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON");
    let have = keys(v);
    for k in keys(&f) {
        assert!(have.contains(&k), "{fixture}: field {k:?} missing from {v}");
    }
}

/// Runs `f` on a fresh glommio executor on this thread.
pub fn glommio<F: std::future::Future>(f: F) -> F::Output {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(hedgehog::IO_MEMORY)
        .make()
        .expect("executor");
    ex.run(f)
}

/// `fut`, or a panic naming `what` once the deadline passes.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    let timeout = async {
        glommio::timer::sleep(DEADLINE).await;
        panic!("timed out: {what}");
    };
    futures_lite::future::or(fut, timeout).await
}

/// A relay on a free loopback port with `shards` shards, relaying `upstream_url`.
pub fn relay(shards: usize, upstream_url: &str) -> hedgehog::server::RelayHandle {
    relay_with(upstream_url, |cfg| {
        cfg.shards = shards;
        cfg.channels = vec![hedgehog::protocol::Channel::Ticker, hedgehog::protocol::Channel::Matches];
    })
}

/// A relay on a free loopback port relaying `upstream_url` (reconnecting within
/// 20-200 ms), with `adjust` applied to its settings.
pub fn relay_with(
    upstream_url: &str,
    adjust: impl FnOnce(&mut hedgehog::config::ServeConfig),
) -> hedgehog::server::RelayHandle {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut cfg = hedgehog::config::ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        upstream: hedgehog::upstream::UpstreamConfig {
            url: upstream_url.into(),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ..Default::default()
        },
        simulate: false,
        ..Default::default()
    };
    adjust(&mut cfg);
    hedgehog::server::start(cfg).expect("relay starts")
}

/// The text of every request the simulator received, in order.
pub fn sim_requests(sim: &SimHandle) -> Vec<String> {
    sim.events()
        .into_iter()
        .filter_map(|e| match e {
            sim::SimEvent::Request(_, r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Resident set of process `pid`, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A child process that is killed when the test ends, however it ends.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// The `hedgehog` binary with `args` and `envs` (over a clean
    /// `HEDGEHOG_CONFIG` and `HEDGEHOG_LOG_FORMAT`), and its stderr, line by
    /// line, as a thread of its own reads it.
    pub fn hedgehog(args: &[&str], envs: &[(&str, &str)]) -> (Running, std::sync::mpsc::Receiver<String>) {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hedgehog"))
            .args(args)
            .env_remove("HEDGEHOG_CONFIG")
            .env_remove("HEDGEHOG_LOG_FORMAT")
            .envs(envs.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("its stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (Running(child), lines)
    }

    /// Sends it signal `name` (`-HUP`, `-TERM`).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill").args([name, &self.0.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill {name}");
    }
}

/// A raw HTTP exchange on a fresh connection: writes `raw`, reads until the server
/// closes. Returns the status, the head and the body.
pub fn http_raw(addr: std::net::SocketAddr, raw: &[u8]) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// `METHOD path` with `Connection: close` and any extra header lines.
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String, Value) {
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n{headers}\r\n");
    let (status, head, body) = http_raw(addr, raw.as_bytes());
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {head}\n{body}"));
    (status, head, v)
}

/// A WebSocket client of the relay and the id its welcome gave it.
pub fn relay_client(addr: std::net::SocketAddr) -> (Client, String) {
    let mut c = Client::connect(&format!("ws://{addr}/ws"));
    let welcome = c.json();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let id = welcome["client_id"].as_str().expect("client_id").to_string();
    (c, id)
}

/// The `hedgehog` binary with `args` (plus `--host 127.0.0.1 --port 0`) and two
/// shards; returns it and the address its log says it listens on.
pub fn start_binary(args: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hedgehog"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .env("WEB_CONCURRENCY", "2")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("hedgehog listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx.recv_timeout(DEADLINE).expect("the relay says where it listens");
    (child, addr.parse().expect("an address"))
}

/// An echo WebSocket client and the shard that serves it.
pub fn echo_client(addr: std::net::SocketAddr) -> (tungstenite::WebSocket<TcpStream>, usize) {
    let stream = TcpStream::connect(addr).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{addr}/echo"), stream).expect("handshake");
    let shard = resp.headers()["X-Hedgehog-Shard"].to_str().unwrap().parse().unwrap();
    (ws, shard)
}

/// Sends one keep-alive request on `s` and reads its answer: (status, head and body).
pub fn exchange(s: &mut TcpStream, request: &str) -> (u16, String) {
    use std::io::{BufRead, Read, Write};
    s.write_all(request.as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut text = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "closed: {text}");
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        text.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).unwrap();
    assert!(r.buffer().is_empty(), "one answer per request");
    text.push_str(&String::from_utf8_lossy(&body));
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Caps the socket's receive buffer (which also stops the kernel growing it).
pub fn small_receive_buffer(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 64 * 1024;
    // SAFETY: setsockopt reads an int of the size given; a bad fd only fails.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF");
}
