//! Coinbase `subscribe` / `unsubscribe` requests, read as the exchange reads them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

/// Subscribe or unsubscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Subscribe,
    Unsubscribe,
}

impl RequestKind {
    /// The `message` of an error about this kind of request.
    pub fn failure(self) -> &'static str {
        match self {
            RequestKind::Subscribe => "Failed to subscribe",
            RequestKind::Unsubscribe => "Failed to unsubscribe",
        }
    }
}

/// One request, with every channel's product list already resolved: the top-level
/// `product_ids` apply to every channel and a channel object's own list is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    /// Canonical channel name -> products (empty: no products named).
    pub channels: BTreeMap<String, BTreeSet<String>>,
    /// Whether the request carried credentials (`key`, `signature`, ...).
    pub authenticated: bool,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    product_ids: Vec<String>,
    channels: Option<Vec<ChannelSpec>>,
    signature: Option<String>,
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChannelSpec {
    Name(String),
    Object { name: String, product_ids: Option<Vec<String>> },
}

/// Reads one client message. The error is a ready Coinbase `error` message text.
pub fn parse_request(text: &[u8]) -> Result<Request, String> {
    let wire: Wire = match serde_json::from_slice::<Value>(text) {
        Err(e) => return Err(super::error_message("Malformed JSON", &e.to_string())),
        Ok(v) => serde_json::from_value(v)
            .map_err(|e| super::error_message("Failed to subscribe", &format!("Malformed request: {e}")))?,
    };
    let kind = match wire.kind.as_deref() {
        Some("subscribe") => RequestKind::Subscribe,
        Some("unsubscribe") => RequestKind::Unsubscribe,
        _ => return Err(super::error_message("Failed to subscribe", "Type has to be either subscribe or unsubscribe")),
    };
    let specs = wire.channels.unwrap_or_default();
    if specs.is_empty() {
        return Err(super::error_message(kind.failure(), "No channels provided"));
    }
    let mut channels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for spec in specs {
        let (name, own) = match spec {
            ChannelSpec::Name(name) => (name, None),
            ChannelSpec::Object { name, product_ids } => (name, product_ids),
        };
        let entry = channels.entry(super::canonical_channel(&name).to_string()).or_default();
        entry.extend(wire.product_ids.iter().cloned());
        match own {
            // Seen on Coinbase: an explicit empty list names the empty product.
            Some(list) if list.is_empty() => {
                entry.insert(String::new());
            }
            Some(list) => entry.extend(list),
            None => {}
        }
    }
    let authenticated = wire.signature.is_some() && wire.key.is_some();
    Ok(Request { kind, channels, authenticated })
}

/// The cumulative `subscriptions` reply for a connection's whole subscription set.
pub fn subscriptions_message(subs: &BTreeMap<String, BTreeSet<String>>) -> String {
    let channels: Vec<String> = subs
        .iter()
        .map(|(name, products)| {
            let ids: Vec<String> = products.iter().map(|p| super::json_string(p)).collect();
            format!(r#"{{"name":{},"product_ids":[{}],"account_ids":null}}"#, super::json_string(name), ids.join(","))
        })
        .collect();
    format!(r#"{{"type":"subscriptions","channels":[{}]}}"#, channels.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn products(r: &Request, ch: &str) -> Vec<String> {
        r.channels[ch].iter().cloned().collect()
    }

    #[test]
    fn top_level_products_apply_to_object_channels_too() {
        let r = parse_request(br#"{"type":"subscribe","product_ids":["ETH-USD","ETH-EUR"],"channels":["heartbeat",{"name":"ticker","product_ids":["ETH-BTC","ETH-USD"]}]}"#).unwrap();
        assert_eq!(r.kind, RequestKind::Subscribe);
        assert_eq!(products(&r, "heartbeat"), ["ETH-EUR", "ETH-USD"]);
        assert_eq!(products(&r, "ticker"), ["ETH-BTC", "ETH-EUR", "ETH-USD"]);
    }

    #[test]
    fn an_explicit_empty_list_names_the_empty_product() {
        let r = parse_request(br#"{"type":"subscribe","channels":[{"name":"ticker","product_ids":[]}]}"#).unwrap();
        assert_eq!(products(&r, "ticker"), [""]);
    }

    #[test]
    fn aliases_become_canonical() {
        let r = parse_request(br#"{"type":"unsubscribe","product_ids":["A-B"],"channels":["level2_50"]}"#).unwrap();
        assert_eq!(r.kind, RequestKind::Unsubscribe);
        assert!(r.channels.contains_key("level2_batch"));
    }

    #[test]
    fn errors_are_worded_as_coinbase_words_them() {
        let e = parse_request(br#"{"type":"unsubscribe","product_ids":["BTC-USD"]}"#).unwrap_err();
        assert_eq!(e, r#"{"type":"error","message":"Failed to unsubscribe","reason":"No channels provided"}"#);
        let e = parse_request(b"{nope").unwrap_err();
        assert!(e.contains(r#""message":"Malformed JSON""#), "{e}");
        let e = parse_request(br#"{"type":"dance","channels":["ticker"]}"#).unwrap_err();
        assert!(e.contains("Type has to be either subscribe or unsubscribe"), "{e}");
    }

    #[test]
    fn replies_list_every_channel_with_account_ids() {
        let mut subs = BTreeMap::new();
        subs.insert("ticker".to_string(), BTreeSet::from(["BTC-USD".to_string()]));
        assert_eq!(
            subscriptions_message(&subs),
            r#"{"type":"subscriptions","channels":[{"name":"ticker","product_ids":["BTC-USD"],"account_ids":null}]}"#
        );
    }
}
