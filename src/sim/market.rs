//! The simulated market: per product, an order book that random-walks, trades
//! against it, and the feed messages that describe it, written as Coinbase writes them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rand::rngs::SmallRng;
use rand::RngExt;

use crate::clock;

/// Size units: sizes are integers of 1e-8.
const SIZE_DECIMALS: u32 = 8;
/// Levels kept per side of the book.
const DEPTH: usize = 40;

/// Static facts about a product.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: String,
    pub base: String,
    pub quote: String,
    /// Decimals of the quote increment (2 for 0.01).
    pub price_decimals: u32,
    /// Initial price in quote units.
    pub price: f64,
}

/// About twenty real Coinbase pairs with plausible prices.
pub const DEFAULT_PRODUCTS: [(&str, f64, u32); 20] = [
    ("BTC-USD", 95_000.0, 2),
    ("ETH-USD", 3_500.0, 2),
    ("ETH-BTC", 0.035, 5),
    ("SOL-USD", 180.0, 2),
    ("LTC-USD", 90.0, 2),
    ("BCH-USD", 450.0, 2),
    ("ADA-USD", 0.75, 4),
    ("XRP-USD", 2.1, 4),
    ("DOGE-USD", 0.3, 5),
    ("LINK-USD", 20.0, 3),
    ("DOT-USD", 6.5, 3),
    ("AVAX-USD", 35.0, 2),
    ("POL-USD", 0.45, 4),
    ("ATOM-USD", 8.0, 3),
    ("UNI-USD", 10.0, 3),
    ("BTC-EUR", 88_000.0, 2),
    ("ETH-EUR", 3_200.0, 2),
    ("BTC-GBP", 75_000.0, 2),
    ("USDT-USD", 1.0, 5),
    ("XLM-USD", 0.4, 6),
];

impl Spec {
    /// The spec for `id`: from the table, or a generic one for other pairs.
    pub fn for_id(id: &str) -> Option<Spec> {
        let id = crate::protocol::normalize_product(id)?;
        let (price, price_decimals) =
            DEFAULT_PRODUCTS.iter().find(|(p, _, _)| *p == id).map_or((100.0, 2), |(_, price, d)| (*price, *d));
        let (base, quote) = id.split_once('-')?;
        Some(Spec { base: base.into(), quote: quote.into(), id, price_decimals, price })
    }
}

/// One trade, as both `match` and `ticker` report it.
#[derive(Debug, Clone)]
pub struct Trade {
    pub trade_id: u64,
    pub sequence: u64,
    pub price: i64,
    pub size: i64,
    /// The taker's side.
    pub taker_buys: bool,
}

/// One product's live state.
pub struct MarketBook {
    pub spec: Spec,
    bids: BTreeMap<i64, i64>,
    asks: BTreeMap<i64, i64>,
    pub sequence: u64,
    pub trade_id: u64,
    open_24h: i64,
    high_24h: i64,
    low_24h: i64,
    volume_24h: i64,
    volume_30d: i64,
    /// Level changes not yet sent on `level2_batch`: (is_bid, price, size).
    pub pending_changes: Vec<(bool, i64, i64)>,
}

impl MarketBook {
    /// A book around the spec's price, with a history of numbers that look lived-in.
    pub fn new(spec: Spec, rng: &mut SmallRng) -> MarketBook {
        let scale = 10f64.powi(spec.price_decimals as i32);
        let mid = ((spec.price * scale) as i64).max(4 * DEPTH as i64);
        let mut book = MarketBook {
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            sequence: rng.random_range(1_000_000_000..50_000_000_000),
            trade_id: rng.random_range(1_000_000..900_000_000),
            open_24h: mid,
            high_24h: mid,
            low_24h: mid,
            volume_24h: rng.random_range(10_000..100_000) * 100_000_000,
            volume_30d: rng.random_range(300_000..3_000_000) * 100_000_000,
            pending_changes: Vec::new(),
            spec,
        };
        for i in 1..=DEPTH as i64 {
            book.bids.insert(mid - i * 2, random_size(rng));
            book.asks.insert(mid + i * 2, random_size(rng));
        }
        book
    }

    pub fn best_bid(&self) -> (i64, i64) {
        self.bids.iter().next_back().map_or((0, 0), |(p, s)| (*p, *s))
    }

    pub fn best_ask(&self) -> (i64, i64) {
        self.asks.iter().next().map_or((0, 0), |(p, s)| (*p, *s))
    }

    fn set_level(&mut self, is_bid: bool, price: i64, size: i64) {
        let side = if is_bid { &mut self.bids } else { &mut self.asks };
        if size == 0 {
            side.remove(&price);
        } else {
            side.insert(price, size);
        }
        self.pending_changes.push((is_bid, price, size));
    }

    /// Moves the market by one trade: new liquidity near the top, a taker hitting
    /// the best level, the far end trimmed. Returns the trade.
    pub fn step(&mut self, rng: &mut SmallRng) -> Trade {
        self.add_liquidity(rng);
        let taker_buys = rng.random_bool(0.5);
        let (price, level) = if taker_buys { self.best_ask() } else { self.best_bid() };
        let size = if rng.random_bool(0.3) { level } else { rng.random_range(1..=level.max(1)) };
        self.set_level(!taker_buys, price, level - size.min(level));
        self.refill(rng);
        self.trade_id += 1;
        self.sequence += rng.random_range(1..=4);
        self.high_24h = self.high_24h.max(price);
        self.low_24h = self.low_24h.min(price);
        self.volume_24h += size;
        self.volume_30d += size;
        Trade { trade_id: self.trade_id, sequence: self.sequence, price, size, taker_buys }
    }

    fn add_liquidity(&mut self, rng: &mut SmallRng) {
        let (bid, _) = self.best_bid();
        let (ask, _) = self.best_ask();
        let is_bid = rng.random_bool(0.5);
        let price = if is_bid { (ask - 1 - rng.random_range(0..6)).max(1) } else { bid + 1 + rng.random_range(0..6) };
        if (is_bid && price < ask) || (!is_bid && price > bid) {
            self.set_level(is_bid, price, random_size(rng));
        }
    }

    /// Keeps each side between half and full depth.
    fn refill(&mut self, rng: &mut SmallRng) {
        for is_bid in [true, false] {
            let side = if is_bid { &self.bids } else { &self.asks };
            let far = if is_bid { side.keys().next().copied() } else { side.keys().next_back().copied() };
            let len = side.len();
            let top = if is_bid { self.best_ask().0 - 1 } else { self.best_bid().0 + 1 };
            if len > DEPTH {
                if let Some(p) = far {
                    self.set_level(is_bid, p, 0);
                }
            } else if len < DEPTH / 2 {
                let from = far.unwrap_or(top);
                let price = if is_bid { (from - rng.random_range(1..4)).max(1) } else { from + rng.random_range(1..4) };
                if (is_bid && price < self.best_ask().0) || (!is_bid && price > self.best_bid().0) {
                    self.set_level(is_bid, price, random_size(rng));
                }
            }
        }
    }

    pub fn price(&self, p: i64) -> String {
        fixed(p, self.spec.price_decimals)
    }

    /// A `ticker` message for `t`, stamped now.
    pub fn ticker(&self, t: &Trade) -> String {
        let (bid, bid_size) = self.best_bid();
        let (ask, ask_size) = self.best_ask();
        let p = |v| self.price(v);
        let s = |v| fixed(v, SIZE_DECIMALS);
        format!(
            r#"{{"type":"ticker","sequence":{},"product_id":"{}","price":"{}","open_24h":"{}","volume_24h":"{}","low_24h":"{}","high_24h":"{}","volume_30d":"{}","best_bid":"{}","best_bid_size":"{}","best_ask":"{}","best_ask_size":"{}","side":"{}","time":"{}","trade_id":{},"last_size":"{}"}}"#,
            t.sequence,
            self.spec.id,
            p(t.price),
            p(self.open_24h),
            s(self.volume_24h),
            p(self.low_24h),
            p(self.high_24h),
            s(self.volume_30d),
            p(bid),
            s(bid_size),
            p(ask),
            s(ask_size),
            if t.taker_buys { "buy" } else { "sell" },
            clock::now_iso(),
            t.trade_id,
            s(t.size),
        )
    }

    /// A `match` message for `t`, stamped now. Its `side` is the maker's.
    pub fn match_message(&self, t: &Trade, rng: &mut SmallRng) -> String {
        format!(
            r#"{{"type":"match","trade_id":{},"maker_order_id":"{}","taker_order_id":"{}","side":"{}","size":"{}","price":"{}","product_id":"{}","sequence":{},"time":"{}"}}"#,
            t.trade_id,
            uuid(rng),
            uuid(rng),
            if t.taker_buys { "sell" } else { "buy" },
            fixed(t.size, SIZE_DECIMALS),
            self.price(t.price),
            self.spec.id,
            t.sequence,
            clock::now_iso(),
        )
    }

    /// A `heartbeat` message, stamped now.
    pub fn heartbeat(&self) -> String {
        format!(
            r#"{{"type":"heartbeat","last_trade_id":{},"product_id":"{}","sequence":{},"time":"{}"}}"#,
            self.trade_id,
            self.spec.id,
            self.sequence,
            clock::now_iso()
        )
    }

    /// The whole book as a `snapshot` message.
    pub fn snapshot(&self) -> String {
        let levels = |it: &mut dyn Iterator<Item = (&i64, &i64)>| {
            let mut out = String::new();
            for (i, (p, s)) in it.enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(out, r#"{sep}["{}","{}"]"#, self.price(*p), fixed(*s, SIZE_DECIMALS));
            }
            out
        };
        format!(
            r#"{{"type":"snapshot","product_id":"{}","asks":[{}],"bids":[{}]}}"#,
            self.spec.id,
            levels(&mut self.asks.iter()),
            levels(&mut self.bids.iter().rev())
        )
    }

    /// The pending level changes as one `l2update`, stamped now; `None` if there are none.
    pub fn take_l2update(&mut self) -> Option<String> {
        if self.pending_changes.is_empty() {
            return None;
        }
        let mut changes = String::new();
        for (i, (is_bid, p, s)) in self.pending_changes.drain(..).enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let side = if is_bid { "buy" } else { "sell" };
            let _ = write!(
                changes,
                r#"{sep}["{side}","{}","{}"]"#,
                fixed(p, self.spec.price_decimals),
                fixed(s, SIZE_DECIMALS)
            );
        }
        Some(format!(
            r#"{{"type":"l2update","product_id":"{}","changes":[{}],"time":"{}"}}"#,
            self.spec.id,
            changes,
            clock::now_iso()
        ))
    }
}

fn random_size(rng: &mut SmallRng) -> i64 {
    rng.random_range(100_000..500_000_000)
}

/// `v` scaled down by 10^decimals, as a decimal string.
pub fn fixed(v: i64, decimals: u32) -> String {
    if decimals == 0 {
        return v.to_string();
    }
    let scale = 10i64.pow(decimals);
    let sign = if v < 0 { "-" } else { "" };
    let v = v.unsigned_abs() as i64;
    format!("{sign}{}.{:0width$}", v / scale, v % scale, width = decimals as usize)
}

/// A random RFC 4122 version-4 UUID.
pub fn uuid(rng: &mut SmallRng) -> String {
    let a: u128 = rng.random::<u128>() & !(0xf << 76) & !(0x3 << 62) | (0x4 << 76) | (0x2 << 62);
    let h = format!("{a:032x}");
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The `status` channel's message for the given products.
pub fn status_message(specs: &[Spec]) -> String {
    let mut currencies: Vec<&str> = specs.iter().flat_map(|s| [s.base.as_str(), s.quote.as_str()]).collect();
    currencies.sort_unstable();
    currencies.dedup();
    let currencies: Vec<serde_json::Value> = currencies
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c, "name": c, "min_size": "0.00000001", "status": "online", "status_message": "",
                "max_precision": "0.00000001", "convertible_to": [], "funding_account_id": "",
                "details": {"type": "crypto", "symbol": "", "network_confirmations": 0, "sort_order": 0,
                            "crypto_address_link": "", "crypto_transaction_link": "", "push_payment_methods": ["crypto"]}
            })
        })
        .collect();
    let products: Vec<serde_json::Value> = specs
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id, "base_currency": s.base, "quote_currency": s.quote,
                "base_increment": "0.00000001", "quote_increment": fixed(1, s.price_decimals),
                "base_min_size": "0.00000001", "base_max_size": "1000000",
                "display_name": format!("{}/{}", s.base, s.quote), "status": "online", "status_message": "",
                "min_market_funds": "1", "max_market_funds": "1000000", "post_only": false, "limit_only": false,
                "cancel_only": false, "margin_enabled": false, "fx_stablecoin": false, "type": "spot"
            })
        })
        .collect();
    let body = serde_json::json!({"currencies": currencies, "products": products});
    // Coinbase puts `type` first; serde_json sorts keys, so splice it in front.
    let rest = body.to_string();
    format!(r#"{{"type":"status",{}"#, &rest[1..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn fixed_point_formatting() {
        assert_eq!(fixed(1, 2), "0.01");
        assert_eq!(fixed(9_500_000, 2), "95000.00");
        assert_eq!(fixed(123, 0), "123");
        assert_eq!(fixed(-5, 3), "-0.005");
    }

    #[test]
    fn the_book_never_crosses_and_tickers_agree_with_it() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut book = MarketBook::new(Spec::for_id("BTC-USD").unwrap(), &mut rng);
        let mut last_seq = book.sequence;
        for _ in 0..20_000 {
            let t = book.step(&mut rng);
            assert!(book.best_bid().0 < book.best_ask().0, "crossed book");
            assert!(t.sequence > last_seq);
            last_seq = t.sequence;
            let ticker: serde_json::Value = serde_json::from_str(&book.ticker(&t)).unwrap();
            assert_eq!(ticker["best_bid"], book.price(book.best_bid().0));
            assert_eq!(ticker["best_ask"], book.price(book.best_ask().0));
        }
    }

    #[test]
    fn a_seed_reproduces_the_run() {
        let run = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut book = MarketBook::new(Spec::for_id("ETH-USD").unwrap(), &mut rng);
            (0..100).map(|_| book.step(&mut rng).price).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid(&mut SmallRng::seed_from_u64(1));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    }
}
