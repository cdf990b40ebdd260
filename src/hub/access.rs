//! What access control asks of the hub beyond the checks in `Hub::apply`: every
//! connected client, on every shard (`GET /api/v1/clients`; disconnecting one
//! is an `Op::Disconnect`, run on its shard like any operation on a client);
//! a client's principal taken from a key in its in-band subscribe, or replaced
//! by a fresh token; and each shard's watch over its open sessions
//! ([`Hub::watch_access`]): rules reloaded, tokens expiring.
//!
//! Access is decided when a subscription is made. What can change it later is
//! done here, on the client's own shard, between two messages of the feed: a
//! subscription the new rules deny is left like any unsubscribe, with a note
//! saying why, so a client never gets data its rules no longer allow past the
//! moment the shard looked (at most [`ACCESS_SWEEP`] after a reload).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Answer, Ask, ClientId, Hub, HubError, REPLY_DEADLINE};
use crate::access::{Access, Principal};
use crate::protocol::{self, Channel};
use crate::ws::{close, frame};

/// How often each shard looks for new rules and for tokens about to expire: a
/// session is closed at most this long after its token's `exp`.
pub const ACCESS_SWEEP: Duration = Duration::from_millis(500);

/// How long before its token expires a session is told so (at once, if it
/// connected with less than this left).
pub const EXPIRY_NOTICE: Duration = Duration::from_secs(30);

/// The close of a session whose token expired (1008, policy violation).
pub const TOKEN_EXPIRED: (u16, &str) = (close::POLICY, "token expired");

/// One connected client, as an admin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    pub id: ClientId,
    /// Its principal and class (`None`: access control off).
    pub principal: Option<(String, String)>,
    pub subscriptions: BTreeMap<String, BTreeSet<Channel>>,
    /// Its address.
    pub peer: Option<std::net::SocketAddr>,
    /// Bytes queued for it, not yet written.
    pub queued_bytes: usize,
}

impl Hub {
    /// Every connected client, shard by shard; a shard that does not answer
    /// within [`REPLY_DEADLINE`] makes it [`HubError::ShardUnavailable`].
    pub async fn all_clients(&self) -> Result<Vec<ClientView>, HubError> {
        let mut all = self.client_views();
        for shard in (0..self.global.shards).filter(|s| *s != self.id) {
            match self.request(shard, Ask::Clients, REPLY_DEADLINE).await? {
                Answer::Clients(views) => all.extend(views),
                _ => return Err(super::unavailable(shard, REPLY_DEADLINE)),
            }
        }
        all.sort_by_key(|v| (v.id.shard, v.id.slot));
        Ok(all)
    }

    /// Makes local client `id` principal `p`'s (a key in its in-band subscribe):
    /// only while it holds no subscription, which another principal's rules allowed.
    pub fn adopt_principal(&self, id: ClientId, p: Principal) -> bool {
        let Some(client) = self.clients.get(id.slot).filter(|c| c.id == id) else { return false };
        if !client.subs.borrow().is_empty() {
            return false;
        }
        *client.principal.borrow_mut() = Some(p);
        true
    }

    /// Client `id`'s principal (`None`: access control off, or no such client).
    pub fn principal_of(&self, id: ClientId) -> Option<Principal> {
        self.clients.get(id.slot).filter(|c| c.id == id).and_then(|c| c.principal.borrow().clone())
    }

    /// Makes `p` local client `id`'s principal (a reload of the rules, or a
    /// fresh token in-band). Each of its subscriptions that `p` may not have
    /// ends, with an `unsubscribed` note naming the rule (Coinbase's `error`
    /// in pure mode), and is left as by an unsubscribe; a stream left with
    /// nothing ends. Returns how many (product, channel) ended.
    pub fn replace_principal(&self, id: ClientId, p: Principal) -> usize {
        let Some(client) = self.clients.get(id.slot).filter(|c| c.id == id) else { return 0 };
        let mut withdrawn: Vec<(String, Vec<Channel>, String)> = Vec::new();
        for (product, channels) in client.subs.borrow().by_product() {
            let mut denied = channels.iter().filter_map(|&c| p.may_subscribe(product, c).err().map(|r| (c, r)));
            let Some((channel, refusal)) = denied.next() else { continue };
            let reason = p.denied(format!("{product} {channel}"), refusal);
            self.global.log_refusal(&reason.principal, &reason.class, &reason.what, &reason.refusal.to_string());
            let mut channels = vec![channel];
            channels.extend(denied.map(|(c, _)| c));
            withdrawn.push((product.clone(), channels, reason.to_string()));
        }
        if p.expires() != client.principal.borrow().as_ref().and_then(Principal::expires) {
            client.warned.set(None);
        }
        *client.principal.borrow_mut() = Some(p);
        let mut changes = Vec::new();
        let ended = withdrawn.iter().map(|(_, channels, _)| channels.len()).sum();
        for (product, channels, reason) in withdrawn {
            let (left, lost) = client.subs.borrow_mut().unsubscribe(&product, Some(&channels));
            changes.extend(lost);
            let note = match client.pure {
                true => protocol::error_message("Subscription ended", &reason),
                false => protocol::notes::subscription_withdrawn(&id.to_string(), &product, &left, &reason),
            };
            let _ = client.outbox.push(frame::text(note.as_bytes()));
        }
        if client.stream && ended > 0 && client.subs.borrow().is_empty() {
            client.outbox.close(close::POLICY, "the access rules no longer allow this stream");
        }
        drop(client);
        self.carry_out(changes, id, None);
        ended
    }

    /// Every [`ACCESS_SWEEP`], for ever (a task of its own on each shard):
    /// carries the open sessions over to rules reloaded since the last look,
    /// warns sessions whose token expires within [`EXPIRY_NOTICE`], and closes
    /// those whose token has expired ([`TOKEN_EXPIRED`]).
    pub async fn watch_access(&self) {
        let mut applied = self.global.access_generation();
        loop {
            glommio::timer::sleep(ACCESS_SWEEP).await;
            let Some(rules) = self.global.access() else { continue };
            let generation = self.global.access_generation();
            if generation != applied {
                applied = generation;
                self.carry_over(&rules);
            }
            self.expire_tokens(SystemTime::now());
        }
    }

    /// The local clients' ids.
    fn local_ids(&self) -> Vec<ClientId> {
        let slots: Vec<usize> = self.outboxes.borrow().keys().copied().collect();
        slots.into_iter().filter_map(|slot| self.clients.get(slot).map(|c| c.id)).collect()
    }

    /// Each local session, under `rules`: its principal as they have it, or
    /// closed (1008) when they have no place for it (its key or class removed).
    fn carry_over(&self, rules: &Access) {
        for id in self.local_ids() {
            let Some(old) = self.principal_of(id) else { continue };
            let again = rules.reauthenticate(&old).and_then(|p| match (p.name(), p.class().name()) {
                // Its seat counts it under its principal and class: a key that
                // now names others must connect again, into the new counts.
                (name, class) if (name, class) != (old.name(), old.class().name()) => {
                    Err(format!("its key now belongs to `{name}` of class `{class}`; connect again"))
                }
                _ => Ok(p),
            });
            match again {
                Ok(p) => drop(self.replace_principal(id, p)),
                Err(why) => {
                    self.global.log_refusal(old.name(), old.class().name(), "its open session", &why);
                    if let Some(c) = self.clients.get(id.slot).filter(|c| c.id == id) {
                        c.outbox.close(close::POLICY, &format!("access withdrawn: {why}"));
                    }
                }
            }
        }
    }

    /// Warns, once per expiry, each local session whose token expires within
    /// [`EXPIRY_NOTICE`] of `now`, and closes those whose token has expired.
    fn expire_tokens(&self, now: SystemTime) {
        for id in self.local_ids() {
            let Some(client) = self.clients.get(id.slot) else { continue };
            let Some((name, expires)) =
                client.principal.borrow().as_ref().and_then(|p| Some((p.name().to_string(), p.expires()?)))
            else {
                continue;
            };
            let secs = expires.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            match expires.duration_since(now) {
                Err(_) | Ok(Duration::ZERO) => client.outbox.close(TOKEN_EXPIRED.0, TOKEN_EXPIRED.1),
                Ok(left) if left <= EXPIRY_NOTICE && client.warned.get() != Some(secs) => {
                    client.warned.set(Some(secs));
                    if !client.pure {
                        let _ =
                            client.outbox.push(frame::text(protocol::notes::token_expiring(&name, secs).as_bytes()));
                    }
                }
                Ok(_) => {}
            }
        }
    }

    /// This shard's clients.
    pub(super) fn client_views(&self) -> Vec<ClientView> {
        let slots: Vec<usize> = self.outboxes.borrow().keys().copied().collect();
        slots
            .into_iter()
            .filter_map(|slot| self.clients.get(slot))
            .map(|c| ClientView {
                id: c.id,
                principal: c.principal.borrow().as_ref().map(|p| (p.name().to_string(), p.class().name().to_string())),
                subscriptions: c.subs.borrow().by_product().clone(),
                peer: c.peer,
                queued_bytes: c.outbox.queued_bytes(),
            })
            .collect()
    }
}
