//! The Coinbase Exchange feed protocol: channels and topics, product ids, subscribe
//! requests and the exact error texts, shared by the simulator and the relay.

mod channel;
mod request;
mod scan;

pub use channel::{Channel, Topic};
pub use request::{parse_request, subscriptions_message, Classified, Request, RequestKind};
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
    fn reads_the_product_out_of_an_error() {
        assert_eq!(product_of_error("GIBBERISH-USD is not a valid product"), Some("GIBBERISH-USD"));
        assert_eq!(product_of_error(&invalid_product("XYZ-USD")), Some("XYZ-USD"));
        assert_eq!(product_of_error(" is not a valid product"), Some(""));
        assert_eq!(product_of_error("No channels provided"), None);
    }
}
