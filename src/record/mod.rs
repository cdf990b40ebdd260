//! Recording the feed (`--record DIR`): every upstream text message, with the
//! time it arrived, in files that a replay sends again byte for byte.
//!
//! - this file: the settings, shard 0's end of the queue ([`Tap`]), the handle
//!   the server keeps ([`Recorder`]) and the counters `/healthz` shows ([`Stats`]).
//! - [`writer`]: the writer thread: lines, files, rotation, holes, disk errors.
//! - [`open`]: the file being written: its buffer, and a flush that tells
//!   whether the lines reached the file.
//! - [`files`]: file names, and the compressor thread: gzip on rotation, the
//!   bound on the directory's total.
//! - [`lock`]: one recorder per directory.
//! - [`switches`]: the tests' switches: a blocked writer, a full disk.
//!
//! The format is one line per message, `<unix seconds>.<micros>: <payload>`,
//! where the payload is exactly the text frame the feed sent (no parse, no
//! re-serialisation). Lines that start with `#` are hedgehog's notes: a hole in
//! the recording, or a message left out because it holds a line break.
//!
//! The feed never waits for the disk. Shard 0 hands each message to the writer
//! thread with a `try_send` into a bounded queue, sharing the frame's bytes (no
//! copy). When the queue is full the message is dropped from the recording (never
//! from clients), counted, and the next message that fits carries a note of the
//! hole, which the writer puts before it.

mod files;
mod lock;
mod open;
mod switches;
mod writer;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

pub use files::{file_name, GZ_SUFFIX, LOG_SUFFIX, PREFIX};
pub use lock::LOCK_FILE;
pub use switches::{DiskFull, Hold};

use crate::ws::Frame;

/// The environment variable that names the directory, as `--record` does.
pub const ENV_DIR: &str = "HEDGEHOG_RECORD_DIR";

/// How long a stop may take to flush and close (the writer) and to finish the
/// compression under way (the compressor) before they are abandoned.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What `--record` asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordConfig {
    pub dir: PathBuf,
    /// A file is closed (and compressed) before it would grow past this, and at
    /// the end of each UTC hour.
    pub max_file_bytes: u64,
    /// hedgehog's recording files in `dir` total at most this (oldest deleted first).
    pub max_bytes: u64,
    /// The queue between shard 0 and the writer, in messages and in bytes; past
    /// either, messages are dropped from the recording (not flags; tests shrink them).
    pub queue_messages: usize,
    pub queue_bytes: usize,
    /// After a disk error, no new file is tried sooner than this (not a flag;
    /// tests shrink it).
    pub retry_every: Duration,
    /// For tests: while closed, the writer thread waits (not a flag).
    pub hold: Option<Hold>,
    /// For tests: while on, writes fail as on a full disk (not a flag).
    pub disk_full: Option<DiskFull>,
}

impl RecordConfig {
    pub fn new(dir: PathBuf) -> Self {
        RecordConfig {
            dir,
            max_file_bytes: 256 << 20,
            max_bytes: 4 << 30,
            // About 8 s of a busy feed (2,000 messages a second) with the disk stalled.
            queue_messages: 16_384,
            queue_bytes: 32 << 20,
            retry_every: Duration::from_secs(10),
            hold: None,
            disk_full: None,
        }
    }
}

/// Messages dropped from the recording in a row: how many, and when the first
/// and the last arrived (microseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    pub count: u64,
    pub from: i64,
    pub to: i64,
}

impl Hole {
    fn add(hole: Option<Hole>, at: i64) -> Hole {
        match hole {
            Some(h) => Hole { count: h.count + 1, to: at, ..h },
            None => Hole { count: 1, from: at, to: at },
        }
    }

    /// `a` then `b`, as one hole.
    fn join(a: Option<Hole>, b: Option<Hole>) -> Option<Hole> {
        match (a, b) {
            (Some(a), Some(b)) => Some(Hole { count: a.count + b.count, from: a.from, to: b.to }),
            (a, b) => a.or(b),
        }
    }
}

/// One message on its way to the writer: its arrival time, its bytes
/// (`frame[start..]`, shared with the frame sent to clients), and the hole
/// before it, if messages were dropped since the last one queued. No frame:
/// only the hole (the last one, when the tap goes away).
pub(crate) struct Entry {
    at: i64,
    frame: Option<Frame>,
    start: usize,
    hole: Option<Hole>,
}

/// Shard 0's end of the queue, owned by the upstream client. Never waits.
pub struct Tap {
    tx: Sender<Entry>,
    stats: Arc<Stats>,
    max_queue_bytes: usize,
    hole: Cell<Option<Hole>>,
    /// The last time handed on: times never go back in a recording, even when
    /// the wall clock is stepped back.
    last: Cell<i64>,
}

impl Tap {
    /// Hands `frame[start..]`, which arrived at `at` (microseconds since the
    /// epoch), to the writer; or, if the queue is full, counts it dropped.
    pub fn record(&self, at: i64, frame: Frame, start: usize) {
        let at = at.max(self.last.get());
        self.last.set(at);
        let len = frame.len().saturating_sub(start);
        let mut hole = self.hole.take();
        if self.stats.queued_bytes.fetch_add(len, Ordering::Relaxed) + len <= self.max_queue_bytes {
            match self.tx.try_send(Entry { at, frame: Some(frame), start, hole }) {
                Ok(()) => return,
                Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => hole = e.hole,
            }
        }
        self.stats.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        self.hole.set(Some(Hole::add(hole, at)));
    }
}

impl Drop for Tap {
    /// The upstream client has ended (a stop): a hole not yet noted is handed
    /// on alone, waiting a little for room (the feed has stopped).
    fn drop(&mut self) {
        if let Some(hole) = self.hole.take() {
            let entry = Entry { at: hole.to, frame: None, start: 0, hole: Some(hole) };
            if self.tx.send_timeout(entry, Duration::from_secs(1)).is_err() {
                log::warn!(event = "record_error";
                    "record: the note of {} messages dropped at the end could not be queued", hole.count);
            }
        }
    }
}

/// The recording's counters, shared by the writer, the compressor and
/// `/healthz` (through `hub::Global`); atomics behind methods.
#[derive(Debug, Default)]
pub struct Stats {
    dir: String,
    file: Mutex<Option<String>>,
    messages: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    lost: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Closed files on disk (as of the compressor's last pass) and the open one.
    closed_bytes: AtomicU64,
    file_bytes: AtomicU64,
    queued_bytes: AtomicUsize,
}

/// What `/healthz` shows of the recording.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub dir: String,
    /// The file being written, if one is open.
    pub file: Option<String>,
    /// Messages, and bytes of lines (notes included), that reached a file
    /// since start (counted at each flush: not those still in the buffer).
    pub messages: u64,
    pub bytes: u64,
    /// Messages dropped from the recording because the queue was full.
    pub dropped: u64,
    /// Messages not recorded because of disk errors: those that came while no
    /// file could be opened, and those buffered since the last good flush of a
    /// file that then failed (a write error, or the file removed).
    pub lost: u64,
    /// Disk errors (opening, writing, flushing, compressing, deleting).
    pub errors: u64,
    pub last_error: Option<String>,
    /// hedgehog's recording files in the directory (the closed ones as of the
    /// last rotation's pass, and the open one).
    pub disk_bytes: u64,
}

impl Stats {
    pub fn report(&self) -> Report {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Report {
            dir: self.dir.clone(),
            file: self.file.lock().map(|f| f.clone()).unwrap_or_default(),
            messages: get(&self.messages),
            bytes: get(&self.bytes),
            dropped: get(&self.dropped),
            lost: get(&self.lost),
            errors: get(&self.errors),
            last_error: self.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
            disk_bytes: get(&self.closed_bytes) + get(&self.file_bytes),
        }
    }

    /// `messages`, and `bytes` of lines (notes included), reached the file.
    fn wrote(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// An entry of `len` bytes left the queue.
    fn dequeued(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }

    fn lost(&self, messages: u64) {
        self.lost.fetch_add(messages, Ordering::Relaxed);
    }

    /// Counts a disk error (the caller logs the first of a run of them).
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(what);
    }

    fn set_file(&self, name: Option<String>) {
        if let Ok(mut f) = self.file.lock() {
            *f = name;
        }
    }

    fn set_closed_bytes(&self, n: u64) {
        self.closed_bytes.store(n, Ordering::Relaxed);
    }

    /// The open file's size (zero: none open).
    fn set_file_bytes(&self, n: u64) {
        self.file_bytes.store(n, Ordering::Relaxed);
    }
}

/// The running recorder: its two threads and how to stop them.
pub struct Recorder {
    /// Dropped last, once the threads have ended (or been abandoned at exit).
    _lock: lock::DirLock,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
    compressor: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Creates the directory, takes its lock and opens the first file (so a
    /// directory that cannot be written, or that another relay records into,
    /// fails the start, in one line), then starts the writer and the
    /// compressor. The [`Tap`] is for shard 0.
    pub fn start(cfg: &RecordConfig) -> Result<(Recorder, Tap), String> {
        make_dir(&cfg.dir)?;
        let lock = lock::DirLock::take(&cfg.dir)?;
        let dir = cfg.dir.display().to_string();
        let stats = Arc::new(Stats { dir, ..Stats::default() });
        let stop = Arc::new(AtomicBool::new(false));
        let (compressor, pass) = files::Compressor::new(cfg, stats.clone());
        let mut writer = writer::Writer::new(cfg, stats.clone(), stop.clone(), pass);
        writer.open_first().map_err(|e| format!("--record {}: cannot write there: {e}", cfg.dir.display()))?;
        // When full: see `Tap::record` (dropped from the recording, counted, noted).
        let (tx, rx) = crossbeam_channel::bounded(cfg.queue_messages.max(1));
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(f).map_err(|e| format!("--record: {name}: {e}"))
        };
        let compressor = spawn("hedgehog-gzip", Box::new(move || compressor.run()))?;
        let writer = spawn("hedgehog-record", Box::new(move || writer.run(rx)))?;
        let tap = Tap {
            tx,
            stats: stats.clone(),
            max_queue_bytes: cfg.queue_bytes,
            hole: Cell::new(None),
            last: Cell::new(i64::MIN),
        };
        let recorder = Recorder { _lock: lock, stats, stop, writer: Some(writer), compressor: Some(compressor) };
        Ok((recorder, tap))
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Writes what is queued, flushes and closes the file, lets the compressor
    /// finish; waits at most `within`. True if both threads ended in time (the
    /// others are abandoned: a half-written `.gz.tmp` is removed at the next start).
    pub fn close(mut self, within: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + within;
        let mut all = true;
        for (name, thread) in [("writer", self.writer.take()), ("compressor", self.compressor.take())] {
            let Some(thread) = thread else { continue };
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            match thread.is_finished() {
                true => drop(thread.join()),
                false => {
                    log::error!(event = "record_stuck";
                        "record: the {name} thread did not end within {within:?}; abandoning it");
                    all = false;
                }
            }
        }
        all
    }
}

/// `--record DIR`: creates DIR if need be; one line if it cannot.
fn make_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| match dir.exists() && !dir.is_dir() {
        true => format!("--record {}: it exists and is not a directory", dir.display()),
        false => format!("--record {}: cannot create the directory: {e}", dir.display()),
    })
}

impl Drop for Recorder {
    /// Without [`Recorder::close`]: the threads are told to stop, not waited for.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
