//! The feed's public channels, by type: a `Channel` is what a subscription names,
//! and a `Topic` (product, channel) is what one stream of messages is about.

use std::fmt;

/// A public channel of the Coinbase Exchange feed that hedgehog knows.
///
/// The discriminants are indices: per-channel arrays are `[T; Channel::COUNT]`
/// indexed by `channel as usize` (see [`Channel::index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    Ticker = 0,
    Matches = 1,
    Level2Batch = 2,
    Heartbeat = 3,
    /// The exchange's product list; the upstream client subscribes to it for
    /// itself. Served by the simulator, not relayed to clients.
    Status = 4,
}

impl Channel {
    /// How many there are: the length of per-channel arrays.
    pub const COUNT: usize = 5;

    /// Every channel, in index order.
    pub const ALL: [Channel; Channel::COUNT] =
        [Channel::Ticker, Channel::Matches, Channel::Level2Batch, Channel::Heartbeat, Channel::Status];

    /// The channels hedgehog relays to its clients.
    pub const RELAYED: [Channel; 4] = [Channel::Ticker, Channel::Matches, Channel::Level2Batch, Channel::Heartbeat];

    /// Its name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Channel::Ticker => "ticker",
            Channel::Matches => "matches",
            Channel::Level2Batch => "level2_batch",
            Channel::Heartbeat => "heartbeat",
            Channel::Status => "status",
        }
    }

    /// The channel of a name, Coinbase's aliases included (`level2_50` is
    /// `level2_batch`); `None` for a name hedgehog does not know.
    pub fn parse(name: &str) -> Option<Channel> {
        let name = super::canonical_channel(name);
        Channel::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The channel a feed message of type `kind` belongs to, for routing.
    pub fn of_message(kind: &str) -> Option<Channel> {
        Some(match kind {
            "ticker" => Channel::Ticker,
            "match" | "last_match" => Channel::Matches,
            "snapshot" | "l2update" => Channel::Level2Batch,
            "heartbeat" => Channel::Heartbeat,
            "status" => Channel::Status,
            _ => return None,
        })
    }

    /// Whether clients may subscribe to it through hedgehog.
    pub fn is_relayed(self) -> bool {
        Channel::RELAYED.contains(&self)
    }

    /// Whether a subscription to it names products: `status` is about the whole
    /// exchange, and products named with it are ignored.
    pub fn takes_products(self) -> bool {
        self != Channel::Status
    }

    /// Whether the relay keeps state of it for late joiners (the latest ticker,
    /// the `last_match`, the book), which a fresh subscription sends afresh.
    pub fn has_state(self) -> bool {
        matches!(self, Channel::Ticker | Channel::Matches | Channel::Level2Batch)
    }

    /// Its place in per-channel arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The names of the relayed channels, for messages that list them.
    pub fn relayed_names() -> String {
        Channel::RELAYED.map(Channel::name).join(", ")
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl AsRef<str> for Channel {
    fn as_ref(&self) -> &str {
        self.name()
    }
}

impl serde::Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One stream of messages: a product on a channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topic {
    pub product: String,
    pub channel: Channel,
}

impl Topic {
    pub fn new(product: impl Into<String>, channel: Channel) -> Topic {
        Topic { product: product.into(), channel }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.product, self.channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_resolve() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.name()), Some(c));
            assert_eq!(Channel::ALL[c.index()], c);
        }
        assert_eq!(Channel::parse("level2_50"), Some(Channel::Level2Batch));
        assert_eq!(Channel::parse("level2"), None, "authenticated, not one of ours");
        assert_eq!(Channel::parse("ticker_batch"), None);
    }

    #[test]
    fn messages_route_to_their_channel() {
        assert_eq!(Channel::of_message("last_match"), Some(Channel::Matches));
        assert_eq!(Channel::of_message("snapshot"), Some(Channel::Level2Batch));
        assert_eq!(Channel::of_message("subscriptions"), None);
        assert!(!Channel::Status.is_relayed());
        assert_eq!(Channel::relayed_names(), "ticker, matches, level2_batch, heartbeat");
        assert_eq!(serde_json::to_string(&[Channel::Ticker]).unwrap(), r#"["ticker"]"#);
    }
}
