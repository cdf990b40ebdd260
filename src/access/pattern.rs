//! What a rule names: pairs by pattern (`BTC-USD`, `BTC-*`, `*-EUR`, `*`) and
//! channels by name (or `*`); an allow list and a deny list of either, where deny
//! wins.
//!
//! Pairs are matched case-insensitively, as pairs are everywhere in hedgehog
//! (`btc-usd` is `BTC-USD`): patterns are kept in upper case and the pair is
//! upper-cased before it is looked at.

use std::fmt;

use crate::protocol::Channel;

/// One pair pattern. The wildcard stands for a whole side of the pair, never for
/// part of one: `BTC-*` matches `BTC-USD` but not `BTCX-USD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairPattern {
    /// `*`: every pair.
    Any,
    /// `BTC-*`: kept as `BTC-`, a prefix.
    Base(String),
    /// `*-EUR`: kept as `-EUR`, a suffix.
    Quote(String),
    /// `BTC-USD`.
    Exact(String),
}

impl PairPattern {
    /// Reads a pattern, in any case.
    pub fn parse(s: &str) -> Result<PairPattern, String> {
        let side = |x: &str| !x.is_empty() && x.len() <= 16 && x.bytes().all(|c| c.is_ascii_alphanumeric());
        let up = s.to_ascii_uppercase();
        let pattern = if up == "*" {
            Some(PairPattern::Any)
        } else if let Some(base) = up.strip_suffix("-*").filter(|b| side(b)) {
            Some(PairPattern::Base(format!("{base}-")))
        } else if let Some(quote) = up.strip_prefix("*-").filter(|q| side(q)) {
            Some(PairPattern::Quote(format!("-{quote}")))
        } else {
            crate::protocol::normalize_product(&up).map(PairPattern::Exact)
        };
        pattern.ok_or_else(|| format!("`{s}` is not a pair pattern (BASE-QUOTE, BASE-*, *-QUOTE or *)"))
    }

    /// Whether `pair`, already in upper case, is one this pattern names.
    pub fn matches(&self, pair: &str) -> bool {
        match self {
            PairPattern::Any => true,
            PairPattern::Base(prefix) => pair.starts_with(prefix.as_str()),
            PairPattern::Quote(suffix) => pair.ends_with(suffix.as_str()),
            PairPattern::Exact(p) => p == pair,
        }
    }
}

impl fmt::Display for PairPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairPattern::Any => f.write_str("*"),
            PairPattern::Base(prefix) => write!(f, "{prefix}*"),
            PairPattern::Quote(suffix) => write!(f, "*{suffix}"),
            PairPattern::Exact(p) => f.write_str(p),
        }
    }
}

/// One channel rule: a channel hedgehog relays, or `*` for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelPattern {
    Any,
    One(Channel),
}

impl ChannelPattern {
    /// Reads `*` or a relayed channel's name (aliases such as `level2_50` too).
    pub fn parse(s: &str) -> Result<ChannelPattern, String> {
        if s == "*" {
            return Ok(ChannelPattern::Any);
        }
        Channel::parse(s)
            .filter(|c| c.is_relayed())
            .map(ChannelPattern::One)
            .ok_or_else(|| format!("`{s}` is not a channel hedgehog relays ({}, or *)", Channel::relayed_names()))
    }

    pub fn matches(&self, channel: &Channel) -> bool {
        match self {
            ChannelPattern::Any => true,
            ChannelPattern::One(c) => c == channel,
        }
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelPattern::Any => f.write_str("*"),
            ChannelPattern::One(c) => f.write_str(c.name()),
        }
    }
}

/// Patterns that can be asked whether they name a `T`.
pub trait Pattern<T: ?Sized> {
    fn matches_item(&self, item: &T) -> bool;
}

impl Pattern<str> for PairPattern {
    fn matches_item(&self, pair: &str) -> bool {
        self.matches(pair)
    }
}

impl Pattern<Channel> for ChannelPattern {
    fn matches_item(&self, channel: &Channel) -> bool {
        self.matches(channel)
    }
}

/// An allow list and a deny list. Nothing is allowed that no allow pattern names;
/// a deny pattern that names it wins over any allow pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules<P> {
    pub allow: Vec<P>,
    pub deny: Vec<P>,
}

/// What [`Rules::verdict`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a, P> {
    Allowed,
    /// This deny pattern names it.
    Denied(&'a P),
    /// No allow pattern names it.
    NotAllowed,
}

impl<P> Rules<P> {
    pub fn verdict<T: ?Sized>(&self, item: &T) -> Verdict<'_, P>
    where
        P: Pattern<T>,
    {
        if let Some(p) = self.deny.iter().find(|p| p.matches_item(item)) {
            return Verdict::Denied(p);
        }
        match self.allow.iter().any(|p| p.matches_item(item)) {
            true => Verdict::Allowed,
            false => Verdict::NotAllowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(allow: &[&str], deny: &[&str]) -> Rules<PairPattern> {
        let parse = |l: &[&str]| l.iter().map(|s| PairPattern::parse(s).unwrap()).collect();
        Rules { allow: parse(allow), deny: parse(deny) }
    }

    #[test]
    fn patterns_read_in_any_case_and_print_in_upper_case() {
        for (text, shown) in [("btc-usd", "BTC-USD"), ("Btc-*", "BTC-*"), ("*-eur", "*-EUR"), ("*", "*")] {
            assert_eq!(PairPattern::parse(text).unwrap().to_string(), shown);
        }
        for bad in ["", "BTC", "BTC*", "*USD", "*-*", "B*-USD", "BTC-US*", "**", "BTC-USD-EUR", "BTC_USD", " BTC-USD"] {
            let e = PairPattern::parse(bad).unwrap_err();
            assert!(e.contains("is not a pair pattern"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_wildcard_stands_for_a_whole_side() {
        let base = PairPattern::parse("BTC-*").unwrap();
        assert!(base.matches("BTC-USD") && base.matches("BTC-EUR"));
        assert!(!base.matches("BTCX-USD") && !base.matches("WBTC-USD"));
        let quote = PairPattern::parse("*-EUR").unwrap();
        assert!(quote.matches("ETH-EUR") && !quote.matches("ETH-EURC") && !quote.matches("EUR-USD"));
        assert!(PairPattern::Any.matches("ANY-THING"));
    }

    #[test]
    fn deny_wins_and_nothing_is_allowed_unless_named() {
        let r = pairs(&["btc-*", "ETH-USD"], &["*-eur"]);
        assert_eq!(r.verdict("BTC-USD"), Verdict::Allowed);
        assert_eq!(r.verdict("ETH-USD"), Verdict::Allowed);
        assert_eq!(r.verdict("BTC-EUR"), Verdict::Denied(&PairPattern::Quote("-EUR".into())));
        assert_eq!(r.verdict("SOL-USD"), Verdict::NotAllowed);
        assert_eq!(pairs(&[], &[]).verdict("BTC-USD"), Verdict::NotAllowed);
        assert_eq!(pairs(&["*"], &["*"]).verdict("BTC-USD"), Verdict::Denied(&PairPattern::Any));
    }

    #[test]
    fn channels_by_name_alias_or_star() {
        assert_eq!(ChannelPattern::parse("level2_50"), Ok(ChannelPattern::One(Channel::Level2Batch)));
        assert_eq!(ChannelPattern::parse("*"), Ok(ChannelPattern::Any));
        for bad in ["status", "full", "Ticker", ""] {
            assert!(ChannelPattern::parse(bad).unwrap_err().contains("not a channel hedgehog relays"), "{bad}");
        }
        let r = Rules { allow: vec![ChannelPattern::Any], deny: vec![ChannelPattern::One(Channel::Level2Batch)] };
        assert_eq!(r.verdict(&Channel::Ticker), Verdict::Allowed);
        assert_eq!(r.verdict(&Channel::Level2Batch), Verdict::Denied(&ChannelPattern::One(Channel::Level2Batch)));
    }
}
