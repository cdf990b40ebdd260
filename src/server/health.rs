//! What load balancers and supervisors ask: `/livez` (is every shard alive?),
//! `/readyz` (should clients be sent here?) and `/healthz` (the full report,
//! with the readiness as its status).

use std::rc::Rc;
use std::time::Duration;

use serde_json::json;

use crate::http::Response;
use crate::hub::Hub;

/// How long each shard has to answer a liveness check.
pub const LIVE_DEADLINE: Duration = Duration::from_secs(2);

/// `/livez`: 200 while every shard answers within [`LIVE_DEADLINE`]; 503
/// naming those that did not. All shards are asked at once.
pub async fn live(hub: &Rc<Hub>) -> Response {
    let asked: Vec<_> = (0..hub.global.shards)
        .map(|shard| {
            let hub = hub.clone();
            (shard, glommio::spawn_local(async move { hub.answers(shard, LIVE_DEADLINE).await }))
        })
        .collect();
    let mut silent = Vec::new();
    for (shard, answer) in asked {
        if !answer.await {
            silent.push(shard);
        }
    }
    if silent.is_empty() {
        return Response::json(200, &json!({"status": "live", "shards": hub.global.shards}));
    }
    let message = format!("shard(s) {silent:?} did not answer within {LIVE_DEADLINE:?}");
    Response::json(503, &json!({"error": "not_live", "message": message, "silent_shards": silent}))
}

/// `/readyz`: 200 while the upstream is connected (or within the grace after
/// start or a loss); 503 with the reason otherwise.
pub fn ready(hub: &Hub) -> Response {
    let state = hub.global.upstream().state;
    if state == "standby" {
        let why = "a standby ingest: another holds the lease and the upstream, so no data flows here";
        return Response::json(503, &json!({"error": "not_ready", "message": why, "upstream": state}));
    }
    match hub.global.readiness() {
        Ok(()) => Response::json(200, &json!({"status": "ready", "upstream": state})),
        Err(why) => Response::json(503, &json!({"error": "not_ready", "message": why, "upstream": state})),
    }
}

/// `/healthz`: the whole report; 503 when not ready, so a load balancer that
/// only knows this path still stops sending clients to a relay with no data.
pub fn report(hub: &Hub) -> Response {
    let g = &hub.global;
    let up = g.upstream();
    // A standby ingest is healthy, standing by (200, `status: standby`); its
    // `/readyz` keeps clients away.
    let standby = up.state == "standby";
    let readiness = if standby { Ok(()) } else { g.readiness() };
    let body = json!({
        "status": if standby { "standby" } else if readiness.is_ok() { "ok" } else { "not_ready" },
        "not_ready_reason": readiness.as_ref().err(),
        "simulated": g.simulated,
        "replay": g.replay.as_ref().map(|r| r.report()),
        "shards": g.shards,
        "shard": hub.id,
        "clients": g.clients(),
        "connections": g.open_connections(),
        "panics": g.panics(),
        "gaps": g.gaps(),
        "cluster": cluster(g),
        "history": {
            "messages": g.history_size().0,
            "bytes": g.history_size().1,
            "max_bytes": g.history.max_bytes,
            "per_topic": g.history.per_topic,
            "max_age_seconds": g.history.max_age.as_secs(),
        },
        "upstream": {
            "url": g.upstream_url,
            "simulated": g.simulated,
            "state": up.state,
            "since": up.since,
            "messages": g.messages(),
            "malformed": g.malformed(),
            "connects": up.connects,
            "last_error": up.last_error,
            "refused": up.refused,
            "products": up.products,
        },
        "recording": g.recording(),
    });
    Response::json(if readiness.is_ok() { 200 } else { 503 }, &body)
}

/// `/healthz`'s `cluster`: the role, and with NATS what this node sees of it.
fn cluster(g: &crate::hub::Global) -> serde_json::Value {
    let Some(link) = g.cluster() else {
        return json!({"role": "all", "node": g.node.map(|n| n.to_string())});
    };
    let s = link.status();
    let c = &link.counters;
    let n = crate::cluster::Counters::get;
    json!({
        "role": link.role.as_str(),
        "node": link.node,
        "nats": s.nats,
        "lease": s.lease,
        "active_ingest": s.active_ingest,
        "epoch": s.epoch,
        "interest": s.interest,
        "published": n(&c.published),
        "received": n(&c.received),
        "fenced": n(&c.fenced),
        "seeds": n(&c.seeds),
        "gaps": n(&c.gaps),
        "forwarded": {"ok": n(&c.forwarded_ok), "failed": n(&c.forwarded_failed)},
    })
}
