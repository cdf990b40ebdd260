//! The relay's routes, decided from method and path alone.

use super::{percent_decode, Response};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /ws` or `GET /` with `Upgrade: websocket`.
    WebSocket,
    /// `GET /` without an upgrade: the JSON index, or the web page for a
    /// browser (`Accept: text/html`).
    Index,
    /// `GET /ui/{file}`: one of the web page's files.
    Ui(String),
    /// `GET /api/v1/products`: the products the upstream lists.
    Products,
    /// `GET /healthz`: the health report (503 when not ready).
    Health,
    /// `GET /livez`: whether every shard answers.
    Live,
    /// `GET /readyz`: whether clients should be sent here.
    Ready,
    /// `GET /api/v1/subscribe`: one client's subscriptions.
    List,
    /// `POST`/`PUT /api/v1/subscribe/{pair}`.
    Subscribe(String),
    /// `DELETE /api/v1/subscribe/{pair}`.
    Unsubscribe(String),
    /// `GET /api/v1/subscribe/{pair}`: a stream, or one client's view of the pair.
    Pair(String),
    /// `GET /echo`: the WebSocket echo endpoint, when `--echo` enables it.
    Echo,
    /// `GET /api/v1/history/{pair}`: recent messages of a pair.
    History(String),
    /// `GET /api/v1/clients`: every connected client (admins only).
    Clients,
    /// `DELETE /api/v1/clients/{id}`: disconnect a client (admins only).
    Disconnect(String),
    /// `GET /metrics`: Prometheus metrics (admins only, with access control).
    Metrics,
    /// `GET /api/v1/openapi.yaml`: the API described (`openapi.yaml`).
    OpenApi,
}

impl Route {
    /// The route's name, a metrics label: a fixed set, never the pair or id.
    pub fn name(&self) -> &'static str {
        match self {
            Route::WebSocket => "websocket",
            Route::Index => "index",
            Route::Ui(_) => "ui",
            Route::Products => "products",
            Route::Health => "healthz",
            Route::Live => "livez",
            Route::Ready => "readyz",
            Route::List => "list",
            Route::Subscribe(_) => "subscribe",
            Route::Unsubscribe(_) => "unsubscribe",
            Route::Pair(_) => "pair",
            Route::Echo => "echo",
            Route::History(_) => "history",
            Route::Clients => "clients",
            Route::Disconnect(_) => "disconnect",
            Route::Metrics => "metrics",
            Route::OpenApi => "openapi",
        }
    }
}

const PREFIX: &str = "/api/v1/subscribe";
const HISTORY: &str = "/api/v1/history";
const CLIENTS: &str = "/api/v1/clients";
const OPENAPI: &str = "/api/v1/openapi.yaml";
const PRODUCTS: &str = "/api/v1/products";
const UI: &str = "/ui/";

/// Routes a request; unknown paths get 404, wrong methods 405 with `Allow`.
pub fn route(method: &str, path: &str, upgrade: bool) -> Result<Route, Response> {
    let allow = |allowed: &'static str| {
        Response::error(405, "method_not_allowed", format!("{method} is not allowed on {path}; use {allowed}"))
            .with_header("Allow", allowed)
    };
    let only_get = |route: Route| if method == "GET" { Ok(route) } else { Err(allow("GET")) };
    match path {
        "/ws" => only_get(Route::WebSocket),
        "/" if upgrade => only_get(Route::WebSocket),
        "/" => only_get(Route::Index),
        "/healthz" => only_get(Route::Health),
        "/livez" => only_get(Route::Live),
        "/readyz" => only_get(Route::Ready),
        "/echo" => only_get(Route::Echo),
        "/metrics" => only_get(Route::Metrics),
        PREFIX => only_get(Route::List),
        CLIENTS => only_get(Route::Clients),
        OPENAPI => only_get(Route::OpenApi),
        PRODUCTS => only_get(Route::Products),
        _ if path.starts_with(UI) => only_get(Route::Ui(percent_decode(&path[UI.len()..]))),
        _ if path.starts_with(CLIENTS) => match path[CLIENTS.len()..].strip_prefix('/') {
            Some(id) if !id.is_empty() && !id.contains('/') => match method {
                "DELETE" => Ok(Route::Disconnect(percent_decode(id))),
                _ => Err(allow("DELETE")),
            },
            _ => Err(Response::error(404, "not_found", format!("no route for {path}"))),
        },
        _ if path.starts_with(HISTORY) => match path[HISTORY.len()..].strip_prefix('/') {
            Some(pair) if !pair.is_empty() && !pair.contains('/') => only_get(Route::History(percent_decode(pair))),
            _ => Err(Response::error(404, "not_found", format!("no route for {path}"))),
        },
        _ => {
            let Some(pair) = path.strip_prefix(PREFIX).and_then(|p| p.strip_prefix('/')) else {
                return Err(Response::error(404, "not_found", format!("no route for {path}")));
            };
            if pair.contains('/') {
                return Err(Response::error(404, "not_found", format!("no route for {path}")));
            }
            let pair = percent_decode(pair);
            match method {
                "POST" | "PUT" => Ok(Route::Subscribe(pair)),
                "DELETE" => Ok(Route::Unsubscribe(pair)),
                "GET" => Ok(Route::Pair(pair)),
                _ => Err(allow("GET, POST, PUT, DELETE")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_api() {
        assert_eq!(route("POST", "/api/v1/subscribe/btc-usd", false), Ok(Route::Subscribe("btc-usd".into())));
        assert_eq!(route("PUT", "/api/v1/subscribe/BTC-USD", false), Ok(Route::Subscribe("BTC-USD".into())));
        assert_eq!(route("DELETE", "/api/v1/subscribe/ETH-EUR", false), Ok(Route::Unsubscribe("ETH-EUR".into())));
        assert_eq!(route("GET", "/api/v1/subscribe/ETH%2DEUR", false), Ok(Route::Pair("ETH-EUR".into())));
        assert_eq!(route("GET", "/api/v1/subscribe", false), Ok(Route::List));
        assert_eq!(route("GET", "/", true), Ok(Route::WebSocket));
        assert_eq!(route("GET", "/ws", false), Ok(Route::WebSocket));
        assert_eq!(route("GET", "/", false), Ok(Route::Index));
        assert_eq!(route("GET", "/livez", false), Ok(Route::Live));
        assert_eq!(route("GET", "/readyz", false), Ok(Route::Ready));
        assert_eq!(route("GET", "/healthz", false), Ok(Route::Health));
        assert_eq!(route("GET", "/api/v1/history/BTC-USD", false), Ok(Route::History("BTC-USD".into())));
        assert_eq!(route("GET", "/api/v1/history", false).unwrap_err().status, 404);
        assert_eq!(route("POST", "/api/v1/history/BTC-USD", false).unwrap_err().status, 405);
        assert_eq!(route("GET", "/api/v1/clients", false), Ok(Route::Clients));
        assert_eq!(route("DELETE", "/api/v1/clients/1-2-3", false), Ok(Route::Disconnect("1-2-3".into())));
        assert_eq!(route("GET", "/api/v1/clients/1-2-3", false).unwrap_err().status, 405);
        assert_eq!(route("DELETE", "/api/v1/clients/", false).unwrap_err().status, 404);
        assert_eq!(route("GET", "/metrics", false), Ok(Route::Metrics));
        assert_eq!(route("POST", "/metrics", false).unwrap_err().status, 405);
        assert_eq!(route("GET", "/api/v1/openapi.yaml", false), Ok(Route::OpenApi));
        assert_eq!(route("POST", "/api/v1/openapi.yaml", false).unwrap_err().status, 405);
        assert_eq!(route("GET", "/api/v1/products", false), Ok(Route::Products));
        assert_eq!(route("DELETE", "/api/v1/products", false).unwrap_err().status, 405);
        assert_eq!(route("GET", "/ui/app.js", false), Ok(Route::Ui("app.js".into())));
        assert_eq!(route("GET", "/ui/", false), Ok(Route::Ui(String::new())));
        assert_eq!(route("POST", "/ui/app.js", false).unwrap_err().status, 405);
        assert_eq!(route("GET", "/ui", false).unwrap_err().status, 404);
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        assert_eq!(route("GET", "/nope", false).unwrap_err().status, 404);
        assert_eq!(route("POST", "/api/v1/subscribe/a/b", false).unwrap_err().status, 404);
        let r = route("PATCH", "/api/v1/subscribe/BTC-USD", false).unwrap_err();
        assert_eq!(r.status, 405);
        assert!(r.headers.contains(&("Allow", "GET, POST, PUT, DELETE".into())));
        let r = route("POST", "/healthz", false).unwrap_err();
        assert!(r.headers.contains(&("Allow", "GET".into())));
    }
}
