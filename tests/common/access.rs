//! Access control in tests: rules from inline TOML, keys and tokens, WebSocket
//! clients that present credentials, and the log lines a relay writes.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hedgehog::access::{Access, AccessFile, FileText, KeyHash};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;
use tungstenite::client::IntoClientRequest;

use super::{Client, DEADLINE};

pub const SECRET: &str = "an HS256 secret of at least 32 bytes, for tests";

/// The rules of `text`, a config file's access tables.
pub fn rules(text: &str) -> Arc<Access> {
    let file = FileText { path: Path::new("access-test.toml"), text };
    let tables: AccessFile = toml::from_str(text).unwrap_or_else(|e| panic!("{}", file.toml_error(&e)));
    Arc::new(tables.build(&file).expect("good rules").expect("classes"))
}

/// A fixed API key per principal: `hh_` and 64 hex digits.
pub fn key_of(principal: &str) -> String {
    let hex: String = principal.bytes().cycle().take(32).map(|b| format!("{b:02x}")).collect();
    format!("hh_{hex}")
}

/// The `[[keys]]` entry for `principal`'s key.
pub fn key_entry(principal: &str, class: &str) -> String {
    let hash = KeyHash::of(&key_of(principal));
    format!("[[keys]]\nprincipal = \"{principal}\"\nclass = \"{class}\"\nhash = \"{hash}\"\n")
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token with `claims`, signed with [`SECRET`].
pub fn token(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// `Authorization: Bearer X` as a header line for `common::http`.
pub fn bearer(credential: &str) -> String {
    format!("Authorization: Bearer {credential}\r\n")
}

/// A WebSocket on `path` presenting `credential` (as `Authorization: Bearer`):
/// the client, or the status and body of the refusal.
pub fn ws_as(addr: std::net::SocketAddr, path: &str, credential: Option<&str>) -> Result<Client, (u16, Value)> {
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(c) = credential {
        req.headers_mut().insert("Authorization", format!("Bearer {c}").parse().unwrap());
    }
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => {
            ws.get_ref().set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
            Ok(Client { ws })
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let body = resp.body().clone().unwrap_or_default();
            let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
            Err((resp.status().as_u16(), v))
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

/// A relay client on `/ws` as `credential`, and its id.
pub fn client_as(addr: std::net::SocketAddr, credential: Option<&str>) -> (Client, String) {
    let mut c = ws_as(addr, "/ws", credential).unwrap_or_else(|(s, b)| panic!("refused: {s} {b}"));
    let welcome = c.json();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let id = welcome["client_id"].as_str().unwrap().to_string();
    (c, id)
}

/// Every line logged by this test binary (its logger is [`capture_log`]'s).
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if record.target().starts_with("hedgehog") {
            LINES.lock().unwrap().push(format!("{} {}", record.level(), record.args()));
        }
    }
    fn flush(&self) {}
}

/// Makes this test binary's log lines readable by [`log_lines`]; call first.
pub fn capture_log() {
    static LOGGER: Capture = Capture;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// The lines logged so far that contain `needle`.
pub fn log_lines(needle: &str) -> Vec<String> {
    LINES.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
}

/// Every line logged so far.
pub fn all_log_lines() -> Vec<String> {
    LINES.lock().unwrap().clone()
}
