//! The web page as HTTP sees it (tests/browser/ drives it in a real browser):
//! `GET /` gives a browser the page and an API client the JSON index; `/ui/`
//! files carry their type, an ETag honoured by `If-None-Match`, and a strict
//! policy; the page is public with access control on, while
//! `GET /api/v1/products` follows the rule of the other read routes.

mod common;

use std::time::Instant;

use common::access::{key_entry, key_of, rules};
use common::{http, http_raw, relay, simulator, DEADLINE};

const BROWSER: &str = "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n";

fn get(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
    http_raw(addr, raw.as_bytes())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.split_once(": ").filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// `/api/v1/products` once the simulator has listed them.
fn listed(addr: std::net::SocketAddr, headers: &str) -> serde_json::Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let (status, head, body) = http(addr, "GET", "/api/v1/products", headers);
        assert_eq!(status, 200, "{head}");
        if body["listed"] == true {
            return body;
        }
        assert!(Instant::now() < end, "the products were never listed: {body}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_browser_gets_the_page_and_an_api_client_the_index() {
    let sim = simulator(|_| {});
    let relay = relay(1, &sim.url());
    let (status, head, body) = get(relay.addr, "/", BROWSER);
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "Content-Type"), Some("text/html; charset=utf-8"));
    assert!(body.starts_with("<!doctype html>") && body.contains("/ui/app.js"), "{body}");
    let csp = header(&head, "Content-Security-Policy").expect("a policy");
    for part in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(header(&head, "X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(header(&head, "Vary"), Some("Accept"));
    for accept in ["", "Accept: */*\r\n", "Accept: application/json\r\n"] {
        let (status, head, body) = get(relay.addr, "/", accept);
        assert_eq!(status, 200, "{head}");
        assert_eq!(header(&head, "Content-Type"), Some("application/json"), "{accept:?}");
        assert!(body.contains("\"name\":\"hedgehog\""), "{body}");
    }
}

#[test]
fn page_files_have_types_etags_and_304s() {
    let sim = simulator(|_| {});
    let relay = relay(1, &sim.url());
    for (path, kind) in
        [("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css"), ("/ui/favicon.svg", "image/svg+xml")]
    {
        let (status, head, body) = get(relay.addr, path, "");
        assert_eq!(status, 200, "{path}: {head}");
        assert!(header(&head, "Content-Type").unwrap().starts_with(kind), "{head}");
        assert_eq!(header(&head, "Cache-Control"), Some("no-cache"));
        assert!(!body.is_empty());
        let etag = header(&head, "ETag").expect("an ETag").to_string();
        let (status, head, body) = get(relay.addr, path, &format!("If-None-Match: {etag}\r\n"));
        assert_eq!((status, body.as_str()), (304, ""), "{head}");
        assert_eq!(header(&head, "ETag"), Some(etag.as_str()));
        assert_eq!(header(&head, "Content-Length"), None, "a 304 has no body to measure");
        assert_eq!(get(relay.addr, path, "If-None-Match: \"stale\"\r\n").0, 200);
    }
    let (status, _, body) = http(relay.addr, "GET", "/ui/nope.js", "");
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _, body) = http(relay.addr, "GET", "/ui/..%2FCargo.toml", "");
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, head, _) = http(relay.addr, "POST", "/ui/app.js", "");
    assert_eq!((status, header(&head, "Allow")), (405, Some("GET")));
}

#[test]
fn products_lists_what_the_feed_listed() {
    let sim = simulator(|c| c.products = vec!["BTC-USD".into(), "ETH-EUR".into()]);
    let relay = relay(1, &sim.url());
    let body = listed(relay.addr, "");
    assert_eq!(body["count"], 2);
    let btc = body["products"].as_array().unwrap().iter().find(|p| p["id"] == "BTC-USD").expect("BTC-USD");
    assert_eq!((&btc["base"], &btc["quote"], &btc["status"]), (&"BTC".into(), &"USD".into(), &"online".into()));
    assert!(btc.get("channels").is_none(), "no access control, no per-class channels: {btc}");
    assert!(body.get("principal").is_none());
}

#[test]
fn with_access_control_the_page_is_public_and_products_names_what_the_class_may_read() {
    let sim = simulator(|c| c.products = vec!["BTC-USD".into(), "ETH-USD".into()]);
    let text =
        format!("[classes.btc]\nallow = [\"BTC-*\"]\nallow_channels = [\"ticker\"]\n{}", key_entry("alice", "btc"));
    let relay = common::relay_with(&sim.url(), |c| c.access = Some(rules(&text)));
    for path in ["/", "/ui/app.js"] {
        assert_eq!(get(relay.addr, path, BROWSER).0, 200, "{path} needs no credential");
    }
    let (status, head, body) = http(relay.addr, "GET", "/api/v1/products", "");
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{head}");
    let body = listed(relay.addr, &format!("Authorization: Bearer {}\r\n", key_of("alice")));
    assert_eq!((&body["principal"], &body["class"]), (&"alice".into(), &"btc".into()));
    let channels = |id: &str| {
        let p = body["products"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap().clone();
        p["channels"].clone()
    };
    assert_eq!(channels("BTC-USD"), serde_json::json!(["ticker"]));
    assert_eq!(channels("ETH-USD"), serde_json::json!([]));
}
