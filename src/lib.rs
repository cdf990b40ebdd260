//! hedgehog: one Coinbase Exchange feed, relayed to many WebSocket clients.
//!
//! # Layout
//! - [`config`]: settings from flags and environment, validated.
//! - [`clock`]: the feed's ISO-8601 microsecond times.
//! - [`protocol`]: Coinbase channels, requests, error texts, and the routing-key scanner.
//! - [`http`]: HTTP/1.1 requests (httparse) and JSON responses.
//! - [`ws`]: WebSocket handshakes, encode-once frames, bounded outboxes, sessions.
//! - [`net`]: plain/TLS streams and TLS configuration.
//! - [`rate`]: the per-connection request-rate limit.
//! - [`sim`]: the Coinbase-compatible feed simulator (`hedgehog simulate`).
//! - [`upstream`]: the one client of the exchange feed: subscriptions, reconnects, liveness.
//! - [`hub`]: per-shard client and subscription tables, the cross-shard bus, shard 0's upstream owner.
//! - [`fuzzing`]: the fuzz targets' entry points (fuzz/), replayed by tests/fuzz_corpora.rs.
//! - [`shard`]: the executor pool, accept loops, HTTP connections, REST API, streams.

// Outside data must never reach a panic: errors are returned and answered instead.
// (Tests may unwrap; indexing is left to the fuzz targets, see fuzz/.)
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod clock;
pub mod config;
pub mod fuzzing;
pub mod http;
pub mod hub;
pub mod net;
pub mod protocol;
pub mod rate;
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
