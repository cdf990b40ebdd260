//! Client ids: the process's node (with `--node`), the owning shard, the slot in
//! that shard's table, and 128 random bits, so an id is unguessable, any shard
//! can route to its owner, and a proxy (or, later, another node) can route to
//! its process.
//!
//! The text form is `[NODE.]S-K-T` (shard and slot in hex, the token in 32 hex
//! digits). Without a node name it is exactly `S-K-T`; the `.` that ends a node
//! name appears in no other part, so the two forms cannot be confused. This file
//! is the one place that reads and writes it.

use std::fmt::{self, Write};
use std::num::NonZeroU128;

/// A process's node name (`--node`): 1 to [`Node::MAX`] of `a-z`, `0-9` and
/// `_`, so that it never holds the `.` that ends it in an id, and a proxy can
/// match it as a plain prefix.
///
/// Packed six bits a character into one `u128` (never zero: every character's
/// code is 1 or more), so that an id that carries it stays small: ids travel
/// in every cross-shard operation, and the bus's rings hold thousands of them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Node(NonZeroU128);

impl Node {
    /// The longest node name.
    pub const MAX: usize = 16;

    /// Reads a node name; the error is one line, for the command line or the
    /// config file.
    pub fn parse(s: &str) -> Result<Node, String> {
        let packed = s.bytes().try_fold(0u128, |packed, b| Some(packed << 6 | u128::from(code(b)?)));
        match packed.and_then(NonZeroU128::new) {
            Some(packed) if s.len() <= Node::MAX => Ok(Node(packed)),
            _ => Err(format!("--node {s:?}: use 1 to {} of a-z, 0-9 and _ (it begins every client id)", Node::MAX)),
        }
    }

    /// Its characters, first to last.
    fn chars(self) -> impl Iterator<Item = char> {
        let packed = self.0.get();
        (0..Node::MAX as u32).rev().map(move |i| (packed >> (6 * i)) as u8 & 63).filter(|&c| c != 0).map(letter)
    }
}

/// A node name's character as six bits (1 to 37); `None` for any other.
fn code(b: u8) -> Option<u8> {
    match b {
        b'a'..=b'z' => Some(b - b'a' + 1),
        b'0'..=b'9' => Some(b - b'0' + 27),
        b'_' => Some(37),
        _ => None,
    }
}

/// The character of a code [`code`] gave.
fn letter(c: u8) -> char {
    char::from(match c {
        1..=26 => b'a' + c - 1,
        27..=36 => b'0' + c - 27,
        _ => b'_',
    })
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.chars().try_for_each(|c| f.write_char(c))
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({:?})", self.to_string())
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
    fn an_id_with_a_node_stays_small() {
        // Ids ride in cross-shard messages; the node costs 16 bytes, not 32.
        assert_eq!(std::mem::size_of::<Option<Node>>(), 16);
        assert_eq!(std::mem::size_of::<ClientId>(), 48);
    }

    #[test]
    fn node_names_are_short_lowercase_words() {
        for good in ["a", "b", "eu_west_1", "0", "_", "z9_", "abcdefghij012345", "________________"] {
            assert_eq!(Node::parse(good).map(|n| n.to_string()), Ok(good.to_string()));
        }
        for bad in ["", "A", "a.b", "a-b", "a b", "é", "abcdefghij0123456"] {
            let e = Node::parse(bad).unwrap_err();
            assert!(e.starts_with("--node ") && e.contains("a-z, 0-9 and _") && !e.contains('\n'), "{bad}: {e}");
        }
    }
}
