//! The products the feed's `status` channel lists, as `GET /api/v1/products`
//! shows them: what a client needs to pick a pair, not the whole listing.

use serde::{Deserialize, Serialize};

/// One product of a `status` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    /// `base_currency`, else the id's part before the dash.
    pub base: String,
    /// `quote_currency`, else the id's part after the dash.
    pub quote: String,
    /// `online`, `offline`, `delisted`...; `unknown` when the listing says nothing.
    pub status: String,
    /// `display_name` (`BTC/USD`), when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// `status_message`, when not empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
}

/// The products a `status` message lists, in its order; entries without an `id`
/// are skipped. `None` when the text is not a status listing.
pub fn listed(text: &[u8]) -> Option<Vec<Product>> {
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    Some(v.get("products")?.as_array()?.iter().filter_map(product).collect())
}

fn product(p: &serde_json::Value) -> Option<Product> {
    let id = p.get("id")?.as_str()?.to_string();
    let text = |key: &str| p.get(key).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(str::to_string);
    let (base, quote) = id.split_once('-').unwrap_or((&id, ""));
    Some(Product {
        base: text("base_currency").unwrap_or_else(|| base.to_string()),
        quote: text("quote_currency").unwrap_or_else(|| quote.to_string()),
        status: text("status").unwrap_or_else(|| "unknown".into()),
        display_name: text("display_name"),
        status_message: text("status_message"),
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_real_status_message() {
        let text = include_str!("../../tests/fixtures/status/status.json");
        let list = listed(text.as_bytes()).unwrap();
        assert!(!list.is_empty());
        let p = &list[0];
        assert!(!p.id.is_empty() && !p.base.is_empty() && !p.quote.is_empty() && !p.status.is_empty(), "{p:?}");
        assert_eq!(p.id, format!("{}-{}", p.base, p.quote));
    }

    #[test]
    fn fills_in_what_the_listing_leaves_out() {
        let list = listed(br#"{"type":"status","products":[{"id":"BTC-USD"},{"no":"id"}]}"#).unwrap();
        let want = Product {
            id: "BTC-USD".into(),
            base: "BTC".into(),
            quote: "USD".into(),
            status: "unknown".into(),
            display_name: None,
            status_message: None,
        };
        assert_eq!(list, vec![want]);
        assert_eq!(listed(br#"{"type":"ticker"}"#), None);
        assert_eq!(listed(b"not json"), None);
    }
}
