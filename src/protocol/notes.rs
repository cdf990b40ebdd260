//! hedgehog's own messages to its clients, beside Coinbase's: the `welcome`, the
//! acknowledgements of REST subscriptions, `gap` and `upstream` notes. Clients in
//! pure Coinbase mode (`?mode=coinbase`) get none of them.

use serde_json::json;

use super::Channel;

/// The first message of a WebSocket client: the id the REST API knows it by.
pub fn welcome(client_id: &str) -> String {
    json!({"type": "welcome", "client_id": client_id}).to_string()
}

/// A subscription made (`subscribed`) or ended through the REST API, sent on the
/// client's own connection ahead of the data it changes.
pub fn subscription_changed(client_id: &str, product: &str, channels: &[Channel], subscribed: bool) -> String {
    let kind = if subscribed { "subscribed" } else { "unsubscribed" };
    json!({"type": kind, "client_id": client_id, "product_id": product, "channels": channels}).to_string()
}

/// A subscription ended by hedgehog, not by the client: the access rules no
/// longer allow it (a reload, or a refreshed token), `reason` says which rule.
pub fn subscription_withdrawn(client_id: &str, product: &str, channels: &[Channel], reason: &str) -> String {
    json!({
        "type": "unsubscribed",
        "client_id": client_id,
        "product_id": product,
        "channels": channels,
        "reason": reason,
    })
    .to_string()
}

/// The session's token expires at `expires` (unix seconds): send a fresh one
/// in-band (`{"type":"auth","token":...}`) or be closed then.
pub fn token_expiring(principal: &str, expires: u64) -> String {
    json!({
        "type": "auth",
        "event": "expiring",
        "principal": principal,
        "expires": crate::clock::format_iso(expires.saturating_mul(1_000_000).min(i64::MAX as u64) as i64),
        "message": "the token expires soon: send {\"type\":\"auth\",\"token\":...} with a fresh one to stay connected",
    })
    .to_string()
}

/// An in-band `auth` was taken: the session is `principal`'s, of `class`,
/// until `expires` (unix seconds; `None`: a key, which does not expire).
pub fn auth_accepted(principal: &str, class: &str, expires: Option<u64>) -> String {
    let expires = expires.map(|e| crate::clock::format_iso(e.saturating_mul(1_000_000).min(i64::MAX as u64) as i64));
    json!({"type": "auth", "event": "accepted", "principal": principal, "class": class, "expires": expires}).to_string()
}

/// Trades went missing on `product`: it is being resubscribed.
pub fn gap(product: &str, expected: u64, received: u64) -> String {
    json!({
        "type": "gap",
        "product_id": product,
        "expected_trade_id": expected,
        "received_trade_id": received,
        "time": crate::clock::now_iso(),
    })
    .to_string()
}

/// The upstream's state changed (`connected`, `reconnecting`...), and why.
pub fn upstream(state: &str, reason: Option<&str>) -> String {
    json!({"type": "upstream", "state": state, "reason": reason, "time": crate::clock::now_iso()}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_carry_their_fields() {
        assert_eq!(welcome("0-1-ab"), r#"{"client_id":"0-1-ab","type":"welcome"}"#);
        let v: serde_json::Value =
            serde_json::from_str(&subscription_changed("c", "BTC-USD", &[Channel::Ticker], false)).unwrap();
        assert_eq!(v["type"], "unsubscribed");
        assert_eq!(v["channels"], json!(["ticker"]));
        let v: serde_json::Value = serde_json::from_str(&token_expiring("bob", 1_700_000_000)).unwrap();
        assert_eq!((v["type"].as_str(), v["event"].as_str()), (Some("auth"), Some("expiring")));
        assert_eq!(v["expires"], "2023-11-14T22:13:20.000000Z");
        let v: serde_json::Value = serde_json::from_str(&auth_accepted("bob", "pro", None)).unwrap();
        assert!(v["expires"].is_null() && v["class"] == "pro");
        let v: serde_json::Value = serde_json::from_str(&upstream("connected", None)).unwrap();
        assert!(v["reason"].is_null() && v["time"].is_string());
    }
}
