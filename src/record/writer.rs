//! The writer thread: takes messages off the queue and writes them as lines
//! into the current file; rotates at each UTC hour and before a file would pass
//! `max_file_bytes`; writes the notes of holes; lives through disk errors.
//!
//! Writes are buffered and flushed every second, at each rotation and at the
//! stop (which also syncs the file to disk). A disk error (full, directory
//! removed) is logged once, counted, and ends the file; the messages that
//! cannot be written are counted as lost, and a new file is tried at most every
//! [`RETRY_EVERY`]; its first line notes what was lost.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::files::{file_name, Pass};
use super::{Entry, Hold, Hole, RecordConfig, Stats};

/// How often buffered lines reach the file.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the thread looks at the clock and the stop flag when idle.
const TICK: Duration = Duration::from_millis(100);
/// After a disk error, the next file is tried no sooner than this.
const RETRY_EVERY: Duration = Duration::from_secs(10);
/// Messages written in a row before the clock is looked at again.
const BATCH: usize = 1024;
/// The buffer in front of each file.
const BUFFER: usize = 64 * 1024;

pub(super) struct Writer {
    dir: PathBuf,
    max_file_bytes: u64,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    hold: Option<Hold>,
    pass: Pass,
    file: Option<Open>,
    /// The newest file's start time: the next file's name is later.
    last_start: i64,
    /// Messages lost to disk errors since the last line written.
    lost: Option<Hole>,
    /// After a disk error: no new file before this.
    retry_at: Option<Instant>,
    /// In a run of errors: only the first is logged.
    failing: bool,
    /// The line being written (reused).
    line: Vec<u8>,
}

struct Open {
    name: String,
    out: BufWriter<File>,
    /// Bytes written (buffered included).
    bytes: u64,
    /// The UTC hour it was opened in (hours since the epoch).
    hour: i64,
    flushed: Instant,
}

fn hour(micros: i64) -> i64 {
    micros.div_euclid(3_600_000_000)
}

/// `1733011200.123456`: a recording's time format.
pub fn format_time(micros: i64) -> String {
    format!("{}.{:06}", micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000))
}

impl Writer {
    pub fn new(cfg: &RecordConfig, stats: Arc<Stats>, stop: Arc<AtomicBool>, pass: Pass) -> Writer {
        Writer {
            dir: cfg.dir.clone(),
            max_file_bytes: cfg.max_file_bytes,
            stats,
            stop,
            hold: cfg.hold.clone(),
            pass,
            file: None,
            last_start: i64::MIN,
            lost: None,
            retry_at: None,
            failing: false,
            line: Vec::with_capacity(4096),
        }
    }

    /// Opens the first file, on the caller's thread: the start fails if it cannot.
    pub fn open_first(&mut self) -> io::Result<()> {
        self.open()
    }

    /// Until stopped, or until shard 0's end of the queue is gone; then writes
    /// what is still queued, flushes, syncs and closes.
    pub fn run(mut self, rx: Receiver<Entry>) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(entry) => {
                    if let Some(hold) = &self.hold {
                        hold.pass(&self.stop);
                    }
                    self.take(entry);
                    for entry in rx.try_iter().take(BATCH) {
                        self.take(entry);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            self.tick();
        }
        // What was queued before the stop (not more: the queue may still be fed).
        for entry in rx.try_iter().take(rx.len()) {
            self.take(entry);
        }
        self.close(true);
    }

    /// Writes one message (after the note of the hole before it, if any).
    fn take(&mut self, e: Entry) {
        if let Some(h) = e.hole {
            let (n, from, to) = (h.count, format_time(h.from), format_time(h.to));
            self.note(e.at, &format!("{n} messages dropped from the recording (queue full) between {from} and {to}"));
        }
        let Some(frame) = &e.frame else { return };
        let payload = frame.get(e.start..).unwrap_or_default();
        self.stats.dequeued(payload.len());
        if payload.iter().any(|&b| b == b'\n' || b == b'\r') {
            let (n, at) = (payload.len(), format_time(e.at));
            return self.note(e.at, &format!("a message of {n} bytes at {at} left out: it holds a line break"));
        }
        self.line.clear();
        self.line.extend_from_slice(format_time(e.at).as_bytes());
        self.line.extend_from_slice(b": ");
        self.line.extend_from_slice(payload);
        self.line.push(b'\n');
        self.emit(e.at, 1);
    }

    /// A `#` line: hedgehog's note, not a message.
    fn note(&mut self, at: i64, text: &str) {
        self.line.clear();
        self.line.extend_from_slice(format!("# hedgehog: {text}\n").as_bytes());
        self.emit(at, 0);
    }

    /// Writes `self.line` (holding `messages` messages), rotating first if due.
    fn emit(&mut self, at: i64, messages: u64) {
        let len = self.line.len() as u64;
        let max = self.max_file_bytes;
        if self.file.as_ref().is_some_and(|f| hour(at) > f.hour || (f.bytes > 0 && f.bytes + len > max)) {
            self.close(false);
        }
        if self.file.is_none() && !self.reopen() {
            return self.lose(at, messages);
        }
        let Some(f) = self.file.as_mut() else { return };
        match f.out.write_all(&self.line) {
            Ok(()) => {
                f.bytes += len;
                self.stats.wrote(messages, self.line.len());
                self.stats.set_file_bytes(f.bytes);
            }
            Err(e) => {
                let what = format!("cannot write {}: {e}", f.name);
                self.fail(what);
                self.abandon();
                self.lose(at, messages);
            }
        }
    }

    /// Flushes every [`FLUSH_EVERY`]; closes the file once its hour has passed.
    fn tick(&mut self) {
        let Some(f) = self.file.as_mut() else { return };
        if hour(crate::clock::now_micros()) > f.hour {
            return self.close(false);
        }
        if f.flushed.elapsed() >= FLUSH_EVERY {
            f.flushed = Instant::now();
            if let Err(e) = f.out.flush() {
                let what = format!("cannot write {}: {e}", f.name);
                self.fail(what);
                self.abandon();
            }
        }
    }

    /// A new file, unless a disk error asked to wait.
    fn reopen(&mut self) -> bool {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        match self.open() {
            Ok(()) => true,
            Err(e) => {
                self.fail(format!("cannot create a file in {}: {e}", self.dir.display()));
                self.retry_at = Some(Instant::now() + RETRY_EVERY);
                false
            }
        }
    }

    /// Creates the next file, named by its start time (later than any before).
    /// Its first line notes the messages lost to disk errors, if any were.
    fn open(&mut self) -> io::Result<()> {
        let now = crate::clock::now_micros();
        let mut start = now.max(self.last_start.saturating_add(1));
        let (name, file) = loop {
            let name = file_name(start);
            self.pass.opening(&name);
            match OpenOptions::new().write(true).create_new(true).open(self.dir.join(&name)) {
                Ok(file) => break (name, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && start - now < 1000 => start += 1,
                Err(e) => return Err(e),
            }
        };
        self.last_start = start;
        let mut f = Open {
            name,
            out: BufWriter::with_capacity(BUFFER, file),
            bytes: 0,
            hour: hour(now),
            flushed: Instant::now(),
        };
        if let Some(h) = self.lost.take() {
            let (n, from, to) = (h.count, format_time(h.from), format_time(h.to));
            let note = format!("# hedgehog: {n} messages lost to disk errors between {from} and {to}\n");
            f.out.write_all(note.as_bytes())?;
            f.bytes += note.len() as u64;
        }
        if std::mem::take(&mut self.failing) {
            log::info!("record: writing again, into {}", f.name);
        }
        self.stats.set_file(Some(f.name.clone()));
        self.file = Some(f);
        Ok(())
    }

    /// Flushes and closes the file; an empty one is removed. `last`: the stop's
    /// close, which also syncs, and leaves the file uncompressed (for a fast stop;
    /// the next start compresses it).
    fn close(&mut self, last: bool) {
        let Some(mut f) = self.file.take() else { return };
        self.stats.set_file(None);
        self.stats.set_file_bytes(0);
        let done = f.out.flush().and_then(|()| if last { f.out.get_ref().sync_data() } else { Ok(()) });
        if let Err(e) = done {
            self.fail(format!("cannot write {}: {e}", f.name));
        }
        drop(f.out);
        if f.bytes == 0 {
            let _ = std::fs::remove_file(self.dir.join(&f.name));
        }
        self.pass.closed(last);
    }

    /// After a disk error: the file is given up (what reached it is kept and
    /// compressed), and no new one is tried for [`RETRY_EVERY`].
    fn abandon(&mut self) {
        self.file = None;
        self.stats.set_file(None);
        self.stats.set_file_bytes(0);
        self.retry_at = Some(Instant::now() + RETRY_EVERY);
        self.pass.closed(false);
    }

    fn lose(&mut self, at: i64, messages: u64) {
        if messages > 0 {
            self.stats.lost(messages);
            self.lost = Some(Hole::add(self.lost, at));
        }
    }

    fn fail(&mut self, what: String) {
        if !std::mem::replace(&mut self.failing, true) {
            log::warn!("record: {what} (counted in /healthz; recording resumes when the disk allows)");
        }
        self.stats.error(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::files::Compressor;

    fn writer(dir: &std::path::Path) -> (Writer, Arc<Stats>) {
        let cfg = RecordConfig::new(dir.to_path_buf());
        let stats = Arc::new(Stats::default());
        let (_compressor, pass) = Compressor::new(&cfg, stats.clone());
        (Writer::new(&cfg, stats.clone(), Arc::new(AtomicBool::new(false)), pass), stats)
    }

    fn entry(at: i64) -> Entry {
        let payload = br#"{"type":"ticker"}"#;
        let frame = crate::ws::frame::text(payload);
        Entry { at, start: frame.len() - payload.len(), frame: Some(frame), hole: None }
    }

    fn texts(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        names.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hedgehog-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn times_are_seconds_with_six_decimals() {
        assert_eq!(format_time(1_733_011_200_123_456), "1733011200.123456");
        assert_eq!(format_time(5), "0.000005");
        assert_eq!(hour(3_600_000_000 * 5 + 1), 5);
    }

    #[test]
    fn a_new_hour_starts_a_new_file() {
        let dir = temp("hour");
        let (mut w, _) = writer(&dir);
        w.open_first().unwrap();
        let now = crate::clock::now_micros();
        w.take(entry(now));
        w.take(entry(now + 3_600_000_000));
        w.close(true);
        let texts = texts(&dir);
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert_eq!(texts[1], format!("{}: {{\"type\":\"ticker\"}}\n", format_time(now + 3_600_000_000)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lost_directory_is_counted_and_noted_in_the_next_file() {
        let dir = temp("lost");
        let (mut w, stats) = writer(&dir);
        w.open_first().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let now = crate::clock::now_micros();
        w.take(entry(now)); // into the open (now unlinked) file
        w.take(entry(now + 3_600_000_000)); // a new hour: no directory for the new file
        let r = stats.report();
        assert_eq!((r.messages, r.lost, r.errors), (1, 1, 1), "{r:?}");
        std::fs::create_dir_all(&dir).unwrap();
        w.take(entry(now + 3_600_000_001)); // too soon: waits for RETRY_EVERY
        w.retry_at = None;
        w.take(entry(now + 3_600_000_002));
        w.close(true);
        let texts = texts(&dir);
        assert_eq!(texts.len(), 1, "{texts:?}");
        let lines: Vec<&str> = texts[0].lines().collect();
        assert!(lines[0].starts_with("# hedgehog: 2 messages lost to disk errors between "), "{lines:?}");
        assert_eq!(lines.len(), 2);
        assert_eq!(stats.report().lost, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
