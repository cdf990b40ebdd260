//! The REST API: subscriptions by client id, history, the health routes, the
//! index. The only place where the hub's outcomes and errors become HTTP
//! statuses and JSON bodies.

use std::rc::Rc;

use serde_json::json;

use crate::access::Principal;
use crate::http::{Request, Response, Route};
use crate::hub::{Caller, ClientId, ClientView, HistoryQuery, Hub, HubError, Op, Outcome, Since};
use crate::metrics::Entry;
use crate::protocol::Channel;

/// The API described in OpenAPI 3.1, served at `GET /api/v1/openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// An API error: the HTTP status, a machine-readable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// A header the answer needs (`WWW-Authenticate` on a 401, `Retry-After`).
    pub header: Option<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), header: None }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.header = Some((name, value.into()));
        self
    }

    /// The answer that carries it.
    pub fn response(self) -> Response {
        let resp = Response::error(self.status, self.code, self.message);
        match self.header {
            Some((name, value)) => resp.with_header(name, value),
            None => resp,
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> ApiError {
        let (status, code) = match e {
            HubError::UnknownClient => (404, "unknown_client"),
            HubError::TooManySubscriptions(_) => (409, "too_many_subscriptions"),
            HubError::UnknownProduct(_) => (404, "unknown_product"),
            HubError::Forbidden(_) | HubError::NotOwner(_) => (403, "forbidden"),
            // RFC 9110's "directed at a server that cannot produce an
            // authoritative response": the client is real, on another process.
            HubError::OtherNode { .. } => (421, "wrong_node"),
            HubError::ShardUnavailable { .. } => (503, "shard_unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Answers a routed API request (the connection adds the shard header), for
/// `who` (`None`: access control off, or a route that names no pair).
pub async fn handle(hub: &Rc<Hub>, route: Route, req: &Request, who: Option<&Principal>) -> Response {
    // A client of another node (several behind a load balancer): that node
    // answers, over NATS, as if the call had come to it.
    if let Some(link) = hub.global.cluster() {
        if let Some(node) = super::cluster::other_node(hub, &route, req) {
            return super::cluster::forward(link, &node, req).await;
        }
    }
    respond(hub, route, req, who).await.unwrap_or_else(|e| {
        if let (403, Some(p)) = (e.status, who) {
            hub.global.count_refusal(403);
            super::auth::log_refusal(&hub.global, p.name(), p.class().name(), req.path.as_str(), &e.message);
        }
        e.response()
    })
}

async fn respond(hub: &Rc<Hub>, route: Route, req: &Request, who: Option<&Principal>) -> Result<Response, ApiError> {
    let caller = who.map(Caller::of);
    let ok = |v: serde_json::Value| Ok(Response::json(200, &v));
    match route {
        Route::Health => Ok(super::health::report(hub)),
        Route::Live => Ok(super::health::live(hub).await),
        Route::Ready => Ok(super::health::ready(hub)),
        Route::Index if super::ui::wants_page(req) => Ok(super::ui::page(req)),
        Route::Ui(path) => Ok(super::ui::file(req, &path)),
        Route::Products => ok(products(hub, who)),
        Route::Index => ok(json!({
            "name": "hedgehog",
            "version": env!("CARGO_PKG_VERSION"),
            "websocket": "/ws",
            "subscribe": "POST /api/v1/subscribe/{pair} with X-Client-Id",
            "stream": "GET /api/v1/subscribe/{pair}",
            "health": "/healthz",
            "live": "/livez",
            "ready": "/readyz",
            "openapi": "/api/v1/openapi.yaml",
            "products": "/api/v1/products",
            "page": "GET / with Accept: text/html",
        }))
        .map(|r| r.with_header("Vary", "Accept")),
        Route::OpenApi => Ok(Response {
            status: 200,
            headers: vec![("Content-Type", "application/yaml".into())],
            body: OPENAPI_YAML.as_bytes().to_vec(),
        }),
        Route::List => {
            let id = client_id(req)?;
            let Outcome::Subscriptions(subs) = hub.execute_as(id, Op::List, caller).await? else {
                return Err(unexpected());
            };
            let list: Vec<_> = subs.iter().map(|(p, chs)| json!({"product_id": p, "channels": chs})).collect();
            ok(json!({"client_id": id.to_string(), "subscriptions": list}))
        }
        Route::Subscribe(pair) => {
            let id = client_id(req)?;
            let product = product(hub, &pair)?;
            let channels = channels(hub, req)?;
            let replay = replay(hub, req)?;
            hub.count_operation(Entry::Rest, true);
            changed(id, hub.execute_as(id, Op::Subscribe { product, channels, replay }, caller).await?)
        }
        Route::Unsubscribe(pair) => {
            let id = client_id(req)?;
            let product = pair_syntax(&pair)?;
            let channels = match req.query_param("channels") {
                Some(_) => Some(channels(hub, req)?),
                None => None,
            };
            hub.count_operation(Entry::Rest, false);
            changed(id, hub.execute_as(id, Op::Unsubscribe { product, channels }, caller).await?)
        }
        Route::Pair(pair) => {
            let id = client_id(req)?;
            let product = pair_syntax(&pair)?;
            // Not used by this view, but checked as the stream form checks them:
            // a bad `?channels=` or `?replay=` is 400 whichever form is asked for.
            channels(hub, req)?;
            replay(hub, req)?;
            let Outcome::Subscriptions(subs) = hub.execute_as(id, Op::List, caller).await? else {
                return Err(unexpected());
            };
            let channels: Vec<Channel> = subs.get(&product).into_iter().flatten().copied().collect();
            let subscribed = !channels.is_empty();
            ok(
                json!({"client_id": id.to_string(), "product_id": product, "channels": channels, "subscribed": subscribed}),
            )
        }
        Route::WebSocket => Err(ApiError::new(400, "bad_request", "a WebSocket upgrade was expected")),
        Route::History(pair) => {
            let query = history_query(hub, &pair, req)?;
            if let Some(p) = who {
                let what = format!("history of {} {}", query.product, query.channel);
                p.may_read_history(&query.product, query.channel, query.limit)
                    .map_err(|refusal| ApiError::new(403, "forbidden", p.denied(what, refusal).to_string()))?;
            }
            // An edge keeps what its clients follow; the ingest keeps it all.
            if let Some(link) = hub.global.cluster().filter(|l| l.role == crate::cluster::Role::Edge) {
                let body = link.history(super::cluster::history_ask(&query)).await.map_err(|why| {
                    ApiError::new(503, "ingest_unavailable", format!("the active ingest did not answer: {why}"))
                })?;
                return Ok(Response::raw_json(200, body.into_bytes()));
            }
            Ok(Response::raw_json(200, hub.history(query).await?.into_bytes()))
        }
        Route::Echo => Err(ApiError::new(404, "not_found", "no route for /echo (it exists only with --echo)")),
        Route::Clients => {
            admin(who)?;
            let list: Vec<_> = hub.all_clients().await?.iter().map(client_json).collect();
            ok(json!({"count": list.len(), "clients": list}))
        }
        Route::Metrics => {
            if who.is_some() {
                admin(who)?;
            }
            Ok(metrics(hub).await?)
        }
        Route::Disconnect(raw) => {
            admin(who)?;
            let id = ClientId::parse(&raw).ok_or(HubError::UnknownClient)?;
            hub.execute_as(id, Op::Disconnect, caller).await?;
            ok(json!({"client_id": id.to_string(), "disconnected": true}))
        }
    }
}

/// `GET /api/v1/products`: what the upstream's `status` listed (`listed`:
/// whether it has yet); with access control, each product also names the
/// channels the caller's class may read (none: the pair is refused).
fn products(hub: &Hub, who: Option<&Principal>) -> serde_json::Value {
    let listed = hub.global.products();
    let list: Vec<_> = listed
        .iter()
        .flat_map(|l| l.iter())
        .map(|p| {
            let mut v = json!(p);
            if let Some(who) = who {
                let may: Vec<_> =
                    Channel::RELAYED.into_iter().filter(|&c| who.may_subscribe(&p.id, c).is_ok()).collect();
                v["channels"] = json!(may);
            }
            v
        })
        .collect();
    let mut body = json!({"listed": listed.is_some(), "count": list.len(), "products": list});
    if let Some(who) = who {
        body["principal"] = json!(who.name());
        body["class"] = json!(who.class().name());
    }
    body
}

/// `GET /metrics`: every shard's figures, in Prometheus' text format.
pub async fn metrics(hub: &Hub) -> Result<Response, HubError> {
    Ok(Response::text(200, crate::metrics::CONTENT_TYPE, hub.all_metrics().await?))
}

/// The admin endpoints: 404 without access control (there are no admins), 403
/// for a class that is not `admin`.
fn admin(who: Option<&Principal>) -> Result<(), ApiError> {
    match who {
        None => Err(ApiError::new(404, "not_found", "the admin endpoints exist only with access control")),
        Some(p) if !p.class().is_admin() => {
            let why = format!("class `{}` is not an admin class (admin endpoints and /metrics)", p.class().name());
            Err(ApiError::new(403, "forbidden", why))
        }
        Some(_) => Ok(()),
    }
}

/// One client in `GET /api/v1/clients`.
fn client_json(c: &ClientView) -> serde_json::Value {
    let subs: Vec<_> = c.subscriptions.iter().map(|(p, chs)| json!({"product_id": p, "channels": chs})).collect();
    let (principal, class) = c.principal.clone().unzip();
    json!({
        "client_id": c.id.to_string(),
        "shard": c.id.shard,
        "principal": principal,
        "class": class,
        "address": c.peer.map(|a| a.to_string()),
        "subscriptions": subs,
        "queue_bytes": c.queued_bytes,
    })
}

/// A subscription made or ended.
fn changed(id: ClientId, outcome: Outcome) -> Result<Response, ApiError> {
    let Outcome::Changed { product, channels, subscribed } = outcome else { return Err(unexpected()) };
    let body =
        json!({"client_id": id.to_string(), "product_id": product, "channels": channels, "subscribed": subscribed});
    Ok(Response::json(200, &body))
}

/// An outcome of another kind than the operation's (a bug): 500.
fn unexpected() -> ApiError {
    ApiError::new(500, "internal", "the operation's outcome was of another kind")
}

/// `?replay=N`: the last N messages of each new channel, before the live stream.
pub fn replay(hub: &Hub, req: &Request) -> Result<Option<usize>, ApiError> {
    let Some(raw) = req.query_param("replay") else { return Ok(None) };
    let max = hub.global.history.per_topic;
    match raw.parse::<usize>() {
        Ok(n) if n <= max => Ok(Some(n)),
        _ => Err(ApiError::new(400, "bad_replay", format!("replay={raw:?}: want a whole number from 0 to {max}"))),
    }
}

/// `GET /api/v1/history/{pair}?channel=ticker&limit=100&since=<ISO time or sequence>`.
fn history_query(hub: &Hub, pair: &str, req: &Request) -> Result<HistoryQuery, ApiError> {
    // The same answer for a pair the feed does not list as a subscribe gets.
    let product = product(hub, pair)?;
    let name = req.query_param("channel").unwrap_or_else(|| "ticker".into());
    let channel = channel(&name)?;
    let max = hub.global.history.per_topic;
    let limit = match req.query_param("limit") {
        None => 100.min(max),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    400,
                    "bad_limit",
                    format!("limit={raw:?}: want a whole number from 1 to {max}"),
                ))
            }
        },
    };
    let since = match req.query_param("since") {
        None => Since::All,
        Some(raw) => match (raw.parse::<u64>(), crate::clock::parse_iso(&raw)) {
            (Ok(seq), _) => Since::Sequence(seq),
            (_, Some(t)) => Since::Time(t),
            _ => {
                let why = format!("since={raw:?}: want a sequence number or an ISO-8601 UTC time");
                return Err(ApiError::new(400, "bad_since", why));
            }
        },
    };
    Ok(HistoryQuery { product, channel, limit, since })
}

/// The client id from `X-Client-Id` or `?client_id=`.
pub fn client_id(req: &Request) -> Result<ClientId, ApiError> {
    let raw = req.header_str("X-Client-Id").map(str::to_string).or_else(|| req.query_param("client_id"));
    let raw = raw.filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::new(400, "missing_client_id", "name the WebSocket client with an X-Client-Id header or ?client_id=")
    })?;
    ClientId::parse(&raw).ok_or_else(|| ApiError::new(404, "unknown_client", "no connected client has that id"))
}

/// A pair of the right form, upper-cased.
pub fn pair_syntax(pair: &str) -> Result<String, ApiError> {
    crate::protocol::normalize_product(pair).ok_or_else(|| {
        ApiError::new(400, "bad_pair", format!("{pair:?} is not a currency pair; pairs look like BTC-USD"))
    })
}

/// A pair the upstream offers (or may offer, while its list is unknown).
pub fn product(hub: &Hub, pair: &str) -> Result<String, ApiError> {
    let product = pair_syntax(pair)?;
    hub.check_product(&product)?;
    Ok(product)
}

/// The channels asked for with `?channels=`, or the configured default.
pub fn channels(hub: &Hub, req: &Request) -> Result<Vec<Channel>, ApiError> {
    let Some(list) = req.query_param("channels") else { return Ok(hub.global.default_channels.clone()) };
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let index = channel(name)?;
        if !out.contains(&index) {
            out.push(index);
        }
    }
    if out.is_empty() {
        return Err(ApiError::new(400, "bad_channel", "?channels= names no channel"));
    }
    Ok(out)
}

/// A channel named in a query (aliases allowed), or 400 `bad_channel`.
fn channel(name: &str) -> Result<Channel, ApiError> {
    Channel::parse(name).filter(|c| c.is_relayed()).ok_or_else(|| {
        let offered = Channel::relayed_names();
        ApiError::new(400, "bad_channel", format!("{name:?} is not a channel hedgehog offers ({offered})"))
    })
}
