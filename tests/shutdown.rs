//! SIGTERM and SIGINT: stop accepting, Close 1001 to every client, close the
//! upstream, exit 0.

mod common;

use std::process::Command;
use std::time::Instant;

use common::{http, Client, DEADLINE};

/// Starts the binary in offline mode on a free port; returns it and its address.
fn start() -> (std::process::Child, std::net::SocketAddr) {
    common::start_binary(&["--simulate"])
}

fn signal(child: &std::process::Child, name: &str) {
    let ok = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -{name}");
}

fn exits_cleanly(mut child: std::process::Child) {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return;
        }
        assert!(Instant::now() < end, "still running long after the signal");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let (child, addr) = start();
    let mut clients: Vec<(Client, String)> = (0..4).map(|_| common::relay_client(addr)).collect();
    for (_, id) in &clients {
        let (status, _, _) = http(addr, "POST", "/api/v1/subscribe/BTC-USD", &format!("X-Client-Id: {id}\r\n"));
        assert_eq!(status, 200);
    }
    for (c, _) in &mut clients {
        c.until("data", |v| v["type"] == "ticker" || v["type"] == "match");
    }
    signal(&child, "TERM");
    for (c, _) in &mut clients {
        let (code, reason) = c.close_frame();
        assert_eq!(code, 1001);
        assert!(reason.contains("shutting down"), "{reason}");
    }
    drop(clients);
    exits_cleanly(child);
    assert!(std::net::TcpStream::connect(addr).is_err(), "no longer accepting");
}

#[test]
fn sigint_with_no_clients_exits_0() {
    let (child, _) = start();
    signal(&child, "INT");
    exits_cleanly(child);
}
