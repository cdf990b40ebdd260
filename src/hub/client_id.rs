//! Client ids: the owning shard, the slot in that shard's table, and 128 random
//! bits, so an id is unguessable and any shard can route to its owner.

use std::fmt;

/// A parsed client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId {
    pub shard: usize,
    /// The key of the client's slot in its shard's table (generation-tagged).
    pub slot: usize,
    pub token: u128,
}

impl ClientId {
    /// A fresh id for `slot` on `shard`, with a token from the OS-seeded CSPRNG.
    pub fn new(shard: usize, slot: usize) -> ClientId {
        ClientId { shard, slot, token: rand::random() }
    }

    /// Reads `S-K-T` (hex). `None` for anything else.
    pub fn parse(s: &str) -> Option<ClientId> {
        let mut parts = s.trim().splitn(3, '-');
        let shard = usize::from_str_radix(parts.next()?, 16).ok()?;
        let slot = usize::from_str_radix(parts.next()?, 16).ok()?;
        let token = parts.next()?;
        if token.len() != 32 {
            return None;
        }
        Some(ClientId { shard, slot, token: u128::from_str_radix(token, 16).ok()? })
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{:x}-{:032x}", self.shard, self.slot, self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_shard() {
        let id = ClientId::new(3, 0x4000_0001);
        let text = id.to_string();
        assert!(text.starts_with("3-40000001-"), "{text}");
        assert_eq!(ClientId::parse(&text), Some(id));
        assert_ne!(ClientId::new(3, 1).token, ClientId::new(3, 1).token);
    }

    #[test]
    fn refuses_malformed_ids() {
        for bad in ["", "abc", "1-2", "1-2-xyz", "1-2-00", "g-1-00000000000000000000000000000000"] {
            assert_eq!(ClientId::parse(bad), None, "{bad}");
        }
    }
}
