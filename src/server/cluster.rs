//! Shard 0's side of the NATS thread (see `cluster`): what an ingest or an edge
//! hears from NATS becomes owner events and answers, and what the owner and
//! the upstream do becomes NATS traffic. Also the REST forwarding both ways.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use glommio::channels::local_channel::LocalSender;
use tokio::sync::mpsc;

use crate::cluster::{Cmd, Ev, ForwardedRequest, ForwardedResponse, HistoryAsk, Key, Link};
use crate::http::{Request, Response, Route};
use crate::hub::{ClientId, HistoryQuery, Hub, Since};
use crate::protocol::{Channel, Topic};
use crate::upstream::{Event, State};

/// The header a forwarded call carries: it is answered where it lands, never
/// forwarded again.
pub const FORWARDED: &str = "Hedgehog-Forwarded";

/// How often the owner's state is looked at for NATS (an edge's wanted set
/// also wakes it at once).
const LOOK: Duration = Duration::from_millis(250);

/// Runs on shard 0 for the life of the process: NATS events in (`feed`: an
/// edge's owner events), owner state out.
pub(super) fn spawn(
    hub: Rc<Hub>,
    events: mpsc::Receiver<Ev>,
    feed: Option<LocalSender<Event>>,
    queue: glommio::TaskQueueHandle,
) {
    let Some(link) = hub.global.cluster().cloned() else { return };
    if link.role == crate::cluster::Role::Ingest {
        standing_by(&hub, Some("starting: no lease yet"));
    }
    let feed = feed.map(Rc::new);
    glommio::spawn_local_into(listen(hub.clone(), events, feed.clone()), queue).map(|t| t.detach()).ok();
    glommio::spawn_local_into(watch(hub, link, feed), queue).map(|t| t.detach()).ok();
}

async fn listen(hub: Rc<Hub>, mut events: mpsc::Receiver<Ev>, feed: Option<Rc<LocalSender<Event>>>) {
    while let Some(ev) = events.recv().await {
        let Some(owner) = hub.owner() else { return };
        let to_owner = |e: Event| {
            let feed = feed.clone();
            async move {
                if let Some(f) = feed {
                    let _ = f.send(e).await;
                }
            }
        };
        match ev {
            Ev::Feed(m) => to_owner(Event::Message(m)).await,
            Ev::Seed { product, channel, first, history } => {
                to_owner(Event::Seed { product, channel, first, history }).await
            }
            Ev::Up => to_owner(Event::Connected).await,
            Ev::Down(reason) => to_owner(Event::Disconnected { reason }).await,
            Ev::Products(list) => {
                owner.upstream.list(list.iter().map(|p| p.id.clone()));
                to_owner(Event::Products(list)).await;
                let unlisted = owner.upstream.take_unlisted();
                if !unlisted.is_empty() {
                    to_owner(Event::Unlisted(unlisted)).await;
                }
            }
            Ev::Refused { product, message, reason } => {
                to_owner(Event::Error { message, reason, product: Some(product) }).await
            }
            Ev::Lease(term) => {
                owner.set_term(term);
                if term.is_none() {
                    standing_by(&hub, Some("another ingest holds the lease"));
                }
            }
            Ev::Interest(topics) => owner.set_remote(topics),
            Ev::SeedAsk { product, channel, reply } => {
                let known = hub.global.products().map(|l| l.iter().map(|p| p.id.clone()).collect());
                let _ = reply.send(owner.seed_answer(&Topic::new(product, channel), known.as_ref()));
            }
            Ev::History { ask, reply } => {
                if let Some(q) = query_of(ask) {
                    let _ = reply.send(owner.history_json(&q));
                }
            }
            Ev::Rest { request, reply } => {
                let hub = hub.clone();
                let task = async move {
                    let global = hub.global.clone();
                    let work = async {
                        let resp = answer_forwarded(&hub, request).await;
                        let _ = reply.send(resp);
                    };
                    super::task::contained(&global, "a forwarded call", work).await;
                };
                glommio::spawn_local(task).detach();
            }
        }
    }
}

/// What the NATS thread needs to know of this process, as it changes: an
/// edge's wanted topics (and those to seed afresh); an ingest's upstream state
/// and product list.
async fn watch(hub: Rc<Hub>, link: std::sync::Arc<Link>, feed: Option<Rc<LocalSender<Event>>>) {
    let mut wanted: Option<BTreeSet<Key>> = None;
    let mut connected = None;
    let mut products = None;
    loop {
        let Some(owner) = hub.owner() else { return };
        let look = glommio::timer::sleep(LOOK);
        match feed {
            Some(_) => futures_lite::future::or(owner.upstream.changed(), look).await,
            None => look.await,
        }
        let Some(owner) = hub.owner() else { return };
        if feed.is_some() {
            let now = owner.upstream.desired();
            if wanted.as_ref() != Some(&now) && link.cmd.try_send(Cmd::Want(now.clone())).is_ok() {
                wanted = Some(now);
            }
            for t in owner.take_fresh() {
                let _ = link.cmd.send(Cmd::Reseed { product: t.product, channel: Some(t.channel) }).await;
            }
            for product in owner.upstream.take_resubscribes() {
                let _ = link.cmd.send(Cmd::Reseed { product, channel: None }).await;
            }
        } else {
            let up = owner.upstream.status().state == State::Connected;
            if connected != Some(up) && link.cmd.try_send(Cmd::Upstream { connected: up }).is_ok() {
                connected = Some(up);
            }
            let list = hub.global.products();
            let same = match (&products, &list) {
                (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                if let Some(l) = &list {
                    if link.cmd.try_send(Cmd::Products(l.to_vec())).is_ok() {
                        products = list;
                    }
                }
            }
        }
    }
}

/// A standby ingest says so in `/healthz` and `/metrics` (its clients hear it
/// when an upstream connection it held closes, through the owner).
fn standing_by(hub: &Hub, why: Option<&str>) {
    hub.global.set_upstream(|u| {
        if u.state != "standby" {
            u.changed_at = Some(std::time::Instant::now());
        }
        u.state = "standby";
        u.last_error = why.map(str::to_string);
    });
}

fn query_of(ask: HistoryAsk) -> Option<HistoryQuery> {
    let since = match ask.since {
        None => Since::All,
        Some((kind, v)) if kind == "sequence" => Since::Sequence(v.max(0) as u64),
        Some((_, v)) => Since::Time(v),
    };
    Some(HistoryQuery { product: ask.product, channel: Channel::parse(&ask.channel)?, limit: ask.limit, since })
}

/// An edge's `/api/v1/history` as it goes to the ingest.
pub(super) fn history_ask(q: &HistoryQuery) -> HistoryAsk {
    let since = match q.since {
        Since::All => None,
        Since::Sequence(s) => Some(("sequence".to_string(), s as i64)),
        Since::Time(t) => Some(("time".to_string(), t)),
    };
    HistoryAsk { product: q.product.clone(), channel: q.channel.name().to_string(), limit: q.limit, since }
}

/// The node a request names a client of, if not this one (and the request
/// was not forwarded here already).
pub(super) fn other_node(hub: &Hub, route: &Route, req: &Request) -> Option<String> {
    if req.header(FORWARDED).is_some() {
        return None;
    }
    // Only the calls that act on a client (an id sent along with others is ignored).
    let raw = match route {
        Route::Disconnect(id) => Some(id.clone()),
        Route::Subscribe(_) | Route::Unsubscribe(_) | Route::List | Route::Pair(_) => {
            req.header_str("X-Client-Id").map(str::to_string).or_else(|| req.query_param("client_id"))
        }
        _ => None,
    }?;
    let id = ClientId::parse(&raw)?;
    (id.node != hub.global.node).then(|| id.node.map(|n| n.to_string()).unwrap_or_default())
}

/// Carries `req` to `node` and answers with what it answers.
pub(super) async fn forward(link: &Link, node: &str, req: &Request) -> Response {
    let headers = req
        .headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("host"))
        .map(|(name, value)| (name.clone(), String::from_utf8_lossy(value).into_owned()))
        .collect();
    let request = ForwardedRequest {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        headers,
        body: String::from_utf8_lossy(&req.body).into_owned(),
        from: link.node.clone(),
    };
    match link.forward(node, request).await {
        Ok(resp) => response_of(resp),
        Err(why) => {
            let node = if node.is_empty() { "(no node)" } else { node };
            let message = format!("the client's node {node} did not answer over NATS: {why}");
            Response::error(503, "node_unavailable", message).with_header("Retry-After", "1".to_string())
        }
    }
}

/// The response headers a forwarded answer may carry (the names are static).
const CARRIED: &[&str] = &["Content-Type", "Retry-After", "WWW-Authenticate", "Allow", "Vary"];

fn response_of(r: ForwardedResponse) -> Response {
    let headers = r
        .headers
        .into_iter()
        .filter_map(|(name, value)| CARRIED.iter().find(|c| c.eq_ignore_ascii_case(&name)).map(|c| (*c, value)))
        .collect();
    Response { status: r.status, headers, body: r.body.into_bytes() }
}

/// Answers a call forwarded here as if it had come here: routed, checked
/// against access control (its credentials came with it) and answered.
async fn answer_forwarded(hub: &Rc<Hub>, f: ForwardedRequest) -> ForwardedResponse {
    let mut headers: Vec<(String, Vec<u8>)> = f.headers.into_iter().map(|(n, v)| (n, v.into_bytes())).collect();
    headers.push((FORWARDED.to_string(), f.from.into_bytes()));
    let req =
        Request { method: f.method, path: f.path, query: f.query, version: 1, headers, body: f.body.into_bytes() };
    let resp = match crate::http::route(&req.method, &req.path, false) {
        // Only the REST calls that name a client come this way.
        Ok(
            route @ (Route::Subscribe(_) | Route::Unsubscribe(_) | Route::List | Route::Pair(_) | Route::Disconnect(_)),
        ) => match super::auth::who(hub, &route, &req) {
            Err(e) => e.response(),
            Ok(who) => super::api::handle(hub, route, &req, who.as_ref()).await,
        },
        Ok(_) => Response::error(400, "not_forwardable", "only REST calls naming a client are forwarded"),
        Err(resp) => resp,
    };
    let resp = super::conn::with_shard(resp, hub.id);
    ForwardedResponse {
        status: resp.status,
        headers: resp.headers.iter().map(|(n, v)| (n.to_string(), v.clone())).collect(),
        body: String::from_utf8_lossy(&resp.body).into_owned(),
    }
}
