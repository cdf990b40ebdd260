//! Finds a feed message's routing key without parsing it into a tree.
//!
//! The relay only needs `type`, `product_id`, `sequence` and `trade_id` to route a
//! message; everything else is forwarded as the bytes that arrived. The scanner walks
//! the top-level object once, skipping nested values by depth, and never allocates.

/// The fields of one message that decide where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoutingKey<'a> {
    /// The message's `type` (`ticker`, `match`, `l2update`, `error`, ...).
    pub kind: &'a str,
    /// Its `product_id`, when it has one.
    pub product_id: Option<&'a str>,
    /// Its per-product `sequence`, when it has one.
    pub sequence: Option<u64>,
    /// Its `trade_id`, on matches and tickers; a heartbeat's `last_trade_id`.
    pub trade_id: Option<u64>,
    /// Its `time`, as written.
    pub time: Option<&'a str>,
}

/// Scans one JSON object. `None` when the text is not an object with a string `type`.
pub fn scan(text: &[u8]) -> Option<RoutingKey<'_>> {
    let mut s = Scanner { b: text, i: 0 };
    let mut key = RoutingKey::default();
    let mut has_type = false;
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.eat(b'}').is_some() {
        return None;
    }
    loop {
        s.ws();
        let name = s.string()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        match name {
            b"type" => {
                key.kind = std::str::from_utf8(s.string()?).ok()?;
                has_type = true;
            }
            b"product_id" => key.product_id = Some(std::str::from_utf8(s.string()?).ok()?),
            b"sequence" => key.sequence = s.number()?,
            b"trade_id" | b"last_trade_id" => key.trade_id = s.number()?,
            b"time" => key.time = Some(std::str::from_utf8(s.string()?).ok()?),
            _ => s.skip_value()?,
        }
        s.ws();
        match s.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    has_type.then_some(key)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.b.get(self.i) == Some(&want)).then(|| self.i += 1)
    }

    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string's raw contents (escapes left as they are).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match self.next()? {
                b'"' => return Some(&self.b[start..self.i - 1]),
                b'\\' => {
                    self.next()?;
                }
                _ => {}
            }
        }
    }

    /// An unsigned integer; a value of another kind is skipped and gives `Some(None)`.
    fn number(&mut self) -> Option<Option<u64>> {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        let digits = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        if digits.is_empty() || matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            self.i = start;
            self.skip_value()?;
            return Some(None);
        }
        Some(digits.parse().ok())
    }

    fn skip_value(&mut self) -> Option<()> {
        match *self.b.get(self.i)? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => self.skip_nested(),
            _ => {
                let start = self.i;
                while self.b.get(self.i).is_some_and(|c| !b",}] \t\r\n".contains(c)) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    fn skip_nested(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Some(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_key_of_a_ticker() {
        let m = br#"{"type":"ticker","sequence":106614625991,"product_id":"BTC-USD","price":"102861.5","side":"buy","time":"2025-06-06T05:00:31.886136Z","trade_id":834270521}"#;
        let k = scan(m).unwrap();
        assert_eq!(k.kind, "ticker");
        assert_eq!(k.product_id, Some("BTC-USD"));
        assert_eq!(k.sequence, Some(106_614_625_991));
        assert_eq!(k.trade_id, Some(834_270_521));
    }

    #[test]
    fn skips_nested_values_and_escaped_quotes() {
        let m = br#"{ "changes": [["buy","1.0","0"]], "x": {"type":"inner","a":[1,{"b":"}"}]}, "s":"a\"b", "type" : "l2update", "product_id":"ETH-EUR" }"#;
        let k = scan(m).unwrap();
        assert_eq!((k.kind, k.product_id, k.sequence), ("l2update", Some("ETH-EUR"), None));
    }

    #[test]
    fn tolerates_odd_field_types() {
        let k = scan(br#"{"type":"heartbeat","sequence":"12","trade_id":1.5,"last":null}"#).unwrap();
        assert_eq!((k.kind, k.sequence, k.trade_id), ("heartbeat", None, None));
    }

    #[test]
    fn refuses_what_is_not_a_typed_object() {
        for m in [&b""[..], b"[]", b"{}", b"hello", b"{\"type\":1}", b"{\"a\":1}", b"{\"type\":\"x\"", b"{\"a\":[1,2}"]
        {
            assert_eq!(scan(m), None, "{}", String::from_utf8_lossy(m));
        }
    }

    #[test]
    fn never_panics_on_truncations_of_a_real_message() {
        let m = br#"{"type":"match","trade_id":280232,"maker_order_id":"2a0da34e","side":"sell","size":"985","price":"0.00001305","product_id":"SKL-BTC","sequence":177100030,"nested":[{"a":"\\"}]}"#;
        for end in 0..m.len() {
            let _ = scan(&m[..end]);
        }
        assert!(scan(m).is_some());
    }
}
