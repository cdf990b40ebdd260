//! Pulls `time`, `product_id` and `trade_id` out of a feed message without parsing it.

/// The fields the load generator measures by.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    pub kind: &'a str,
    pub product: &'a str,
    pub trade_id: Option<u64>,
    /// Microseconds since the epoch.
    pub time: Option<i64>,
}

fn find<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let i = text.find(key)?;
    Some(&text[i + key.len()..])
}

fn string_at(rest: &str) -> Option<&str> {
    let end = rest.find('"')?;
    Some(&rest[..end])
}

pub fn fields(text: &str) -> Fields<'_> {
    let kind = find(text, r#""type":""#).and_then(string_at).unwrap_or("");
    let product = find(text, r#""product_id":""#).and_then(string_at).unwrap_or("");
    let trade_id = find(text, r#""trade_id":"#).and_then(|r| {
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        r[..end].parse().ok()
    });
    let time = find(text, r#""time":""#).and_then(string_at).and_then(hedgehog::clock::parse_iso);
    Fields { kind, product, trade_id, time }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_match() {
        let m = r#"{"type":"match","trade_id":280232,"side":"sell","product_id":"SKL-BTC","sequence":177100030,"time":"2021-04-17T16:43:37.089723Z"}"#;
        let f = fields(m);
        assert_eq!((f.kind, f.product, f.trade_id), ("match", "SKL-BTC", Some(280232)));
        assert_eq!(f.time, hedgehog::clock::parse_iso("2021-04-17T16:43:37.089723Z"));
    }
}
