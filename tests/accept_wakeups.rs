//! glommio 0.9 adds a clone of the task's waker to a pending accept's source on
//! EVERY poll, and a task's reference count is an i16: a task that polls its
//! pending accept again whenever it is woken for another reason (a stop flag
//! looked at every 20 ms) panics with "Waker invariant broken" after ~32,767
//! wake-ups, which was ~655 s of a shard, or the simulator, accepting nothing.
//!
//! These tests shorten the stop poll to "every turn of the executor", drive it
//! past 40,000 wake-ups in seconds, and check that a new connection is still
//! accepted and served. (With the accept raced in one future against the stop
//! poll, as it was, the shard's thread dies at the 32,768th.)

mod common;

use std::time::Duration;

use common::{http, relay_client, relay_with, simulator, wait_until, Client};

/// Past the i16 reference count, with a margin.
const WAKEUPS: u64 = 40_000;

#[test]
fn a_shard_keeps_accepting_after_40000_wakeups_without_a_connection() {
    let sim = simulator(|_| {});
    let relay = relay_with(&sim.url(), |c| {
        c.shards = 1;
        c.stop_poll = Duration::ZERO;
    });
    // One connection first, as in the field: then a long quiet.
    let (status, _, _) = http(relay.addr, "GET", "/livez", "");
    assert_eq!(status, 200);
    let start = relay.stop_polls();
    wait_until("40,000 stop polls", || relay.stop_polls() >= start + WAKEUPS);
    assert_eq!(relay.shard_ended(Duration::ZERO), None, "the shard is alive");
    let (mut client, id) = relay_client(relay.addr);
    let (status, _, _) = http(relay.addr, "POST", "/api/v1/subscribe/BTC-USD", &format!("X-Client-Id: {id}\r\n"));
    assert_eq!(status, 200);
    client.until("data", |v| v["type"] == "ticker" || v["type"] == "match");
    assert_eq!(relay.shard_ended(Duration::ZERO), None);
}

#[test]
fn the_simulator_keeps_accepting_after_40000_wakeups_without_a_connection() {
    let sim = simulator(|c| c.stop_poll = Duration::ZERO);
    let mut first = Client::connect(&sim.url());
    first.send(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["heartbeat"]}"#);
    first.until("subscriptions", |v| v["type"] == "subscriptions");
    let start = sim.stop_polls();
    wait_until("40,000 stop polls", || sim.stop_polls() >= start + WAKEUPS);
    let mut late = Client::connect(&sim.url());
    late.send(r#"{"type":"subscribe","product_ids":["ETH-USD"],"channels":["matches"]}"#);
    late.until("subscriptions", |v| v["type"] == "subscriptions");
    late.until("a match", |v| v["type"] == "match" || v["type"] == "last_match");
}
