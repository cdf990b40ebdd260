//! What access control asks of the hub beyond the checks in `Hub::apply`: every
//! connected client, on every shard (`GET /api/v1/clients`; disconnecting one
//! is an `Op::Disconnect`, run on its shard like any operation on a client),
//! and a client's principal taken from a key in its in-band subscribe.

use std::collections::{BTreeMap, BTreeSet};

use super::{Answer, Ask, ClientId, Hub, HubError, REPLY_DEADLINE};
use crate::access::Principal;
use crate::protocol::Channel;

/// One connected client, as an admin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    pub id: ClientId,
    /// Its principal and class (`None`: access control off).
    pub principal: Option<(String, String)>,
    pub subscriptions: BTreeMap<String, BTreeSet<Channel>>,
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
            })
            .collect()
    }
}
