//! What the replay has played so far, per product: what a fresh subscriber gets
//! first on the live feed, rebuilt as of the replay point. The latest `ticker`
//! as captured, the latest trade retold as a `last_match`, and a level2
//! `snapshot` of the book kept from the capture's snapshot and updates.

use std::borrow::Cow;

use crate::protocol::{self, Book, Channel};
use crate::ws::{self, Frame};

/// What a captured message does to that state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ticker,
    Match,
    Snapshot,
    L2Update,
    Other,
}

impl Kind {
    pub fn of(kind: &str) -> Kind {
        match kind {
            "ticker" => Kind::Ticker,
            "match" | "last_match" => Kind::Match,
            "snapshot" => Kind::Snapshot,
            "l2update" => Kind::L2Update,
            _ => Kind::Other,
        }
    }
}

#[derive(Default)]
struct ProductState {
    ticker: Option<Frame>,
    /// The frame of the latest `match` or `last_match`, as captured.
    last_match: Option<Frame>,
    /// `None` until the capture's snapshot has been played (or after an update
    /// that could not be read).
    book: Option<Book>,
}

/// Per product (by index into the replay's product list).
#[derive(Default)]
pub struct PlayedState {
    products: Vec<ProductState>,
}

impl PlayedState {
    pub fn new(products: usize) -> Self {
        PlayedState { products: (0..products).map(|_| ProductState::default()).collect() }
    }

    /// Back to the start of the capture.
    pub fn reset(&mut self) {
        self.products.iter_mut().for_each(|p| *p = ProductState::default());
    }

    /// Takes in a record as it is played.
    pub fn take(&mut self, product: usize, kind: Kind, frame: &Frame) {
        let Some(p) = self.products.get_mut(product) else { return };
        match kind {
            Kind::Ticker => p.ticker = Some(frame.clone()),
            Kind::Match => p.last_match = Some(frame.clone()),
            Kind::Snapshot => p.book = Book::from_snapshot(body(frame)),
            Kind::L2Update => {
                if p.book.as_mut().is_some_and(|b| !b.apply(body(frame))) {
                    p.book = None;
                }
            }
            Kind::Other => {}
        }
    }

    /// What a fresh subscriber to (`product`, `channel`) gets first.
    pub fn first_frame(&self, product: usize, name: &str, channel: Channel) -> Option<Frame> {
        let p = self.products.get(product)?;
        match channel {
            Channel::Ticker => p.ticker.clone(),
            Channel::Matches => {
                let m = p.last_match.as_ref()?;
                match protocol::last_match(body(m))? {
                    Cow::Borrowed(_) => Some(m.clone()),
                    Cow::Owned(text) => Some(ws::frame::text(&text)),
                }
            }
            Channel::Level2Batch => p.book.as_ref().map(|b| ws::frame::text(b.snapshot(name).as_bytes())),
            Channel::Heartbeat | Channel::Status => None,
        }
    }
}

/// The message inside a server frame.
fn body(frame: &Frame) -> &[u8] {
    ws::frame::split_server_frame(frame).map_or(&[][..], |(_, payload)| payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Frame {
        ws::frame::text(s.as_bytes())
    }

    fn text(f: Option<Frame>) -> Option<String> {
        f.map(|f| String::from_utf8(body(&f).to_vec()).unwrap())
    }

    #[test]
    fn answers_as_of_what_was_played() {
        let mut s = PlayedState::new(1);
        let (ticker, l2) = (Channel::Ticker, Channel::Level2Batch);
        assert_eq!(s.first_frame(0, "A-B", ticker), None, "nothing played, nothing to repeat");
        s.take(
            0,
            Kind::Snapshot,
            &frame(r#"{"type":"snapshot","product_id":"A-B","bids":[["1","2"]],"asks":[["3","4"]]}"#),
        );
        s.take(
            0,
            Kind::L2Update,
            &frame(r#"{"type":"l2update","product_id":"A-B","changes":[["buy","1","0"],["sell","2.5","1"]]}"#),
        );
        let t = r#"{"type":"ticker","product_id":"A-B","price":"3"}"#;
        s.take(0, Kind::Ticker, &frame(t));
        s.take(0, Kind::Match, &frame(r#"{"type":"match","trade_id":9,"product_id":"A-B"}"#));
        assert_eq!(text(s.first_frame(0, "A-B", ticker)).as_deref(), Some(t));
        assert_eq!(
            text(s.first_frame(0, "A-B", Channel::Matches)).as_deref(),
            Some(r#"{"type":"last_match","trade_id":9,"product_id":"A-B"}"#)
        );
        assert_eq!(
            text(s.first_frame(0, "A-B", l2)).as_deref(),
            Some(r#"{"type":"snapshot","product_id":"A-B","asks":[["2.5","1"],["3","4"]],"bids":[]}"#)
        );
        assert_eq!(s.first_frame(0, "A-B", Channel::Heartbeat), None);
        s.reset();
        assert_eq!(s.first_frame(0, "A-B", l2), None);
    }
}
