//! What a load balancer asks: `/livez` (every shard answers), `/readyz` (the
//! feed is connected, or was within the grace) and `/healthz` (the report, 503
//! when not ready).

mod common;

use std::time::Duration;

use common::{http, relay_with, simulator, wait_until};
use hedgehog::sim::Fault;

#[test]
fn readiness_follows_the_upstream_and_liveness_does_not() {
    // The feed will refuse connections for 8 s once asked to.
    let sim = simulator(|c| c.fault_for = Duration::from_secs(8));
    let relay = relay_with(&sim.url(), |c| {
        c.shards = 2;
        c.ready_grace = Duration::from_millis(300);
    });
    let addr = relay.addr;
    wait_until("ready", || http(addr, "GET", "/readyz", "").0 == 200);
    let (status, head, body) = http(addr, "GET", "/healthz", "");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{body}");
    assert!(head.contains("X-Hedgehog-Shard: "), "{head}");

    sim.inject(Fault::Refuse);
    wait_until("the feed refuses", || sim.events().contains(&hedgehog::sim::SimEvent::Fault(Fault::Refuse)));
    sim.drop_connections();
    wait_until("not ready", || http(addr, "GET", "/readyz", "").0 == 503);
    let (_, _, body) = http(addr, "GET", "/readyz", "");
    assert_eq!(body["error"], "not_ready");
    assert!(body["message"].as_str().unwrap().starts_with("upstream "), "{body}");
    let (status, _, body) = http(addr, "GET", "/healthz", "");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert!(body["not_ready_reason"].is_string(), "{body}");
    assert!(body["upstream"]["state"].is_string() && body["clients"].is_number(), "the report is whole: {body}");
    for _ in 0..10 {
        let (status, _, body) = http(addr, "GET", "/livez", "");
        assert_eq!((status, body["status"].as_str()), (200, Some("live")), "alive, only not ready: {body}");
    }

    wait_until("ready again once the feed takes connections", || http(addr, "GET", "/readyz", "").0 == 200);
    assert_eq!(http(addr, "GET", "/healthz", "").0, 200);
}

#[test]
fn a_relay_is_ready_within_its_grace_before_the_feed_answers() {
    // Nothing listens at the feed's address: never connected.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", dead.local_addr().unwrap());
    drop(dead);
    let relay = relay_with(&url, |c| {
        c.shards = 1;
        c.ready_grace = Duration::from_secs(3600);
    });
    let (status, _, body) = http(relay.addr, "GET", "/readyz", "");
    assert_eq!(status, 200, "within the grace after start: {body}");
    let relay = relay_with("ws://127.0.0.1:9", |c| {
        c.shards = 1;
        c.ready_grace = Duration::ZERO;
    });
    let (status, _, body) = http(relay.addr, "GET", "/readyz", "");
    assert_eq!(status, 503, "no grace, never connected: {body}");
    assert_eq!(http(relay.addr, "GET", "/livez", "").0, 200);
}
