//! Captures of the real feed replayed through the relay: built here the way the
//! real feed writes them (untimed `subscriptions` and `snapshot`s first, then
//! tickers, matches, level2 updates and heartbeats of several products whose
//! `time`s step back across products), in each capture format, one gzipped. Every
//! captured message of the subscribed products and channels must reach a
//! REST-subscribed WebSocket client and a Coinbase-protocol client byte for byte
//! and in capture order, and a late joiner must get what the capture implies.
//!
//! The replay runs at full speed (`--speed 0`) but paused until every client has
//! subscribed, so no test waits on the capture's pacing.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::{http, relay_client, relay_with, sim_requests, simulator, wait_until, Client, Running};
use hedgehog::protocol::RequestKind;
use hedgehog::server::RelayHandle;
use hedgehog::sim::SimHandle;
use serde_json::{json, Value};

const BASE: i64 = 1_749_186_030_000_000; // 2025-06-06T05:00:30Z
const CHANNELS: [&str; 4] = ["ticker", "matches", "level2_batch", "heartbeat"];

fn t(offset_ms: i64) -> String {
    hedgehog::clock::format_iso(BASE + offset_ms * 1000)
}

fn ticker(p: &str, trade: u64, price: &str, ms: i64) -> String {
    format!(
        r#"{{"type":"ticker","sequence":{},"product_id":"{p}","price":"{price}","open_24h":"1","volume_24h":"2","low_24h":"1","high_24h":"9","volume_30d":"3","best_bid":"{price}","best_bid_size":"0.1","best_ask":"{price}","best_ask_size":"0.2","side":"buy","time":"{}","trade_id":{trade},"last_size":"0.01"}}"#,
        trade * 10 + 1,
        t(ms)
    )
}

fn trade(kind: &str, p: &str, trade: u64, price: &str, ms: i64) -> String {
    format!(
        r#"{{"type":"{kind}","trade_id":{trade},"maker_order_id":"2a0da34e-61f7-4c36-88e5-c9dd15927b16","taker_order_id":"3c82abaa-c01e-4608-be59-6a1e69742891","side":"sell","size":"0.5","price":"{price}","product_id":"{p}","sequence":{},"time":"{}"}}"#,
        trade * 10,
        t(ms)
    )
}

fn heartbeat(p: &str, last_trade: u64, ms: i64) -> String {
    format!(
        r#"{{"type":"heartbeat","last_trade_id":{last_trade},"product_id":"{p}","sequence":{},"time":"{}"}}"#,
        last_trade * 10 + 2,
        t(ms)
    )
}

fn l2(p: &str, changes: &str, ms: i64) -> String {
    format!(r#"{{"type":"l2update","product_id":"{p}","changes":[{changes}],"time":"{}"}}"#, t(ms))
}

/// The capture: one message per entry, as the feed sent it.
fn capture() -> Vec<String> {
    let subs = r#"{"type":"subscriptions","channels":[{"name":"ticker","product_ids":["BTC-USD","ETH-USD","SOL-USD"],"account_ids":null},{"name":"level2_batch","product_ids":["BTC-USD","ETH-USD","SOL-USD"],"account_ids":null}]}"#;
    vec![
        subs.to_string(),
        r#"{"type":"snapshot","product_id":"BTC-USD","asks":[["102861.50","0.15"],["102862.00","1.00"]],"bids":[["102861.49","0.05"],["102860.00","2.50"]]}"#.into(),
        r#"{"type":"snapshot","product_id":"ETH-USD","asks":[["2500.10","3.0"]],"bids":[["2500.00","4.0"],["2499.50","1.0"]]}"#.into(),
        r#"{"type":"snapshot","product_id":"SOL-USD","asks":[["150.01","10"]],"bids":[["149.99","20"]]}"#.into(),
        // What a subscribe is answered with: the latest ticker and trade, seconds old.
        ticker("BTC-USD", 100, "102861.50", -7000),
        trade("last_match", "BTC-USD", 100, "102861.50", -7000),
        ticker("ETH-USD", 50, "2500.10", -3000),
        trade("last_match", "ETH-USD", 50, "2500.10", -3000),
        heartbeat("BTC-USD", 100, 0),
        trade("match", "BTC-USD", 101, "102861.49", 100),
        ticker("BTC-USD", 101, "102861.49", 100),
        l2("BTC-USD", r#"["buy","102861.49","0"],["sell","102861.80","0.7"]"#, 150),
        // ETH's times step back behind BTC's.
        trade("match", "ETH-USD", 51, "2500.00", 50),
        ticker("ETH-USD", 51, "2500.00", 50),
        l2("ETH-USD", r#"["buy","2500.00","3.5"]"#, 120),
        heartbeat("ETH-USD", 51, 200),
        l2("SOL-USD", r#"["buy","149.98","5"],["sell","150.01","0"],["sell","150.05","1"]"#, 200),
        trade("match", "BTC-USD", 102, "102862.00", 300),
        ticker("BTC-USD", 102, "102862.00", 300),
        l2("BTC-USD", r#"["sell","102862.00","0"],["buy","102861.00","1.25"]"#, 310),
        heartbeat("BTC-USD", 102, 1000),
        trade("match", "ETH-USD", 52, "2500.10", 900),
        ticker("ETH-USD", 52, "2500.10", 900),
        heartbeat("ETH-USD", 52, 1100),
        l2("ETH-USD", r#"["sell","2500.10","0"],["sell","2500.20","2.0"]"#, 1150),
        heartbeat("BTC-USD", 102, 2000),
    ]
}

/// How the capture is written to disk.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// One message per line.
    JsonLines,
    /// `wss://... -> <unix>: <json>`, with a header, a connection marker and the
    /// client's own request, as Python feed handlers write their raw files.
    Directed,
    /// `<unix>: <json>` with `#` marker lines, as hedgehog's recorder writes.
    Recorder,
    /// `<ISO-8601> <json>`, as tick-data archives sell it.
    Iso,
}

fn write_capture(name: &str, layout: Layout, gzip: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hedgehog-replay-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = "wss://ws-feed.exchange.coinbase.com";
    let stamp = |i: usize| {
        let us = BASE + 500_000 + i as i64 * 1000;
        (format!("{}.{:06}", us / 1_000_000, us % 1_000_000), hedgehog::clock::format_iso(us))
    };
    let mut text = String::new();
    match layout {
        Layout::Directed => {
            text += "configuration: {'log': {'filename': 'feedhandler.log'}}\n";
            text += &format!("{url} <-> {}\n", stamp(0).0);
            text += &format!(
                r#"{url} <- {}: {{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker"]}}"#,
                stamp(0).0
            );
            text += "\n";
        }
        Layout::Recorder => text += "# hedgehog recording of ws://127.0.0.1:1 started\n",
        _ => {}
    }
    for (i, m) in capture().iter().enumerate() {
        let (unix, iso) = stamp(i);
        text += &match layout {
            Layout::JsonLines => format!("{m}\n"),
            Layout::Directed => format!("{url} -> {unix}: {m}\n"),
            Layout::Recorder if i == 12 => format!("# hole: upstream reconnecting\n{unix}: {m}\n"),
            Layout::Recorder => format!("{unix}: {m}\n"),
            Layout::Iso => format!("{iso} {m}\n"),
        };
    }
    let path = dir.join(name);
    let bytes = if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap()
    } else {
        text.into_bytes()
    };
    std::fs::write(&path, bytes).unwrap();
    path
}

fn kind(m: &str) -> String {
    serde_json::from_str::<Value>(m).unwrap()["type"].as_str().unwrap_or("").to_string()
}

fn product(m: &str) -> String {
    serde_json::from_str::<Value>(m).unwrap()["product_id"].as_str().unwrap_or("").to_string()
}

/// The captured messages of `products` on every channel, in capture order.
fn expected(products: &[&str]) -> Vec<String> {
    capture().into_iter().filter(|m| kind(m) != "subscriptions" && products.contains(&product(m).as_str())).collect()
}

/// The book a capture implies for `p`: its snapshot with every update applied,
/// as a `snapshot` message (asks lowest first, bids highest first).
fn rebuilt_snapshot(p: &str) -> Value {
    let mut sides: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    for m in capture().iter().filter(|m| product(m) == p) {
        let v: Value = serde_json::from_str(m).unwrap();
        let mut set = |side: &str, price: &Value, size: &Value| {
            let (price, size) = (price.as_str().unwrap().to_string(), size.as_str().unwrap().to_string());
            let side = sides.entry(if side == "buy" { "bids" } else { "asks" }).or_default();
            if size.parse::<f64>().unwrap() == 0.0 {
                side.remove(&price);
            } else {
                side.insert(price, size);
            }
        };
        match v["type"].as_str().unwrap() {
            "snapshot" => {
                for (key, side) in [("bids", "buy"), ("asks", "sell")] {
                    v[key].as_array().unwrap().iter().for_each(|l| set(side, &l[0], &l[1]));
                }
            }
            "l2update" => {
                v["changes"].as_array().unwrap().iter().for_each(|c| set(c[0].as_str().unwrap(), &c[1], &c[2]))
            }
            _ => {}
        }
    }
    let levels = |side: &str, best_first_high: bool| {
        let mut l: Vec<(String, String)> = sides.get(side).cloned().unwrap_or_default().into_iter().collect();
        l.sort_by(|a, b| a.0.parse::<f64>().unwrap().total_cmp(&b.0.parse::<f64>().unwrap()));
        if best_first_high {
            l.reverse();
        }
        l.into_iter().map(|(p, s)| json!([p, s])).collect::<Vec<_>>()
    };
    json!({"type": "snapshot", "product_id": p, "asks": levels("asks", false), "bids": levels("bids", true)})
}

/// The latest captured message of `kind` for `p`, as a fresh subscriber gets it.
fn latest(p: &str, kinds: &[&str]) -> String {
    capture().into_iter().rfind(|m| product(m) == p && kinds.contains(&kind(m).as_str())).unwrap()
}

/// Whether the relay's subscribe requests to the replay cover every channel of `products`.
fn upstream_subscribed(sim: &SimHandle, products: &[&str]) -> bool {
    let mut have: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in sim_requests(sim) {
        let Ok(req) = hedgehog::protocol::parse_request(r.as_bytes()) else { continue };
        if req.kind == RequestKind::Subscribe {
            for (ch, ps) in req.channels {
                have.entry(ch).or_default().extend(ps);
            }
        }
    }
    CHANNELS.iter().all(|ch| products.iter().all(|p| have.get(*ch).is_some_and(|ps| ps.iter().any(|x| x == p))))
}

/// The next `n` feed messages a client gets, hedgehog's own notes and the
/// `subscriptions` replies left out.
fn feed_messages(c: &mut Client, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = c.text();
        if !["subscribed", "unsubscribed", "upstream", "subscriptions", "welcome"].contains(&kind(&m).as_str()) {
            out.push(m);
        }
    }
    out
}

fn healthz(relay: &RelayHandle) -> Value {
    http(relay.addr, "GET", "/healthz", "").2
}

/// The relay in front of the capture at `path`: in-process (`--replay`) or a
/// separate simulator. The replay is paused; returns the relay and its simulator.
fn start(path: &Path, in_process: bool) -> (RelayHandle, Option<SimHandle>) {
    let adjust = |c: &mut hedgehog::config::ServeConfig| {
        c.shards = 2;
        // A replay that has ended goes quiet: no stall reconnect within a test.
        c.upstream.stall_timeout = std::time::Duration::from_secs(120);
    };
    if in_process {
        let relay = relay_with("ws://127.0.0.1:1", |c| {
            adjust(c);
            (c.replay, c.replay_speed) = (Some(path.to_path_buf()), 0.0);
        });
        relay.simulator().unwrap().set_paused(true);
        (relay, None)
    } else {
        let sim = simulator(|c| (c.replay, c.speed) = (Some(path.to_path_buf()), 0.0));
        sim.set_paused(true);
        (relay_with(&sim.url(), adjust), Some(sim))
    }
}

fn relays_the_capture(path: &Path, in_process: bool) {
    let (relay, own_sim) = start(path, in_process);
    let sim = own_sim.as_ref().or(relay.simulator()).unwrap();
    wait_until("the relay knows the capture's products from status", || healthz(&relay)["upstream"]["products"] == 3);
    let (mut rest, id) = relay_client(relay.addr);
    for p in ["BTC-USD", "ETH-USD"] {
        let path = format!("/api/v1/subscribe/{p}?channels={}", CHANNELS.join(","));
        let (status, _, body) = http(relay.addr, "POST", &path, &format!("X-Client-Id: {id}\r\n"));
        assert_eq!(status, 200, "{body}");
    }
    let mut coinbase = Client::connect(&format!("ws://{}/?mode=coinbase", relay.addr));
    coinbase.send(r#"{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channels":["ticker","matches","level2_batch","heartbeat"]}"#);
    coinbase.until("subscriptions", |v| v["type"] == "subscriptions");
    wait_until("the relay subscribed upstream", || upstream_subscribed(sim, &["BTC-USD", "ETH-USD"]));
    sim.set_paused(false);

    let want = expected(&["BTC-USD", "ETH-USD"]);
    assert_eq!(feed_messages(&mut rest, want.len()), want, "REST-subscribed client");
    assert_eq!(feed_messages(&mut coinbase, want.len()), want, "Coinbase-protocol client");

    if in_process {
        let replay = &healthz(&relay)["replay"];
        assert_eq!(replay["file"], path.display().to_string());
        assert_eq!(replay["messages"], capture().len() - 1, "{replay}");
        assert_eq!(healthz(&relay)["simulated"], true);
        wait_until("the replay has played all", || healthz(&relay)["replay"]["finished"] == true);
    }

    // A late joiner on topics the relay follows is answered by the relay.
    let (mut late, late_id) = relay_client(relay.addr);
    let path = "/api/v1/subscribe/BTC-USD?channels=ticker,matches,level2_batch";
    assert_eq!(http(relay.addr, "POST", path, &format!("X-Client-Id: {late_id}\r\n")).0, 200);
    let first: BTreeMap<String, String> = feed_messages(&mut late, 3).into_iter().map(|m| (kind(&m), m)).collect();
    assert_eq!(first["ticker"], latest("BTC-USD", &["ticker"]));
    let last_match = latest("BTC-USD", &["match"]).replacen(r#""type":"match""#, r#""type":"last_match""#, 1);
    assert_eq!(first["last_match"], last_match);
    assert_eq!(serde_json::from_str::<Value>(&first["snapshot"]).unwrap(), rebuilt_snapshot("BTC-USD"));

    // On a topic nobody followed, the relay subscribes upstream, and the replay
    // answers with the book as of where it is.
    let mut sol = Client::connect(&format!("ws://{}/?mode=coinbase", relay.addr));
    sol.send(r#"{"type":"subscribe","product_ids":["SOL-USD"],"channels":["level2_batch"]}"#);
    let snapshot = sol.until("SOL-USD snapshot", |v| v["type"] == "snapshot");
    assert_eq!(serde_json::from_str::<Value>(&snapshot).unwrap(), rebuilt_snapshot("SOL-USD"));
}

#[test]
fn json_lines_through_a_separate_simulator() {
    relays_the_capture(&write_capture("capture.jsonl", Layout::JsonLines, false), false);
}

#[test]
fn a_feed_handlers_raw_file_in_process() {
    relays_the_capture(&write_capture("raw.0", Layout::Directed, false), true);
}

#[test]
fn a_gzipped_recording_in_process() {
    relays_the_capture(&write_capture("recording.gz", Layout::Recorder, true), true);
}

#[test]
fn an_iso_timestamped_archive_in_process() {
    relays_the_capture(&write_capture("archive.txt", Layout::Iso, false), true);
}

#[test]
fn the_replay_serves_status_and_first_messages_and_starts_on_a_product() {
    let path = write_capture("direct.json.gz", Layout::Iso, true);
    let sim = simulator(|c| (c.replay, c.speed) = (Some(path.clone()), 0.0));
    let progress = sim.replay_progress().expect("a replay reports its progress");
    let mut c = Client::connect(&sim.url());
    c.send(r#"{"type":"subscribe","channels":["status"]}"#);
    c.until("subscriptions", |v| v["type"] == "subscriptions");
    let status: Value = serde_json::from_str(&c.until("status", |v| v["type"] == "status")).unwrap();
    let ids: Vec<&str> = status["products"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["BTC-USD", "ETH-USD", "SOL-USD"]);
    assert_eq!(
        (status["products"][0]["base_currency"].as_str(), status["products"][0]["quote_currency"].as_str()),
        (Some("BTC"), Some("USD"))
    );
    let currencies: Vec<&str> =
        status["currencies"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(currencies, ["BTC", "ETH", "SOL", "USD"]);
    assert_eq!(progress.report()["started"], false, "a status-only subscribe does not start the clock");

    c.send(r#"{"type":"subscribe","product_ids":["ETH-USD"],"channels":["ticker","matches"]}"#);
    let want: Vec<String> = expected(&["ETH-USD"])
        .into_iter()
        .filter(|m| ["ticker", "match", "last_match"].contains(&kind(m).as_str()))
        .collect();
    assert_eq!(feed_messages(&mut c, want.len()), want, "nothing played before the subscribe, all of it after");
    wait_until("the replay ends", || progress.report()["finished"] == true);

    // A direct subscriber after the end gets what the live feed gives first.
    let mut late = Client::connect(&sim.url());
    late.send(r#"{"type":"subscribe","product_ids":["ETH-USD"],"channels":["ticker","matches","level2_batch"]}"#);
    let first: BTreeMap<String, String> = feed_messages(&mut late, 3).into_iter().map(|m| (kind(&m), m)).collect();
    assert_eq!(first["ticker"], latest("ETH-USD", &["ticker"]));
    assert_eq!(
        first["last_match"],
        latest("ETH-USD", &["match"]).replacen(r#""type":"match""#, r#""type":"last_match""#, 1)
    );
    assert_eq!(serde_json::from_str::<Value>(&first["snapshot"]).unwrap(), rebuilt_snapshot("ETH-USD"));
}

#[test]
fn a_loop_starts_again_and_answers_fresh_subscribers_as_of_its_point() {
    let path = write_capture("loop.jsonl", Layout::JsonLines, false);
    let sim = simulator(|c| (c.replay, c.speed, c.looping) = (Some(path.clone()), 0.0, true));
    let progress = sim.replay_progress().unwrap();
    let mut a = Client::connect(&sim.url());
    a.send(
        r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker","matches","level2_batch","heartbeat"]}"#,
    );
    let pass = expected(&["BTC-USD"]);
    let two_passes = feed_messages(&mut a, 2 * pass.len());
    assert_eq!(two_passes, [pass.clone(), pass.clone()].concat(), "the capture again from the top");
    // A stops reading: gone, so its backlog does not hold the replay back.
    drop(a);

    // Held still somewhere in a later pass, a fresh subscriber gets the state as
    // of that point of the pass, then the capture from there on.
    sim.set_paused(true);
    let mut b = Client::connect(&sim.url());
    b.send(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker","matches"]}"#);
    b.until("subscriptions", |v| v["type"] == "subscriptions");
    let played = progress.played();
    let all: Vec<String> = capture().into_iter().filter(|m| kind(m) != "subscriptions").collect();
    let so_far = &all[..played];
    let btc = |kinds: &[&str], m: &&String| product(m) == "BTC-USD" && kinds.contains(&kind(m).as_str());
    let mut want_first: Vec<String> = Vec::new();
    if let Some(t) = so_far.iter().rfind(|m| btc(&["ticker"], m)) {
        want_first.push(t.clone());
    }
    if let Some(m) = so_far.iter().rfind(|m| btc(&["match", "last_match"], m)) {
        want_first.push(m.replacen(r#""type":"match""#, r#""type":"last_match""#, 1));
    }
    let mut got_first = feed_messages(&mut b, want_first.len());
    got_first.sort();
    want_first.sort();
    assert_eq!(got_first, want_first, "first messages as of message {played} of the pass");
    sim.set_paused(false);
    let rest: Vec<String> =
        all[played..].iter().filter(|m| btc(&["ticker", "match", "last_match"], m)).cloned().collect();
    assert_eq!(feed_messages(&mut b, rest.len()), rest, "then the pass from where it stood");
}

/// The binary with `args`; its exit status and stderr.
fn run_binary(args: &[&str]) -> (Option<i32>, String) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hedgehog"))
        .args(args)
        .env("WEB_CONCURRENCY", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut child = Running(child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let status = child.0.wait().unwrap();
    (status.code(), stderr)
}

#[test]
fn a_file_with_nothing_to_replay_is_one_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("hedgehog-replay-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.txt");
    std::fs::write(&junk, "hello\n{\"type\":\"subscriptions\",\"channels\":[]}\n\n").unwrap();
    let missing = dir.join("missing.jsonl");
    let (junk, missing) = (junk.to_str().unwrap(), missing.to_str().unwrap());
    for args in [
        vec!["--host", "127.0.0.1", "--port", "0", "--replay", junk],
        vec!["simulate", "--port", "0", "--replay", junk],
        vec!["--host", "127.0.0.1", "--port", "0", "--replay", missing],
    ] {
        let (code, stderr) = run_binary(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains("no replayable feed message") || stderr.contains("cannot read"), "{stderr}");
    }
}

#[test]
fn a_subscriber_that_stops_reading_does_not_stop_the_replay_for_the_others() {
    // 20,000 messages of about 1 KB at full speed: far more than a stalled
    // reader's socket holds, and than the 4 MiB a replay waits behind.
    const N: usize = 20_000;
    let dir = std::env::temp_dir().join(format!("hedgehog-replay-stall-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Its 20 MB go however the test ends.
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(dir.clone());
    let path = dir.join("big.log");
    let pad = "p".repeat(1000);
    let lines: Vec<String> = (0..N)
        .map(|i| {
            format!(
                r#"{{"type":"ticker","sequence":{i},"product_id":"BTC-USD","pad":"{pad}","time":"{}"}}"#,
                t(i as i64)
            )
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let sim = simulator(|c| (c.replay, c.speed) = (Some(path.clone()), 0.0));
    sim.set_paused(true); // until both have subscribed
    let subscribe = r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker"]}"#;
    // One that subscribes and never reads again, with a small receive window.
    let addr = sim.url().trim_start_matches("ws://").trim_end_matches('/').to_string();
    let stream = std::net::TcpStream::connect(&addr).unwrap();
    common::small_receive_buffer(&stream);
    let (mut stalled, _) = tungstenite::client(sim.url(), stream).unwrap();
    stalled.send(tungstenite::Message::text(subscribe)).unwrap();
    // And one that reads: it gets every message, in order, once the replay has
    // let the other go as a slow consumer.
    let mut reader = Client::connect(&sim.url());
    reader.send(subscribe);
    wait_until("both subscribed", || sim_requests(&sim).iter().filter(|r| r.contains("subscribe")).count() == 2);
    sim.set_paused(false);
    let mut next = 0;
    while next < N {
        let v: Value = serde_json::from_str(&reader.text()).unwrap();
        if v["type"] == "ticker" {
            assert_eq!(v["sequence"], next, "in order, none missing");
            next += 1;
        }
    }
    drop(stalled);
}
