//! The replay's clock. Each record gets, at load, the moment it is due: an offset
//! in microseconds of capture time after the origin, the first record that has a
//! time. Offsets never go down, so capture order is always kept:
//!
//! - a record with no time (a `subscriptions` reply, a level2 `snapshot`) is due
//!   with the record before it, in its captured place;
//! - a record whose time steps back (the exchange's `time` is not monotonic
//!   across products) is due at once after the one before it, never waited for;
//! - a time at or before 1970 (`0001-01-01T00:00:00.000000Z` has been seen), or
//!   after the horizon the loader sets (tomorrow), is no time.
//!
//! While playing, [`Played`] counts how much capture time has gone by since the
//! clock started, at the replay's speed.

use std::time::Duration;

/// Gives records their due offsets, in capture order.
#[derive(Debug)]
pub struct Pacer {
    origin: Option<i64>,
    latest: i64,
    /// Times after this are no times (a stamp in the year 33658 has been seen).
    horizon: i64,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer { origin: None, latest: 0, horizon: i64::MAX }
    }
}

impl Pacer {
    /// A pacer that takes times after `horizon` (microseconds) for no time.
    pub fn with_horizon(horizon: i64) -> Self {
        Pacer { horizon, ..Pacer::default() }
    }

    /// The offset of the next record, whose time is `time` (microseconds since
    /// the epoch) if it has one.
    pub fn offset(&mut self, time: Option<i64>) -> i64 {
        let time = time.filter(|&t| t > 0 && t <= self.horizon);
        let Some(origin) = self.origin else {
            if let Some(t) = time {
                self.origin = Some(t);
                self.latest = t;
            }
            return 0;
        };
        if let Some(t) = time {
            self.latest = self.latest.max(t);
        }
        self.latest - origin
    }

    /// The capture time of the origin, once a record has had a time.
    pub fn origin(&self) -> Option<i64> {
        self.origin
    }
}

/// How much capture time has been played.
#[derive(Debug, Clone)]
pub struct Played {
    /// Real time played since the clock started; `None` before.
    real: Option<Duration>,
    /// How much faster than captured; 0 plays everything at once.
    speed: f64,
}

impl Played {
    pub fn new(speed: f64) -> Self {
        Played { real: None, speed }
    }

    pub fn start(&mut self) {
        self.real.get_or_insert(Duration::ZERO);
    }

    pub fn started(&self) -> bool {
        self.real.is_some()
    }

    /// Starts again from the origin (the next pass of a looping replay).
    pub fn restart(&mut self) {
        self.real = Some(Duration::ZERO);
    }

    /// `elapsed` of real time went by while playing.
    pub fn advance(&mut self, elapsed: Duration) {
        if let Some(real) = &mut self.real {
            *real = real.saturating_add(elapsed);
        }
    }

    /// Whether a record due at `offset` (microseconds of capture time) is due now.
    pub fn due(&self, offset: i64) -> bool {
        match self.real {
            None => false,
            Some(_) if self.unpaced() => true,
            Some(real) => offset as f64 <= real.as_micros() as f64 * self.speed,
        }
    }

    /// Whether it plays as fast as possible.
    pub fn unpaced(&self) -> bool {
        self.speed <= 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(times: &[Option<i64>]) -> Vec<i64> {
        let mut p = Pacer::default();
        times.iter().map(|t| p.offset(*t)).collect()
    }

    #[test]
    fn untimed_first_lines_wait_for_nothing() {
        // Real captures open with a `subscriptions` reply and snapshots: no time.
        let t0 = 1_618_677_817_000_000;
        assert_eq!(offsets(&[None, None, Some(t0), None, Some(t0 + 500)]), [0, 0, 0, 0, 500]);
    }

    #[test]
    fn a_time_that_steps_back_keeps_its_place_and_stalls_nothing() {
        let t0 = 1_618_677_817_000_000;
        let got = offsets(&[Some(t0), Some(t0 + 1000), Some(t0 + 400), Some(t0 + 900), Some(t0 + 1500), None]);
        assert_eq!(got, [0, 1000, 1000, 1000, 1500, 1500]);
    }

    #[test]
    fn times_at_or_before_the_epoch_are_no_times() {
        let t0 = 1_618_677_817_000_000;
        let year_one = crate::clock::parse_iso("0001-01-01T00:00:00.000000Z").unwrap();
        assert_eq!(offsets(&[Some(year_one), Some(t0), Some(0), Some(t0 + 7)]), [0, 0, 0, 7]);
    }

    #[test]
    fn played_time_runs_at_the_speed_from_the_start() {
        let mut p = Played::new(2.0);
        assert!(!p.due(0), "nothing is due before the clock starts");
        p.advance(Duration::from_secs(1));
        p.start();
        assert!(p.due(0) && !p.due(1));
        p.advance(Duration::from_millis(500));
        assert!(p.due(1_000_000) && !p.due(1_000_001), "half a second at 2x is a second of capture");
        p.restart();
        assert!(p.due(0) && !p.due(1));
        let mut fast = Played::new(0.0);
        fast.start();
        assert!(fast.due(i64::MAX) && fast.unpaced());
    }
}
