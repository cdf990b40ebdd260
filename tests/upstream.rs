//! The upstream client against the simulator: ws:// and wss://, deltas,
//! reconnects after drops and stalls, errors as events, malformed frames survived.

mod common;

use std::time::Duration;

use common::{glommio, simulator, wait_until, within};
use glommio::channels::local_channel::LocalReceiver;
use hedgehog::protocol::Channel;
use hedgehog::sim::SimEvent;
use hedgehog::upstream::{self, Event, UpstreamConfig};

fn config(url: String) -> UpstreamConfig {
    UpstreamConfig {
        url,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..UpstreamConfig::default()
    }
}

/// Receives events until `pred` picks one.
async fn until(rx: &LocalReceiver<Event>, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    within(what, async {
        loop {
            let e = rx.recv().await.expect("the client is running");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
}

fn is_message(e: &Event, kind: &str, product: &str) -> bool {
    matches!(e, Event::Message(m) if m.kind() == kind && m.product() == Some(product))
}

fn requests(sim: &hedgehog::sim::SimHandle) -> Vec<(u64, String)> {
    sim.events()
        .into_iter()
        .filter_map(|e| match e {
            SimEvent::Request(id, r) => Some((id, r)),
            _ => None,
        })
        .collect()
}

#[test]
fn subscribes_and_receives_over_ws_with_routing_keys() {
    let sim = simulator(|c| c.rate = 50.0);
    glommio(async {
        let (up, rx) = upstream::spawn(config(sim.url())).unwrap();
        up.set(Channel::Ticker, "BTC-USD", true);
        until(&rx, "connected", |e| matches!(e, Event::Connected)).await;
        let Event::Products(products) = until(&rx, "status products", |e| matches!(e, Event::Products(_))).await else {
            unreachable!()
        };
        assert!(products.iter().any(|p| p.id == "BTC-USD" && p.base == "BTC" && p.quote == "USD"));
        let Event::Message(m) = until(&rx, "a ticker", |e| is_message(e, "ticker", "BTC-USD")).await else {
            unreachable!()
        };
        let v: serde_json::Value = serde_json::from_slice(m.body()).unwrap();
        assert_eq!(m.sequence, v["sequence"].as_u64());
        assert_eq!(m.trade_id, v["trade_id"].as_u64());
        assert_eq!(&m.frame[m.frame.len() - m.body().len()..], m.body(), "the frame carries the body unchanged");
        until(&rx, "a heartbeat (liveness)", |e| is_message(e, "heartbeat", "BTC-USD")).await;
        // A change goes out as a delta: only the new pair, not the whole set again.
        up.set(Channel::Matches, "BTC-USD", true);
        until(&rx, "a match", |e| is_message(e, "match", "BTC-USD")).await;
        up.set(Channel::Ticker, "BTC-USD", false);
        within("the unsubscribe sent", async {
            while !requests(&sim).iter().any(|(_, r)| r == UNSUBSCRIBE_TICKER) {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        up.stop();
    });
    let sent = requests(&sim);
    assert!(
        sent.iter()
            .any(|(_, r)| r == r#"{"channels":[{"name":"matches","product_ids":["BTC-USD"]}],"type":"subscribe"}"#),
        "{sent:?}"
    );
    assert!(sent.iter().any(|(_, r)| r == UNSUBSCRIBE_TICKER), "{sent:?}");
}

const UNSUBSCRIBE_TICKER: &str = r#"{"channels":[{"name":"ticker","product_ids":["BTC-USD"]}],"type":"unsubscribe"}"#;

#[test]
fn connects_over_wss_trusting_the_simulators_certificate() {
    let dir = std::env::temp_dir().join(format!("hedgehog-wss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("sim.pem");
    let sim = simulator(|c| {
        c.tls = true;
        c.cert_out = Some(pem.clone());
        c.rate = 50.0;
    });
    assert!(sim.url().starts_with("wss://localhost:"));
    glommio(async {
        // Without the CA the certificate is refused: verification is never off.
        let (_up, rx) = upstream::spawn(config(sim.url())).unwrap();
        let Event::Disconnected { reason } = until(&rx, "a refusal", |e| matches!(e, Event::Disconnected { .. })).await
        else {
            unreachable!()
        };
        assert!(reason.contains("TLS"), "{reason}");
        _up.stop();
        let (up, rx) = upstream::spawn(UpstreamConfig { ca_file: Some(pem.clone()), ..config(sim.url()) }).unwrap();
        up.set(Channel::Ticker, "ETH-USD", true);
        until(&rx, "a ticker over TLS", |e| is_message(e, "ticker", "ETH-USD")).await;
        up.stop();
    });
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn reconnects_after_a_drop_and_resubscribes_the_whole_set() {
    let sim = simulator(|c| c.rate = 50.0);
    glommio(async {
        let (up, rx) = upstream::spawn(config(sim.url())).unwrap();
        up.set(Channel::Ticker, "BTC-USD", true);
        up.set(Channel::Matches, "ETH-USD", true);
        until(&rx, "first data", |e| is_message(e, "match", "ETH-USD")).await;
        sim.drop_connections();
        until(&rx, "disconnected", |e| matches!(e, Event::Disconnected { .. })).await;
        until(&rx, "connected again", |e| matches!(e, Event::Connected)).await;
        until(&rx, "data again", |e| is_message(e, "ticker", "BTC-USD")).await;
        assert!(up.status().connects >= 2);
        up.stop();
    });
    let sent = requests(&sim);
    let conns: std::collections::BTreeSet<u64> = sent.iter().map(|(id, _)| *id).collect();
    assert!(conns.len() >= 2, "{sent:?}");
    let last = *conns.iter().next_back().unwrap();
    let first_request = &sent.iter().find(|(id, _)| *id == last).unwrap().1;
    for part in [
        r#"{"name":"ticker","product_ids":["BTC-USD"]}"#,
        r#"{"name":"matches","product_ids":["ETH-USD"]}"#,
        r#"{"name":"heartbeat","product_ids":["BTC-USD","ETH-USD"]}"#,
        r#""status""#,
    ] {
        assert!(first_request.contains(part), "resubscription lacks {part}: {first_request}");
    }
}

#[test]
fn a_stalled_feed_is_detected_and_replaced() {
    let sim = simulator(|c| c.rate = 50.0);
    glommio(async {
        let cfg = UpstreamConfig { stall_timeout: Duration::from_millis(500), ..config(sim.url()) };
        let (up, rx) = upstream::spawn(cfg).unwrap();
        up.set(Channel::Ticker, "BTC-USD", true);
        until(&rx, "first data", |e| is_message(e, "ticker", "BTC-USD")).await;
        sim.set_stalled(true);
        let Event::Disconnected { reason } = until(&rx, "stall", |e| matches!(e, Event::Disconnected { .. })).await
        else {
            unreachable!()
        };
        assert!(reason.contains("stalled"), "{reason}");
        sim.set_stalled(false);
        until(&rx, "data after the stall", |e| is_message(e, "ticker", "BTC-USD")).await;
        up.stop();
    });
}

#[test]
fn an_idle_connection_is_kept_alive_by_pings_not_dropped_as_stalled() {
    let sim = simulator(|c| c.rate = 50.0);
    glommio(async {
        let cfg = UpstreamConfig { stall_timeout: Duration::from_millis(200), ..config(sim.url()) };
        let (up, rx) = upstream::spawn(cfg).unwrap();
        up.set(Channel::Ticker, "BTC-USD", true);
        until(&rx, "data", |e| is_message(e, "ticker", "BTC-USD")).await;
        // The last product goes: the feed falls silent, rightly.
        up.set(Channel::Ticker, "BTC-USD", false);
        within("five liveness pings", async {
            while up.status().pings < 5 {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert_eq!(up.status().connects, 1, "silence without products is not a stall");
        // Activity resumes on the same connection.
        up.set(Channel::Matches, "ETH-USD", true);
        until(&rx, "data again", |e| is_message(e, "match", "ETH-USD")).await;
        assert_eq!(up.status().connects, 1);
        up.stop();
    });
}

#[test]
fn a_product_the_feed_does_not_list_is_refused_without_being_asked_for() {
    let sim = simulator(|c| c.rate = 20.0);
    glommio(async {
        let (up, rx) = upstream::spawn(config(sim.url())).unwrap();
        up.set(Channel::Ticker, "NOPE-USD", true);
        up.set(Channel::Ticker, "BTC-USD", true);
        let Event::Unlisted(products) = until(&rx, "refused", |e| matches!(e, Event::Unlisted(_))).await else {
            unreachable!()
        };
        assert_eq!(products, ["NOPE-USD"]);
        for _ in 0..5 {
            until(&rx, "tickers keep flowing", |e| is_message(e, "ticker", "BTC-USD")).await;
        }
        up.stop();
    });
    let sent = requests(&sim);
    assert!(!sent.iter().any(|(_, r)| r.contains("NOPE-USD")), "{sent:?}");
    assert_eq!(sent[0].1, r#"{"channels":["status"],"type":"subscribe"}"#, "the product list is asked for first");
}

/// A feed with no `status` channel that refuses NOPE-USD as Coinbase does (an
/// error, then the cumulative set) and follows every answer with a ticker.
/// Returns the requests it got, once the client closes.
fn feed_without_a_product_list(listener: std::net::TcpListener) -> Vec<String> {
    use tungstenite::Message;
    let (stream, _) = listener.accept().unwrap();
    let mut ws = tungstenite::accept(stream).unwrap();
    let (mut asked, mut has) = (Vec::new(), std::collections::BTreeMap::<String, Vec<String>>::new());
    let refusal = r#"{"type":"error","message":"Failed to subscribe","reason":"NOPE-USD is not a valid product"}"#;
    loop {
        let text = match ws.read() {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(Message::Close(_)) | Err(_) => return asked,
            Ok(_) => continue,
        };
        let req: serde_json::Value = serde_json::from_str(&text).unwrap();
        for ch in req["channels"].as_array().unwrap() {
            let products = has.entry(ch["name"].as_str().or(ch.as_str()).unwrap().to_string()).or_default();
            for p in ch["product_ids"].as_array().into_iter().flatten().filter_map(|p| p.as_str()) {
                match p {
                    "NOPE-USD" => {
                        let _ = ws.send(Message::text(refusal));
                    }
                    _ => products.push(p.to_string()),
                }
            }
        }
        let channels: Vec<serde_json::Value> =
            has.iter().map(|(name, ps)| serde_json::json!({"name": name, "product_ids": ps})).collect();
        let _ = ws.send(Message::text(serde_json::json!({"type": "subscriptions", "channels": channels}).to_string()));
        let _ = ws.send(Message::text(r#"{"type":"ticker","product_id":"BTC-USD","sequence":1}"#));
        asked.push(text);
    }
}

/// A feed that sends no product list: after a wait, the products are asked for
/// anyway, and the feed's own refusal of one is an error event, not asked again.
#[test]
fn a_feed_without_a_product_list_is_asked_anyway_and_its_refusals_kept() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || feed_without_a_product_list(listener));
    glommio(async {
        let cfg = UpstreamConfig { stall_timeout: Duration::from_secs(1), ..config(format!("ws://{addr}")) };
        let (up, rx) = upstream::spawn(cfg).unwrap();
        up.set(Channel::Ticker, "NOPE-USD", true);
        up.set(Channel::Ticker, "BTC-USD", true);
        let Event::Error { product, .. } = until(&rx, "the refusal", |e| matches!(e, Event::Error { .. })).await else {
            unreachable!()
        };
        assert_eq!(product.as_deref(), Some("NOPE-USD"));
        // The feed follows its subscriptions reply with this ticker.
        until(&rx, "a ticker", |e| is_message(e, "ticker", "BTC-USD")).await;
        up.stop();
    });
    let asked = server.join().unwrap();
    assert_eq!(asked[0], r#"{"channels":["status"],"type":"subscribe"}"#);
    assert_eq!(asked.iter().filter(|r| r.contains("NOPE-USD")).count(), 1, "asked for once: {asked:?}");
}

/// A feed that sends every kind of junk, then one good message.
#[test]
fn junk_from_the_feed_is_counted_and_survived() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept(stream).unwrap();
        use tungstenite::Message;
        for m in [
            Message::text("not json"),
            Message::binary(vec![0u8, 1, 2]),
            Message::text(r#"{"no_type":1}"#),
            Message::text(r#"{"type":"mystery","product_id":"BTC-USD"}"#),
            Message::text(r#"{"type":"ticker"}"#),
            Message::text(r#"{"type":"subscriptions"}"#),
            Message::text(r#"{"type":"ticker","product_id":"BTC-USD","sequence":5,"price":"1"}"#),
        ] {
            ws.send(m).unwrap();
        }
        // Keep the socket open until the client has read everything.
        let _ = ws.read();
    });
    glommio(async {
        let (up, rx) = upstream::spawn(config(format!("ws://{addr}"))).unwrap();
        up.set(Channel::Ticker, "BTC-USD", true);
        until(&rx, "the good ticker", |e| matches!(e, Event::Message(m) if m.sequence == Some(5))).await;
        let s = up.status();
        assert_eq!(s.malformed, 4, "not JSON, binary, no type, subscriptions without channels");
        up.stop();
    });
    server.join().unwrap();
    wait_until("nothing", || true);
}
