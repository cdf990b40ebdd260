//! Coinbase `subscribe` / `unsubscribe` requests, read as the exchange reads them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use super::Channel;

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
    /// Its `key` field, as sent: with access control, hedgehog takes its own API
    /// key or a token there, where Coinbase clients send theirs.
    pub key: Option<String>,
}

/// A request sorted out as Coinbase sorts it, against what one server serves.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Classified {
    /// The channels to act on, each with the named products the server knows:
    /// empty when none of them is known, or none was named (`status` names none).
    pub channels: BTreeMap<Channel, BTreeSet<String>>,
    /// Ready `error` messages in the order they go on the wire: the refused
    /// channels in the request's order, then the unknown products, sorted.
    pub errors: Vec<String>,
}

impl Request {
    /// Sorts the request out for a server that serves the channels `offered` and
    /// the products it `knows`. The simulator and the relay both answer with it,
    /// so a client sees the same errors from either.
    ///
    /// An unsubscribe says less: an authenticated channel or an unknown product
    /// in it is dropped without an error (nothing can be subscribed to them).
    pub fn classify(&self, offered: impl Fn(Channel) -> bool, knows: impl Fn(&str) -> bool) -> Classified {
        let subscribe = self.kind == RequestKind::Subscribe;
        let error = |reason: &str| super::error_message(self.kind.failure(), reason);
        let mut out = Classified::default();
        let mut unknown = BTreeSet::new();
        for (name, products) in &self.channels {
            let channel = match self.channel(name, &offered) {
                Ok(channel) => channel,
                Err(reason) => {
                    out.errors.extend(reason.map(|r| error(&r)));
                    continue;
                }
            };
            let kept = out.channels.entry(channel).or_default();
            if channel.takes_products() {
                let (known, other): (Vec<&String>, Vec<&String>) = products.iter().partition(|p| knows(p));
                kept.extend(known.into_iter().cloned());
                unknown.extend(other.into_iter().filter(|_| subscribe));
            }
        }
        out.errors.extend(unknown.into_iter().map(|p| error(&super::invalid_product(p))));
        out
    }

    /// The channel `name` means, or why it is refused: the reason its error
    /// gives, if it gets one.
    fn channel(&self, name: &str, offered: impl Fn(Channel) -> bool) -> Result<Channel, Option<String>> {
        if super::AUTHENTICATED_CHANNELS.contains(&name) {
            return Err((self.kind == RequestKind::Subscribe).then(|| super::AUTH_REQUIRED.to_string()));
        }
        match Channel::parse(name) {
            Some(channel) if offered(channel) => Ok(channel),
            Some(_) => Err(Some(format!("{name} is not relayed by hedgehog"))),
            None => Err(Some(format!("{name} is not a valid channel"))),
        }
    }
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
    Ok(Request { kind, channels, authenticated, key: wire.key })
}

/// An in-band `{"type":"auth","token":...}` (a fresh token or key for the
/// session): `None` for any other message; else the token, or a ready `error`
/// message when it has none.
pub fn parse_auth(text: &[u8]) -> Option<Result<String, String>> {
    #[derive(Deserialize)]
    struct Auth {
        #[serde(rename = "type")]
        kind: Option<String>,
        token: Option<Value>,
    }
    // Only a message that can be one is parsed twice.
    if !text.windows(6).any(|w| w == b"\"auth\"") {
        return None;
    }
    let auth: Auth = serde_json::from_slice(text).ok()?;
    if auth.kind.as_deref() != Some("auth") {
        return None;
    }
    Some(match auth.token {
        Some(Value::String(token)) => Ok(token),
        _ => Err(super::error_message(AUTH_FAILED, "an auth message needs a `token` string")),
    })
}

/// The `message` of an error about an in-band `auth`.
pub const AUTH_FAILED: &str = "Failed to authenticate";

/// The cumulative `subscriptions` reply for a connection's whole subscription
/// set, keyed by channel or channel name. Channels are listed by name, whatever
/// order the keys sort in.
pub fn subscriptions_message<K: AsRef<str>>(subs: &BTreeMap<K, BTreeSet<String>>) -> String {
    let mut subs: Vec<(&str, &BTreeSet<String>)> = subs.iter().map(|(k, v)| (k.as_ref(), v)).collect();
    subs.sort_by_key(|(name, _)| *name);
    let channels: Vec<String> = subs
        .into_iter()
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

    #[test]
    fn an_auth_message_is_told_apart_from_requests() {
        assert_eq!(parse_auth(br#"{"type":"auth","token":"hh_x"}"#), Some(Ok("hh_x".into())));
        assert!(matches!(parse_auth(br#"{"type":"auth"}"#), Some(Err(e)) if e.contains("needs a `token`")));
        assert!(matches!(parse_auth(br#"{"type":"auth","token":5}"#), Some(Err(_))));
        assert_eq!(parse_auth(br#"{"type":"subscribe","channels":["auth"]}"#), None);
        assert_eq!(parse_auth(b"not json \"auth\""), None);
    }

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

    /// What the relay serves: the relayed channels, and products from a short list.
    fn relayed(text: &str) -> Classified {
        let known = ["BTC-USD", "ETH-USD"];
        parse_request(text.as_bytes()).unwrap().classify(Channel::is_relayed, |p| known.contains(&p))
    }

    fn reasons(c: &Classified) -> Vec<String> {
        c.errors.iter().map(|e| serde_json::from_str::<Value>(e).unwrap()["reason"].as_str().unwrap().into()).collect()
    }

    #[test]
    fn channel_errors_come_in_request_order_then_unknown_products_sorted() {
        let c = relayed(
            r#"{"type":"subscribe","product_ids":["ZZZ-USD","BTC-USD","AAA-USD"],"channels":["ticker","status","full","bogus",{"name":"matches","product_ids":["ETH-USD","AAA-USD"]}]}"#,
        );
        assert_eq!(
            reasons(&c),
            [
                "bogus is not a valid channel",
                super::super::AUTH_REQUIRED,
                "status is not relayed by hedgehog",
                "AAA-USD is not a valid product",
                "ZZZ-USD is not a valid product",
            ]
        );
        assert!(c.errors[0].starts_with(r#"{"type":"error","message":"Failed to subscribe","#), "{}", c.errors[0]);
        let set = |ps: &[&str]| ps.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            c.channels,
            BTreeMap::from([(Channel::Ticker, set(&["BTC-USD"])), (Channel::Matches, set(&["BTC-USD", "ETH-USD"]))])
        );
    }

    #[test]
    fn an_unsubscribe_names_only_the_channels_it_cannot_mean() {
        let c = relayed(r#"{"type":"unsubscribe","product_ids":["NOPE-USD"],"channels":["level2","bogus","ticker"]}"#);
        assert_eq!(reasons(&c), ["bogus is not a valid channel"]);
        assert!(c.errors[0].contains(r#""message":"Failed to unsubscribe""#));
        assert_eq!(c.channels, BTreeMap::from([(Channel::Ticker, BTreeSet::new())]), "kept, with no product");
    }

    #[test]
    fn status_names_no_product() {
        let r = parse_request(br#"{"type":"subscribe","product_ids":["NOPE-USD"],"channels":["status"]}"#).unwrap();
        let c = r.classify(|_| true, |_| false);
        assert_eq!(c, Classified { channels: BTreeMap::from([(Channel::Status, BTreeSet::new())]), errors: vec![] });
    }

    #[test]
    fn replies_list_channels_by_name_whatever_the_keys() {
        let subs = BTreeMap::from([(Channel::Ticker, BTreeSet::new()), (Channel::Heartbeat, BTreeSet::new())]);
        let v: Value = serde_json::from_str(&subscriptions_message(&subs)).unwrap();
        assert_eq!(v["channels"][0]["name"], "heartbeat");
        assert_eq!(v["channels"][1]["name"], "ticker");
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
