//! The tests' switches, set in [`RecordConfig`](super::RecordConfig) (not
//! flags): they act inside the real writer, so a test drives the code that runs
//! in production.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A test's switch that blocks the writer thread: closed, the writer waits
/// before its next batch (it still ends on stop).
#[derive(Clone, Default)]
pub struct Hold(Arc<(Mutex<bool>, Condvar)>);

impl Hold {
    pub fn close(&self) {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    pub fn open(&self) {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.0 .1.notify_all();
    }

    /// Waits while closed, until `stop` is set.
    pub(super) fn pass(&self, stop: &AtomicBool) {
        let mut closed = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        while *closed && !stop.load(Ordering::SeqCst) {
            closed = match self.0 .1.wait_timeout(closed, Duration::from_millis(50)) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl PartialEq for Hold {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// A test's switch that fills the disk: while on, each write to a recording
/// file writes the first half of its bytes and then fails with `ENOSPC`, as on
/// a disk that fills up part-way through a write. Creating a file still works,
/// as it does on a full disk that has inodes left.
#[derive(Clone, Default)]
pub struct DiskFull(Arc<AtomicBool>);

impl DiskFull {
    pub fn set(&self, full: bool) {
        self.0.store(full, Ordering::SeqCst);
    }

    pub(super) fn is_full(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl PartialEq for DiskFull {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for DiskFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskFull")
    }
}
