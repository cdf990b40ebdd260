//! `GET /metrics` after a known scenario: the exact counts it implies, the same
//! from either shard and from `--metrics-addr`; and who may scrape it with
//! access control on.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;

use common::access::{bearer, key_entry, key_of, rules};
use common::{http, http_raw, relay_client, simulator, wait_until};
use hedgehog::protocol::Channel;
use hedgehog::sim::Fault;
use serde_json::{json, Value};

/// The samples of an exposition: `name{labels}` -> value. Every line is a
/// comment or a sample (anything else fails the test).
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value = value.parse().unwrap_or_else(|_| panic!("not a value: {line:?}"));
        assert!(out.insert(series.to_string(), value).is_none(), "{series} twice");
    }
    out
}

fn scrape_at(addr: SocketAddr, headers: &str) -> (u16, String, String) {
    http_raw(addr, format!("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n").as_bytes())
}

fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, head, body) = scrape_at(addr, "");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    samples(&body)
}

fn health(addr: SocketAddr) -> Value {
    http(addr, "GET", "/healthz", "").2
}

/// 4 WebSocket clients (one dropped as a slow consumer), an NDJSON stream,
/// subscriptions by REST, in-band and stream, an unsubscribe, one upstream
/// reconnect and one gap: each figure is what that implies.
#[test]
fn a_known_scenario_gives_exact_figures() {
    let sim = simulator(|c| {
        c.rate = 40.0;
        c.products = vec!["BTC-USD".into(), "ETH-USD".into()];
    });
    let relay = common::relay_with(&sim.url(), |c| {
        c.shards = 2;
        c.channels = vec![Channel::Ticker, Channel::Matches];
        // Small enough that a replay of the history overflows it at once.
        c.client_queue_bytes = 64 << 10;
        c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    });
    let addr = relay.addr;
    let rest = |method: &str, path: &str, id: &str| http(addr, method, path, &format!("X-Client-Id: {id}\r\n")).0;
    // Three clients subscribe to BTC-USD by REST (ticker and matches).
    let mut clients: Vec<_> = (0..3).map(|_| relay_client(addr)).collect();
    for (_, id) in &clients {
        assert_eq!(rest("POST", "/api/v1/subscribe/BTC-USD", id), 200);
    }
    // The first adds ETH-USD ticker in-band; the second leaves BTC-USD matches.
    let sub = json!({"type": "subscribe", "product_ids": ["ETH-USD"], "channels": ["ticker"]});
    clients[0].0.send(&sub.to_string());
    clients[0].0.until("the subscriptions answer", |v| v["type"] == "subscriptions");
    assert_eq!(rest("DELETE", "/api/v1/subscribe/BTC-USD?channels=matches", &clients[1].1), 200);
    // An NDJSON stream of ETH-USD ticker, read by a thread of its own.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /api/v1/subscribe/ETH-USD?channels=ticker HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    });
    // A fourth client asks for more history than its queue holds: a slow consumer.
    wait_until("a history bigger than a client's queue", || {
        health(addr)["history"]["bytes"].as_u64() > Some(256 << 10)
    });
    let (mut slow, slow_id) = relay_client(addr);
    assert_eq!(rest("POST", "/api/v1/subscribe/BTC-USD?replay=1000", &slow_id), 200);
    assert_eq!(slow.close_frame(), (1008, "slow consumer".to_string()));
    // One upstream reconnect, then one gap.
    sim.inject(Fault::Drop);
    wait_until("the relay reconnected", || health(addr)["upstream"]["connects"] == 2);
    clients[2].0.until("matches again", |v| v["type"] == "match");
    sim.inject(Fault::Skip);
    wait_until("the gap was seen", || health(addr)["gaps"] == 1);
    wait_until("the slow client is gone", || relay.global.clients() == 4);

    let s = scrape(addr);
    let at = |series: &str| *s.get(series).unwrap_or_else(|| panic!("no {series} in {s:#?}"));
    let exact = [
        ("hedgehog_shards", 2.0),
        (r#"hedgehog_connections{transport="websocket"}"#, 3.0),
        (r#"hedgehog_connections{transport="ndjson"}"#, 1.0),
        (r#"hedgehog_connections{transport="sse"}"#, 0.0),
        (r#"hedgehog_connections_opened_total{transport="websocket"}"#, 4.0),
        (r#"hedgehog_connections_opened_total{transport="ndjson"}"#, 1.0),
        (r#"hedgehog_connections_closed_total{reason="slow_consumer"}"#, 1.0),
        (r#"hedgehog_connections_closed_total{reason="client"}"#, 0.0),
        (r#"hedgehog_connections_closed_total{reason="error"}"#, 0.0),
        // ticker: BTC-USD x3, ETH-USD in-band and by the stream; matches: BTC-USD x2.
        (r#"hedgehog_subscriptions{channel="ticker"}"#, 5.0),
        (r#"hedgehog_subscriptions{channel="matches"}"#, 2.0),
        (r#"hedgehog_subscriptions{channel="level2_batch"}"#, 0.0),
        (r#"hedgehog_subscribe_operations_total{entry="rest"}"#, 4.0),
        (r#"hedgehog_subscribe_operations_total{entry="in_band"}"#, 1.0),
        (r#"hedgehog_subscribe_operations_total{entry="stream"}"#, 1.0),
        (r#"hedgehog_unsubscribe_operations_total{entry="rest"}"#, 1.0),
        (r#"hedgehog_unsubscribe_operations_total{entry="in_band"}"#, 0.0),
        (r#"hedgehog_upstream_state{state="connected"}"#, 1.0),
        (r#"hedgehog_upstream_state{state="reconnecting"}"#, 0.0),
        ("hedgehog_upstream_connects_total", 2.0),
        (r#"hedgehog_upstream_reconnects_total{reason="closed"}"#, 1.0),
        ("hedgehog_upstream_gaps_total", 1.0),
        ("hedgehog_upstream_malformed_total", 0.0),
        (r#"hedgehog_http_requests_total{route="subscribe",status="200"}"#, 4.0),
        (r#"hedgehog_http_requests_total{route="unsubscribe",status="200"}"#, 1.0),
        (r#"hedgehog_access_refusals_total{status="401"}"#, 0.0),
        ("hedgehog_panics_total", 0.0),
    ];
    let wrong: Vec<String> = exact
        .iter()
        .filter(|(series, want)| s.get(*series) != Some(want))
        .map(|(series, want)| format!("{series}: {:?}, want {want}", s.get(*series)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Figures that flow: present, consistent, not zero.
    let (ticker, matches) =
        (at(r#"hedgehog_deliveries_total{channel="ticker"}"#), at(r#"hedgehog_deliveries_total{channel="matches"}"#));
    assert!(ticker > 0.0 && matches > 0.0);
    assert!(at("hedgehog_socket_writes_total") > 0.0 && at("hedgehog_socket_written_bytes_total") > 0.0);
    assert!(at(r#"hedgehog_upstream_messages_total{channel="matches"}"#) > 0.0);
    assert!(at(r#"hedgehog_feed_latency_seconds_bucket{channel="ticker",le="+Inf"}"#) > 0.0);
    assert_eq!(at(r#"hedgehog_outbox_bytes_count"#), 4.0, "one observation per open client");
    let by_shard = at(r#"hedgehog_shard_connections{shard="0"}"#) + at(r#"hedgehog_shard_connections{shard="1"}"#);
    assert_eq!(by_shard, 4.0, "the shards' connections add up");
    let delivered =
        at(r#"hedgehog_shard_deliveries_total{shard="0"}"#) + at(r#"hedgehog_shard_deliveries_total{shard="1"}"#);
    let by_channel: f64 =
        Channel::ALL.iter().map(|c| at(&format!("hedgehog_deliveries_total{{channel=\"{}\"}}", c.name()))).sum();
    assert_eq!(delivered, by_channel, "by shard and by channel, the same deliveries");
    assert!(at("process_resident_memory_bytes") > 0.0 && at("process_open_fds") > 0.0);
    assert!(at("hedgehog_upstream_last_message_age_seconds") < 60.0);
    let build = s.keys().find(|k| k.starts_with("hedgehog_build_info{")).expect("build info");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))) && build.contains("commit=\""),
        "{build}"
    );
    // The same counts from the other port (and so, often, from the other shard).
    let metrics_addr = relay.global.metrics_addr().expect("--metrics-addr is bound");
    let other = scrape(metrics_addr);
    for (series, want) in &exact[..20] {
        assert_eq!(other.get(*series), Some(want), "{series} from --metrics-addr");
    }
    let (status, _, body) = http_raw(metrics_addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 404, "{body}");
    drop(clients);
    drop(relay);
    reader.join().ok();
}

/// With access control on, the main port's `/metrics` is for admins: 401
/// without a credential, 403 for another class, 200 for an admin; the
/// `--metrics-addr` port is open (it is the operator's to place).
#[test]
fn with_access_control_only_admins_scrape_the_main_port() {
    let sim = simulator(|c| c.rate = 5.0);
    let text = format!(
        "[classes.ops]\nallow = [\"*\"]\nallow_channels = [\"*\"]\nadmin = true\n\
         [classes.pro]\nallow = [\"*\"]\nallow_channels = [\"*\"]\n{}{}",
        key_entry("root", "ops"),
        key_entry("alice", "pro")
    );
    let relay = common::relay_with(&sim.url(), |c| {
        c.shards = 2;
        c.access = Some(rules(&text));
        c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    });
    let (status, head, _) = scrape_at(relay.addr, "");
    assert_eq!(status, 401, "{head}");
    let (status, _, body) = scrape_at(relay.addr, &bearer(&key_of("alice")));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not an admin class"), "{body}");
    let (status, _, body) = scrape_at(relay.addr, &bearer(&key_of("root")));
    assert_eq!(status, 200, "{body}");
    let s = samples(&body);
    assert_eq!(s[r#"hedgehog_access_refusals_total{status="401"}"#], 1.0);
    assert_eq!(s[r#"hedgehog_access_refusals_total{status="403"}"#], 1.0);
    assert_eq!(scrape_at(relay.global.metrics_addr().unwrap(), "").0, 200);
}
