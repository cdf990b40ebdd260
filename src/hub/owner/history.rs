//! The bounded history of raw messages kept per (product, channel): by count,
//! by age, and by bytes over all topics together. `/api/v1/history` and
//! `?replay=N` read it.

use std::collections::VecDeque;
use std::time::Duration;

use crate::protocol::Channel;
use crate::upstream::FeedMessage;

/// History limits.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Messages kept per (product, channel).
    pub per_topic: usize,
    /// Older messages are dropped.
    pub max_age: Duration,
    /// Bytes kept in all, messages and bookkeeping; past it the topic being
    /// added to drops its oldest.
    pub max_bytes: usize,
}

/// One kept message.
pub(super) struct Kept {
    /// When hedgehog received it (microseconds since the epoch).
    at: i64,
    msg: FeedMessage,
}

/// Bookkeeping counted per kept message, besides its frame.
const KEPT_OVERHEAD: usize = std::mem::size_of::<Kept>() + 16;

/// A query of the history.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub product: String,
    pub channel: Channel,
    pub limit: usize,
    pub since: Since,
}

/// Where a history query starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    All,
    /// Messages with a greater `sequence`.
    Sequence(u64),
    /// Messages whose `time` (or, without one, arrival) is at or after this
    /// (microseconds since the epoch).
    Time(i64),
}

/// What the history holds in all.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Totals {
    pub messages: usize,
    pub bytes: usize,
}

/// One topic's kept messages, oldest first.
#[derive(Default)]
pub(super) struct TopicHistory(VecDeque<Kept>);

impl TopicHistory {
    /// Keeps `msg`, and drops from the front what is over the count, the age or
    /// (all topics together, counted in `totals`) the bytes.
    pub fn remember(&mut self, totals: &mut Totals, limits: &HistoryLimits, msg: &FeedMessage, now: i64) {
        if limits.per_topic == 0 {
            return;
        }
        let kept = &mut self.0;
        kept.push_back(Kept { at: now, msg: msg.clone() });
        totals.messages += 1;
        totals.bytes += msg.frame.len() + KEPT_OVERHEAD;
        let oldest = now - limits.max_age.as_micros() as i64;
        while let Some(front) = kept.front() {
            let over = kept.len() > limits.per_topic
                || front.at < oldest
                || (totals.bytes > limits.max_bytes && kept.len() > 1);
            if !over {
                break;
            }
            if let Some(k) = kept.pop_front() {
                totals.messages -= 1;
                totals.bytes -= k.msg.frame.len() + KEPT_OVERHEAD;
            }
        }
    }

    /// Forgets every kept message (an edge's, before the ingest's history).
    pub fn clear(&mut self, totals: &mut Totals) {
        for k in self.0.drain(..) {
            totals.messages -= 1;
            totals.bytes -= k.msg.frame.len() + KEPT_OVERHEAD;
        }
    }

    /// The newest `q.limit` messages after `q.since` and within `max_age`, oldest first.
    pub fn select(&self, q: &HistoryQuery, max_age: Duration, now: i64) -> Vec<&FeedMessage> {
        let oldest = now - max_age.as_micros() as i64;
        let after = |k: &&Kept| {
            k.at >= oldest
                && match q.since {
                    Since::All => true,
                    Since::Sequence(s) => k.msg.sequence.is_some_and(|m| m > s),
                    Since::Time(t) => k.msg.time().unwrap_or(k.at) >= t,
                }
        };
        let matching: Vec<&Kept> = self.0.iter().filter(after).collect();
        let skip = matching.len().saturating_sub(q.limit);
        matching.into_iter().skip(skip).map(|k| &k.msg).collect()
    }
}

/// A history query's answer: a JSON array of the raw messages, newest last.
pub fn to_json(msgs: &[&FeedMessage]) -> String {
    let mut out = Vec::with_capacity(2 + msgs.iter().map(|m| m.body().len() + 1).sum::<usize>());
    out.push(b'[');
    for (i, m) in msgs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m.body());
    }
    out.push(b']');
    String::from_utf8(out).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::super::feed::tests::{msg, state};
    use super::super::feed::FeedState;
    use super::*;

    #[test]
    fn history_is_bounded_by_count_age_and_bytes() {
        let mut s = state(3);
        let t = Channel::Ticker;
        for i in 0..5 {
            let text = format!(
                r#"{{"type":"ticker","product_id":"A-B","sequence":{i},"time":"2026-01-01T00:00:0{i}.000000Z"}}"#
            );
            s.on_message(&msg(&text), t, false, i64::from(i));
        }
        let q = |limit, since| HistoryQuery { product: "A-B".into(), channel: t, limit, since };
        let seqs = |v: Vec<&FeedMessage>| v.iter().map(|m| m.sequence.unwrap()).collect::<Vec<_>>();
        assert_eq!(seqs(s.history(&q(10, Since::All), 5)), [2, 3, 4]);
        assert_eq!(seqs(s.history(&q(2, Since::All), 5)), [3, 4], "newest last");
        assert_eq!(seqs(s.history(&q(10, Since::Sequence(2)), 5)), [3, 4]);
        let t3 = crate::clock::parse_iso("2026-01-01T00:00:03.000000Z").unwrap();
        assert_eq!(seqs(s.history(&q(10, Since::Time(t3)), 5)), [3, 4]);
        assert_eq!(s.history_messages(), 3);
        let per = s.history_bytes() / 3;
        let mut small =
            FeedState::new(HistoryLimits { per_topic: 100, max_age: Duration::from_secs(60), max_bytes: per * 2 });
        for i in 0..5 {
            small.on_message(&msg(&format!(r#"{{"type":"ticker","product_id":"A-B","sequence":{i}}}"#)), t, false, 0);
        }
        assert!(small.history_bytes() <= per * 2, "{} > {}", small.history_bytes(), per * 2);
        let old = 61_000_000;
        assert!(s.history(&q(10, Since::All), old + 5).is_empty(), "older than the age limit");
    }
}
