//! Micro-benchmarks of the per-request and per-message paths:
//! HTTP parse and route; routing-key scan and frame encoding of one upstream
//! message; one message dispatched to 10,000 local subscribers on one shard.
//!
//! `cargo bench --bench micro`; bench.sh copies the results into RESULTS.md.

use std::hint::black_box;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use hedgehog::hub::Table;
use hedgehog::upstream::FeedMessage;
use hedgehog::ws::Outbox;

const TICKER: &[u8] = br#"{"type":"ticker","sequence":106614625991,"product_id":"BTC-USD","price":"102861.5","open_24h":"104700.88","volume_24h":"11263.64960739","low_24h":"100345.73","high_24h":"105999.68","volume_30d":"211070.41456874","best_bid":"102861.49","best_bid_size":"0.05883958","best_ask":"102861.50","best_ask_size":"0.15161616","side":"buy","time":"2025-06-06T05:00:31.886136Z","trade_id":834270521,"last_size":"0.00481191"}"#;

const REQUEST: &[u8] = b"POST /api/v1/subscribe/btc-usd?channels=ticker,matches HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Client-Id: 1-4000000000-0e5b5e7f8f2c728bf6d539bc0f55e060\r\n\r\n";

fn http(c: &mut Criterion) {
    c.bench_function("http: parse and route a subscribe request", |b| {
        b.iter(|| {
            let (req, _) = hedgehog::http::parse(black_box(REQUEST)).unwrap().unwrap();
            let route = hedgehog::http::route(&req.method, &req.path, false).unwrap();
            black_box((route, req.query_param("channels")))
        })
    });
}

fn frames(c: &mut Criterion) {
    c.bench_function("upstream message: scan routing key", |b| {
        b.iter(|| black_box(hedgehog::protocol::scan(black_box(TICKER))))
    });
    c.bench_function("upstream message: scan + encode one server frame", |b| {
        b.iter(|| black_box(FeedMessage::new(black_box(TICKER))))
    });
}

fn dispatch(c: &mut Criterion) {
    let msg = FeedMessage::new(TICKER).unwrap();
    c.bench_function("dispatch one message to 10,000 local subscribers", |b| {
        b.iter_batched(
            || {
                let mut table = Table::default();
                let outboxes: Vec<Rc<Outbox>> = (0..10_000).map(|_| Rc::new(Outbox::new(1 << 20))).collect();
                for (slot, o) in outboxes.iter().enumerate() {
                    table.add("BTC-USD", hedgehog::protocol::Channel::Ticker, slot, o, None);
                }
                (table, outboxes)
            },
            |(table, outboxes)| {
                let channel = hedgehog::protocol::Channel::Ticker;
                let stamp = hedgehog::metrics::Stamp { channel, received: msg.received(), exchange_micros: msg.time() };
                black_box(table.deliver("BTC-USD", channel, &msg.frame, stamp));
                (table, outboxes)
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, http, frames, dispatch);
criterion_main!(benches);
