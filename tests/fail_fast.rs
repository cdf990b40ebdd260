//! A relay that is no longer whole ends, so that its supervisor (systemd, a
//! container runtime) starts a new one: a second process on the same port is
//! refused, a shard that dies ends the process, and a shard that cannot stop
//! does not hold up a shutdown. Each runs the real (debug) binary, whose echo
//! endpoint can be asked to panic or block its shard.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{echo_client, exchange, Running, DEADLINE};

/// The binary with `args` and two shards; its address and a channel of its log lines.
fn start(args: &[&str]) -> (Running, SocketAddr, mpsc::Receiver<String>) {
    start_on(0, args)
}

/// As [`start`], on `port`.
fn start_on(port: u16, args: &[&str]) -> (Running, SocketAddr, mpsc::Receiver<String>) {
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_hedgehog"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .env("WEB_CONCURRENCY", "2")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts"),
    );
    let (tx, rx) = mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let end = Instant::now() + DEADLINE;
    loop {
        let line = rx.recv_timeout(end.saturating_duration_since(Instant::now())).expect("the relay starts");
        if let Some(rest) = line.split("hedgehog listening on ").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            return (child, addr, rx);
        }
    }
}

/// Waits for the process to exit; its status code.
fn exit_code(child: &mut Running, within: Duration) -> i32 {
    let end = Instant::now() + within;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status.code().expect("exited, not killed by a signal");
        }
        assert!(Instant::now() < end, "still running after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Log lines until one contains `what`.
fn log_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        let line = rx.recv_timeout(end.saturating_duration_since(Instant::now())).expect("the log line");
        if line.contains(what) {
            return line;
        }
    }
}

#[test]
fn a_second_relay_on_a_port_in_use_is_refused_with_exit_2() {
    let (_first, addr, _log) = start(&["--simulate"]);
    let out = Command::new(env!("CARGO_BIN_EXE_hedgehog"))
        .args(["--host", "127.0.0.1", "--port", &addr.port().to_string(), "--simulate"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.starts_with("hedgehog: ") && last.contains("already in use"), "{stderr}");
    // The first relay still has the port to itself and answers.
    let (status, _, _) = common::http(addr, "GET", "/livez", "");
    assert_eq!(status, 200);
}

#[test]
fn a_relay_restarted_on_its_port_right_after_serving_clients_starts() {
    let (mut first, addr, _log) = start(&["--simulate"]);
    // A client the relay closes first, on shutdown: its side of the connection
    // lingers in TIME_WAIT, which a listener without SO_REUSEADDR leaves bound.
    let mut client = common::Client::connect(&format!("ws://{addr}/ws"));
    assert_eq!(client.json()["type"], "welcome");
    sigterm(&first);
    assert_eq!(exit_code(&mut first, DEADLINE), 0);
    drop(client);
    let (_second, again, _log) = start_on(addr.port(), &["--simulate"]);
    assert_eq!(again, addr);
    let (status, _, _) = common::http(addr, "GET", "/livez", "");
    assert_eq!(status, 200);
}

/// SIGTERM, as a supervisor stops the relay.
fn sigterm(child: &Running) {
    let status = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn a_shard_that_dies_outside_a_connection_ends_the_process() {
    let (mut child, addr, log) = start(&["--simulate", "--echo"]);
    let (mut ws, shard) = echo_client(addr);
    ws.send(tungstenite::Message::text("hedgehog test: panic the shard")).unwrap();
    assert_eq!(exit_code(&mut child, DEADLINE), 70, "EX_SOFTWARE, so a supervisor restarts it");
    let line = log_line(&log, "died");
    assert!(line.contains(&format!("shard {shard} died: panicked at")), "{line}");
    assert!(line.contains("asked to panic its shard"), "{line}");
}

/// `/livez` answered by a shard other than `wedged`. Connections the kernel gives
/// the wedged shard are never answered, and which shard takes a connection is the
/// kernel's choice: so each round asks on several connections at once and takes
/// the first answer (one at a time, four or five misses in a row, at 4 s each,
/// outlasted the deadline about one run in thirty on a loaded machine).
fn livez_from_another_shard(addr: SocketAddr) -> (u16, String) {
    const AT_ONCE: usize = 6;
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..AT_ONCE {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(addr) else { return };
                s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
                if s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
                    return;
                }
                let mut out = Vec::new();
                if s.read_to_end(&mut out).is_ok() && !out.is_empty() {
                    let _ = tx.send(String::from_utf8_lossy(&out).into_owned());
                }
            });
        }
        drop(tx);
        // Every sender is gone (all missed) by 4 s after the last connect.
        if let Ok(text) = rx.recv() {
            let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            return (status, text);
        }
    }
    panic!("no shard answered /livez");
}

#[test]
fn a_wedged_shard_fails_livez_and_cannot_hold_up_shutdown() {
    let (mut child, addr, log) = start(&["--simulate", "--echo"]);
    let (status, _) = livez_from_another_shard(addr);
    assert_eq!(status, 200, "both shards answer at first");
    let (mut ws, wedged) = echo_client(addr);
    ws.send(tungstenite::Message::text("hedgehog test: wedge the shard")).unwrap();
    // The shard wedges once it reads the message: until then it still answers.
    let end = Instant::now() + DEADLINE;
    let (status, text) = loop {
        let (status, text) = livez_from_another_shard(addr);
        if status != 200 || Instant::now() >= end {
            break (status, text);
        }
    };
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("not_live") && text.contains(&format!("[{wedged}]")), "{text}");
    assert!(Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap().success());
    // 10 s of grace, 2 s to stop outright, then it gives up on the shard.
    let code = exit_code(&mut child, DEADLINE + Duration::from_secs(12));
    assert_eq!(code, 1, "a shutdown that could not finish is a failure");
    let line = log_line(&log, "did not stop");
    assert!(line.contains(&format!("shard(s) {wedged} did not stop")), "{line}");
}

#[test]
fn a_request_for_a_client_of_a_wedged_shard_gets_503_shard_unavailable() {
    let (_child, addr, _log) = start(&["--simulate", "--echo"]);
    let (_client, id) = common::relay_client(addr);
    let wedged: usize = id.split('-').next().unwrap().parse().unwrap();
    // A keep-alive connection to the other shard, found while both still answer.
    let end = Instant::now() + DEADLINE;
    let mut other = loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let (_, head) = exchange(&mut s, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
        if !head.contains(&format!("X-Hedgehog-Shard: {wedged}\r\n")) {
            break s;
        }
        assert!(Instant::now() < end, "every connection landed on shard {wedged}");
    };
    // Wedge the client's shard, through an echo connection the kernel gave it.
    let end = Instant::now() + DEADLINE;
    let mut ws = loop {
        let (ws, shard) = echo_client(addr);
        if shard == wedged {
            break ws;
        }
        assert!(Instant::now() < end, "no echo connection landed on shard {wedged}");
    };
    ws.send(tungstenite::Message::text("hedgehog test: wedge the shard")).unwrap();
    // The other shard asks the wedged one, and gives up after its deadline.
    let request = format!("POST /api/v1/subscribe/BTC-USD HTTP/1.1\r\nHost: x\r\nX-Client-Id: {id}\r\n\r\n");
    let end = Instant::now() + DEADLINE;
    let (status, text) = loop {
        let (status, text) = exchange(&mut other, &request);
        if status != 200 || Instant::now() >= end {
            break (status, text);
        }
    };
    assert_eq!(status, 503, "{text}");
    assert!(text.contains(r#""error":"shard_unavailable""#) && text.contains(&format!("shard {wedged} ")), "{text}");
}
