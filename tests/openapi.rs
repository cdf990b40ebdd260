//! The API described: `openapi.yaml` is served as it is in the repository, with
//! no credential needed, and it names every route the router knows and every
//! error code the README's table lists. (That the document is valid OpenAPI and
//! that the relay's answers match it is `tests/openapi.sh`'s job.)

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::access::rules;
use common::{http_raw, relay, simulator};
use hedgehog::http::Route;

const DOCUMENT: &str = include_str!("../openapi.yaml");
const README: &str = include_str!("../README.md");

/// Where the document must describe `route`: its path and methods. A match with
/// no catch-all: a new route does not compile until it is placed here.
fn documented(route: &Route) -> (&'static str, &'static [&'static str]) {
    match route {
        Route::WebSocket => ("/ws", &["get"]),
        Route::Index => ("/", &["get"]),
        Route::Ui(_) => ("/ui/{file}", &["get"]),
        Route::Products => ("/api/v1/products", &["get"]),
        Route::Health => ("/healthz", &["get"]),
        Route::Live => ("/livez", &["get"]),
        Route::Ready => ("/readyz", &["get"]),
        Route::List => ("/api/v1/subscribe", &["get"]),
        Route::Subscribe(_) => ("/api/v1/subscribe/{pair}", &["post", "put"]),
        Route::Unsubscribe(_) => ("/api/v1/subscribe/{pair}", &["delete"]),
        Route::Pair(_) => ("/api/v1/subscribe/{pair}", &["get"]),
        Route::Echo => ("/echo", &["get"]),
        Route::History(_) => ("/api/v1/history/{pair}", &["get"]),
        Route::Clients => ("/api/v1/clients", &["get"]),
        Route::Disconnect(_) => ("/api/v1/clients/{id}", &["delete"]),
        Route::OpenApi => ("/api/v1/openapi.yaml", &["get"]),
        Route::Metrics => ("/metrics", &["get"]),
    }
}

/// One of each route.
fn every_route() -> Vec<Route> {
    let pair = || "BTC-USD".to_string();
    vec![
        Route::WebSocket,
        Route::Index,
        Route::Ui("app.js".into()),
        Route::Products,
        Route::Health,
        Route::Live,
        Route::Ready,
        Route::List,
        Route::Subscribe(pair()),
        Route::Unsubscribe(pair()),
        Route::Pair(pair()),
        Route::Echo,
        Route::History(pair()),
        Route::Clients,
        Route::Disconnect("0-1-2".into()),
        Route::OpenApi,
        Route::Metrics,
    ]
}

/// The document's `paths`, each with its methods: read from the indentation
/// (two spaces for a path, four for a method), which is how the file is written.
fn paths() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::<String, BTreeSet<String>>::new();
    let section = DOCUMENT.split("\npaths:\n").nth(1).expect("a paths section");
    let section = section.split("\ncomponents:\n").next().unwrap();
    let mut current = None;
    for line in section.lines() {
        if let Some(path) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            current = Some(format!("/{path}"));
            out.entry(format!("/{path}")).or_default();
        } else if let (Some(path), Some(rest)) = (&current, line.strip_prefix("    ")) {
            let word = rest.split(':').next().unwrap_or("");
            if ["get", "put", "post", "delete", "patch", "head", "options"].contains(&word) {
                out.get_mut(path).unwrap().insert(word.to_string());
            }
        }
    }
    out
}

#[test]
fn every_route_is_described() {
    let paths = paths();
    let mut wanted = BTreeMap::<&str, BTreeSet<String>>::new();
    for route in every_route() {
        let (path, methods) = documented(&route);
        wanted.entry(path).or_default().extend(methods.iter().map(|m| m.to_string()));
    }
    // Described ahead of its route, which lands with the metrics work.
    wanted.insert("/metrics", BTreeSet::from(["get".to_string()]));
    for (path, methods) in &wanted {
        assert_eq!(paths.get(*path), Some(methods), "{path} in openapi.yaml");
    }
    let extra: Vec<_> = paths.keys().filter(|p| !wanted.contains_key(p.as_str())).collect();
    assert!(extra.is_empty(), "openapi.yaml describes paths the router does not know: {extra:?}");
}

#[test]
fn every_error_code_of_the_readme_is_described() {
    // The error table's rows: `| 404 | `unknown_client` | ... |`.
    let mut codes = Vec::new();
    for line in README.lines().filter(|l| l.starts_with("| 4") || l.starts_with("| 5")) {
        let cell = line.split('|').nth(2).unwrap_or("");
        codes.extend(cell.split('`').skip(1).step_by(2).map(str::to_string));
    }
    assert!(codes.len() >= 20, "the README's error table was found: {codes:?}");
    for code in codes {
        assert!(DOCUMENT.contains(&format!("`{code}`")), "openapi.yaml names the error `{code}`");
    }
}

#[test]
fn the_document_is_served_without_credentials() {
    let sim = simulator(|_| {});
    let open = relay(1, &sim.url());
    // Access control with no anonymous class: every data route wants a credential.
    let closed = common::relay_with(&sim.url(), |c| {
        c.access = Some(rules("[classes.pro]\nallow = [\"*\"]\nallow_channels = [\"*\"]\n"));
    });
    for addr in [open.addr, closed.addr] {
        let raw = b"GET /api/v1/openapi.yaml HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let (status, head, body) = http_raw(addr, raw);
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("Content-Type: application/yaml\r\n"), "{head}");
        assert!(head.contains("X-Hedgehog-Shard: "), "{head}");
        assert_eq!(body, DOCUMENT, "the document as it is in the repository");
        assert!(body.starts_with("openapi: 3.1."), "OpenAPI 3.1");
    }
    let (status, head, _) =
        http_raw(closed.addr, b"GET /api/v1/subscribe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 401, "the data routes do want one: {head}");
}

/// Found by the fuzzer: the client view of a pair ignored `?channels=` and
/// `?replay=`, so a malformed one was 200 there and 400 on the stream form.
#[test]
fn the_client_view_checks_its_query_as_the_stream_does() {
    let sim = simulator(|_| {});
    let relay = relay(1, &sim.url());
    let (_client, id) = common::relay_client(relay.addr);
    let header = format!("X-Client-Id: {id}\r\n");
    for (query, code) in [("channels=nope", "bad_channel"), ("replay=x", "bad_replay")] {
        let (status, head, body) =
            common::http(relay.addr, "GET", &format!("/api/v1/subscribe/BTC-USD?{query}"), &header);
        assert_eq!((status, body["error"].as_str()), (400, Some(code)), "{query}: {head}");
    }
    let (status, _, body) = common::http(relay.addr, "GET", "/api/v1/subscribe/BTC-USD?channels=ticker", &header);
    assert_eq!((status, &body["subscribed"]), (200, &serde_json::Value::Bool(false)));
}
