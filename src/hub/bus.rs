//! The cross-shard bus: one bounded lock-free SPSC channel (glommio's
//! `shared_channel`) per ordered pair of shards.

use glommio::channels::shared_channel::{self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender};

use super::ShardMsg;

/// Messages in flight per ordered pair of shards. When a channel is full the sender
/// waits: for feed messages that is shard 0's dispatcher, so a shard that cannot keep
/// up slows the upstream reader (the backlog then waits in the upstream socket)
/// rather than losing data for its clients.
pub const CAPACITY: usize = 8192;

/// A shard's sending ends, connected.
pub struct Bus {
    senders: Vec<Option<ConnectedSender<ShardMsg>>>,
}

impl Bus {
    /// Sends `msg` to shard `to` if there is room now; gives it back if not. A
    /// shard that is gone takes nothing (the message is dropped).
    // The message itself is what comes back: the caller keeps it, in order.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, to: usize, msg: ShardMsg) -> Result<(), ShardMsg> {
        match self.senders.get(to).and_then(Option::as_ref) {
            Some(tx) => match tx.try_send(msg) {
                Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(m))) => Err(m),
                // Sent, or the shard is gone.
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Sends `msg` to shard `to`; false if that shard is gone.
    pub async fn send(&self, to: usize, msg: ShardMsg) -> bool {
        match self.senders.get(to).and_then(Option::as_ref) {
            Some(tx) => tx.send(msg).await.is_ok(),
            None => false,
        }
    }
}

/// One shard's unconnected ends, made on the main thread and moved to the shard.
pub struct BusEnds {
    shards: usize,
    senders: Vec<(usize, SharedSender<ShardMsg>)>,
    receivers: Vec<SharedReceiver<ShardMsg>>,
}

/// The full mesh for `n` shards: element `i` holds shard `i`'s ends.
pub fn mesh(n: usize) -> Vec<BusEnds> {
    let mut ends: Vec<BusEnds> =
        (0..n).map(|_| BusEnds { shards: n, senders: Vec::new(), receivers: Vec::new() }).collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(CAPACITY);
                ends[from].senders.push((to, tx));
                ends[to].receivers.push(rx);
            }
        }
    }
    ends
}

impl BusEnds {
    /// Connects every end. Each connect waits for its peer shard, so all are
    /// connected concurrently.
    pub async fn connect(self) -> (Bus, Vec<ConnectedReceiver<ShardMsg>>) {
        let senders: Vec<_> = self
            .senders
            .into_iter()
            .map(|(to, tx)| glommio::spawn_local(async move { (to, tx.connect().await) }))
            .collect();
        let receivers: Vec<_> = self.receivers.into_iter().map(|rx| glommio::spawn_local(rx.connect())).collect();
        let mut bus = Bus { senders: (0..self.shards).map(|_| None).collect() };
        for task in senders {
            let (to, tx) = task.await;
            bus.senders[to] = Some(tx);
        }
        let mut rxs = Vec::new();
        for task in receivers {
            rxs.push(task.await);
        }
        (bus, rxs)
    }
}
