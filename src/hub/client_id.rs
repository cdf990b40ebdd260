//! Client ids: the process's node (with `--node`), the owning shard, the slot in
//! that shard's table, and 128 random bits, so an id is unguessable, any shard
//! can route to its owner, and a proxy (or, later, another node) can route to
//! its process.
//!
//! The text form is `[NODE.]S-K-T` (shard and slot in hex, the token in 32 hex
//! digits). Without a node name it is exactly `S-K-T`; the `.` that ends a node
//! name appears in no other part, so the two forms cannot be confused. This file
//! is the one place that reads and writes it.

use std::fmt;

/// A process's node name (`--node`): 1 to [`Node::MAX`] of `a-z`, `0-9` and
/// `_`, so that it never holds the `.` that ends it in an id, and a proxy can
/// match it as a plain prefix. `Copy`, like the ids that carry it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Node {
    len: u8,
    bytes: [u8; Node::MAX],
}

impl Node {
    /// The longest node name.
    pub const MAX: usize = 16;

    /// Reads a node name; the error is one line, for the command line or the
    /// config file.
    pub fn parse(s: &str) -> Result<Node, String> {
        let fits = (1..=Node::MAX).contains(&s.len());
        if !fits || !s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_')) {
            return Err(format!("--node {s:?}: use 1 to {} of a-z, 0-9 and _ (it begins every client id)", Node::MAX));
        }
        let mut bytes = [0; Node::MAX];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Node { len: s.len() as u8, bytes })
    }

    pub fn as_str(&self) -> &str {
        // ASCII by construction, so this never falls back.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({:?})", self.as_str())
    }
}

/// A parsed client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId {
    /// The node of the process that holds the client; `None` without `--node`.
    pub node: Option<Node>,
    pub shard: usize,
    /// The key of the client's slot in its shard's table (generation-tagged).
    pub slot: usize,
    pub token: u128,
}

impl ClientId {
    /// A fresh id for `slot` on `shard` of this process (`node`), with a token
    /// from the OS-seeded CSPRNG.
    pub fn new(node: Option<Node>, shard: usize, slot: usize) -> ClientId {
        ClientId { node, shard, slot, token: rand::random() }
    }

    /// Reads `[NODE.]S-K-T` (hex). `None` for anything else.
    pub fn parse(s: &str) -> Option<ClientId> {
        let s = s.trim();
        let (node, local) = match s.split_once('.') {
            Some((node, local)) => (Some(Node::parse(node).ok()?), local),
            None => (None, s),
        };
        let mut parts = local.splitn(3, '-');
        let shard = usize::from_str_radix(parts.next()?, 16).ok()?;
        let slot = usize::from_str_radix(parts.next()?, 16).ok()?;
        let token = parts.next()?;
        if token.len() != 32 {
            return None;
        }
        Some(ClientId { node, shard, slot, token: u128::from_str_radix(token, 16).ok()? })
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(node) = &self.node {
            write!(f, "{node}.")?;
        }
        write!(f, "{:x}-{:x}-{:032x}", self.shard, self.slot, self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_shard() {
        let id = ClientId::new(None, 3, 0x4000_0001);
        let text = id.to_string();
        assert!(text.starts_with("3-40000001-"), "{text}");
        assert_eq!(text.len(), "3-40000001-".len() + 32, "{text}");
        assert_eq!(ClientId::parse(&text), Some(id));
        assert_ne!(ClientId::new(None, 3, 1).token, ClientId::new(None, 3, 1).token);
    }

    #[test]
    fn round_trips_with_a_node_that_begins_it() {
        for name in ["a", "node_7", "abcdefghij012345"] {
            let node = Node::parse(name).unwrap();
            let id = ClientId::new(Some(node), 0, 0x1f);
            let text = id.to_string();
            assert!(text.starts_with(&format!("{name}.0-1f-")), "{text}");
            let back = ClientId::parse(&text).unwrap();
            assert_eq!(back, id);
            assert_eq!(back.node.map(|n| n.to_string()).as_deref(), Some(name));
        }
        // The same local part under another node, or none, is another id.
        let a = ClientId::parse("a.0-1-0000000000000000000000000000002a").unwrap();
        let b = ClientId::parse("b.0-1-0000000000000000000000000000002a").unwrap();
        let none = ClientId::parse("0-1-0000000000000000000000000000002a").unwrap();
        assert_eq!((a.shard, a.slot, a.token), (none.shard, none.slot, none.token));
        assert!(a != b && a != none && none.node.is_none());
    }

    #[test]
    fn refuses_malformed_ids() {
        for bad in [
            "",
            "abc",
            "1-2",
            "1-2-xyz",
            "1-2-00",
            "g-1-00000000000000000000000000000000",
            ".0-1-00000000000000000000000000000000",
            "A.0-1-00000000000000000000000000000000",
            "a-b.0-1-00000000000000000000000000000000",
            "a.b.0-1-00000000000000000000000000000000",
            "abcdefghij0123456.0-1-00000000000000000000000000000000",
            "a.",
        ] {
            assert_eq!(ClientId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn node_names_are_short_lowercase_words() {
        for good in ["a", "b", "eu_west_1", "0", "abcdefghij012345"] {
            assert_eq!(Node::parse(good).map(|n| n.to_string()), Ok(good.to_string()));
        }
        for bad in ["", "A", "a.b", "a-b", "a b", "é", "abcdefghij0123456"] {
            let e = Node::parse(bad).unwrap_err();
            assert!(e.starts_with("--node ") && e.contains("a-z, 0-9 and _") && !e.contains('\n'), "{bad}: {e}");
        }
    }
}
