//! The throttled delivery tier over real sockets: a class with `throttle_ms`
//! gets at most one ticker per product per interval, the newest winning, and
//! every match; a full-tier client on the same relay gets every ticker.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::access::{capture_log, key_entry, key_of, rules, ws_as};
use common::simulator;
use hedgehog::protocol::{Book, Channel};
use serde_json::Value;

/// Messages as they arrived.
type Received = Vec<(Instant, Value)>;

const INTERVAL: Duration = Duration::from_millis(200);

fn rules_text() -> String {
    format!(
        r#"
[classes.full]
allow = ["*"]
allow_channels = ["*"]

[classes.slow]
allow = ["*"]
allow_channels = ["*"]
throttle_ms = {}

{}{}"#,
        INTERVAL.as_millis(),
        key_entry("alice", "full"),
        key_entry("bob", "slow")
    )
}

/// Every message `key`'s stream of BTC-USD `channels` gets until `end`, with its
/// arrival time.
fn collect(addr: std::net::SocketAddr, channels: &str, key: String, end: Instant) -> thread::JoinHandle<Received> {
    let path = format!("/api/v1/subscribe/BTC-USD?channels={channels}");
    let mut c = ws_as(addr, &path, Some(&key)).expect("subscribed");
    thread::spawn(move || {
        let mut out = Vec::new();
        while Instant::now() < end {
            if let Some(tungstenite::Message::Text(t)) = c.next_message(end) {
                out.push((Instant::now(), serde_json::from_str(&t).expect("json")));
            }
        }
        out
    })
}

/// What a full and a throttled client of BTC-USD `channels` get from a busy
/// feed for a few seconds, then once it pauses.
fn run(channels: &str) -> (Received, Received) {
    capture_log();
    let sim = simulator(|c| {
        c.rate = 50.0;
        c.products = vec!["BTC-USD".into()];
    });
    let relay = common::relay_with(&sim.url(), |c| {
        c.shards = 2;
        c.channels = vec![Channel::Ticker, Channel::Matches, Channel::Level2Batch];
        c.access = Some(rules(&rules_text()));
    });
    let live = Duration::from_secs(3);
    let end = Instant::now() + live + Duration::from_secs(3);
    let full = collect(relay.addr, channels, key_of("alice"), end);
    let slow = collect(relay.addr, channels, key_of("bob"), end);
    thread::sleep(live);
    sim.set_paused(true);
    (full.join().expect("full reader"), slow.join().expect("slow reader"))
}

/// The book a client keeps from what it got; and how many messages built it.
fn book_of(msgs: &[(Instant, Value)]) -> (Book, usize) {
    let mut book = None;
    let mut n = 0;
    for (_, v) in msgs {
        let text = v.to_string();
        match v["type"].as_str() {
            Some("snapshot") => book = Book::from_snapshot(text.as_bytes()),
            Some("l2update") => assert!(book.as_mut().expect("a snapshot first").apply(text.as_bytes())),
            _ => continue,
        }
        n += 1;
    }
    (book.expect("a snapshot"), n)
}

fn trade_ids<'a>(msgs: &'a [(Instant, Value)], kind: &'a str) -> impl Iterator<Item = (Instant, u64)> + 'a {
    msgs.iter().filter(move |(_, v)| v["type"] == kind).map(|(t, v)| (*t, v["trade_id"].as_u64().expect("trade_id")))
}

fn assert_contiguous(ids: &[u64], what: &str) {
    assert!(ids.len() > 10, "{what}: too few ({})", ids.len());
    for w in ids.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{what}: a gap or repeat in {ids:?}");
    }
}

#[test]
fn a_throttled_class_gets_the_newest_ticker_per_interval_and_every_match() {
    let (full, slow) = run("ticker,matches");

    let full_tickers: Vec<u64> = trade_ids(&full, "ticker").map(|(_, id)| id).collect();
    assert_contiguous(&full_tickers, "the full class's tickers");
    let slow_matches: Vec<u64> = trade_ids(&slow, "match").map(|(_, id)| id).collect();
    assert_contiguous(&slow_matches, "the throttled class's matches");

    let slow_tickers: Vec<(Instant, u64)> = trade_ids(&slow, "ticker").collect();
    assert!(slow_tickers.len() >= 2, "the throttled class got tickers: {slow_tickers:?}");
    let (first, last) = (slow_tickers[0].0, slow_tickers[slow_tickers.len() - 1].0);
    // Arrival times jitter on a loaded machine: a generous bound, on counts only.
    let allowed = (last - first).as_millis().div_ceil(INTERVAL.as_millis()) as usize + 3;
    assert!(slow_tickers.len() <= allowed, "{} tickers, at most {allowed} allowed", slow_tickers.len());
    assert!(slow_tickers.len() * 3 < full_tickers.len(), "{} thinned of {}", slow_tickers.len(), full_tickers.len());
    let ids: Vec<u64> = slow_tickers.iter().map(|(_, id)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    assert_eq!(ids.last(), full_tickers.last(), "once the feed pauses, the newest ticker is delivered");
}

#[test]
fn a_throttled_class_keeps_the_same_level2_book_from_fewer_messages() {
    let (full, slow) = run("level2_batch");
    let ((full_book, full_n), (slow_book, slow_n)) = (book_of(&full), book_of(&slow));
    assert!(full_book != Book::default(), "a book was kept");
    assert_eq!(slow_book, full_book, "once the feed pauses, the throttled client's book is the relay's");
    assert!(slow_n < full_n, "thinned: {slow_n} messages of {full_n}");
    let arrivals: Vec<Instant> = slow.iter().filter(|(_, v)| v["type"] == "l2update").map(|(t, _)| *t).collect();
    let span = arrivals[arrivals.len() - 1] - arrivals[0];
    let allowed = span.as_millis().div_ceil(INTERVAL.as_millis()) as usize + 3;
    assert!(arrivals.len() <= allowed, "{} l2updates, at most {allowed} allowed", arrivals.len());
}
