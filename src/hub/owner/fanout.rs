//! Shard 0's dispatch loop: each upstream event, in order, becomes messages to
//! the shards that want it (this one included, through [`Hub::send_to`]).

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::local_channel::LocalReceiver;

use super::{Gap, LateJoin, Owner, REMOTE};
use crate::hub::{Hub, ShardMsg};
use crate::protocol::{self, Channel, Topic};
use crate::upstream::{Event, State};
use crate::ws::frame;

/// Runs until the upstream client ends.
pub async fn run(hub: Rc<Hub>, events: LocalReceiver<Event>) {
    while let Some(event) = events.recv().await {
        let Some(owner) = hub.owner() else { return };
        // Room first, for every shard: from here on nothing waits, so the feed
        // state and the fan-out move in one step and a join sees both or neither.
        // This is where a slow shard slows the upstream reader (the backlog then
        // waits in the upstream socket) rather than losing its clients' data.
        hub.room_for_all().await;
        // An ingest's message may go to NATS too: room there first, for as long
        // as a second (past it, NATS is stuck: the message is not published,
        // and the edges see the gap in its subject's numbers).
        if let (Some(ingest), Event::Message(_)) = (owner.ingest(), &event) {
            let room = async { ingest.queue().reserve().await.is_ok() };
            let timeout = async {
                glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
                false
            };
            futures_lite::future::or(room, timeout).await;
        }
        dispatch(&hub, owner, event);
    }
}

fn dispatch(hub: &Hub, owner: &Owner, event: Event) {
    match event {
        Event::Message(msg) => {
            hub.global.count_message();
            let Some(channel) = Channel::of_message(msg.kind()) else { return };
            hub.count_upstream(&msg, channel);
            let Some(product) = msg.product() else { return };
            // Only a heartbeat needs it (its last trade id is checked against the
            // matches seen only while matches are subscribed). Not on an edge:
            // its heartbeats and matches come by separate NATS subscriptions,
            // whose order between them is not kept (the ingest checks).
            let watching_trades = msg.kind() == "heartbeat"
                && !owner.is_edge()
                && !owner.shards_for(product, Channel::Matches).is_empty();
            let gap = {
                let mut feed = owner.feed.borrow_mut();
                let gap = feed.on_message(&msg, channel, watching_trades, crate::clock::now_micros());
                hub.global.set_history(feed.history_messages(), feed.history_bytes());
                gap
            };
            for shard in owner.shards_for(product, channel).iter() {
                match shard {
                    REMOTE => owner.publish(&msg, product, channel),
                    shard => hub.send_to(shard, ShardMsg::Feed { msg: msg.clone(), channel }),
                }
            }
            if let Some(gap) = gap {
                on_gap(hub, owner, gap);
            }
        }
        Event::Error { message, reason, product: Some(product) } => refuse(hub, owner, &product, &message, &reason),
        // Refused here, as the feed would refuse them, without asking it.
        Event::Unlisted(products) => {
            let failure = protocol::RequestKind::Subscribe.failure();
            for product in products {
                refuse(hub, owner, &product, failure, &protocol::invalid_product(&product));
            }
        }
        // A request refused as a whole: the client asks again after a backoff.
        Event::Error { message, reason, product: None } => {
            let why = format!("the feed refused a request ({message}: {reason}); asking again");
            announce(hub, owner, owner.upstream.status().state, Some(&why))
        }
        Event::Products(list) => {
            let known: Arc<HashSet<String>> = Arc::new(list.iter().map(|p| p.id.clone()).collect());
            hub.global.set_upstream(|u| u.products = known.len());
            hub.global.set_products(list);
            for shard in 0..hub.global.shards {
                hub.send_to(shard, ShardMsg::Products(known.clone()));
            }
        }
        Event::Malformed { total } => hub.global.set_malformed(total),
        Event::Connected => announce(hub, owner, State::Connected, None),
        Event::Seed { product, channel, first, history } => {
            let topic = Topic::new(product, channel);
            // A topic seeded again while followed (its NATS subject had a
            // hole): trades it missed are a gap its subscribers hear of, as on
            // one process (the ingest already asked the feed afresh if need be).
            let before =
                (channel == Channel::Matches).then(|| owner.feed.borrow().last_trade(&topic.product)).flatten();
            let now = first.iter().filter(|m| m.kind() == "last_match").find_map(|m| m.trade_id);
            if let (Some(before), Some(now)) = (before, now) {
                if now > before + 1 {
                    log::warn!(event = "upstream_gap", product = topic.product.as_str();
                        "gap on {}: seeded afresh at trade {now}, after {before}", topic.product);
                    tell_gap(hub, owner, &Gap { product: topic.product.clone(), expected: before + 1, received: now });
                }
            }
            let late = owner.seed(&topic, &history, &first);
            // Its subscribers here hear the first messages, as after a reconnect.
            for msg in first {
                for shard in owner.shards_for(&topic.product, channel).iter().filter(|&s| s != REMOTE) {
                    hub.send_to(shard, ShardMsg::Feed { msg: msg.clone(), channel });
                }
            }
            answer_late(hub, &topic, late);
        }
        Event::Disconnected { reason } => {
            hub.count_reconnect(&reason);
            // A new connection starts every book and trade count afresh.
            owner.feed.borrow_mut().forget_all();
            owner.unready_all();
            // A standby ingest's upstream closed because another took the lease.
            let state = if owner.upstream.is_standby() { State::Standby } else { State::Reconnecting };
            announce(hub, owner, state, Some(&reason))
        }
    }
}

/// `product` is refused (by the feed, or here because the feed does not list it):
/// its subscribers, on every shard, get the Coinbase `error` and their
/// subscriptions to it end.
fn refuse(hub: &Hub, owner: &Owner, product: &str, message: &str, reason: &str) {
    let frame = frame::text(protocol::error_message(message, reason).as_bytes());
    for shard in owner.shards_for_product(product).iter().filter(|&s| s != REMOTE) {
        hub.send_to(shard, ShardMsg::ProductError { product: product.to_string(), frame: frame.clone() });
    }
    // An edge's joins waiting on it are answered with nothing, after the error.
    for (topic, client) in owner.drop_pending(product) {
        hub.send_to(client.shard, ShardMsg::Joined { topic, client, frames: Vec::new() });
    }
}

/// Joins an edge answered once their topic was seeded.
fn answer_late(hub: &Hub, topic: &Topic, late: Vec<LateJoin>) {
    for (client, frames) in late {
        hub.send_to(client.shard, ShardMsg::Joined { topic: topic.clone(), client, frames });
    }
}

/// Trades went missing on one product: resubscribe that product alone (its book
/// and trade count start again from the fresh snapshot and `last_match`), tell
/// its subscribers, count it.
fn on_gap(hub: &Hub, owner: &Owner, gap: Gap) {
    log::warn!(event = "upstream_gap", product = gap.product.as_str();
        "gap on {}: expected trade {}, got {}; resubscribing it", gap.product, gap.expected, gap.received);
    owner.upstream.resubscribe(&gap.product);
    tell_gap(hub, owner, &gap);
}

/// Counts a gap and tells the product's subscribers.
fn tell_gap(hub: &Hub, owner: &Owner, gap: &Gap) {
    hub.global.count_gap();
    let frame = frame::text(protocol::notes::gap(&gap.product, gap.expected, gap.received).as_bytes());
    for shard in owner.shards_for_product(&gap.product).iter().filter(|&s| s != REMOTE) {
        hub.send_to(shard, ShardMsg::ProductNote { product: gap.product.clone(), frame: frame.clone() });
    }
}

/// Tells every subscribed client (all shards) the upstream's state and why it
/// changed, and records it for `/healthz`. `state` is the one the event brought,
/// not the upstream's state now: the dispatcher may take an event late (while a
/// slow shard holds it up), and the client may have reconnected since.
fn announce(hub: &Hub, owner: &Owner, state: State, reason: Option<&str>) {
    let s = owner.upstream.status();
    // Subscribers hear of it: data may pause (and later resume) for a reason.
    let frame = frame::text(protocol::notes::upstream(state.as_str(), reason).as_bytes());
    for shard in 0..hub.global.shards {
        hub.send_to(shard, ShardMsg::Upstream(frame.clone()));
    }
    hub.global.set_upstream(|u| {
        if u.state != state.as_str() {
            u.changed_at = Some(std::time::Instant::now());
        }
        u.state = state.as_str();
        u.since =
            crate::clock::format_iso(s.since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64));
        u.connects = s.connects;
        u.refused = s.refused;
        u.last_error = s.last_error.clone();
    });
}
