//! Client ids name their process: with `--node a` every id begins `a.`, REST
//! calls with such an id work as before, and a call naming another node's
//! client is 421 `wrong_node` naming both nodes (not "no such client"), so that
//! a proxy's misrouting is plain. Without `--node`, ids are as they always were.

mod common;

use common::{http, relay, relay_client, simulator, Running};

#[test]
fn ids_begin_with_the_node_and_another_nodes_ids_are_misdirected() {
    let (child, addr) = common::start_binary(&["--node", "a", "--simulate"]);
    let _child = Running(child);
    let (mut client, id) = relay_client(addr);
    let local = id.strip_prefix("a.").unwrap_or_else(|| panic!("the welcome id begins with the node: {id}"));

    let (status, head, body) = http(addr, "POST", "/api/v1/subscribe/BTC-USD", &format!("X-Client-Id: {id}\r\n"));
    assert_eq!((status, body["client_id"].as_str()), (200, Some(id.as_str())), "{head}\n{body}");
    client.until("the subscribed note", |m| m["type"] == "subscribed" && m["client_id"] == id.as_str());
    client.until("BTC-USD data", |m| m["product_id"] == "BTC-USD" && m["type"] != "subscribed");

    // The same shard, slot and token under node `b`, by header and by query.
    let theirs = format!("b.{local}");
    for (path, header) in [
        ("/api/v1/subscribe/ETH-USD".to_string(), format!("X-Client-Id: {theirs}\r\n")),
        (format!("/api/v1/subscribe/ETH-USD?client_id={theirs}"), String::new()),
    ] {
        let (status, head, body) = http(addr, "POST", &path, &header);
        assert_eq!((status, body["error"].as_str()), (421, Some("wrong_node")), "{head}\n{body}");
        assert!(head.starts_with("HTTP/1.1 421 Misdirected Request\r\n"), "{head}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("node `b`") && message.contains("node `a`"), "{message}");
    }
    // An id with no node at all is not this process's either.
    let (status, _, body) = http(addr, "GET", "/api/v1/subscribe", &format!("X-Client-Id: {local}\r\n"));
    assert_eq!((status, body["error"].as_str()), (421, Some("wrong_node")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("names no node"), "{body}");

    // Nothing happened to the client: it holds BTC-USD only.
    let (status, _, body) = http(addr, "GET", "/api/v1/subscribe", &format!("X-Client-Id: {id}\r\n"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subscriptions"].as_array().map(Vec::len), Some(1), "{body}");
}

#[test]
fn without_a_node_ids_are_as_before_and_node_ids_are_refused() {
    let sim = simulator(|_| {});
    let relay = relay(2, &sim.url());
    let (_client, id) = relay_client(relay.addr);
    let parts: Vec<&str> = id.split('-').collect();
    assert!(!id.contains('.') && parts.len() == 3 && parts[2].len() == 32, "{id}");
    let (status, _, body) = http(relay.addr, "GET", "/api/v1/subscribe", &format!("X-Client-Id: a.{id}\r\n"));
    assert_eq!((status, body["error"].as_str()), (421, Some("wrong_node")), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("node `a`") && message.contains("no node name (--node)"), "{message}");
}
