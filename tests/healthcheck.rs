//! `hedgehog healthcheck`, the image's HEALTHCHECK: exit 0 while the relay
//! answers `/healthz` with 200, exit 1 and one line when nothing answers.

mod common;

use std::process::Command;

fn healthcheck(port: u16) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hedgehog"))
        .args(["healthcheck", "--timeout", "10"])
        .env("PORT", port.to_string())
        .env("HOST", "0.0.0.0")
        .output()
        .expect("the binary runs")
}

#[test]
fn healthy_while_the_relay_answers() {
    let (mut relay, addr) = common::start_binary(&["--simulate"]);
    let out = healthcheck(addr.port());
    relay.kill().unwrap();
    relay.wait().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "healthy: HTTP/1.1 200 OK\n");
}

#[test]
fn no_relay_is_one_line_and_status_1() {
    // A port nobody listens on (a killed relay's may linger while io_uring lets go).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = healthcheck(port);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    let expected = format!("hedgehog: healthcheck of http://127.0.0.1:{port}/healthz: cannot connect");
    assert!(err.starts_with(&expected), "{err}");
}
