//! How a shard runs its connections: in which task queue, and with a panic in
//! one of them contained to it.

use glommio::{Latency, Shares, TaskQueueHandle};

use crate::hub::Global;

/// The task queues a shard runs its connections in.
#[derive(Clone, Copy)]
pub struct Queues {
    /// HTTP requests, handshakes and REST: kept responsive while fan-out is heavy.
    pub http: TaskQueueHandle,
    /// WebSocket and stream sessions: the fan-out's writers.
    pub sessions: TaskQueueHandle,
}

impl Queues {
    /// The current executor's queues for connections.
    pub fn new() -> Queues {
        let ex = glommio::executor();
        Queues {
            http: ex.create_task_queue(
                Shares::default(),
                Latency::Matters(std::time::Duration::from_millis(5)),
                "http",
            ),
            sessions: ex.create_task_queue(Shares::default(), Latency::NotImportant, "sessions"),
        }
    }

    /// The name of the queue the current task runs in (for the debug build's
    /// `X-Hedgehog-Queue` header, which the tests read).
    pub fn current(&self) -> &'static str {
        let now = glommio::executor().current_task_queue();
        if now == self.sessions {
            "sessions"
        } else if now == self.http {
            "http"
        } else {
            "other"
        }
    }
}

/// At a session's end: one line (budgeted) if it ended as a slow consumer.
pub fn log_slow_consumer(outbox: &crate::ws::Outbox, id: crate::hub::ClientId) {
    if outbox.overflowed() {
        crate::logs::per_client(|| {
            log::warn!(event = "slow_consumer", client_id:% = id, reason = crate::ws::SLOW_CONSUMER;
                "client {id}: its queue overflowed; closed as a slow consumer")
        });
    }
}

/// Runs one connection's future, containing a panic inside it: glommio lets a
/// panicking task unwind through the executor, which ends the shard's thread and
/// every connection on it (tests/panics.rs shows both). Here the panic unwinds
/// only as far as this call; it is logged and counted (`panics` in /healthz), the
/// connection's state is dropped, and the shard goes on. Returns false after a panic.
///
/// What the future shares with other tasks (the hub's tables) is only ever
/// borrowed between awaits, so an unwind leaves no borrow held.
///
/// Not an `async fn`: one would keep `fut` twice in its state (the argument and
/// the wrapper), doubling the memory of every idle connection.
pub fn contained<'a, F>(global: &'a Global, what: &'a str, fut: F) -> impl std::future::Future<Output = bool> + 'a
where
    F: std::future::Future<Output = ()> + 'a,
{
    use futures_lite::FutureExt;
    let caught = std::panic::AssertUnwindSafe(fut).catch_unwind();
    async move { settle(global, what, caught.await) }
}

fn settle(global: &Global, what: &str, outcome: std::thread::Result<()>) -> bool {
    match outcome {
        Ok(()) => true,
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            // A client may be able to set one off again and again: budgeted.
            crate::logs::per_client(|| {
                log::error!(event = "panic", what, reason = why.as_str();
                    "a panic in {what} was contained; that connection is closed: {why}")
            });
            global.count_panic();
            false
        }
    }
}
