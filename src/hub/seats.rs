//! Access control's connection limits: open sessions per principal and per
//! class, all shards together (`max_connections_per_principal`,
//! `max_connections` of a `[classes.NAME]`).
//!
//! A session is a WebSocket or a stream (SSE, NDJSON): what stays open and
//! receives data. A plain REST request takes no seat, so a principal at its
//! limit can still steer the sessions it has.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::access::Principal;

/// The open sessions, per (class, principal) and per class.
#[derive(Debug, Default)]
pub struct Seats {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    per_principal: HashMap<(String, String), usize>,
    per_class: HashMap<String, usize>,
}

/// Why a session was refused a seat: answer 429.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeatRefused {
    #[error("`{principal}` holds its class `{class}`'s limit of {max} open connections")]
    Principal { principal: String, class: String, max: usize },
    #[error("class `{class}` holds its limit of {max} open connections")]
    Class { class: String, max: usize },
}

/// One session's seat; dropping it frees the seat.
#[derive(Debug)]
pub struct Seat {
    seats: Arc<Seats>,
    key: (String, String),
}

impl Seats {
    /// A seat for one session of `p`, or why not.
    pub fn take(self: &Arc<Self>, p: &Principal) -> Result<Seat, SeatRefused> {
        let limits = p.class().limits();
        let key = (p.class().name().to_string(), p.name().to_string());
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mine = counts.per_principal.get(&key).copied().unwrap_or(0);
        if let Some(max) = limits.max_connections_per_principal.filter(|max| mine >= *max) {
            return Err(SeatRefused::Principal { principal: key.1, class: key.0, max });
        }
        let class = counts.per_class.get(&key.0).copied().unwrap_or(0);
        if let Some(max) = limits.max_connections.filter(|max| class >= *max) {
            return Err(SeatRefused::Class { class: key.0, max });
        }
        *counts.per_principal.entry(key.clone()).or_default() += 1;
        *counts.per_class.entry(key.0.clone()).or_default() += 1;
        Ok(Seat { seats: self.clone(), key })
    }

    /// Open sessions of principal `name` of class `class`.
    pub fn of_principal(&self, class: &str, name: &str) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.per_principal.get(&(class.to_string(), name.to_string())).copied().unwrap_or(0)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut counts = self.seats.counts.lock().unwrap_or_else(|e| e.into_inner());
        let gone = |n: &mut usize| {
            *n = n.saturating_sub(1);
            *n == 0
        };
        if counts.per_principal.get_mut(&self.key).is_some_and(gone) {
            counts.per_principal.remove(&self.key);
        }
        if counts.per_class.get_mut(&self.key.0).is_some_and(gone) {
            counts.per_class.remove(&self.key.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::access::{Access, AccessFile, Credential, FileText};

    fn access() -> Access {
        let text = "[classes.anonymous]\nmax_connections_per_principal = 2\nmax_connections = 3\n[classes.other]\n";
        let file = FileText { path: Path::new("seats.toml"), text };
        let tables: AccessFile = toml::from_str(text).expect("TOML");
        tables.build(&file).expect("rules").expect("classes")
    }

    #[test]
    fn seats_are_counted_per_principal_and_per_class_and_given_back() {
        let anon = access().authenticate(Credential::None).expect("anonymous");
        let seats = Arc::new(Seats::default());
        let (a, b) = (seats.take(&anon).expect("first"), seats.take(&anon).expect("second"));
        assert_eq!(seats.of_principal("anonymous", "anonymous"), 2);
        let refused = seats.take(&anon).unwrap_err();
        assert_eq!(refused.to_string(), "`anonymous` holds its class `anonymous`'s limit of 2 open connections");
        drop(a);
        let c = seats.take(&anon).expect("a seat given back");
        drop((b, c));
        assert_eq!(seats.of_principal("anonymous", "anonymous"), 0);
        assert!(seats.counts.lock().unwrap().per_class.is_empty(), "nothing left behind");
    }
}
