//! A class of users: what its members may subscribe to, how much of the server
//! they may take, how they are delivered to, and whether they are admins.

use std::fmt::{self, Write};
use std::time::Duration;

use super::pattern::{ChannelPattern, PairPattern, Rules, Verdict};
use crate::protocol::Channel;

/// The class that applies to a connection without credentials.
pub const ANONYMOUS: &str = "anonymous";

/// One class, as loaded; immutable, shared by every principal of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub(super) name: String,
    pub(super) pairs: Rules<PairPattern>,
    pub(super) channels: Rules<ChannelPattern>,
    pub(super) limits: Limits,
    pub(super) history: History,
    pub(super) tier: Tier,
    pub(super) admin: bool,
}

/// A class's limits. `None`: the server-wide setting applies (the flag of the
/// same name; there is none for the two connection counts: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Open connections of one principal of this class, all shards together.
    pub max_connections_per_principal: Option<usize>,
    /// Open connections of all principals of this class together.
    pub max_connections: Option<usize>,
    /// (pair, channel) subscriptions one client of this class may hold.
    pub max_subscriptions: Option<usize>,
    /// Requests or messages per second on one connection; `Some(0)`: no limit.
    pub max_request_rate: Option<u32>,
}

/// Whether the class may read `/api/v1/history` (and `?replay=`), and how much.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    pub allowed: bool,
    /// The largest `limit` (and `?replay=`) it may ask for; `None`: the server's
    /// `--history-size`.
    pub max_limit: Option<usize>,
}

/// How a class's clients are delivered to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tier {
    /// Every message, as it comes.
    #[default]
    Full,
    /// At most one `ticker` and one `level2_batch` message per product every this
    /// long, the newest winning (the conflation is the delivery step's). `matches`
    /// are never thinned: a class gets every match or, by its channel rules, none.
    Throttle(Duration),
}

impl Tier {
    /// Whether this tier thins `channel` (only `ticker` and `level2_batch` are).
    pub fn thins(self, channel: Channel) -> bool {
        matches!(self, Tier::Throttle(_)) && matches!(channel, Channel::Ticker | Channel::Level2Batch)
    }
}

/// Why a class (or a token narrowing it) does not allow something. Its text names
/// the rule, for a 403's message; it never names a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("class `{class}` denies `{pattern}`")]
    PairDenied { class: String, pair: String, pattern: String },
    #[error("`{pair}` is not in class `{class}`'s allow list")]
    PairNotAllowed { class: String, pair: String },
    #[error("class `{class}` denies channel `{pattern}`")]
    ChannelDenied { class: String, channel: Channel, pattern: String },
    #[error("channel `{channel}` is not in class `{class}`'s allow list")]
    ChannelNotAllowed { class: String, channel: Channel },
    #[error("the token of `{principal}` does not allow `{pair}`")]
    TokenNarrows { principal: String, pair: String },
    #[error("class `{class}` may not read history")]
    NoHistory { class: String },
    #[error("class `{class}` may read at most {max} messages of history")]
    HistoryLimit { class: String, max: usize },
}

impl Class {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a client of this class may subscribe to `pair` (any case) on
    /// `channel`. The pair is looked at first, so a refusal names it.
    pub fn may_subscribe(&self, pair: &str, channel: Channel) -> Result<(), Refusal> {
        let (class, pair) = (self.name.clone(), pair.to_ascii_uppercase());
        match self.pairs.verdict(pair.as_str()) {
            Verdict::Allowed => {}
            Verdict::Denied(p) => return Err(Refusal::PairDenied { class, pair, pattern: p.to_string() }),
            Verdict::NotAllowed => return Err(Refusal::PairNotAllowed { class, pair }),
        }
        match self.channels.verdict(&channel) {
            Verdict::Allowed => Ok(()),
            Verdict::Denied(p) => Err(Refusal::ChannelDenied { class, channel, pattern: p.to_string() }),
            Verdict::NotAllowed => Err(Refusal::ChannelNotAllowed { class, channel }),
        }
    }

    /// Whether a client of this class may read `limit` messages of history of
    /// `pair` on `channel`: history allowed, the limit within the class's, and the
    /// pair and channel allowed as for a subscription.
    pub fn may_read_history(&self, pair: &str, channel: Channel, limit: usize) -> Result<(), Refusal> {
        if !self.history.allowed {
            return Err(Refusal::NoHistory { class: self.name.clone() });
        }
        if let Some(max) = self.history.max_limit.filter(|max| limit > *max) {
            return Err(Refusal::HistoryLimit { class: self.name.clone(), max });
        }
        self.may_subscribe(pair, channel)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn history(&self) -> History {
        self.history
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// May act on any client and see the admin endpoints.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// What the class may do, for `hedgehog check-config`: a few indented lines.
    pub fn describe(&self) -> String {
        let mut out = format!("class `{}`{}\n", self.name, if self.admin { " (admin)" } else { "" });
        let lines = [
            ("pairs allowed", list(&self.pairs.allow)),
            ("pairs denied", list(&self.pairs.deny)),
            ("channels allowed", list(&self.channels.allow)),
            ("channels denied", list(&self.channels.deny)),
            ("connections", self.connections()),
            ("subscriptions", limit(self.limits.max_subscriptions, "--max-subscriptions")),
            ("request rate", self.rate()),
            ("history", self.history_text()),
            ("delivery", self.tier_text()),
        ];
        for (what, text) in lines {
            let _ = writeln!(out, "  {what:<17} {text}");
        }
        out
    }

    fn connections(&self) -> String {
        let l = self.limits;
        let per = l.max_connections_per_principal.map_or("no limit".into(), |n| n.to_string());
        let all = l.max_connections.map_or("no limit".into(), |n| n.to_string());
        format!("{per} per principal, {all} for the class")
    }

    fn rate(&self) -> String {
        match self.limits.max_request_rate {
            Some(0) => "no limit".into(),
            Some(n) => format!("{n} a second per connection"),
            None => "the server's (--max-request-rate)".into(),
        }
    }

    fn history_text(&self) -> String {
        match self.history {
            History { allowed: false, .. } => "no".into(),
            History { max_limit, .. } => format!("yes, limit {}", limit(max_limit, "--history-size")),
        }
    }

    fn tier_text(&self) -> String {
        match self.tier {
            Tier::Full => "full".into(),
            Tier::Throttle(d) => {
                format!("throttled: one ticker and level2_batch message per product every {} ms", d.as_millis())
            }
        }
    }
}

fn list<P: fmt::Display>(patterns: &[P]) -> String {
    match patterns.is_empty() {
        true => "none".into(),
        false => patterns.iter().map(P::to_string).collect::<Vec<_>>().join(", "),
    }
}

fn limit(n: Option<usize>, flag: &str) -> String {
    n.map_or_else(|| format!("the server's ({flag})"), |n| format!("at most {n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A class of `allow`/`deny` pairs and every channel but level2_batch.
    pub(crate) fn class(name: &str, allow: &[&str], deny: &[&str]) -> Class {
        let parse = |l: &[&str]| l.iter().map(|s| PairPattern::parse(s).unwrap()).collect();
        Class {
            name: name.into(),
            pairs: Rules { allow: parse(allow), deny: parse(deny) },
            channels: Rules { allow: vec![ChannelPattern::Any], deny: vec![ChannelPattern::One(Channel::Level2Batch)] },
            limits: Limits::default(),
            history: History { allowed: true, max_limit: Some(50) },
            tier: Tier::Full,
            admin: false,
        }
    }

    #[test]
    fn refusals_name_the_rule() {
        let free = class("free", &["BTC-*", "eth-usd"], &["*-EUR"]);
        assert_eq!(free.may_subscribe("btc-usd", Channel::Ticker), Ok(()));
        assert_eq!(free.may_subscribe("ETH-USD", Channel::Matches), Ok(()));
        let said = |pair, channel| free.may_subscribe(pair, channel).unwrap_err().to_string();
        assert_eq!(said("btc-eur", Channel::Ticker), "class `free` denies `*-EUR`");
        assert_eq!(said("SOL-USD", Channel::Ticker), "`SOL-USD` is not in class `free`'s allow list");
        assert_eq!(said("BTC-USD", Channel::Level2Batch), "class `free` denies channel `level2_batch`");
        let mut strict = free.clone();
        strict.channels = Rules { allow: vec![ChannelPattern::One(Channel::Ticker)], deny: vec![] };
        let e = strict.may_subscribe("BTC-USD", Channel::Matches).unwrap_err();
        assert_eq!(e.to_string(), "channel `matches` is not in class `free`'s allow list");
    }

    #[test]
    fn history_needs_the_class_the_limit_and_the_pair() {
        let mut c = class("pro", &["*"], &["DOGE-*"]);
        assert_eq!(c.may_read_history("BTC-USD", Channel::Ticker, 50), Ok(()));
        let e = c.may_read_history("BTC-USD", Channel::Ticker, 51).unwrap_err();
        assert_eq!(e.to_string(), "class `pro` may read at most 50 messages of history");
        assert!(matches!(c.may_read_history("DOGE-USD", Channel::Ticker, 1), Err(Refusal::PairDenied { .. })));
        c.history.allowed = false;
        assert_eq!(
            c.may_read_history("BTC-USD", Channel::Ticker, 1).unwrap_err().to_string(),
            "class `pro` may not read history"
        );
    }

    #[test]
    fn a_throttle_thins_ticker_and_level2_only() {
        let t = Tier::Throttle(Duration::from_millis(250));
        assert!(t.thins(Channel::Ticker) && t.thins(Channel::Level2Batch));
        assert!(!t.thins(Channel::Matches) && !t.thins(Channel::Heartbeat) && !Tier::Full.thins(Channel::Ticker));
    }
}
