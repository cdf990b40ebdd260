//! An aggregated order book for `level2_batch`: rebuilt from a `snapshot`, kept
//! by `l2update`s, and written back out as a snapshot for a late joiner. The
//! relay's feed state and the simulator's replay keep it alike, so both tell a
//! late joiner the same book.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

/// A price level's key: the price as a number, ordered totally.
#[derive(Debug, Clone, Copy)]
struct Px(f64);

impl PartialEq for Px {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Px {}
impl PartialOrd for Px {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Px {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// One side of a book: price -> (price, size) as the feed wrote them.
type Side = BTreeMap<Px, (String, String)>;

/// An aggregated order book, rebuilt from a `snapshot` and kept by `l2update`s.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Book {
    bids: Side,
    asks: Side,
}

#[derive(Deserialize)]
struct Snapshot {
    bids: Vec<(String, String)>,
    asks: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct L2Update {
    changes: Vec<(String, String, String)>,
}

fn is_zero(size: &str) -> bool {
    size.parse::<f64>().map_or(true, |s| s == 0.0)
}

fn level(side: &mut Side, price: String, size: String) {
    let Ok(p) = price.parse::<f64>() else { return };
    if is_zero(&size) {
        side.remove(&Px(p));
    } else {
        side.insert(Px(p), (price, size));
    }
}

impl Book {
    /// A book from a `snapshot` message; `None` if it is not one.
    pub fn from_snapshot(body: &[u8]) -> Option<Book> {
        let s: Snapshot = serde_json::from_slice(body).ok()?;
        let mut book = Book::default();
        for (p, q) in s.bids {
            level(&mut book.bids, p, q);
        }
        for (p, q) in s.asks {
            level(&mut book.asks, p, q);
        }
        Some(book)
    }

    /// Applies an `l2update`; false if it cannot be read.
    pub fn apply(&mut self, body: &[u8]) -> bool {
        let Ok(u) = serde_json::from_slice::<L2Update>(body) else { return false };
        for (side, price, size) in u.changes {
            match side.as_str() {
                "buy" => level(&mut self.bids, price, size),
                "sell" => level(&mut self.asks, price, size),
                _ => {}
            }
        }
        true
    }

    /// The book as a Coinbase `snapshot` message: bids best (highest) first, asks
    /// best (lowest) first.
    pub fn snapshot(&self, product: &str) -> String {
        let levels = |it: &mut dyn Iterator<Item = &(String, String)>| {
            let mut out = String::new();
            for (i, (p, s)) in it.enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(out, "{sep}[{},{}]", crate::protocol::json_string(p), crate::protocol::json_string(s));
            }
            out
        };
        format!(
            r#"{{"type":"snapshot","product_id":{},"asks":[{}],"bids":[{}]}}"#,
            crate::protocol::json_string(product),
            levels(&mut self.asks.values()),
            levels(&mut self.bids.values().rev())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_book_from_snapshot_and_updates() {
        let snapshot = br#"{"type":"snapshot","product_id":"A-B","asks":[["10.5","1"],["11","2"]],"bids":[["10","3"],["9.5","1"]]}"#;
        let mut book = Book::from_snapshot(snapshot).unwrap();
        assert!(book.apply(br#"{"type":"l2update","product_id":"A-B","changes":[["buy","10","0"],["sell","10.25","4"],["buy","9.75","5"]]}"#));
        let snap = book.snapshot("A-B");
        assert_eq!(
            snap,
            r#"{"type":"snapshot","product_id":"A-B","asks":[["10.25","4"],["10.5","1"],["11","2"]],"bids":[["9.75","5"],["9.5","1"]]}"#
        );
        assert_eq!(Book::from_snapshot(snap.as_bytes()), Some(book));
    }

    #[test]
    fn refuses_what_is_not_a_book_message() {
        assert_eq!(Book::from_snapshot(br#"{"type":"ticker"}"#), None);
        assert!(!Book::default().apply(b"not json"));
    }
}
