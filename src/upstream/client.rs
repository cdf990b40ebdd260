//! The upstream connection loop: connect, subscribe, read, reconnect.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use futures_lite::io::{split, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::LocalSender;
use glommio::net::TcpStream;
use glommio::timer::sleep;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::{Endpoint, Event, FeedMessage, Shared, State, UpstreamConfig};
use crate::net::BoxIo;
use crate::protocol;
use crate::rate::RateLimit;
use crate::ws::{self, Decoder, Message, Role};

/// Connect, TLS and handshake together must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// (Un)subscribe requests sent per second, sustained, and in a burst. FEED.md
/// ("Limits") gives Coinbase's limits per IP: about 100 client messages a second,
/// and about 8 new connections a second (bursts to 20). Eight requests a second
/// is within either reading, leaves most of the IP's budget to other clients on
/// the host, and with requests of up to `MAX_REQUEST_BYTES` still asks for about
/// 4,000 pairs a second. Kept across reconnects, so a quick reconnect does not
/// start a second burst.
const REQUESTS_PER_SECOND: u32 = 8;

pub(super) struct Client {
    pub cfg: UpstreamConfig,
    pub endpoint: Endpoint,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub shared: Rc<Shared>,
    pub events: LocalSender<Event>,
    /// `--record`: each text message, as it arrives, without waiting.
    pub tap: Option<crate::record::Tap>,
}

/// Why a connection ended, as logged and shown in `/healthz`.
type Ended = String;

/// What [`Client::send_next`] did.
enum Sent {
    /// Sent a request; `first`: none was in flight before it.
    Request { first: bool },
    /// Sent nothing; the next may go at this time (`None`: none is waiting).
    Later(Option<Instant>),
}

impl Client {
    pub async fn run(self) {
        let mut backoff = self.cfg.backoff_initial;
        let mut rng = SmallRng::seed_from_u64(rand::random());
        let mut pacer = RateLimit::new(REQUESTS_PER_SECOND);
        while !self.shared.stop.get() {
            // A standby ingest holds no connection until it takes the lease.
            while self.shared.standby.get() && !self.shared.stop.get() {
                self.shared.set_state(State::Standby);
                self.shared.changed().await;
            }
            if self.shared.stop.get() {
                return;
            }
            let began = Instant::now();
            // A pending glommio connect gains a waker clone on every poll (as accept
            // does: see shard::Shard::run); raced only against this one-shot timer,
            // it is polled a handful of times, never in a loop.
            let reason = match or(self.connect(), timeout(CONNECT_TIMEOUT)).await {
                Ok((io, leftover)) => {
                    self.shared.status.borrow_mut().connects += 1;
                    self.shared.set_state(State::Connected);
                    log::info!(event = "upstream_connected"; "upstream: connected to {}", self.cfg.url);
                    if self.events.send(Event::Connected).await.is_err() {
                        return;
                    }
                    self.session(io, &leftover, &mut pacer).await
                }
                Err(e) => e,
            };
            if self.shared.stop.get() {
                return;
            }
            log::warn!(event = "upstream_disconnected", reason = reason.as_str(); "upstream: {reason}; reconnecting");
            self.shared.status.borrow_mut().last_error = Some(reason.clone());
            self.shared.set_state(State::Reconnecting);
            if self.events.send(Event::Disconnected { reason }).await.is_err() {
                return;
            }
            if began.elapsed() >= self.cfg.healthy_after {
                backoff = self.cfg.backoff_initial;
            }
            let delay = backoff.mul_f64(rng.random_range(0.5..=1.0));
            backoff = (backoff * 2).min(self.cfg.backoff_max);
            let until = Instant::now() + delay;
            while !self.shared.stop.get() && Instant::now() < until {
                sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(100))).await;
            }
        }
    }

    async fn connect(&self) -> Result<(BoxIo, Vec<u8>), Ended> {
        let e = &self.endpoint;
        let tcp = TcpStream::connect_timeout((e.host.as_str(), e.port), CONNECT_TIMEOUT)
            .await
            .map_err(|err| format!("cannot connect to {}:{}: {err}", e.host, e.port))?;
        let _ = tcp.set_nodelay(true);
        let mut io: BoxIo = match &self.tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(e.host.clone())
                    .map_err(|err| format!("bad TLS server name {}: {err}", e.host))?;
                let tls = futures_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await;
                Box::new(tls.map_err(|err| format!("TLS handshake with {} failed: {err}", e.host))?)
            }
            None => Box::new(tcp),
        };
        let (request, key) = ws::client_request(&e.authority(), &e.path);
        io.write_all(&request).await.map_err(|err| format!("handshake write failed: {err}"))?;
        let mut buf = Vec::new();
        loop {
            if let Some(n) = ws::client_response(&buf, &key).map_err(|err| format!("handshake: {err}"))? {
                return Ok((io, buf.split_off(n)));
            }
            let mut chunk = [0u8; 2048];
            let n = io.read(&mut chunk).await.map_err(|err| format!("handshake read failed: {err}"))?;
            if n == 0 {
                return Err("the server closed during the handshake".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Serves one connection until it ends; returns why.
    async fn session(&self, io: BoxIo, leftover: &[u8], pacer: &mut RateLimit) -> Ended {
        self.shared.subs.borrow_mut().reset();
        self.shared.retry_at.set(None);
        self.shared.changed.set(true);
        let (mut rd, mut wr) = split(io);
        let mut dec = Decoder::new(Role::Client, self.cfg.max_message).with_read_size(64 * 1024);
        dec.feed(leftover);
        // Liveness: with products subscribed, heartbeats arrive every second and
        // silence on data for `stall_timeout` is a stall. With none, the feed may be
        // rightly quiet, so a ping after half the timeout checks the connection.
        let stall_timeout = self.cfg.stall_timeout;
        let (mut last_data, mut last_any, mut pinged) = (Instant::now(), Instant::now(), false);
        // A feed that has not listed its products by then is asked for them anyway,
        // before it would be called stalled for want of heartbeats.
        let list_wait = Instant::now() + stall_timeout / 2;
        loop {
            loop {
                match dec.next_message() {
                    Ok(Some(msg)) => {
                        last_any = Instant::now();
                        pinged = false;
                        if matches!(msg, Message::Text(_)) {
                            last_data = last_any;
                        }
                        if let Err(e) = self.on_message(msg, &mut wr).await {
                            return e;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return format!("bad frame from the feed: {e}"),
                }
            }
            if self.shared.retry_at.get().is_some_and(|at| Instant::now() >= at) {
                self.shared.retry_at.set(None);
                self.shared.changed.set(true);
            }
            if self.shared.changed.replace(false) {
                if self.shared.stop.get() || self.shared.standby.get() {
                    let _ = send(&mut wr, OpCode::Control(Control::Close), &ws::frame::close_payload(1000, "")).await;
                    return match self.shared.stop.get() {
                        true => "stopped".into(),
                        false => "this ingest lost the lease (standby)".into(),
                    };
                }
                if let Err(e) = self.plan().await {
                    return e;
                }
            }
            if Instant::now() >= list_wait && self.shared.subs.borrow().holding() {
                log::warn!(event = "upstream_no_product_list";
                    "upstream: no product list within {:?}; subscribing without it", stall_timeout / 2);
                self.shared.subs.borrow_mut().release();
            }
            // One request per turn at most, paced: answers and heartbeats are read
            // between requests, and the stall clock below runs as usual.
            let send_at = match self.send_next(&mut wr, pacer).await {
                Ok(Sent::Request { first }) => {
                    if first {
                        // Its answer is what comes next: the stall clock starts now.
                        last_data = Instant::now();
                    }
                    Some(Instant::now())
                }
                Ok(Sent::Later(at)) => at,
                Err(e) => return e,
            };
            let watching = self.shared.subs.borrow().has_products();
            let now = Instant::now();
            let deadline = if watching { last_data } else { last_any } + stall_timeout;
            if now >= deadline {
                return format!("no message for {stall_timeout:?} (stalled)");
            }
            let ping_at = last_any + stall_timeout / 2;
            if !watching && !pinged && now >= ping_at {
                if let Err(e) = send(&mut wr, OpCode::Control(Control::Ping), b"hedgehog").await {
                    return format!("write failed: {e}");
                }
                pinged = true;
                self.shared.status.borrow_mut().pings += 1;
            }
            let mut wake_at = if !watching && !pinged { ping_at.min(deadline) } else { deadline };
            for at in [self.shared.retry_at.get(), send_at] {
                wake_at = at.map_or(wake_at, |at| wake_at.min(at));
            }
            if self.shared.subs.borrow().holding() {
                wake_at = wake_at.min(list_wait);
            }
            let read = async { Some(dec.read_from(&mut rd).await) };
            let changed = async {
                self.shared.changed().await;
                self.shared.changed.set(true);
                None
            };
            let timer = async {
                sleep(wake_at.saturating_duration_since(now)).await;
                None
            };
            match or(read, or(changed, timer)).await {
                None | Some(Ok(1..)) => {}
                Some(Ok(0)) => return "the feed closed the connection".into(),
                Some(Err(e)) => return format!("read failed: {e}"),
            }
        }
    }

    /// After a change: refuses the desired products the feed does not list (the
    /// owner ends their subscriptions) and plans the requests for the rest. While
    /// a refused request waits for its retry, nothing new is planned.
    async fn plan(&self) -> Result<(), Ended> {
        let unlisted = self.shared.subs.borrow_mut().take_unlisted();
        if let Some(first) = unlisted.first() {
            log::warn!(event = "upstream_unlisted";
                "upstream: {} product(s) the feed does not list, such as {first}, refused here", unlisted.len());
            self.emit(Event::Unlisted(unlisted)).await?;
        }
        if self.shared.retry_at.get().is_none() {
            self.shared.subs.borrow_mut().plan();
        }
        Ok(())
    }

    /// Sends the next queued request if the pace allows it now.
    async fn send_next(&self, wr: &mut WriteHalf<BoxIo>, pacer: &mut RateLimit) -> Result<Sent, Ended> {
        if self.shared.retry_at.get().is_some() || !self.shared.subs.borrow().ready() {
            return Ok(Sent::Later(None));
        }
        if !pacer.allow() {
            // Not sooner than a millisecond: the timer's granularity, and no busy loop.
            return Ok(Sent::Later(Some(Instant::now() + pacer.wait().max(Duration::from_millis(1)))));
        }
        let (request, first) = {
            let mut subs = self.shared.subs.borrow_mut();
            let first = subs.in_flight() == 0;
            (subs.take_request(), first)
        };
        let Some(request) = request else { return Ok(Sent::Later(None)) };
        let text = request.text();
        log::debug!(event = "upstream_send"; "upstream: sending {text}");
        // A feed that does not take a request is as stalled as one that sends nothing.
        let limit = self.cfg.stall_timeout;
        let write = async {
            send(wr, OpCode::Data(Data::Text), text.as_bytes()).await.map_err(|e| format!("write failed: {e}"))
        };
        let stalled = async {
            sleep(limit).await;
            Err(format!("a request not taken within {limit:?} (stalled)"))
        };
        or(write, stalled).await?;
        Ok(Sent::Request { first })
    }

    async fn on_message(&self, msg: Message, wr: &mut WriteHalf<BoxIo>) -> Result<(), Ended> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Ping(p) => {
                return send(wr, OpCode::Control(Control::Pong), &p).await.map_err(|e| format!("write failed: {e}"))
            }
            Message::Pong(_) => return Ok(()),
            Message::Close(c) => {
                let _ = send(wr, OpCode::Control(Control::Close), &ws::frame::close_payload(1000, "")).await;
                return Err(format!("the feed closed the connection: {c:?}"));
            }
            Message::Binary(b) => {
                return self.malformed(&format!("a binary frame of {} bytes", b.len())).await;
            }
        };
        let message = FeedMessage::new(&text);
        if let Some(tap) = &self.tap {
            // Every text message, junk included; a feed message shares its frame's bytes.
            let at = crate::clock::now_micros();
            match &message {
                Some(m) => tap.record(at, m.frame.clone(), m.frame.len() - m.body().len()),
                None => tap.record(at, text.as_slice().into(), 0),
            }
        }
        let Some(message) = message else {
            return self.malformed(&format!("{:.80}", String::from_utf8_lossy(&text))).await;
        };
        let event = match message.kind() {
            // The server's answer to the oldest request: kept here, where it
            // decides the next requests; the owner has no use for it.
            "subscriptions" => match super::parse_subscriptions(&text) {
                Some(set) => {
                    self.shared.subs.borrow_mut().ack(set);
                    self.shared.retry_backoff.set(self.cfg.backoff_initial);
                    self.shared.changed.set(true);
                    return Ok(());
                }
                None => return self.malformed("a subscriptions message without channels").await,
            },
            "error" => self.error_event(&text),
            "status" => {
                if let Some(products) = crate::protocol::listed_products(&text) {
                    self.shared.subs.borrow_mut().list(products.iter().map(|p| p.id.clone()));
                    self.shared.changed.set(true);
                    self.emit(Event::Products(products)).await?;
                }
                Event::Message(message)
            }
            _ => Event::Message(message),
        };
        self.emit(event).await
    }

    fn error_event(&self, text: &[u8]) -> Event {
        let v: serde_json::Value = serde_json::from_slice(text).unwrap_or_default();
        let field = |k: &str| v.get(k).and_then(|m| m.as_str()).unwrap_or("").to_string();
        let (message, reason) = (field("message"), field("reason"));
        let product = protocol::product_of_error(&reason).map(str::to_string);
        match &product {
            Some(p) => {
                // Left out of the requests still queued, too.
                self.shared.subs.borrow_mut().reject(p);
                self.shared.changed.set(true);
            }
            // A request refused as a whole: ask again after a backoff. Refusals of
            // the other requests in flight with it wait for the same retry.
            None if message.starts_with("Failed to") => {
                self.shared.subs.borrow_mut().refused();
                if self.shared.retry_at.get().is_none() {
                    let delay = self.shared.retry_backoff.get();
                    self.shared.retry_backoff.set((delay * 2).min(self.cfg.backoff_max));
                    self.shared.retry_at.set(Some(Instant::now() + delay));
                    log::warn!(event = "upstream_refused";
                        "upstream refused a request ({message}: {reason}); asking again in {delay:?}");
                }
                let mut status = self.shared.status.borrow_mut();
                status.refused += 1;
                status.last_error = Some(format!("{message}: {reason}"));
            }
            None => {}
        }
        log::warn!(event = "upstream_error"; "upstream error: {message}: {reason}");
        Event::Error { message, reason, product }
    }

    async fn emit(&self, e: Event) -> Result<(), Ended> {
        self.events.send(e).await.map_err(|_| "the owner is gone".to_string())
    }

    /// Counts a message that is skipped, and tells the owner the new total.
    async fn malformed(&self, what: &str) -> Result<(), Ended> {
        let n = {
            let mut s = self.shared.status.borrow_mut();
            s.malformed += 1;
            s.malformed
        };
        if n.is_power_of_two() {
            log::warn!(event = "upstream_malformed"; "upstream: ignored malformed message #{n}: {what}");
        }
        self.emit(Event::Malformed { total: n }).await
    }
}

async fn send(wr: &mut WriteHalf<BoxIo>, op: OpCode, payload: &[u8]) -> std::io::Result<()> {
    let frame = ws::frame::encode(op, payload, Some(rand::random()));
    wr.write_all(&frame).await?;
    wr.flush().await
}

async fn timeout<T>(d: Duration) -> Result<T, Ended> {
    sleep(d).await;
    Err(format!("no connection within {d:?}"))
}
