//! `simulate --replay FILE` (and `hedgehog --replay FILE`): a capture of the feed
//! sent again byte for byte, in capture order, paced by its times.
//!
//! - [`formats`]: the capture formats, told apart line by line; gzip.
//! - [`clock`]: when each message is due, and how much capture time has played.
//! - [`state`]: what a fresh subscriber gets first, as of the replay point.
//! - [`progress`]: how far it has got, for `/healthz`.
//!
//! The clock starts at the first subscription to a product in the capture (a
//! `status`-only subscribe does not start it); with `--loop` the capture starts
//! again from the top at its end, and what a fresh subscriber gets starts again too.

mod clock;
mod formats;
mod progress;
mod state;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use progress::ReplayProgress;

use self::clock::{Pacer, Played};
use self::formats::{Format, Line};
use self::state::{Kind, PlayedState};
use crate::protocol::{self, Channel};
use crate::ws::{self, Frame};

/// One captured feed message.
pub struct Record {
    pub channel: Channel,
    /// Its product, as an index into [`Replay::products`].
    product: u32,
    kind: Kind,
    /// Due this long (microseconds of capture time) after the origin.
    at: i64,
    /// The captured message, exactly, as one server frame.
    pub frame: Frame,
}

/// A loaded capture and how far it has been played.
pub struct Replay {
    records: Vec<Record>,
    products: Vec<String>,
    next: usize,
    played: Played,
    state: PlayedState,
    looping: bool,
    progress: Arc<ReplayProgress>,
}

/// What one call to [`Replay::play`] played.
pub struct Turn {
    /// The records now due, in order (indices for [`Replay::record`]).
    pub due: Range<usize>,
    /// More is due at once (a replay at full speed that stopped at its batch size).
    pub more: bool,
}

impl Replay {
    /// Reads a capture in any of the [`formats`], plain or gzip. A file that
    /// cannot be read, or holds nothing to replay, is a one-line error.
    pub fn load(path: &Path, speed: f64, looping: bool) -> Result<Replay, String> {
        let (reader, gzip) = formats::open(path)?;
        // A time past tomorrow is no time: one bad stamp would hold up the rest for ever.
        let mut loader =
            Loader { pacer: Pacer::with_horizon(crate::clock::now_micros() + 86_400_000_000), ..Loader::default() };
        if let Err(e) = formats::for_each_line(reader, |line| loader.line(line)) {
            // A gzip cut short (a recorder stopped mid-file) still replays what it holds.
            log::warn!("replay: reading {} stopped early: {e}", path.display());
        }
        let summary = loader.summary(gzip);
        if loader.records.is_empty() {
            return Err(format!("{} holds no replayable feed message ({summary})", path.display()));
        }
        if loader.unparseable + loader.too_long + loader.misnamed > 0 {
            log::warn!("replay: {}: {summary}", path.display());
        } else {
            log::info!("replay: {}: {summary}", path.display());
        }
        let messages = loader.records.len();
        let progress = ReplayProgress::new(path.to_path_buf(), messages, speed, looping, loader.pacer.origin());
        Ok(Replay {
            state: PlayedState::new(loader.products.len()),
            records: loader.records,
            products: loader.products,
            next: 0,
            played: Played::new(speed),
            looping,
            progress: Arc::new(progress),
        })
    }

    /// The products in the capture, in order of first appearance.
    pub fn products(&self) -> &[String] {
        &self.products
    }

    /// The `i`th record and its product.
    pub fn record(&self, i: usize) -> (&Record, &str) {
        let r = &self.records[i];
        (r, &self.products[r.product as usize])
    }

    pub fn progress(&self) -> Arc<ReplayProgress> {
        self.progress.clone()
    }

    /// Starts the clock (once; later calls do nothing).
    pub fn start(&mut self) {
        if !self.played.started() {
            self.played.start();
            self.progress.set_started();
        }
    }

    /// Plays on after `elapsed` of real time: the records now due, up to `max` of
    /// them and about `max_bytes` (the one that passes it included), taken into
    /// the state a fresh subscriber is answered from. At the end of a looping
    /// capture it starts the next pass (and plays nothing in that turn, so even a
    /// tiny capture at full speed leaves the executor time between passes).
    pub fn play(&mut self, elapsed: Duration, max: usize, max_bytes: usize) -> Turn {
        let idle = Turn { due: self.next..self.next, more: false };
        if !self.played.started() {
            return idle;
        }
        if self.next == self.records.len() {
            if self.looping {
                self.next = 0;
                self.played.restart();
                self.state.reset();
                self.progress.pass_done();
            }
            return Turn { due: self.next..self.next, more: false };
        }
        self.played.advance(elapsed);
        let (start, mut bytes) = (self.next, 0);
        let mut cut = false;
        while self.next < self.records.len() {
            let r = &self.records[self.next];
            if !self.played.due(r.at) {
                break;
            }
            if self.next - start == max || bytes >= max_bytes {
                cut = true; // more is due: the next turn comes at once
                break;
            }
            self.state.take(r.product as usize, r.kind, &r.frame);
            bytes += r.frame.len();
            self.next += 1;
        }
        if self.next > start {
            self.progress.set_played(self.next, self.records[self.next - 1].at);
        }
        Turn { due: start..self.next, more: cut }
    }

    /// What a fresh subscriber to (`product`, `channel`) gets first: the latest
    /// ticker, the latest trade as a `last_match`, the book as a `snapshot`, as of
    /// what has been played; nothing before the capture has shown one.
    pub fn first_frame(&self, product: &str, channel: Channel) -> Option<Frame> {
        let i = self.products.iter().position(|p| p == product)?;
        self.state.first_frame(i, product, channel)
    }
}

/// Builds the records line by line, counting what it skips.
#[derive(Default)]
struct Loader {
    records: Vec<Record>,
    products: Vec<String>,
    pacer: Pacer,
    /// Paced by the capture's own timestamps (decided by the first message line).
    by_capture_time: Option<bool>,
    /// Per product: whether its first ticker has been read.
    ticker_seen: Vec<bool>,
    formats: [usize; 3],
    unparseable: usize,
    aside: usize,
    /// JSON messages that are not a product's feed data (`subscriptions`, `status`, `error`, ...).
    other: usize,
    /// Feed data whose product id is not as the feed writes it (`btc-usd`).
    misnamed: usize,
    /// Lines longer than [`formats::MAX_LINE`], skipped.
    too_long: usize,
}

/// What became of a well-formed JSON message.
enum Took {
    /// A product's feed data: replayed.
    Data,
    /// Not a product's data (`subscriptions`, `status`, `error`, ...).
    Other,
    /// Feed data under a product id not written as the feed writes it.
    Misnamed,
}

impl Loader {
    /// One line of the capture; `Err(n)`: a line of `n` bytes, too long to keep.
    fn line(&mut self, line: Result<&[u8], usize>) {
        let Ok(line) = line else {
            self.too_long += 1;
            return;
        };
        match formats::parse_line(line) {
            Line::Aside => self.aside += 1,
            Line::Unparseable => self.unparseable += 1,
            Line::Message { format, stamp, json } => {
                // The frame goes out as text: its bytes must be UTF-8 (serde_json
                // lets invalid bytes through inside strings), or the relay takes
                // the feed for broken and reconnects, forever on a latest ticker.
                if std::str::from_utf8(json).is_err() || serde_json::from_slice::<serde::de::IgnoredAny>(json).is_err()
                {
                    self.unparseable += 1;
                    return;
                }
                match self.message(stamp, json) {
                    Took::Data => self.formats[format as usize] += 1,
                    Took::Other => self.other += 1,
                    Took::Misnamed => self.misnamed += 1,
                }
            }
        }
    }

    /// Takes one well-formed JSON message if it is a product's feed data.
    fn message(&mut self, stamp: Option<i64>, json: &[u8]) -> Took {
        let Some(key) = protocol::scan(json) else { return Took::Other };
        let (Some(channel), Some(name)) = (Channel::of_message(key.kind), key.product_id) else { return Took::Other };
        // Ids as the feed writes them (upper case): a relay asks for those, so
        // messages under `btc-usd` would be replayed to no one.
        if protocol::normalize_product(name).as_deref() != Some(name) {
            return Took::Misnamed;
        }
        let product = match self.products.iter().position(|p| p == name) {
            Some(i) => i,
            None => {
                self.products.push(name.to_string());
                self.ticker_seen.push(false);
                self.products.len() - 1
            }
        };
        let kind = Kind::of(key.kind);
        let time = if *self.by_capture_time.get_or_insert(stamp.is_some()) {
            stamp
        } else {
            // A `last_match`, and the ticker a subscribe is answered with, repeat an
            // earlier trade with its old time (minutes old for a quiet product): they
            // do not move the exchange-time clock.
            let repeat = key.kind == "last_match" || (kind == Kind::Ticker && !self.ticker_seen[product]);
            key.time.and_then(crate::clock::parse_iso).filter(|_| !repeat)
        };
        if kind == Kind::Ticker {
            self.ticker_seen[product] = true;
        }
        let at = self.pacer.offset(time);
        self.records.push(Record { channel, product: product as u32, kind, at, frame: ws::frame::text(json) });
        Took::Data
    }

    /// One line saying what was read.
    fn summary(&self, gzip: bool) -> String {
        let formats: Vec<&str> =
            Format::ALL.iter().filter(|f| self.formats[**f as usize] > 0).map(|f| f.name()).collect();
        let paced = match self.by_capture_time {
            Some(true) => "paced by the capture's timestamps",
            _ => "paced by the exchange's `time`",
        };
        format!(
            "{} messages of {} products ({}{}; {paced}); skipped {} unparseable lines, {} lines over {} MiB, \
             {} messages of products not written in upper case, {} other messages (subscriptions, status, \
             errors), {} requests, markers, headers and blank lines",
            self.records.len(),
            self.products.len(),
            if formats.is_empty() { "no format".to_string() } else { formats.join(", ") },
            if gzip { ", gzip" } else { "" },
            self.unparseable,
            self.too_long,
            formats::MAX_LINE >> 20,
            self.misnamed,
            self.other,
            self.aside,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_lines(name: &str, lines: &[&str]) -> Result<Replay, String> {
        let dir = std::env::temp_dir().join(format!("hedgehog-replay-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n")).unwrap();
        let r = Replay::load(&path, 1.0, false);
        std::fs::remove_file(&path).ok();
        r
    }

    fn offsets(r: &Replay) -> Vec<i64> {
        r.records.iter().map(|r| r.at).collect()
    }

    #[test]
    fn paces_by_the_capture_timestamps_when_lines_have_them() {
        let r = load_lines(
            "stamped",
            &[
                r#"1618677817.000000: {"type":"subscriptions","channels":[]}"#,
                r#"1618677817.000100: {"type":"snapshot","product_id":"A-B","bids":[],"asks":[]}"#,
                // The exchange's time says a year earlier: the capture's own time wins.
                r#"1618677817.500000: {"type":"ticker","product_id":"A-B","time":"2020-04-17T16:43:37.000000Z"}"#,
                "# a marker",
                r#"1618677818.000000: {"type":"ticker","product_id":"A-B","time":"2020-04-17T16:43:37.000000Z"}"#,
            ],
        )
        .unwrap();
        assert_eq!(offsets(&r), [0, 500_000 - 100, 1_000_000 - 100]);
        assert_eq!(r.products(), ["A-B"]);
    }

    #[test]
    fn paces_by_the_exchange_time_but_not_by_repeats() {
        let r = load_lines(
            "exchange",
            &[
                r#"{"type":"snapshot","product_id":"A-B","bids":[],"asks":[]}"#,
                // Repeats with old times: no origin from them.
                r#"{"type":"ticker","product_id":"A-B","time":"2021-04-17T16:00:00.000000Z"}"#,
                r#"{"type":"last_match","product_id":"A-B","trade_id":1,"time":"2021-04-17T15:00:00.000000Z"}"#,
                r#"{"type":"match","product_id":"A-B","trade_id":2,"time":"2021-04-17T16:43:37.000000Z"}"#,
                r#"{"type":"ticker","product_id":"A-B","time":"2021-04-17T16:43:37.000000Z"}"#,
                r#"{"type":"ticker","product_id":"C-D","time":"2021-04-17T16:43:36.000000Z"}"#,
                r#"{"type":"ticker","product_id":"C-D","time":"2021-04-17T16:43:38.000000Z"}"#,
            ],
        )
        .unwrap();
        assert_eq!(offsets(&r), [0, 0, 0, 0, 0, 0, 1_000_000]);
    }

    #[test]
    fn what_a_relay_could_not_take_is_skipped_and_counted() {
        // (matches: a product's first ticker is taken for a repeat, with no time)
        let trade = |p: &str, t: &str| format!(r#"{{"type":"match","product_id":"{p}","time":"{t}"}}"#);
        let (ok, later) = ("2021-04-17T16:43:37Z", "2021-04-17T16:43:38Z");
        let mut lines = vec![trade("BTC-USD", ok), trade("btc-usd", ok), trade("BTC-USD", "9999-12-31T23:59:59Z")];
        lines.push(trade("BTC-USD", later));
        let dir = std::env::temp_dir().join(format!("hedgehog-replay-unit-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("skip");
        let mut bytes = lines.join("\n").into_bytes();
        // Not UTF-8 inside a string: serde_json alone would take it.
        bytes.extend_from_slice(b"\n{\"type\":\"ticker\",\"product_id\":\"BTC-USD\",\"price\":\"\xff\"}\n");
        // Longer than the relay takes.
        bytes.extend_from_slice(
            format!(r#"{{"type":"ticker","product_id":"BTC-USD","pad":"{}"}}"#, "p".repeat(formats::MAX_LINE))
                .as_bytes(),
        );
        bytes.extend_from_slice(b"\n");
        bytes.extend_from_slice(trade("BTC-USD", later).as_bytes());
        std::fs::write(&path, bytes).unwrap();
        let r = Replay::load(&path, 1.0, false).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        // The lower-case id, the bad bytes and the long line are left out; the
        // stamp in the year 9999 is no time, so nothing waits for it.
        assert_eq!(r.records.len(), 4);
        assert_eq!(offsets(&r), [0, 0, 1_000_000, 1_000_000]);
    }

    #[test]
    fn a_turn_plays_about_its_byte_budget_and_says_more_is_due() {
        let line = |i: u64| {
            format!(r#"{{"type":"ticker","product_id":"BTC-USD","sequence":{i},"time":"2021-04-17T16:43:37Z"}}"#)
        };
        let lines: Vec<String> = (0..10).map(line).collect();
        let mut r = load_lines("budget", &lines.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        r.start();
        let size = r.records[0].frame.len();
        let turn = r.play(Duration::ZERO, 1024, 3 * size);
        assert_eq!((turn.due, turn.more), (0..3, true), "three fill the budget");
        let turn = r.play(Duration::ZERO, 1024, usize::MAX);
        assert_eq!((turn.due, turn.more), (3..10, false));
    }

    #[test]
    fn nothing_replayable_is_a_one_line_error() {
        let e = load_lines("junk", &["hello", r#"{"type":"subscriptions","channels":[]}"#, "", "[1]"]).err().unwrap();
        assert!(e.contains("holds no replayable feed message") && !e.contains('\n'), "{e}");
        assert!(e.contains("2 unparseable lines") && e.contains("1 other messages"), "{e}");
        let e = Replay::load(Path::new("/nonexistent/capture"), 1.0, false).err().unwrap();
        assert!(e.starts_with("cannot read /nonexistent/capture"), "{e}");
    }

    #[test]
    fn loops_start_again_with_fresh_state() {
        let mut r = load_lines(
            "loop",
            &[
                r#"{"type":"match","product_id":"A-B","trade_id":1,"time":"2021-04-17T16:43:37.000000Z"}"#,
                r#"{"type":"match","product_id":"A-B","trade_id":2,"time":"2021-04-17T16:43:38.000000Z"}"#,
            ],
        )
        .unwrap();
        r.looping = true;
        assert_eq!(r.play(Duration::from_secs(5), 10, usize::MAX).due, 0..0, "not started");
        r.start();
        assert_eq!(r.play(Duration::ZERO, 10, usize::MAX).due, 0..1);
        assert_eq!(r.play(Duration::from_millis(999), 10, usize::MAX).due, 1..1);
        assert_eq!(r.play(Duration::from_millis(1), 10, usize::MAX).due, 1..2);
        assert!(r.first_frame("A-B", Channel::Matches).is_some());
        assert_eq!(
            r.play(Duration::ZERO, 10, usize::MAX).due,
            0..0,
            "the turn that starts the next pass plays nothing"
        );
        assert!(r.first_frame("A-B", Channel::Matches).is_none(), "the state starts again too");
        assert_eq!(r.play(Duration::ZERO, 10, usize::MAX).due, 0..1);
        assert_eq!(r.progress().report()["passes_completed"], 1);
    }
}
