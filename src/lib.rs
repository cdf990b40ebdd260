//! hedgehog: one Coinbase Exchange feed, relayed to many WebSocket clients.
//!
//! `WEB_CONCURRENCY` shards (glommio executors) share one port; each owns its
//! connections. Shard 0 owns the upstream feed and sends each message, encoded
//! once, over the bus to the shards whose clients want its topic. ARCHITECTURE.md
//! has the data paths, the owners of each state and the invariants.
//!
//! # Layout (lowest layer first: a module imports only from those listed before it)
//! - [`clock`], [`rate`]: the feed's microsecond times; the request-rate limit.
//! - [`logs`]: `--log-format text|json`, the stable fields, the per-client log budget.
//! - [`http`]: HTTP/1.1 requests (httparse), the router, JSON responses.
//! - [`protocol`]: the feed's vocabulary (`Channel`, `Topic`), requests, error
//!   texts, hedgehog's own notes, the routing-key scanner.
//! - [`net`]: plain/TLS streams, request deadlines, TLS configuration.
//! - [`preflight`]: start-up checks of io_uring and the locked-memory limit, one
//!   line naming the fix when the system refuses what glommio needs.
//! - [`pacemaker`]: a beat that keeps every executor from sleeping through its
//!   timers and cross-shard wake-ups (a glommio hazard).
//! - [`ws`]: WebSocket handshakes, encode-once frames, bounded outboxes, sessions.
//! - [`record`]: `--record DIR`: every upstream message, timestamped, to rotated
//!   gzip'd files, by a writer thread that the feed never waits for.
//! - [`upstream`]: the one client of the exchange feed: subscriptions, reconnects, liveness.
//! - [`sim`]: the Coinbase-compatible feed simulator (`hedgehog simulate`), and
//!   the replay of captures of the real feed (`--replay FILE`).
//! - [`access`]: access control: classes, pair and channel rules, API keys, signed
//!   tokens; `Access::authenticate` -> `Principal::may_subscribe`.
//! - [`healthcheck`]: `hedgehog healthcheck`, a container's HEALTHCHECK without curl.
//! - [`config`]: settings from flags, environment and the `--config` file, validated.
//! - [`hub`]: per shard, clients, subscriptions and the table; the bus between
//!   shards (`Hub::send_to`); shard 0's owner of the upstream and its feed state.
//! - [`server`]: the shards' threads, accept loops, HTTP, WebSocket and stream
//!   connections, the REST API, health, the web page (`ui/`, compiled in).
//! - [`fuzzing`]: the fuzz targets' entry points (fuzz/), replayed by tests/fuzz_corpora.rs.

// Outside data must never reach a panic: errors are returned and answered instead.
// (Tests may unwrap; indexing is left to the fuzz targets, see fuzz/.)
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod access;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod fuzzing;
pub mod healthcheck;
pub mod http;
pub mod hub;
pub mod logs;
pub mod metrics;
pub mod net;
pub mod pacemaker;
pub mod preflight;
pub mod protocol;
pub mod rate;
pub mod record;
pub mod server;
pub mod sim;
pub mod upstream;
pub mod ws;

/// Memory each executor registers with io_uring for its buffers. hedgehog does no
/// file I/O through them, and the default (10 MiB) would exceed the locked-memory
/// limit of common hosts (8 MiB), so a small amount is asked for.
pub const IO_MEMORY: usize = 256 * 1024;

/// How long a graceful shutdown may take before shards are stopped outright.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
