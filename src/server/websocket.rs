//! WebSocket connections: the upgrade, the relay's client sessions (with
//! Coinbase's in-band `subscribe`/`unsubscribe`), and the `/echo` test endpoint.

use std::rc::Rc;

use futures_lite::AsyncWriteExt;

use super::auth;
use super::conn::{close_after, Handoff, SHARD_HEADER};
use super::task::contained;
use crate::access::{Credential, KEY_PREFIX};
use crate::http::Request;
use crate::hub::{ClientId, ClientKind, Hub, Op, Seat};
use crate::metrics::Entry;
use crate::protocol::{self, Channel, RequestKind};
use crate::rate::RateLimit;
use crate::ws::{self, close, Outbox};

/// Answers an upgrade request: the handshake, or the error and a close. With
/// access control on, the session takes a seat of its principal's class first.
pub(super) async fn upgrade(conn: Handoff, req: &Request, pre: Option<Op>) {
    // `?mode=coinbase`: Coinbase's messages only, for clients that expect nothing else.
    let pure = req.query_param("mode").as_deref() == Some("coinbase");
    let seat = match auth::seat(&conn.hub.global, conn.who.as_ref()) {
        Ok(seat) => seat,
        Err(e) => return Box::pin(close_after(conn.stream, &e.response(), conn.hub.id)).await,
    };
    match ws::accept(req) {
        Ok(handshake) => {
            let handshake = handshake_with_shard(handshake, conn.hub.id);
            websocket(conn, handshake, Start { pre, pure, seat }).await
        }
        Err(resp) => {
            let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
            let reason = body["message"].as_str().unwrap_or("refused");
            super::conn::log_turned_away(&conn.stream, log::Level::Info, "handshake_failed", reason);
            Box::pin(close_after(conn.stream, &resp, conn.hub.id)).await
        }
    }
}

/// The 101 answer with the shard header added before its blank line.
pub(super) fn handshake_with_shard(mut handshake: Vec<u8>, shard: usize) -> Vec<u8> {
    let at = handshake.len().saturating_sub(2);
    let header = format!("{SHARD_HEADER}: {shard}\r\n");
    handshake.splice(at..at, header.bytes());
    handshake
}

/// How a WebSocket client starts.
struct Start {
    /// Already subscribed to a pair (`GET /api/v1/subscribe/{pair}` with an upgrade).
    pre: Option<Op>,
    /// Coinbase's messages only (`?mode=coinbase`).
    pure: bool,
    /// Its place in its principal's and class's counts (access control on).
    seat: Option<Seat>,
}

/// A WebSocket client, optionally already subscribed to a pair. Only what the
/// session needs is kept: this future lives as long as the connection.
async fn websocket(conn: Handoff, handshake: Vec<u8>, start: Start) {
    let Handoff { mut stream, leftover, hub, queues, slot, who } = conn;
    let Start { pre, pure, seat } = start;
    if stream.write_all(&handshake).await.is_err() {
        return;
    }
    drop(handshake);
    let outbox = hub.new_outbox();
    let kind = if pure { ClientKind::Pure } else { ClientKind::WebSocket };
    let Some(id) = hub.register(outbox.clone(), kind, who.clone(), stream.peer_addr().ok()) else {
        outbox.close(close::INTERNAL, "no room for another client");
        let _ = ws::write_loop(&outbox, &mut stream).await;
        return;
    };
    if !pure {
        let _ = outbox.push(ws::frame::text(protocol::notes::welcome(&id.to_string()).as_bytes()));
    }
    // The session gets a task of its own, holding only what it needs; this
    // connection's HTTP task ends here and its memory is freed. From here to
    // `unregister`, a panic ends this session only, and the client is still
    // unregistered.
    //
    // The served part is boxed before the task's own future is made, so the
    // stream and the session state are stored once, not once per layer of
    // async block (an idle connection's memory is mostly this).
    let rate = RateLimit::new(auth::request_rate(&hub.global, who.as_ref()));
    let session = Session { hub: hub.clone(), id, pre, rate, seat };
    let served = Box::pin(ws::run_session(stream, leftover, outbox.clone(), hub.global.limits, session));
    let session = async move {
        contained(&hub.global, "a WebSocket session", served).await;
        super::task::log_slow_consumer(&outbox, id);
        hub.unregister(id);
        drop(slot);
    };
    // Spawning fails only when the executor is going away; the client goes with it.
    if let Ok(task) = glommio::spawn_local_into(session, queues.sessions) {
        task.detach();
    }
}

/// A relay client's session: Coinbase `subscribe` and `unsubscribe` messages on
/// the WebSocket itself, answered as Coinbase answers them. They change the same
/// subscriptions as the REST API.
struct Session {
    hub: Rc<Hub>,
    id: ClientId,
    /// A subscription to make before anything is read (a pre-subscribed stream).
    pre: Option<Op>,
    rate: RateLimit,
    /// Its place in its principal's and class's counts (access control on).
    seat: Option<Seat>,
}

impl ws::Handler for Session {
    async fn on_start(&mut self) {
        if let Some(op) = self.pre.take() {
            let _ = Box::pin(self.hub.execute(self.id, op)).await;
        }
    }

    fn on_ping(&mut self, outbox: &Outbox) -> bool {
        let allowed = self.rate.allow();
        if !allowed {
            let _ = outbox.push(ws::frame::text(
                protocol::error_message("rate limited", "too many messages per second; slow down").as_bytes(),
            ));
        }
        allowed
    }

    async fn on_text(&mut self, text: Vec<u8>, outbox: &Outbox) {
        // Boxed: a session's task is as big as its largest state for as long as the
        // connection lives, and most clients never send a message.
        Box::pin(self.handle(text, outbox)).await
    }
}

impl Session {
    async fn handle(&mut self, text: Vec<u8>, outbox: &Outbox) {
        let send = |text: &str| {
            let _ = outbox.push(ws::frame::text(text.as_bytes()));
        };
        if !self.rate.allow() {
            return send(&protocol::error_message("rate limited", "too many messages per second; slow down"));
        }
        if let Some(auth) = protocol::parse_auth(&text) {
            let refreshed = auth.and_then(|token| {
                self.refresh(&token, outbox).map_err(|reason| protocol::error_message(protocol::AUTH_FAILED, &reason))
            });
            return refreshed.unwrap_or_else(|error| send(&error));
        }
        let req = match protocol::parse_request(&text) {
            Ok(req) => req,
            Err(error) => return send(&error),
        };
        let subscribe = req.kind == RequestKind::Subscribe;
        if let (true, Some(key)) = (subscribe, req.key.as_deref()) {
            if let Err(reason) = self.adopt(key) {
                return send(&protocol::error_message(req.kind.failure(), &reason));
            }
        }
        // Products are checked on a subscribe only: unsubscribing from one that is
        // not held (or does not exist) changes nothing, as on Coinbase.
        let mut classified = req.classify(Channel::is_relayed, |p| !subscribe || self.hub.is_product(p));
        for error in &classified.errors {
            send(error);
        }
        // Who the client is now (a reload or a fresh token may have changed it).
        if let (true, Some(who)) = (subscribe, self.hub.principal_of(self.id)) {
            for denied in who.allowed_only(&mut classified.channels) {
                auth::log_denied(&self.hub.global, &denied);
                send(&protocol::error_message(req.kind.failure(), &denied.to_string()));
            }
        }
        self.hub.count_operation(Entry::InBand, subscribe);
        let op = Op::Coinbase { subscribe, channels: classified.channels };
        if let Err(e) = self.hub.execute(self.id, op).await {
            send(&protocol::error_message(req.kind.failure(), &e.to_string()));
        }
    }

    /// A credential in a subscribe's `key` field, as Coinbase clients send theirs
    /// (access control on; a key of another shape, such as Coinbase's own, is
    /// not hedgehog's and is ignored): the session becomes that principal's,
    /// with its seat and rate, if it holds no subscription yet. `Err`: the
    /// reason for Coinbase's `error` message; nothing else of the request is done.
    fn adopt(&mut self, key: &str) -> Result<(), String> {
        let Some(access) = self.hub.global.access() else { return Ok(()) };
        if !key.starts_with(KEY_PREFIX) && key.split('.').count() != 3 {
            return Ok(());
        }
        let global = &self.hub.global;
        let p = access.authenticate(Credential::Bearer(key)).map_err(|e| {
            auth::log_refusal(global, "-", "-", "to authenticate in-band", &e.to_string());
            e.to_string()
        })?;
        let who = self.hub.principal_of(self.id);
        if who.is_some_and(|w| (w.name(), w.class().name()) == (p.name(), p.class().name())) {
            return Ok(());
        }
        let seat = auth::seat(global, Some(&p)).map_err(|e| e.message)?;
        if !self.hub.adopt_principal(self.id, p.clone()) {
            return Err("a key comes with the first subscribe, before any subscription".into());
        }
        self.rate.set_rate(auth::request_rate(global, Some(&p)));
        self.seat = seat;
        Ok(())
    }

    /// An in-band `{"type":"auth","token":...}`: a fresh token (or a key) of the
    /// session's own principal and class, so that it outlives its first token.
    /// The session's subscriptions the new token does not allow (its `allow`
    /// may differ) end with a note, after the `auth` acceptance. `Err`: the
    /// reason for Coinbase's `error` message (nothing changed, and the old
    /// token's expiry still stands).
    fn refresh(&mut self, token: &str, outbox: &Outbox) -> Result<(), String> {
        let global = &self.hub.global;
        let Some(access) = global.access() else {
            return Err("access control is off: there is nothing to authenticate".into());
        };
        let Some(current) = self.hub.principal_of(self.id) else {
            return Err("this session has no principal".into());
        };
        let p = access.authenticate(Credential::Bearer(token)).map_err(|e| {
            auth::log_refusal(
                global,
                current.name(),
                current.class().name(),
                "to authenticate in-band",
                &e.to_string(),
            );
            e.to_string()
        })?;
        if (p.name(), p.class().name()) != (current.name(), current.class().name()) {
            let why = format!(
                "the credential is `{}`'s of class `{}`; this session is `{}`'s of class `{}` (reconnect to change)",
                p.name(),
                p.class().name(),
                current.name(),
                current.class().name()
            );
            auth::log_refusal(global, current.name(), current.class().name(), "to authenticate in-band", &why);
            return Err(why);
        }
        let expires = p.expires().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
        let accepted = protocol::notes::auth_accepted(p.name(), p.class().name(), expires);
        let _ = outbox.push(ws::frame::text(accepted.as_bytes()));
        self.hub.replace_principal(self.id, p);
        Ok(())
    }
}

/// `GET /echo` (only with `--echo`): a WebSocket that sends back every message it
/// gets, so a conformance suite can drive hedgehog's WebSocket implementation.
/// It has the relay's limits and outbox, but no client id and no subscriptions.
pub(super) async fn echo(conn: Handoff, req: &Request) {
    let Handoff { mut stream, leftover, hub, queues, slot, .. } = conn;
    let handshake = match ws::accept(req) {
        Ok(h) => handshake_with_shard(h, hub.id),
        Err(resp) => return close_after(stream, &resp, hub.id).await,
    };
    if stream.write_all(&handshake).await.is_err() {
        return;
    }
    let outbox = hub.new_outbox();
    let session = async move {
        contained(&hub.global, "an echo session", ws::run_session(stream, leftover, outbox, hub.global.limits, Echo))
            .await;
        drop(slot);
    };
    if let Ok(task) = glommio::spawn_local_into(session, queues.sessions) {
        task.detach();
    }
}

struct Echo;

/// What a debug build's echo endpoint panics on.
#[cfg(debug_assertions)]
const PANIC_REQUEST: &[u8] = b"hedgehog test: panic here";
/// What makes a debug build's echo endpoint panic outside any connection's
/// containment, ending its shard's thread (tests/fail_fast.rs).
#[cfg(debug_assertions)]
const PANIC_SHARD_REQUEST: &[u8] = b"hedgehog test: panic the shard";
/// What makes a debug build's echo endpoint block its shard's thread, so that
/// the shard answers nothing and cannot stop (tests/fail_fast.rs).
#[cfg(debug_assertions)]
const WEDGE_SHARD_REQUEST: &[u8] = b"hedgehog test: wedge the shard";
/// What makes a debug build's echo endpoint block its shard's thread for 3 s,
/// so that the bus towards it backs up (tests/bus.rs).
#[cfg(debug_assertions)]
const STALL_SHARD_REQUEST: &[u8] = b"hedgehog test: stall the shard";

impl ws::Handler for Echo {
    async fn on_text(&mut self, text: Vec<u8>, outbox: &Outbox) {
        // A debug build's echo endpoint fails on request, so the tests can show
        // that a panic ends one connection and not its shard (tests/panics.rs),
        // and that a shard that dies or hangs ends the process (tests/fail_fast.rs).
        #[cfg(debug_assertions)]
        #[allow(clippy::panic)]
        {
            if text == PANIC_REQUEST {
                panic!("the echo endpoint was asked to panic");
            }
            if text == PANIC_SHARD_REQUEST {
                // glommio runs a new task at once, inside this one: it panics
                // after its first turn, from the executor itself.
                let shard = async {
                    futures_lite::future::yield_now().await;
                    panic!("the echo endpoint was asked to panic its shard")
                };
                glommio::spawn_local(shard).detach();
            }
            if text == WEDGE_SHARD_REQUEST {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
            if text == STALL_SHARD_REQUEST {
                std::thread::sleep(std::time::Duration::from_secs(3));
            }
        }
        let _ = outbox.push(ws::frame::text(&text));
    }

    async fn on_binary(&mut self, data: Vec<u8>, outbox: &Outbox) {
        let _ = outbox.push(ws::frame::binary(&data));
    }
}
