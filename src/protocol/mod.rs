//! The Coinbase Exchange feed protocol: channels and topics, product ids, subscribe
//! requests and the exact error texts, the level2 book, shared by the simulator and
//! the relay.

mod book;
mod channel;
pub mod notes;
mod product;
mod request;
mod scan;

use std::borrow::Cow;

pub use book::Book;
pub use channel::{Channel, Topic};
pub use product::{listed as listed_products, Product};
pub use request::{parse_auth, parse_request, subscriptions_message, Classified, Request, RequestKind, AUTH_FAILED};
pub use scan::{scan, RoutingKey};

/// Channels that need an authenticated subscribe on Coinbase.
pub const AUTHENTICATED_CHANNELS: [&str; 6] = ["level2", "level3", "full", "user", "balance", "rfq_matches"];

/// Coinbase's reason text for an authenticated channel asked for without credentials.
pub const AUTH_REQUIRED: &str = "level2, level3, and full channels now require authentication. https://docs.cloud.coinbase.com/exchange/docs/websocket-auth";

/// Maps Coinbase's aliases to the channel's canonical name.
fn canonical_channel(name: &str) -> &str {
    match name {
        "level2_50" => "level2_batch",
        "ticker_1000" => "ticker_batch",
        other => other,
    }
}

/// A product id is `BASE-QUOTE`: two non-empty runs of ASCII letters and digits.
/// Returns it in upper case, or `None` when it is not of that form.
pub fn normalize_product(id: &str) -> Option<String> {
    let (base, quote) = id.split_once('-')?;
    let ok = |s: &str| !s.is_empty() && s.len() <= 16 && s.bytes().all(|c| c.is_ascii_alphanumeric());
    (ok(base) && ok(quote)).then(|| id.to_ascii_uppercase())
}

/// A Coinbase-format `error` message.
pub fn error_message(message: &str, reason: &str) -> String {
    format!(r#"{{"type":"error","message":{},"reason":{}}}"#, json_string(message), json_string(reason))
}

/// `s` as a JSON string literal, quotes included.
pub fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The reason Coinbase gives for a product it does not have: `XYZ-USD is not a valid product`.
pub fn invalid_product(product: &str) -> String {
    format!("{product} is not a valid product")
}

/// What a new subscriber of `matches` gets first, made from the latest trade:
/// a `match` retold as a `last_match`, the same text with only its `type`
/// changed (so its fields stay as the feed wrote them); a `last_match` as it is.
/// `None` for any other message. The simulator and the relay's feed state both
/// use it, so the two cannot tell a late joiner different things.
pub fn last_match(text: &[u8]) -> Option<Cow<'_, [u8]>> {
    let kind = scan(text)?.kind;
    match kind {
        "last_match" => Some(Cow::Borrowed(text)),
        "match" => {
            // `kind` lies inside `text`: the scanner returns slices of it.
            let start = kind.as_ptr() as usize - text.as_ptr() as usize;
            let (head, tail) = (text.get(..start)?, text.get(start + kind.len()..)?);
            Some(Cow::Owned([head, b"last_match", tail].concat()))
        }
        _ => None,
    }
}

/// The product an upstream error names, from reasons like `XYZ-USD is not a valid product`.
pub fn product_of_error(reason: &str) -> Option<&str> {
    reason.strip_suffix(" is not a valid product")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_product_ids() {
        assert_eq!(normalize_product("btc-usd").as_deref(), Some("BTC-USD"));
        assert_eq!(normalize_product("ETH-EUR").as_deref(), Some("ETH-EUR"));
        for bad in ["", "BTC", "BTC-", "-USD", "BTC_USD", "BTC-USD-X", "BT C-USD", "ÄB-USD"] {
            assert_eq!(normalize_product(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_match_is_retold_as_a_last_match_and_nothing_else_is() {
        let m = br#"{"type":"match","trade_id":3,"product_id":"A-B","price":"1"}"#;
        let want = br#"{"type":"last_match","trade_id":3,"product_id":"A-B","price":"1"}"#;
        assert_eq!(last_match(m).as_deref(), Some(&want[..]));
        assert!(matches!(last_match(want), Some(Cow::Borrowed(t)) if t == want), "a last_match stays as it is");
        let late = br#"{ "trade_id":3, "type" : "match","s":"\"type\":\"match\""}"#;
        let want = br#"{ "trade_id":3, "type" : "last_match","s":"\"type\":\"match\""}"#;
        assert_eq!(last_match(late).as_deref(), Some(&want[..]), "only the type changes, wherever it is");
        assert_eq!(last_match(br#"{"type":"ticker","trade_id":3}"#), None);
        assert_eq!(last_match(b"not json"), None);
    }

    #[test]
    fn reads_the_product_out_of_an_error() {
        assert_eq!(product_of_error("GIBBERISH-USD is not a valid product"), Some("GIBBERISH-USD"));
        assert_eq!(product_of_error(&invalid_product("XYZ-USD")), Some("XYZ-USD"));
        assert_eq!(product_of_error(" is not a valid product"), Some(""));
        assert_eq!(product_of_error("No channels provided"), None);
    }
}
