//! A per-connection request-rate limit: a token bucket refilled continuously;
//! and a log budget, so that what clients can cause cannot flood the log.

use std::time::{Duration, Instant};

/// Allows `per_second` requests a second, sustained, and bursts of as many.
/// Owned by one connection's task; nothing is shared.
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket; `per_second` of zero allows everything.
    pub fn new(per_second: u32) -> Self {
        RateLimit { per_second: f64::from(per_second), tokens: f64::from(per_second), last: Instant::now() }
    }

    /// The requests allowed per second (zero: no limit).
    pub fn per_second(&self) -> u32 {
        self.per_second as u32
    }

    /// From now on, `per_second` (a full bucket when it changes): a connection
    /// takes its class's rate once it is known who it is.
    pub fn set_rate(&mut self, per_second: u32) {
        if per_second != self.per_second() {
            *self = RateLimit::new(per_second);
        }
    }

    /// Takes one request's token: false when the connection is over its rate.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    /// How long until a request would be allowed; zero if it would be now.
    pub fn wait(&self) -> Duration {
        self.wait_at(Instant::now())
    }

    fn wait_at(&self, now: Instant) -> Duration {
        if self.per_second == 0.0 {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let missing = 1.0 - (self.tokens + elapsed * self.per_second).min(self.per_second);
        Duration::from_secs_f64(missing.max(0.0) / self.per_second)
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// At most `per_second` log lines in each second; the first line allowed after
/// some were held back says how many.
#[derive(Debug, Clone)]
pub struct LogBudget {
    per_second: u32,
    window: Instant,
    used: u32,
    suppressed: u64,
}

/// What [`LogBudget::take`] decides for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTurn {
    /// Write it; `suppressed` lines were held back since the last one written.
    Write { suppressed: u64 },
    /// Hold it back (counted).
    Suppress,
}

impl LogBudget {
    pub fn new(per_second: u32) -> Self {
        LogBudget { per_second, window: Instant::now(), used: 0, suppressed: 0 }
    }

    /// Whether one more line may be written now.
    pub fn take(&mut self) -> LogTurn {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> LogTurn {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            (self.window, self.used) = (now, 0);
        }
        if self.used >= self.per_second {
            self.suppressed += 1;
            return LogTurn::Suppress;
        }
        self.used += 1;
        LogTurn::Write { suppressed: std::mem::take(&mut self.suppressed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10);
        r.last = t0;
        assert!((0..10).all(|_| r.allow_at(t0)), "a full second's burst is allowed");
        assert!(!r.allow_at(t0), "the eleventh is refused");
        assert!(!r.allow_at(t0 + Duration::from_millis(50)), "half a token is not enough");
        assert!(r.allow_at(t0 + Duration::from_millis(100)), "one token back after 1/10 s");
        assert!(!r.allow_at(t0 + Duration::from_millis(100)));
        let wait = r.wait_at(t0 + Duration::from_millis(100));
        assert!(wait.abs_diff(Duration::from_millis(100)) < Duration::from_millis(1), "the next in 1/10 s: {wait:?}");
        let later = t0 + Duration::from_secs(60);
        assert_eq!(r.wait_at(later), Duration::ZERO);
        assert_eq!((0..20).filter(|_| r.allow_at(later)).count(), 10, "the bucket holds one second's worth");
    }

    #[test]
    fn zero_means_no_limit() {
        let mut r = RateLimit::new(0);
        assert!((0..1_000_000).all(|_| r.allow()));
    }

    #[test]
    fn the_log_budget_holds_back_and_counts() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(2);
        b.window = t0;
        assert_eq!(b.take_at(t0), LogTurn::Write { suppressed: 0 });
        assert_eq!(b.take_at(t0), LogTurn::Write { suppressed: 0 });
        assert_eq!(b.take_at(t0), LogTurn::Suppress);
        assert_eq!(b.take_at(t0 + Duration::from_millis(999)), LogTurn::Suppress);
        assert_eq!(b.take_at(t0 + Duration::from_secs(1)), LogTurn::Write { suppressed: 2 });
        assert_eq!(b.take_at(t0 + Duration::from_secs(1)), LogTurn::Write { suppressed: 0 });
    }
}
