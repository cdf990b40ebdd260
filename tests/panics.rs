//! One panic is not an outage: glommio cannot contain a panicking task (it unwinds
//! through the executor and the shard's thread ends), so hedgehog contains each
//! connection's panic itself, and the shard goes on serving everyone else.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{http, relay_client, simulator, Client, DEADLINE};
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
use hedgehog::config::ServeConfig;
use hedgehog::hub::Global;

/// Runs, on a fresh executor, a task that panics and a task that finishes after it
/// (both in a task queue of their own, as hedgehog's connections are). Returns
/// whether the executor thread ended normally and whether the second task finished.
fn panic_beside_a_task(contain: bool, global: std::sync::Arc<Global>) -> (bool, bool) {
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = finished.clone();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(hedgehog::IO_MEMORY)
        .spawn(move || async move {
            let q = glommio::executor().create_task_queue(Shares::default(), Latency::NotImportant, "connections");
            let bad = async { panic!("a bug met while serving one connection") };
            let bad = async move {
                if contain {
                    hedgehog::server::contained(&global, "a test task", bad).await;
                } else {
                    bad.await;
                }
            };
            glommio::spawn_local_into(bad, q).unwrap().detach();
            let other_ran = Rc::new(Cell::new(false));
            let seen = other_ran.clone();
            let other = glommio::spawn_local_into(
                async move {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                    seen.set(true);
                },
                q,
            )
            .unwrap();
            other.await;
            flag.store(other_ran.get(), std::sync::atomic::Ordering::SeqCst);
        })
        .unwrap();
    let ended_normally = handle.join().is_ok();
    (ended_normally, finished.load(std::sync::atomic::Ordering::SeqCst))
}

#[test]
fn glommio_alone_loses_the_shard_to_one_panicking_task() {
    let global = std::sync::Arc::new(Global::new(&ServeConfig::default()));
    let (ended_normally, other_finished) = panic_beside_a_task(false, global);
    assert!(!ended_normally, "the executor thread is unwound by the task's panic");
    assert!(!other_finished, "and the other task on it never finishes");
}

#[test]
fn a_contained_panic_ends_one_task_and_the_shard_goes_on() {
    let global = std::sync::Arc::new(Global::new(&ServeConfig::default()));
    let (ended_normally, other_finished) = panic_beside_a_task(true, global.clone());
    assert!(ended_normally);
    assert!(other_finished);
    assert_eq!(global.panics(), 1, "the panic is counted");
}

/// End to end, in a debug build (the echo endpoint's panic request exists only there).
#[cfg(debug_assertions)]
#[test]
fn a_panic_in_one_connection_leaves_the_other_clients_of_its_shard_served() {
    let sim = simulator(|c| {
        c.rate = 50.0;
        c.products = vec!["BTC-USD".into()];
    });
    // One shard: the panicking connection and the subscriber share it.
    let relay = hedgehog::server::start(ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        shards: 1,
        echo: true,
        upstream: hedgehog::upstream::UpstreamConfig { url: sim.url(), ..Default::default() },
        ..Default::default()
    })
    .unwrap();
    let (mut subscriber, id) = relay_client(relay.addr);
    let with_id = format!("X-Client-Id: {id}\r\n");
    assert_eq!(http(relay.addr, "POST", "/api/v1/subscribe/BTC-USD?channels=matches", &with_id).0, 200);
    subscriber.until("data before", |v| v["type"] == "match");

    let mut victim = Client::connect(&format!("ws://{}/echo", relay.addr));
    victim.send(std::str::from_utf8(b"hedgehog test: panic here").unwrap());
    // The panicking connection is dropped (no close handshake: its task is gone).
    let deadline = Instant::now() + DEADLINE;
    loop {
        match victim.ws.read() {
            Ok(m) => panic!("the panicking connection answered {m:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                assert!(Instant::now() < deadline, "the panicking connection was not dropped");
            }
            Err(_) => break,
        }
    }

    // The shard goes on: the subscriber's trades keep coming, in order.
    let mut last = 0;
    for _ in 0..20 {
        let m: serde_json::Value =
            serde_json::from_str(&subscriber.until("data after", |v| v["type"] == "match")).unwrap();
        let trade = m["trade_id"].as_u64().unwrap();
        assert!(trade > last, "trade ids rise: {last} then {trade}");
        last = trade;
    }
    let (status, _, health) = http(relay.addr, "GET", "/healthz", "");
    assert_eq!(status, 200);
    assert_eq!(health["panics"], 1, "{health}");
    assert_eq!(health["clients"], 1, "the subscriber is still there");
    let mut again = Client::connect(&format!("ws://{}/echo", relay.addr));
    again.send("still here");
    assert_eq!(again.text(), "still here");
}
