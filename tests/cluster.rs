//! Issue 17, several nodes over NATS: two ingests (`i1`, `i2`) and two edges
//! (`a`, `b`) on one real `nats-server` with JetStream, the simulator upstream.
//! Clients on both edges get the same bytes; REST calls reach the client's own
//! node; late joiners start from a correct state; a killed active ingest is
//! replaced by the standby, a killed and restarted NATS loses no subscription,
//! and a killed edge's interest expires upstream.

mod common;

use std::time::Instant;

use common::nats::{wait_cluster, wait_for, Nats, Node};
use common::{http, sim_requests, simulator, Client, DEADLINE};
use hedgehog::sim::{SimEvent, SimHandle};
use serde_json::Value;

/// The four processes, their NATS and their feed. Fields drop in order: the
/// edges, the ingests, then the server and the simulator.
struct Cluster {
    edges: Vec<Node>,
    ingests: Vec<Node>,
    nats: Nats,
    sim: SimHandle,
}

impl Cluster {
    /// The simulator trading `products` at `rate` a second, NATS, `i1` and `i2`,
    /// then `a` and `b`, all given `flags`; returns once the cluster is ready.
    fn start(products: &[&str], rate: f64, flags: &[&str]) -> Cluster {
        let sim = simulator(|c| {
            c.rate = rate;
            c.products = products.iter().map(|p| p.to_string()).collect();
        });
        let nats = Nats::start();
        let url = nats.url();
        let ingests = ["i1", "i2"].iter().map(|n| Node::ingest(n, &url, &sim.url(), flags)).collect();
        let edges = ["a", "b"].iter().map(|n| Node::edge(n, &url, flags)).collect();
        let cluster = Cluster { edges, ingests, nats, sim };
        cluster.ready();
        cluster
    }

    /// Waits until one ingest is active (and says so), every node is on NATS,
    /// and both edges follow the active ingest and call the upstream connected;
    /// returns the active ingest's index.
    fn ready(&self) -> usize {
        let active = self.active();
        let name = self.ingests[active].name.clone();
        wait_cluster(&self.ingests[active], "it names itself the active ingest", |c| {
            c["active_ingest"] == name.as_str()
        });
        for node in self.ingests.iter().chain(&self.edges).filter(|n| n.alive()) {
            let c = wait_cluster(node, "NATS connected", |c| c["nats"] == "connected");
            assert_eq!(c["node"], node.name.as_str(), "{c}");
        }
        for edge in self.edges.iter().filter(|n| n.alive()) {
            let h = common::nats::wait_health(edge, &format!("following {name}, the upstream connected"), |h| {
                h["cluster"]["active_ingest"] == name.as_str() && h["upstream"]["state"] == "connected"
            });
            assert_eq!(h["cluster"]["role"], "edge", "{h}");
        }
        active
    }

    /// The index of the one live ingest whose lease is active, the others
    /// standing by, once that is so.
    fn active(&self) -> usize {
        wait_for("one active ingest, the others standby", || {
            let leases: Vec<(usize, Value)> =
                (self.ingests.iter().enumerate()).filter(|(_, n)| n.alive()).map(|(i, n)| (i, n.cluster())).collect();
            let active: Vec<usize> = leases.iter().filter(|(_, c)| c["lease"] == "active").map(|(i, _)| *i).collect();
            let standby = leases.iter().filter(|(_, c)| c["lease"] == "standby").count();
            match active[..] {
                [one] if standby == leases.len() - 1 => Ok(one),
                _ => Err(format!("{leases:?}")),
            }
        })
    }

    fn edge(&self, name: &str) -> &Node {
        self.edges.iter().find(|e| e.name == name).expect("an edge of that name")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for node in self.ingests.iter().chain(&self.edges) {
            eprintln!("==== log of {} ====\n{}", node.name, node.log.tail());
        }
        eprintln!("==== log of nats-server ====\n{}", self.nats.log.tail());
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Sends a Coinbase subscribe and waits for its `subscriptions` reply.
fn subscribe(c: &mut Client, products: &[&str], channels: &[&str]) {
    let request = serde_json::json!({"type": "subscribe", "product_ids": products, "channels": channels});
    c.send(&request.to_string());
    c.until("the subscriptions reply", |v| v["type"] == "subscriptions");
}

/// Reads until `pred` picks a message, for up to twice [`DEADLINE`]; returns it.
fn until(c: &mut Client, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + 2 * DEADLINE;
    loop {
        match c.next_message(end).unwrap_or_else(|| panic!("timed out waiting for {what}")) {
            tungstenite::Message::Text(t) => {
                let v = json(&t);
                if pred(&v) {
                    return v;
                }
            }
            tungstenite::Message::Close(frame) => panic!("closed while waiting for {what}: {frame:?}"),
            _ => {}
        }
    }
}

fn is(v: &Value, kind: &str, product: &str) -> bool {
    v["type"] == kind && v["product_id"] == product
}

fn trade_id(v: &Value) -> u64 {
    v["trade_id"].as_u64().unwrap_or_else(|| panic!("no trade_id: {v}"))
}

/// The next `n` trades are those after `last`, none missed, none repeated.
fn contiguous_after(c: &mut Client, who: &str, last: u64, n: u64) {
    for expect in last + 1..=last + n {
        let m = until(c, "a trade", |v| v["type"] == "match" || v["type"] == "last_match");
        assert_eq!(
            (m["type"].as_str(), trade_id(&m)),
            (Some("match"), expect),
            "{who}: the trade after {}",
            expect - 1
        );
    }
}

/// The raw text of every `match` and `ticker` of `product`, read until `done` holds.
fn feed(c: &mut Client, product: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let end = Instant::now() + 2 * DEADLINE;
    let mut seen = Vec::new();
    while !done(&seen) {
        match c.next_message(end).expect("more of the feed before the deadline") {
            tungstenite::Message::Text(t) => {
                let v = json(&t);
                if (v["type"] == "match" || v["type"] == "ticker") && v["product_id"] == product {
                    seen.push(t.to_string());
                }
            }
            tungstenite::Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
    seen
}

fn of_kind(seen: &[String], kind: &str) -> Vec<String> {
    seen.iter().filter(|t| json(t)["type"] == kind).cloned().collect()
}

/// From the first message of `theirs` that `ours` has too, both go on with
/// the same bytes, over at least `at_least` messages.
fn same_bytes(what: &str, ours: &[String], theirs: &[String], at_least: usize) {
    let start = theirs.iter().enumerate().find_map(|(j, t)| ours.iter().position(|o| o == t).map(|i| (i, j)));
    let (i, j) = start.unwrap_or_else(|| panic!("{what}: no message in common\n{ours:#?}\n{theirs:#?}"));
    let n = (ours.len() - i).min(theirs.len() - j);
    assert!(n >= at_least, "{what}: only {n} messages in common after aligning");
    for k in 0..n {
        assert_eq!(ours[i + k], theirs[j + k], "{what}: message {k} after the first in common");
    }
}

/// `Ok` when the simulator has exactly one connection open.
fn one_upstream(sim: &SimHandle) -> Result<(), String> {
    let open: i64 = (sim.events().iter())
        .map(|e| match e {
            SimEvent::Connected(_) => 1,
            SimEvent::Closed(_) => -1,
            _ => 0,
        })
        .sum();
    match open {
        1 => Ok(()),
        n => Err(format!("{n} upstream connections open")),
    }
}

fn with_id(id: &str) -> String {
    format!("X-Client-Id: {id}\r\n")
}

#[test]
fn clients_on_both_edges_get_the_same_bytes_as_the_feed() {
    let cl = Cluster::start(&["BTC-USD", "ETH-USD"], 20.0, &[]);
    // A subscriber of the feed itself, for the bytes Coinbase sent.
    let mut direct = Client::connect(&cl.sim.url());
    subscribe(&mut direct, &["BTC-USD"], &["ticker", "matches"]);
    let (mut a, _) = cl.edge("a").client();
    subscribe(&mut a, &["BTC-USD"], &["ticker", "matches"]);
    until(&mut a, "a trade on edge a", |v| is(v, "match", "BTC-USD"));
    // Edge b joins later: everything it relays, edge a and the feed relay too.
    let (mut b, _) = cl.edge("b").client();
    subscribe(&mut b, &["BTC-USD"], &["ticker", "matches"]);
    let on_b = feed(&mut b, "BTC-USD", |s| of_kind(s, "match").len() >= 40);
    let last = of_kind(&on_b, "match").pop().expect("trades on b");
    let has_last = |s: &[String]| s.contains(&last);
    let on_a = feed(&mut a, "BTC-USD", has_last);
    let on_feed = feed(&mut direct, "BTC-USD", has_last);
    for (kind, at_least) in [("match", 30), ("ticker", 30)] {
        same_bytes(&format!("{kind}: edge a and edge b"), &of_kind(&on_a, kind), &of_kind(&on_b, kind), at_least);
        same_bytes(&format!("{kind}: the feed and edge b"), &of_kind(&on_feed, kind), &of_kind(&on_b, kind), at_least);
    }
}

#[test]
fn a_rest_call_on_one_edge_reaches_a_client_of_the_other() {
    let cl = Cluster::start(&["BTC-USD", "ETH-USD"], 20.0, &[]);
    let (a, b) = (cl.edge("a"), cl.edge("b"));
    let (mut c1, id1) = a.client();
    let (_c2, id2) = a.client();
    assert!(id1.starts_with("a.") && id2.starts_with("a."), "ids name their node: {id1} {id2}");

    // Made on b for a's client: it takes effect on a.
    let path = "/api/v1/subscribe/BTC-USD?channels=matches";
    let (status, head, remote) = http(b.addr, "POST", path, &with_id(&id1));
    assert_eq!(status, 200, "{head}\n{remote}");
    until(&mut c1, "the subscribed note", |v| v["type"] == "subscribed" && v["client_id"] == id1.as_str());
    until(&mut c1, "BTC-USD trades on a, asked for on b", |v| is(v, "match", "BTC-USD"));
    // Answered as the same call made on a (for a's other client) is.
    let (local_status, _, local) = http(a.addr, "POST", path, &with_id(&id2));
    let without_id = |mut v: Value| {
        v.as_object_mut().expect("an object").remove("client_id");
        v
    };
    assert_eq!(remote["client_id"], id1.as_str(), "{remote}");
    assert_eq!((status, without_id(remote)), (local_status, without_id(local)));

    // Reads, by header and by query, and a client a does not have: a's answers, wherever asked.
    let (local_part, _) = id1.rsplit_once('-').expect("an id ends with its token");
    let gone = format!("{local_part}-{}", "0".repeat(32));
    for (method, path, header) in [
        ("GET", "/api/v1/subscribe".to_string(), with_id(&id1)),
        ("GET", "/api/v1/subscribe/BTC-USD".to_string(), with_id(&id1)),
        ("GET", format!("/api/v1/subscribe?client_id={id1}"), String::new()),
        ("GET", "/api/v1/subscribe".to_string(), with_id(&gone)),
        ("POST", "/api/v1/subscribe/ETH-USD?channels=nonsense".to_string(), with_id(&id1)),
        // Without access control there are no admin endpoints: a's 404, not b's guess.
        ("DELETE", format!("/api/v1/clients/{id1}"), String::new()),
    ] {
        let (on_b, _, body_b) = http(b.addr, method, &path, &header);
        let (on_a, _, body_a) = http(a.addr, method, &path, &header);
        assert_eq!((on_b, &body_b), (on_a, &body_a), "{method} {path} {header}: on b as on a");
    }
    let (listed, _, body) = http(b.addr, "GET", "/api/v1/subscribe", &with_id(&id1));
    assert_eq!(listed, 200, "{body}");
    assert_eq!(body["subscriptions"], serde_json::json!([{"product_id": "BTC-USD", "channels": ["matches"]}]));

    // A node nobody runs: 503 node_unavailable.
    let ghost = format!("zz.{}", id1.strip_prefix("a.").expect("a's id"));
    let (status, head, body) = http(b.addr, "POST", path, &with_id(&ghost));
    assert_eq!((status, body["error"].as_str()), (503, Some("node_unavailable")), "{head}\n{body}");
    assert!(body["message"].is_string(), "{body}");
}

#[test]
fn a_late_joiner_on_an_edge_gets_the_first_messages_then_every_trade() {
    let cl = Cluster::start(&["BTC-USD"], 30.0, &[]);
    let (mut early, _) = cl.edge("a").client();
    subscribe(&mut early, &["BTC-USD"], &["ticker", "matches", "level2_batch"]);
    let mut newest = 0;
    for _ in 0..10 {
        newest = trade_id(&until(&mut early, "early trades", |v| is(v, "match", "BTC-USD")));
    }
    // The market stops; the newest trade reaches edge a. What a late joiner
    // gets now can only come from what the cluster kept.
    cl.sim.set_paused(true);
    let mut direct = Client::connect(&cl.sim.url());
    subscribe(&mut direct, &["BTC-USD"], &["matches"]);
    let truth = trade_id(&until(&mut direct, "the feed's last_match", |v| v["type"] == "last_match"));
    if newest < truth {
        until(&mut early, "the newest trade, on a", |v| is(v, "match", "BTC-USD") && trade_id(v) == truth);
    }

    // On a (already streaming the pair) and on b (not yet).
    let mut late = Vec::new();
    for edge in ["a", "b"] {
        let (mut c, _) = cl.edge(edge).client();
        subscribe(&mut c, &["BTC-USD"], &["ticker", "matches", "level2_batch"]);
        let (mut ticker, mut last_match, mut snapshot) = (None, None, None);
        while ticker.is_none() || last_match.is_none() || snapshot.is_none() {
            let data = ["ticker", "last_match", "snapshot", "match", "l2update"];
            let v = until(&mut c, "the first messages", |v| data.iter().any(|d| v["type"] == *d));
            match v["type"].as_str() {
                Some("ticker") => ticker = ticker.or(Some(v)),
                Some("last_match") if last_match.is_none() => last_match = Some(v),
                Some("snapshot") if snapshot.is_none() => snapshot = Some(v),
                Some("l2update") if snapshot.is_some() => {}
                _ => panic!("{edge}: {v} before the first ticker, last_match and snapshot (the market is paused)"),
            }
        }
        let (ticker, last_match) = (ticker.unwrap(), last_match.unwrap());
        assert_eq!((trade_id(&last_match), trade_id(&ticker)), (truth, truth), "{edge}: the newest trade, kept");
        assert!(snapshot.unwrap()["bids"].as_array().is_some_and(|b| !b.is_empty()), "{edge}: a book");
        late.push((edge, c));
    }
    cl.sim.set_paused(false);
    for (edge, c) in &mut late {
        contiguous_after(c, edge, truth, 20);
        until(c, "book updates after the snapshot", |v| is(v, "l2update", "BTC-USD"));
    }
}

#[test]
fn a_killed_active_ingest_is_replaced_by_the_standby() {
    let mut cl = Cluster::start(&["BTC-USD"], 20.0, &["--lease-ttl", "3"]);
    let mut clients = Vec::new();
    for edge in ["a", "b"] {
        let (mut c, id) = cl.edge(edge).client();
        subscribe(&mut c, &["BTC-USD"], &["ticker", "matches"]);
        until(&mut c, "trades", |v| is(v, "match", "BTC-USD"));
        clients.push((edge, c, id));
    }
    wait_for("one upstream connection: the standby holds none", || one_upstream(&cl.sim));

    let active = cl.active();
    let standby = 1 - active;
    // Checked at the end, so that a wrong view does not hide the takeover.
    let standby_view = cl.ingests[standby].cluster();
    cl.ingests[active].kill();
    let name = cl.ingests[standby].name.clone();
    wait_cluster(&cl.ingests[standby], "it takes the lease", |c| c["lease"] == "active");
    cl.ready();

    for (edge, c, id) in &mut clients {
        until(c, "the reconnecting note", |v| v["type"] == "upstream" && v["state"] == "reconnecting");
        until(c, "the connected note", |v| v["type"] == "upstream" && v["state"] == "connected");
        let first = until(c, "the first trade message", |v| v["type"] == "match" || v["type"] == "last_match");
        assert_eq!(first["type"], "last_match", "{edge}: a fresh last_match first, after {name} took over: {first}");
        contiguous_after(c, edge, trade_id(&first), 20);
        // Still subscribed, with nothing asked again.
        let (status, _, body) = http(cl.edge(edge).addr, "GET", "/api/v1/subscribe", &with_id(id));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["subscriptions"][0]["product_id"], "BTC-USD", "{edge}: {body}");
    }
    wait_for("one upstream connection, the new active ingest's", || one_upstream(&cl.sim));
    let active_name = cl.ingests[active].name.as_str();
    assert_eq!(standby_view["active_ingest"], active_name, "the standby names the active ingest: {standby_view}");
}

#[test]
fn no_subscription_is_lost_when_nats_is_killed_and_restarted() {
    let mut cl = Cluster::start(&["BTC-USD", "ETH-USD"], 20.0, &[]);
    let (mut on_a, _) = cl.edge("a").client();
    subscribe(&mut on_a, &["BTC-USD"], &["matches"]);
    let (mut on_b, _) = cl.edge("b").client();
    subscribe(&mut on_b, &["ETH-USD"], &["matches"]);
    until(&mut on_a, "BTC-USD trades on a", |v| is(v, "match", "BTC-USD"));
    until(&mut on_b, "ETH-USD trades on b", |v| is(v, "match", "ETH-USD"));

    cl.nats.kill();
    for node in cl.ingests.iter().chain(&cl.edges) {
        wait_cluster(node, "NATS seen gone", |c| c["nats"] == "disconnected");
    }
    cl.nats.restart();
    cl.ready();

    // The feed's newest trades now; each client gets later ones, asking nothing.
    let mut direct = Client::connect(&cl.sim.url());
    subscribe(&mut direct, &["BTC-USD", "ETH-USD"], &["matches"]);
    let mut newest = std::collections::BTreeMap::new();
    while newest.len() < 2 {
        let v = until(&mut direct, "the feed's last_match", |v| v["type"] == "last_match");
        newest.insert(v["product_id"].as_str().unwrap().to_string(), trade_id(&v));
    }
    for (c, edge, product) in [(&mut on_a, "a", "BTC-USD"), (&mut on_b, "b", "ETH-USD")] {
        let after = newest[product];
        until(c, &format!("{product} trades after {after} on {edge}"), |v| {
            is(v, "match", product) && trade_id(v) > after
        });
    }
}

#[test]
fn a_killed_edges_interest_expires_upstream() {
    let mut cl = Cluster::start(&["BTC-USD", "ETH-USD"], 10.0, &["--interest-ttl", "4"]);
    let (mut on_a, _) = cl.edge("a").client();
    subscribe(&mut on_a, &["ETH-USD"], &["matches"]);
    let (mut on_b, _) = cl.edge("b").client();
    subscribe(&mut on_b, &["BTC-USD"], &["matches"]);
    until(&mut on_a, "ETH-USD trades on a", |v| is(v, "match", "ETH-USD"));
    until(&mut on_b, "BTC-USD trades on b", |v| is(v, "match", "BTC-USD"));
    let lists = |c: &Value, topic: &str| c["interest"].as_array().is_some_and(|l| l.iter().any(|t| t == topic));
    wait_cluster(cl.edge("a"), "a declares ETH-USD/matches", |c| lists(c, "ETH-USD/matches"));
    let ingest = cl.active();
    wait_cluster(&cl.ingests[ingest], "both edges' interest", |c| {
        lists(c, "ETH-USD/matches") && lists(c, "BTC-USD/matches")
    });

    let before = sim_requests(&cl.sim).len();
    cl.edges.iter_mut().find(|e| e.name == "a").expect("edge a").kill();
    let unsubscribes = || -> Vec<Value> {
        sim_requests(&cl.sim)[before..].iter().map(|r| json(r)).filter(|r| r["type"] == "unsubscribe").collect()
    };
    wait_for("the ingest unsubscribes ETH-USD upstream", || {
        let u = unsubscribes();
        match u.iter().any(|r| r.to_string().contains("ETH-USD")) {
            true => Ok(()),
            false => Err(format!("unsubscribes since the kill: {u:?}")),
        }
    });
    let c = wait_cluster(&cl.ingests[ingest], "a's interest gone", |c| {
        c["interest"].as_array().is_some_and(|l| !l.iter().any(|t| t.as_str().unwrap_or("").starts_with("ETH-USD/")))
    });
    assert!(lists(&c, "BTC-USD/matches"), "b's interest stays: {c}");
    let u = unsubscribes();
    assert!(!u.iter().any(|r| r.to_string().contains("BTC-USD")), "only a's pair: {u:?}");
    until(&mut on_b, "BTC-USD trades on b still", |v| is(v, "match", "BTC-USD"));
}

#[test]
fn a_stopped_ingest_gives_its_lease_to_the_standby() {
    let mut cl = Cluster::start(&["BTC-USD"], 20.0, &[]);
    let (mut c, _) = cl.edge("a").client();
    subscribe(&mut c, &["BTC-USD"], &["matches"]);
    until(&mut c, "trades", |v| is(v, "match", "BTC-USD"));
    let active = cl.active();
    let status = cl.ingests[active].terminate();
    assert!(status.success(), "a clean stop: {status}");
    assert!(
        cl.ingests[active].log.tail().contains("gave the lease up"),
        "it deleted its lease entry on the way out:\n{}",
        cl.ingests[active].log.tail()
    );
    let standby = 1 - active;
    wait_cluster(&cl.ingests[standby], "the standby takes the lease", |c| c["lease"] == "active");
    cl.ready();
    let first = until(&mut c, "a fresh last_match", |v| v["type"] == "last_match");
    contiguous_after(&mut c, "a", trade_id(&first), 10);
}

#[test]
fn nats_restarted_without_its_store_makes_the_buckets_again_and_data_flows() {
    let mut cl = Cluster::start(&["BTC-USD"], 20.0, &[]);
    let (mut c, _) = cl.edge("b").client();
    subscribe(&mut c, &["BTC-USD"], &["matches"]);
    until(&mut c, "trades", |v| is(v, "match", "BTC-USD"));
    cl.nats.restart_empty();
    // The lease's terms start again from the new bucket's revisions: the
    // edges follow the new holder whatever its term.
    cl.ready();
    let mut direct = Client::connect(&cl.sim.url());
    subscribe(&mut direct, &["BTC-USD"], &["matches"]);
    let newest = trade_id(&until(&mut direct, "the feed's last_match", |v| v["type"] == "last_match"));
    until(&mut c, "trades after the restart", |v| is(v, "match", "BTC-USD") && trade_id(v) > newest);
}

#[test]
fn a_standby_ingest_is_healthy_but_not_ready() {
    let cl = Cluster::start(&["BTC-USD"], 10.0, &[]);
    let standby = &cl.ingests[1 - cl.active()];
    let health = common::nats::wait_health(standby, "it says it stands by", |h| h["status"] == "standby");
    assert_eq!(health["upstream"]["state"], "standby", "{health}");
    let (status, _, _) = http(standby.addr, "GET", "/healthz", "");
    assert_eq!(status, 200, "a standby is healthy (a container's HEALTHCHECK passes)");
    let (status, _, body) = http(standby.addr, "GET", "/readyz", "");
    assert_eq!((status, body["upstream"].as_str()), (503, Some("standby")), "no clients to a standby: {body}");
    let (status, _, metrics) =
        common::http_raw(standby.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
    assert!(metrics.contains("hedgehog_upstream_state{state=\"standby\"} 1"), "{metrics}");
    assert!(metrics.contains("hedgehog_ingest_lease_active 0"), "{metrics}");
}

#[test]
fn a_hanging_nats_server_is_noticed_and_data_resumes_after_it() {
    let cl = Cluster::start(&["BTC-USD"], 20.0, &[]);
    let (mut c, _) = cl.edge("a").client();
    subscribe(&mut c, &["BTC-USD"], &["matches"]);
    until(&mut c, "trades", |v| is(v, "match", "BTC-USD"));
    // The server stops answering, its connections still open.
    cl.nats.pause(true);
    let note = until(&mut c, "the reconnecting note", |v| v["type"] == "upstream" && v["state"] == "reconnecting");
    assert!(note["reason"].is_string(), "{note}");
    cl.nats.pause(false);
    until(&mut c, "the connected note", |v| v["type"] == "upstream" && v["state"] == "connected");
    let first = until(&mut c, "a fresh last_match", |v| v["type"] == "last_match");
    contiguous_after(&mut c, "a", trade_id(&first), 10);
}
