//! The log: `--log-format text` (env_logger's human lines, the structured fields
//! appended as `key=value`) or `json` (one object per line, stable field names),
//! filtered by `RUST_LOG` either way; and the budget that keeps what clients can
//! cause from flooding it.
//!
//! Log calls name what happened with the `log` crate's key-values:
//! `log::warn!(event = "refused", principal = p; "...")`. The JSON line puts the
//! fixed fields first (`time`, `level`, `target`, `shard`, `event`, `message`) and
//! then the call's others (`client_id`, `peer`, `reason`, `principal`, `class`...).
//! A call without `event` is `"event": "log"`. No credential is ever a field or
//! part of a message: requests are logged by path (never the query, where
//! `?token=` travels) and never with their headers.

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::{LazyLock, Mutex};

use log::kv::{Key, Value, VisitSource};

use crate::rate::{LogBudget, LogTurn};

/// Per-client lines (bad requests, refused connections, slow consumers, contained
/// panics) written per second, all shards together; access refusals have a
/// budget of their own ([`crate::hub::REFUSALS_LOGGED_PER_SECOND`]).
pub const CLIENT_EVENTS_PER_SECOND: u32 = 20;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("--log-format {other:?}: use text or json")),
        }
    }
}

/// Starts the process's logger: `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let time = buf.timestamp_micros().to_string();
            let line = json_line(&time, record, shard_of(std::thread::current().name()));
            std::io::Write::write_all(buf, line.as_bytes())
        });
    }
    builder.init();
}

/// The shard a thread serves: threads named `hedgehog-N` (see `server::start`).
pub fn shard_of(thread: Option<&str>) -> Option<usize> {
    thread?.strip_prefix("hedgehog-")?.parse().ok()
}

/// Runs `write` (a log call about one client) if the process-wide budget allows;
/// the first call allowed after some were held back first says how many.
pub fn per_client(write: impl FnOnce()) {
    static BUDGET: LazyLock<Mutex<LogBudget>> = LazyLock::new(|| Mutex::new(LogBudget::new(CLIENT_EVENTS_PER_SECOND)));
    let turn = BUDGET.lock().map(|mut b| b.take()).unwrap_or(LogTurn::Suppress);
    if let LogTurn::Write { suppressed } = turn {
        if suppressed > 0 {
            log::warn!(event = "log_suppressed", count = suppressed;
                "{suppressed} lines about clients not logged (over the log rate)");
        }
        write();
    }
}

/// Fields the line writes itself: a key-value of the same name is dropped.
const FIXED: [&str; 6] = ["time", "level", "target", "shard", "event", "message"];

/// One JSON object and a newline.
pub fn json_line(time: &str, record: &log::Record, shard: Option<usize>) -> String {
    let mut event = None;
    let mut others = String::new();
    let _ = record.key_values().visit(&mut Fields { event: &mut event, out: &mut others });
    let mut line = String::with_capacity(160 + others.len());
    line.push_str("{\"time\":");
    push_str(&mut line, time);
    line.push_str(",\"level\":");
    push_str(&mut line, &record.level().as_str().to_ascii_lowercase());
    line.push_str(",\"target\":");
    push_str(&mut line, record.target());
    let _ = match shard {
        Some(n) => write!(line, ",\"shard\":{n}"),
        None => write!(line, ",\"shard\":null"),
    };
    line.push_str(",\"event\":");
    push_str(&mut line, event.as_deref().unwrap_or("log"));
    line.push_str(",\"message\":");
    push_str(&mut line, &record.args().to_string());
    line.push_str(&others);
    line.push_str("}\n");
    line
}

/// A JSON string, escaped.
fn push_str(line: &mut String, s: &str) {
    line.push_str(&serde_json::Value::from(s).to_string());
}

/// Collects the key-values: `event` apart, the others as `,"key":value`.
struct Fields<'a> {
    event: &'a mut Option<String>,
    out: &'a mut String,
}

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let key = key.as_str();
        if key == "event" {
            *self.event = Some(value.to_string());
            return Ok(());
        }
        if FIXED.contains(&key) {
            return Ok(());
        }
        self.out.push(',');
        push_str(self.out, key);
        self.out.push(':');
        if let Some(n) = value.to_u64() {
            let _ = write!(self.out, "{n}");
        } else if let Some(n) = value.to_i64() {
            let _ = write!(self.out, "{n}");
        } else if let Some(b) = value.to_bool() {
            let _ = write!(self.out, "{b}");
        } else {
            push_str(self.out, &value.to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(message: std::fmt::Arguments, kvs: &[(&str, &str)], shard: Option<usize>) -> serde_json::Value {
        let record = log::Record::builder()
            .args(message)
            .level(log::Level::Warn)
            .target("hedgehog::test")
            .key_values(&kvs)
            .build();
        let text = json_line("2026-12-01T07:00:00.123456Z", &record, shard);
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "one line: {text}");
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_json_line_has_the_stable_fields_and_escapes_the_message() {
        let nasty = "say \"hi\"\nthen \\ leave\t\u{1}";
        let v = line(format_args!("{nasty}"), &[("event", "refused"), ("reason", "a \"quoted\"\nreason")], Some(3));
        assert_eq!(v["time"], "2026-12-01T07:00:00.123456Z");
        assert_eq!((v["level"].as_str(), v["target"].as_str()), (Some("warn"), Some("hedgehog::test")));
        assert_eq!((v["shard"].as_u64(), v["event"].as_str()), (Some(3), Some("refused")));
        assert_eq!(v["message"], nasty, "the message comes back exactly");
        assert_eq!(v["reason"], "a \"quoted\"\nreason");
    }

    #[test]
    fn without_an_event_or_a_shard_the_fields_are_still_there() {
        let v = line(format_args!("plain"), &[("time", "forged"), ("peer", "127.0.0.1:5")], None);
        assert_eq!((v["event"].as_str(), v["shard"].is_null()), (Some("log"), true));
        assert_eq!(v["time"], "2026-12-01T07:00:00.123456Z", "a field cannot overwrite a fixed one");
        assert_eq!(v["peer"], "127.0.0.1:5");
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(text.matches("\"time\"").count(), 1, "{text}");
    }

    #[test]
    fn numbers_stay_numbers() {
        let record = log::Record::builder().args(format_args!("n")).key_values(&[("count", 7u64)]).build();
        let v: serde_json::Value = serde_json::from_str(&json_line("t", &record, None)).unwrap();
        assert_eq!(v["count"], 7);
    }

    #[test]
    fn shards_come_from_thread_names() {
        assert_eq!(shard_of(Some("hedgehog-12")), Some(12));
        assert_eq!(shard_of(Some("hedgehog-record")), None);
        assert_eq!((shard_of(Some("main")), shard_of(None)), (None, None));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().unwrap_err().contains("use text or json"));
    }
}
