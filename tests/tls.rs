//! TLS for clients (`--tls-cert`, `--tls-key`): `wss://` and `https://` with a
//! certificate from a test CA, byte-exact data over TLS, a certificate swapped by
//! SIGHUP under an open session, plain HTTP on the TLS port, garbage handshakes
//! beside a streaming client, and the start-up errors.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{simulator, wait_until, Client, Running, DEADLINE};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tungstenite::{Message, WebSocket};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A certificate authority made for the test, and the server certificates it signs.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A server certificate (for localhost and 127.0.0.1) and its key, as PEM, and its DER.
struct Leaf {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "hedgehog test CA");
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { issuer: Issuer::new(params, key), pem }
    }

    fn leaf(&self) -> Leaf {
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().clone() }
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(self.pem.as_bytes()).unwrap();
        roots.add(der).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A TLS connection to `addr`, verified against this CA for `localhost`,
    /// handshake done.
    fn connect(&self, addr: SocketAddr) -> Tls {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(self.client_config(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
        }
        tls
    }
}

/// Writes a leaf's certificate and key where `--tls-cert` and `--tls-key` read them.
fn install(leaf: &Leaf, cert: &Path, key: &Path) {
    std::fs::write(cert, &leaf.cert).unwrap();
    std::fs::write(key, &leaf.key).unwrap();
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hedgehog-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A WebSocket over TLS, its handshake done; reads time out quickly so a test
/// can look at the clock.
fn wss(ca: &TestCa, addr: SocketAddr, path: &str) -> (WebSocket<Tls>, CertificateDer<'static>) {
    let tls = ca.connect(addr);
    let served = tls.conn.peer_certificates().expect("a certificate")[0].clone();
    let (ws, resp) = tungstenite::client(format!("wss://localhost:{}{path}", addr.port()), tls).expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws.get_ref().sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    (ws, served)
}

/// The next text message, within the deadline.
fn text(ws: &mut WebSocket<Tls>) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return t.to_string(),
            Ok(Message::Close(c)) => panic!("closed: {c:?}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                assert!(Instant::now() < end, "no message within {DEADLINE:?}");
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// The next `n` matches of `ws` (skipping everything else), as raw text.
fn matches(ws: &mut WebSocket<Tls>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let t = text(ws);
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "match" {
            out.push(t);
        }
    }
    out
}

/// One HTTPS request with `Connection: close`: status and body.
fn https(ca: &TestCa, addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tls = ca.connect(addr);
    write!(tls, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    // The server ends with close_notify: a clean end of stream.
    tls.read_to_end(&mut out).expect("a whole answer, then close_notify");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
}

/// A relay in this process serving TLS with `leaf`, relaying `upstream`.
fn tls_relay(dir: &Path, leaf: &Leaf, upstream: &str) -> hedgehog::server::RelayHandle {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    install(leaf, &cert, &key);
    common::relay_with(upstream, |c| {
        c.shards = 2;
        c.tls = Some(hedgehog::config::TlsFiles { cert, key });
        c.header_timeout = Duration::from_secs(1);
    })
}

#[test]
fn a_wss_client_gets_the_feed_byte_for_byte_and_https_streams_work() {
    let dir = scratch("bytes");
    let (ca, leaf) = {
        let ca = TestCa::new();
        let leaf = ca.leaf();
        (ca, leaf)
    };
    let sim = simulator(|c| {
        c.rate = 50.0;
        c.products = vec!["BTC-USD".into()];
    });
    // What the simulator sends, straight from it, by trade id.
    let mut direct = Client::connect(&sim.url());
    direct.send(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["matches"]}"#);
    let relay = tls_relay(&dir, &leaf, &sim.url());
    assert!(relay.tls());

    let (mut ws, served) = wss(&ca, relay.addr, "/api/v1/subscribe/BTC-USD?channels=matches");
    assert_eq!(served, leaf.der, "the configured certificate");
    let relayed = matches(&mut ws, 20);
    let mut sent: HashMap<u64, String> = HashMap::new();
    let last = serde_json::from_str::<Value>(relayed.last().unwrap()).unwrap()["trade_id"].as_u64().unwrap();
    while !sent.contains_key(&last) {
        let t = direct.text();
        let v: Value = serde_json::from_str(&t).unwrap();
        if let Some(id) = v["trade_id"].as_u64().filter(|_| v["type"] == "match") {
            sent.insert(id, t);
        }
    }
    let mut compared = 0;
    for t in &relayed {
        let id = serde_json::from_str::<Value>(t).unwrap()["trade_id"].as_u64().unwrap();
        if let Some(original) = sent.get(&id) {
            assert_eq!(t, original, "byte for byte over TLS");
            compared += 1;
        }
    }
    assert!(compared >= 10, "compared {compared} of {} relayed trades", relayed.len());

    // A close handshake, then the TLS stream ends cleanly: close_notify, not a truncation.
    ws.close(None).unwrap();
    let end = Instant::now() + DEADLINE;
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < end, "no close answer");
            }
            Err(e) => panic!("closing: {e}"),
        }
    }
    let mut rest = [0u8; 64];
    loop {
        match ws.get_mut().read(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => assert!(Instant::now() < end, "no close_notify"),
            Err(e) => panic!("the TLS stream did not end with close_notify: {e}"),
        }
    }

    // REST and an NDJSON stream over https.
    let (status, body) = https(&ca, relay.addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    let mut tls = ca.connect(relay.addr);
    write!(tls, "GET /api/v1/subscribe/BTC-USD?channels=matches HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    wait_until("an NDJSON match over https", || {
        let n = tls.read(&mut buf).expect("stream read");
        seen.extend_from_slice(&buf[..n]);
        String::from_utf8_lossy(&seen).lines().any(|l| l.starts_with('{') && l.contains(r#""type":"match""#))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plain_http_on_the_tls_port_gets_a_clear_error_and_the_server_stays_healthy() {
    let dir = scratch("plain");
    let ca = TestCa::new();
    let sim = simulator(|_| {});
    let relay = tls_relay(&dir, &ca.leaf(), &sim.url());
    let (status, head, body) = common::http_raw(relay.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 400, "{head}\n{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "tls_required", "{body}");
    assert!(v["message"].as_str().unwrap().contains("https://"), "{body}");
    let (status, _) = https(&ca, relay.addr, "/healthz");
    assert_eq!(status, 200);
    let (status, metrics) = https(&ca, relay.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("hedgehog_tls_handshakes_total{result=\"plain_http\"} 1\n"), "{metrics}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tls_port_of_its_own_leaves_the_main_port_plain() {
    let dir = scratch("tls-port");
    let ca = TestCa::new();
    let leaf = ca.leaf();
    let sim = simulator(|_| {});
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    install(&leaf, &cert, &key);
    let relay = common::relay_with(&sim.url(), |c| {
        c.shards = 2;
        c.tls = Some(hedgehog::config::TlsFiles { cert, key });
        c.tls_port = Some(0);
    });
    let tls_addr = relay.tls_addr.expect("a TLS port");
    assert_ne!(tls_addr.port(), relay.addr.port());
    let (status, _, _) = common::http(relay.addr, "GET", "/healthz", "");
    assert_eq!(status, 200, "plain HTTP on the main port");
    let (status, _) = https(&ca, tls_addr, "/healthz");
    assert_eq!(status, 200, "https on the TLS port");
    let (mut ws, served) = wss(&ca, tls_addr, "/api/v1/subscribe/BTC-USD?channels=matches");
    assert_eq!(served, leaf.der);
    matches(&mut ws, 1);
    let (status, _, _) = common::http_raw(tls_addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 400, "plain HTTP on the TLS port");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn garbage_handshakes_do_not_disturb_a_streaming_client() {
    let dir = scratch("garbage");
    let ca = TestCa::new();
    let sim = simulator(|c| {
        c.rate = 50.0;
        c.products = vec!["BTC-USD".into()];
    });
    let relay = tls_relay(&dir, &ca.leaf(), &sim.url());
    let (mut ws, _) = wss(&ca, relay.addr, "/api/v1/subscribe/BTC-USD?channels=matches");
    let first = matches(&mut ws, 1);
    let trade_id = |t: &str| serde_json::from_str::<Value>(t).unwrap()["trade_id"].as_u64().unwrap();
    let mut last = trade_id(&first[0]);

    // A handshake record of garbage, a truncated ClientHello left hanging, and
    // random bytes: 20 of each, while the client streams.
    let mut hanging = Vec::new();
    for i in 0..20u8 {
        let mut s = TcpStream::connect(relay.addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut garbage = vec![0x16, 0x03, 0x01, 0x00, 0x40];
        garbage.extend((0..64).map(|j| i.wrapping_mul(31).wrapping_add(j)));
        let _ = s.write_all(&garbage);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink); // the relay answers with an alert, or just closes

        let mut half = TcpStream::connect(relay.addr).unwrap();
        let _ = half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
        hanging.push(half);

        let mut noise = TcpStream::connect(relay.addr).unwrap();
        noise.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = noise.write_all(&[0xff, i, 0x00, 0x13, 0x37]);
        let _ = noise.read_to_end(&mut sink);
    }
    // The streaming client saw nothing of it: trades keep coming, in order.
    for t in matches(&mut ws, 30) {
        let id = trade_id(&t);
        assert_eq!(id, last + 1, "contiguous trade ids");
        last = id;
    }
    // The hanging handshakes end at the deadline (1 s here), and all are counted.
    wait_until("the failed handshakes counted", || {
        let (_, m) = https(&ca, relay.addr, "/metrics");
        let count = |result: &str| -> u64 {
            let prefix = format!("hedgehog_tls_handshakes_total{{result=\"{result}\"}} ");
            m.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
        };
        count("failed") >= 20 && count("timeout") >= 20 && count("plain_http") >= 20
    });
    drop(hanging);
    let (status, _) = https(&ca, relay.addr, "/healthz");
    assert_eq!(status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The binary's next stderr line containing `what`.
fn line_with(lines: &Receiver<String>, what: &str) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(what) => return line,
            Ok(_) => {}
            Err(_) => panic!("no log line with {what:?} within {DEADLINE:?}"),
        }
    }
}

#[test]
fn sighup_swaps_the_certificate_while_an_open_session_keeps_streaming() {
    let dir = scratch("reload");
    let ca = TestCa::new();
    let (first, second) = (ca.leaf(), ca.leaf());
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    install(&first, &cert, &key);
    let (relay, lines) = Running::hedgehog(
        &[
            "--simulate",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[("WEB_CONCURRENCY", "2"), ("RUST_LOG", "info")],
    );
    let listening = line_with(&lines, "hedgehog listening on ");
    let addr: SocketAddr =
        listening.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(listening.contains("wss://"), "{listening}");

    let (mut old, served) = wss(&ca, addr, "/api/v1/subscribe/BTC-USD?channels=matches");
    assert_eq!(served, first.der);
    matches(&mut old, 2);

    install(&second, &cert, &key);
    relay.signal("-HUP");
    line_with(&lines, "TLS certificate reloaded");
    let (mut new, served) = wss(&ca, addr, "/api/v1/subscribe/BTC-USD?channels=matches");
    assert_eq!(served, second.der, "a new client sees the new certificate");
    matches(&mut new, 2);
    // The session opened under the old certificate goes on.
    let trade_id = |t: &String| serde_json::from_str::<Value>(t).unwrap()["trade_id"].as_u64().unwrap();
    let ids: Vec<u64> = matches(&mut old, 10).iter().map(trade_id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "contiguous after the reload: {ids:?}");

    // A key that does not match is refused; the certificate in force stays.
    std::fs::write(&key, ca.leaf().key).unwrap();
    relay.signal("-HUP");
    let refused = line_with(&lines, "TLS reload refused");
    assert!(refused.contains("is not the key of the certificate"), "{refused}");
    let tls = ca.connect(addr);
    assert_eq!(tls.conn.peer_certificates().unwrap()[0], second.der, "the certificate in force stays");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `hedgehog serve` with `args`: its exit status and stderr, once it exits.
fn fails_to_start(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hedgehog"))
        .args(["--simulate", "--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .env_remove("HEDGEHOG_CONFIG")
        .env("WEB_CONCURRENCY", "1")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

#[test]
fn a_missing_or_mismatched_pair_is_one_line_and_exit_2() {
    let dir = scratch("startup");
    let ca = TestCa::new();
    let (a, b) = (ca.leaf(), ca.leaf());
    let (cert, key, other) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("other.pem"));
    install(&a, &cert, &key);
    std::fs::write(&other, &b.key).unwrap();
    let (cert, key, other) = (cert.to_str().unwrap(), key.to_str().unwrap(), other.to_str().unwrap());
    let missing = dir.join("missing.pem");
    let missing = missing.to_str().unwrap();
    for (args, says) in [
        (vec!["--tls-cert", missing, "--tls-key", key], format!("--tls-cert {missing}")),
        (vec!["--tls-cert", cert, "--tls-key", other], "is not the key of the certificate".to_string()),
        (vec!["--tls-cert", key, "--tls-key", key], "--tls-cert".to_string()),
        (vec!["--tls-cert", cert], "--tls-cert needs --tls-key".to_string()),
    ] {
        let (status, stderr) = fails_to_start(&args);
        assert_eq!(status, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(&says), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains("WARN")).collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
