//! Access control at the entry points: who a request is (its credential,
//! authenticated once per HTTP request or WebSocket upgrade), a session's seat
//! (its class's connection limits), and the log line of every refusal.
//!
//! Credentials travel as `Authorization: Bearer <key or token>` or, for
//! browsers, which cannot set headers on a WebSocket, as `?token=`. Neither is
//! ever logged: a refusal names the principal, its class, what it asked for
//! and the rule, and what is logged is rate limited process-wide
//! ([`crate::hub::REFUSALS_LOGGED_PER_SECOND`]).

use crate::access::{AuthError, Credential, Denied, Principal};
use crate::http::{Request, Route};
use crate::hub::{Global, Hub, Seat};

use super::api::ApiError;

/// The challenge of a 401 (RFC 6750).
const CHALLENGE: &str = r#"Bearer realm="hedgehog""#;

/// Who makes `req` to `route`: `Ok(None)` with access control off or on a route
/// that names no pair (health, index, echo, the API document, the web page: it
/// asks its user for a key); else a principal, or a 401.
pub fn who(hub: &Hub, route: &Route, req: &Request) -> Result<Option<Principal>, ApiError> {
    let Some(access) = hub.global.access() else { return Ok(None) };
    let public = matches!(route, Route::Index | Route::Health | Route::Live | Route::Ready | Route::Echo);
    if public || matches!(route, Route::OpenApi | Route::Ui(_)) {
        return Ok(None);
    }
    let bearer = bearer(req);
    let credential = match &bearer {
        Bearer::None => Credential::None,
        Bearer::Given(s) => Credential::Bearer(s),
        Bearer::OtherScheme => Credential::Bearer(""),
    };
    access.authenticate(credential).map(Some).map_err(|e| {
        hub.global.count_refusal(401);
        log_refusal(&hub.global, "-", "-", "to authenticate", &e.to_string());
        unauthorized(&e)
    })
}

/// What a request presents.
enum Bearer {
    None,
    Given(String),
    /// An `Authorization` header of another scheme than `Bearer`.
    OtherScheme,
}

/// `Authorization: Bearer X` first, then `?token=X`.
fn bearer(req: &Request) -> Bearer {
    if let Some(value) = req.header_str("Authorization") {
        return match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Bearer::Given(rest.trim().to_string()),
            _ => Bearer::OtherScheme,
        };
    }
    match req.query_param("token") {
        Some(t) => Bearer::Given(t),
        None => Bearer::None,
    }
}

/// 401 `unauthorized` with the challenge; the reason never quotes the credential.
fn unauthorized(e: &AuthError) -> ApiError {
    let header = match e {
        AuthError::Required => CHALLENGE.to_string(),
        _ => format!(r#"{CHALLENGE}, error="invalid_token""#),
    };
    ApiError::new(401, "unauthorized", e.to_string()).with_header("WWW-Authenticate", header)
}

/// The requests or messages per second a connection of `who` may send.
pub fn request_rate(global: &Global, who: Option<&Principal>) -> u32 {
    who.and_then(|p| p.class().limits().max_request_rate).unwrap_or(global.max_request_rate)
}

/// A seat for a session of `who` (none needed with access control off), or 429.
pub fn seat(global: &Global, who: Option<&Principal>) -> Result<Option<Seat>, ApiError> {
    let Some(p) = who else { return Ok(None) };
    global.take_seat(p).map(Some).map_err(|e| {
        global.count_refusal(429);
        log_refusal(global, p.name(), p.class().name(), "a connection", &e.to_string());
        ApiError::new(429, "too_many_connections", e.to_string()).with_header("Retry-After", "1")
    })
}

/// 403 `forbidden` for a refusal, logged.
pub fn forbidden(global: &Global, denied: Box<Denied>) -> ApiError {
    log_denied(global, &denied);
    ApiError::new(403, "forbidden", denied.to_string())
}

/// Logs a refusal of `denied` (rate limited).
pub fn log_denied(global: &Global, denied: &Denied) {
    global.count_refusal(403);
    global.log_refusal(&denied.principal, &denied.class, &denied.what, &denied.refusal.to_string());
}

/// One log line about a refusal (see [`Global::log_refusal`]).
pub fn log_refusal(global: &Global, principal: &str, class: &str, what: &str, why: &str) {
    global.log_refusal(principal, class, what, why)
}
